"""One cell: a strategy on a route running one program, from reset to verdict.

:class:`CellSetup` is the one way a cell starts and ends, for a program run by
the deterministic runner and for the hammer's threads alike: reset the layout's
database state, a fresh strategy instance (prepared for its layout), a runner,
the history's header; at the end the superuser's read-back and the strategy
closed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from sqlalchemy import event

from harness.checks import Coverage, Finding, Judgement, Verdict, check_history, coverage, verdict
from harness.checks.history import History
from harness.stack import Stack
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.seeds import seed_ids
from harness.tenancy.strategy import Strategy, StrategySpec
from harness.workload.expectations import Expectation
from harness.workload.program import Program
from harness.workload.runner import Runner


def variant_label(deployment: str | None, driver: str | None) -> str | None:
    """The matrix column of a cell: the deployment and the driver it ran on, for the dimensions a run spans."""
    return "/".join(part for part in (deployment, driver) if part) or None


@dataclasses.dataclass
class CellResult:
    strategy: str
    route: str
    scenario: str
    history: History
    findings: list[Finding]
    coverage: Coverage
    verdict: Verdict
    reason: str  # why the verdict is what it is, in a sentence
    seconds: float
    required: Expectation | None = None
    program: Program | None = None  # the minimal failing program of a generated cell
    replay: str | None = None  # the command that replays a generated cell
    figures: dict | None = None  # hammer throughput figures
    schema_in_sql: bool | None = None  # did the executed SQL name the tenant's schema (None: not measured)
    #: the built-in deployment the cell ran on (``--deployments``), None for the binaries or images configured
    deployment: str | None = None
    #: the driver the route URL named (``--drivers``), None for the default URL's
    driver: str | None = None
    #: the driver the layer's engine really used, with its version, read from the engine ("" when none was seen)
    driver_used: str = ""
    #: the column of a matrix run this cell belongs to: its deployment, its driver, or both
    #: (``bookworm/asyncpg``), for the dimensions the run spans; None in a run of one stack and one driver
    variant: str | None = None

    @property
    def column(self) -> str | None:
        """The matrix column: the variant, or the deployment of a cell the run did not label."""
        return self.variant or self.deployment

    @property
    def as_required(self) -> bool:
        return self.required is None or self.required.allows(self.verdict)


class CellSetup:
    """Set up a cell, run it (``runner``), then :meth:`finish` it; closes the strategy on exit."""

    def __init__(self, stack: Stack, tenancy: Tenancy, spec: StrategySpec, route: str, *, lean: bool = False):
        self.stack, self.tenancy, self.spec, self.route = stack, tenancy, spec, route
        self.started = time.monotonic()
        self.target = tenancy.for_layout(spec.layout(stack.url(route)))
        self.target.reset()
        tenancy.uses(route)
        self.strategy: Strategy = spec.create(self.target.url(route))
        try:
            if self.target is not tenancy:
                self.target.prepare(self.strategy)
            # The RLS layout has its own (shared) tables; a schema-layout strategy declares its flavour.
            own_models = self.target is not tenancy
            # The team's tables live in the tenant schemas: its steps run in the schema layout only.
            self.team = None if own_models else tenancy.team
            self.runner = Runner(stack, route, self.strategy, tenants=tenancy.tenants, lean=lean,
                                 models=self.target.models if own_models else None, url=self.target.url(route),
                                 team=self.team, step_deadline=tenancy.step_deadline)
        except BaseException:
            self.strategy.close()
            raise

    def __enter__(self) -> "CellSetup":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.runner.close_strategy()

    def runner_for_thread(self) -> Runner:
        """Another runner sharing this cell's ids and sequence: an async layer's instance for one thread.

        An AsyncEngine's connections belong to the event loop that made them,
        so each thread with a loop of its own needs an instance of its own.
        """
        runner = Runner(self.stack, self.route, self.spec.create(self.target.url(self.route)),
                        tenants=self.tenancy.tenants, lean=self.runner.lean, models=self.runner.models,
                        url=self.runner.url, team=self.team, step_deadline=None,
                        setting_names=self.runner.setting_names)
        runner.ids, runner.seq = self.runner.ids, self.runner.seq
        runner.watchdog, runner.owns_watchdog = self.runner.watchdog, False  # one watchdog for the cell
        runner.messages = self.runner.messages  # one record of the app's warnings and logs for the cell
        return runner

    def history(self, tenants: tuple[str, ...] | None = None, **fields: Any) -> History:
        """The history's header: who, where, which schemas, what was seeded, which styles gate."""
        # The team's own code paths always gate: they are the application, whatever SQL they run.
        gating = ("orm", "control", "action") + tuple(f"raw_{s}" for s in self.strategy.raw_sql)
        return History(strategy=self.spec.name, route=self.route, tenants=tenants or self.tenancy.tenants,
                       schemas=tuple(self.target.schemas), seed_ids=seed_ids(), gating_styles=gating,
                       layout=self.strategy.layout, **fields)

    def read_back(self, history: History) -> None:
        """The superuser's read-back of every schema, for the write checks."""
        history.final_state = self.target.snapshot()

    def result(self, scenario: str, history: History, findings: list[Finding], cov: Coverage,
               judgement: Judgement, seconds: float | None = None) -> CellResult:
        """The cell's result; ``seconds`` defaults to the time since the set-up began."""
        result = CellResult(self.spec.name, self.route, scenario, history, findings, cov, judgement.verdict,
                            judgement.reason, time.monotonic() - self.started if seconds is None else seconds)
        result.driver_used = self.strategy.driver_used or self.runner.driver_used
        return result


def run_cell(stack: Stack, tenancy: Tenancy, spec: StrategySpec, route: str, scenario: str,
             program: Program) -> CellResult:
    """Reset the database state, run the program with a fresh strategy instance, check the history."""
    with CellSetup(stack, tenancy, spec, route) as cell:
        statements = _record_statements(cell.strategy.engine)
        # A scheduler pass writes for every tenant, not only those the program names.
        tenants = tuple(dict.fromkeys(program.tenants + tenancy.tenants))
        history = cell.history(tenants, faults=program.faults)
        cell.runner.run(program, history)
    cell.read_back(history)
    findings = check_history(history)
    cov = coverage(history)
    judged = verdict(findings, cov)
    if program.probe and judged.verdict is Verdict.PASS and cov.probed_connections == 0:
        if route not in stack.poolers and cell.runner.keeps_no_connections():
            judged = Judgement(Verdict.PASS, judged.reason + "; every engine the layer used keeps no connection "
                               "(NullPool) and nothing pools this route: no session outlives its request")
        else:
            judged = Judgement(Verdict.INCONCLUSIVE,
                               "the pool probe read no connection (no idle server, no engine exposed)")
    result = cell.result(scenario, history, findings, cov, judged)
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
