"""The scenario registry: every scenario a cell can run, and how it runs, in one place.

``harness verify`` and the pytest plugin run a cell through
:func:`run_scenario` (the bench times ``harness verify`` itself): the named scenarios (the migration's validation plan),
generated programs, and the hammer. A scenario is a function of a
:class:`CellContext` (the stack, the tenant schemas, the run's settings and
seed), a strategy and a route, returning a :class:`CellResult` with its
required verdict set.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable

from harness.config import HarnessConfig
from harness.stack import Stack
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import StrategySpec
from harness.workload.cell import CellResult, run_cell
from harness.workload.expectations import required_verdict
from harness.workload.generated import PROFILES, Profile, explore
from harness.workload.hammer import hammer
from harness.workload.named import NAMED_SCENARIOS

GENERATED = "generated"
HAMMER = "hammer"


@dataclasses.dataclass(frozen=True)
class CellContext:
    """What every cell of a run shares."""

    stack: Stack
    tenancy: Tenancy
    config: HarnessConfig
    seed: int
    #: False for the built-ins' self-check (their expectation table); True gates (every cell must pass)
    gate: bool
    #: the command that replays a generated cell, for this front end (CLI or pytest)
    replay: Callable[[StrategySpec, str, Profile], str] | None = None

    @property
    def profile(self) -> Profile:
        return PROFILES[self.config.profile]


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Callable[[CellContext, StrategySpec, str], CellResult]


def hammer_history_path(report_dir: Path, spec: StrategySpec, route: str) -> Path:
    """Where a hammer cell's JSON-lines history goes: one file name per strategy x route, safe on any filesystem."""
    return report_dir / "hammer" / (re.sub(r"[^A-Za-z0-9_-]", "_", spec.name) + f"-{route}.jsonl")


def _named(name: str) -> Callable[[CellContext, StrategySpec, str], CellResult]:
    def run(ctx: CellContext, spec: StrategySpec, route: str) -> CellResult:
        program = NAMED_SCENARIOS[name].program(ctx.tenancy.tenants, ctx.tenancy.hostile)
        return run_cell(ctx.stack, ctx.tenancy, spec, route, name, program)
    return run


def _generated(ctx: CellContext, spec: StrategySpec, route: str) -> CellResult:
    config = ctx.config
    result, _ = explore(ctx.stack, ctx.tenancy, spec, route, ctx.profile, seed=ctx.seed,
                        derandomize=config.derandomize, database_dir=config.example_db)
    if ctx.replay is not None:
        result.replay = ctx.replay(spec, route, ctx.profile)
    return result


def _hammer(ctx: CellContext, spec: StrategySpec, route: str) -> CellResult:
    config, profile = ctx.config, ctx.profile
    result, figures = hammer(
        ctx.stack, ctx.tenancy, spec, route, threads=config.hammer_threads,
        max_requests=config.hammer_requests or profile.hammer_requests,
        max_seconds=config.hammer_seconds or profile.hammer_seconds, seed=ctx.seed,
        history_path=hammer_history_path(config.report_dir, spec, route))
    result.figures = {"requests": figures.requests, "requests_per_second": round(figures.requests_per_second, 1),
                      "pool_checkouts": figures.checkouts, "threads": figures.threads,
                      "seconds": round(figures.seconds, 3), "history": str(figures.history_path)}
    return result


SCENARIOS: dict[str, Scenario] = {
    **{name: Scenario(name, named.title, _named(name)) for name, named in NAMED_SCENARIOS.items()},
    GENERATED: Scenario(GENERATED, "generated programs: concurrent workloads drawn and shrunk by Hypothesis",
                        _generated),
    HAMMER: Scenario(HAMMER, "hammer: real threads serving random requests", _hammer),
}


def run_scenario(ctx: CellContext, spec: StrategySpec, route: str, scenario: str) -> CellResult:
    """Run one cell and set the verdict it is required to measure."""
    result = SCENARIOS[scenario].run(ctx, spec, route)
    result.required = required_verdict(spec.name, scenario, route, gate=ctx.gate)
    return result
