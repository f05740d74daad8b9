"""One cell: a strategy on a route running one program, from reset to verdict."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from sqlalchemy import event

from harness.checks import Coverage, Finding, Verdict, check_history, coverage, verdict
from harness.stack import Stack
from harness.tenancy.provisioning import SEED_ROWS, SEED_SMALL, Tenancy
from harness.tenancy.strategy import StrategySpec
from harness.workload.expectations import Expectation
from harness.workload.history import History
from harness.workload.program import Program
from harness.workload.runner import Runner


@dataclasses.dataclass
class CellResult:
    strategy: str
    route: str
    scenario: str
    history: History
    findings: list[Finding]
    coverage: Coverage
    verdict: Verdict
    seconds: float
    required: Expectation | None = None
    program: Program | None = None  # the minimal failing program of a generated cell
    replay: str | None = None  # the command that replays a generated cell
    figures: dict | None = None  # hammer throughput figures
    schema_in_sql: bool | None = None  # did the executed SQL name the tenant's schema (None: not measured)

    @property
    def as_required(self) -> bool:
        return self.required is None or self.required.verdict == self.verdict.value

    def summary(self) -> dict:
        return {
            "strategy": self.strategy, "route": self.route, "scenario": self.scenario,
            "verdict": self.verdict.value, "verdict_reason": self.verdict.reason,
            "required": self.required.verdict if self.required else None,
            "required_reason": self.required.reason if self.required else None,
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "coverage": dataclasses.asdict(self.coverage), "seconds": round(self.seconds, 3),
            "replay": self.replay,
            "counterexample": [dataclasses.asdict(s) for s in self.history.steps] if self.program else None,
        }

    def explain(self, limit: int = 40) -> str:
        """A numbered, readable account: the verdict, the findings, then the steps."""
        lines = [f"{self.strategy} x {self.route} x {self.scenario}: {self.verdict.value.upper()} "
                 f"({self.verdict.reason})", f"coverage: {self.coverage.describe()}"]
        if self.program is not None:
            from harness.workload.generated import describe_program

            lines.append("minimal program:")
            lines.extend("  " + line for line in describe_program(self.program).splitlines())
        if self.replay:
            lines.append(f"replay: {self.replay}")
        flagged = {s for f in self.findings for s in f.steps}
        for f in self.findings:
            lines.append(f"  [{f.kind}{'' if f.gating else ', not gating'}] {f.explanation}")
        lines.append("steps:")
        for step in self.history.steps[:limit]:
            mark = ">>" if step.seq in flagged else "  "
            rows = ", ".join(f"{r.table}#{r.id}:{r.owner}" for r in step.rows[:6])
            more = f" +{len(step.rows) - 6}" if len(step.rows) > 6 else ""
            err = f" ERROR {step.error.sqlstate} {step.error.message}" if step.error else ""
            role = f" as={step.user}" if step.user and step.user != "app" else ""
            lines.append(f"{mark}{step.seq:4d}. client {step.client} {step.tenant!r:>16} {step.step:<24} "
                         f"pid={step.pid}{role} path={step.search_path!r} rows=[{rows}{more}]{err} {step.note}".rstrip())
        if len(self.history.steps) > limit:
            lines.append(f"  ... {len(self.history.steps) - limit} more steps")
        for probe in self.history.probes[:limit]:
            pids = ", ".join(str(s.pid) for s in probe.states) or "none"
            against = f"; SHOW SERVERS: {', '.join(map(str, probe.server_pids)) or 'none'}" if probe.target != "engine" else ""
            busy = f"; busy, not probed: {', '.join(map(str, probe.uncovered))}" if probe.uncovered else ""
            lines.append(f"  probe after step {probe.after_step} ({probe.target}): probed {pids}{against}{busy}"
                         + (f" ERROR {probe.error}" if probe.error else ""))
        return "\n".join(lines)


def run_cell(stack: Stack, tenancy: Tenancy, spec: StrategySpec, route: str, scenario: str,
             program: Program) -> CellResult:
    """Reset the database state, run the program with a fresh strategy instance, check the history."""
    started = time.monotonic()
    target = tenancy.for_layout(spec.layout(stack.url(route)))
    target.reset()
    strategy = spec.create(target.url(route))
    try:
        if target is not tenancy:
            target.prepare(strategy)
    except BaseException:
        strategy.close()
        raise
    statements = _record_statements(strategy.engine)
    gating = ("orm", "control") + tuple(f"raw_{s}" for s in strategy.raw_sql)
    # A scheduler pass writes for every tenant, not only those the program names.
    tenants = tuple(dict.fromkeys(program.tenants + tenancy.tenants))
    history = History(strategy=spec.name, route=route, tenants=tenants, schemas=tuple(target.schemas),
                      seed_ids={"product": tuple(range(1, SEED_ROWS + 1)),
                                "marketplace_task": tuple(range(1, SEED_SMALL + 1))},
                      gating_styles=gating, layout=strategy.layout)
    # The RLS layout has its own (shared) tables; a schema-layout strategy declares its flavour.
    runner = Runner(stack, route, strategy, tenants=tenancy.tenants,
                    models=target.models if target is not tenancy else None, url=target.url(route))
    try:
        runner.run(program, history)
    finally:
        runner.close_strategy()
    history.final_state = target.snapshot()
    findings = check_history(history)
    cov = coverage(history)
    judged = verdict(findings, cov)
    if program.probe and judged.value == "pass" and cov.probed_connections == 0:
        judged = Verdict("inconclusive", "the pool probe read no connection (no idle server, no engine exposed)")
    result = CellResult(spec.name, route, scenario, history, findings, cov, judged, time.monotonic() - started)
    if statements is not None:
        result.schema_in_sql = any(_names_schema(sql, tenants) for sql in statements)
    return result


def _record_statements(engine) -> list[str] | None:
    """Collect the SQL the strategy's engine executes, to see whether it names the tenant's schema."""
    if engine is None:
        return None
    engine = getattr(engine, "sync_engine", engine)  # an AsyncEngine's events live on its sync engine
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        if len(statements) < 2000:
            statements.append(statement)

    return statements


def _names_schema(statement: str, tenants: tuple[str, ...]) -> bool:
    """True when a statement qualifies a table with a tenant's schema (as a query log would show it)."""
    if "FROM" not in statement.upper() and "INTO" not in statement.upper():
        return False
    return any(f'"{t.replace(chr(34), chr(34) * 2)}".' in statement or f" {t}." in statement for t in tenants)


