"""One cell: a strategy on a route running one program, from reset to verdict."""

from __future__ import annotations

import dataclasses
import time

from harness.checks import Coverage, Finding, Verdict, check_history, coverage, verdict
from harness.stack import Stack
from harness.tenancy.provisioning import SEED_ROWS, SEED_SMALL, Tenancy
from harness.tenancy.strategy import StrategySpec
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

    def explain(self, limit: int = 40) -> str:
        """A numbered, readable account: the verdict, the findings, then the steps."""
        lines = [f"{self.strategy} x {self.route} x {self.scenario}: {self.verdict.value.upper()} "
                 f"({self.verdict.reason})", f"coverage: {self.coverage.describe()}"]
        flagged = {s for f in self.findings for s in f.steps}
        for f in self.findings:
            lines.append(f"  [{f.kind}{'' if f.gating else ', not gating'}] {f.explanation}")
        lines.append("steps:")
        for step in self.history.steps[:limit]:
            mark = ">>" if step.seq in flagged else "  "
            rows = ", ".join(f"{r.table}#{r.id}:{r.owner}" for r in step.rows[:6])
            more = f" +{len(step.rows) - 6}" if len(step.rows) > 6 else ""
            err = f" ERROR {step.error.sqlstate} {step.error.message}" if step.error else ""
            lines.append(f"{mark}{step.seq:4d}. client {step.client} {step.tenant!r:>16} {step.step:<24} "
                         f"pid={step.pid} path={step.search_path!r} rows=[{rows}{more}]{err} {step.note}".rstrip())
        if len(self.history.steps) > limit:
            lines.append(f"  ... {len(self.history.steps) - limit} more steps")
        return "\n".join(lines)


def run_cell(stack: Stack, tenancy: Tenancy, spec: StrategySpec, route: str, scenario: str,
             program: Program) -> CellResult:
    """Reset the database state, run the program with a fresh strategy instance, check the history."""
    started = time.monotonic()
    tenancy.reset()
    strategy = spec.create(stack.url(route))
    gating = ("orm", "control") + tuple(f"raw_{s}" for s in strategy.raw_sql)
    history = History(strategy=spec.name, route=route, tenants=program.tenants, schemas=tuple(tenancy.schemas),
                      seed_ids={"product": tuple(range(1, SEED_ROWS + 1)),
                                "marketplace_task": tuple(range(1, SEED_SMALL + 1))},
                      gating_styles=gating)
    try:
        Runner(stack, route, strategy).run(program, history)
    finally:
        strategy.close()
    history.final_state = tenancy.snapshot()
    findings = check_history(history)
    cov = coverage(history)
    return CellResult(spec.name, route, scenario, history, findings, cov, verdict(findings, cov),
                      time.monotonic() - started)