def verdict_matrix(results: list[CellResult]) -> list[str]:
    """strategy x scenario rows, one column per route: PASS / FAIL / inconclusive (* = not as required)."""
    routes = list(dict.fromkeys(r.route for r in results))
    cells = {(r.strategy, r.scenario, r.route): r for r in results}
    rows = list(dict.fromkeys((r.strategy, r.scenario) for r in results))
    width = max(len("strategy"), *(len(s) for s, _ in rows)) + 2
    swidth = max(len("scenario"), *(len(c) for _, c in rows)) + 2
    lines = [f"{'strategy':<{width}}{'scenario':<{swidth}}" + "".join(f"{r:<15}" for r in routes)]
    label = {"pass": "pass", "fail": "FAIL", "inconclusive": "inconclusive"}
    for strategy, scenario in rows:
        line = f"{strategy:<{width}}{scenario:<{swidth}}"
        for route in routes:
            cell = cells.get((strategy, scenario, route))
            text = "-" if cell is None else label[cell.verdict.value] + ("" if cell.as_required else "*")
            line += f"{text:<15}"
        lines.append(line.rstrip())
    return lines


def write_cell_results(results: list[CellResult], report_dir: Path) -> Path:
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "cells.json"
    path.write_text(json.dumps([r.summary() for r in results], indent=1, default=str))
    return path
