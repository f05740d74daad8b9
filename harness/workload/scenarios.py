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
import shlex
from pathlib import Path
from typing import Any, Callable

from harness.checks import Verdict
from harness.config import (FAULT_PROFILES, FAULTS_SCENARIO, POOLER_SETTINGS, SETTINGS_BY_NAME, HarnessConfig,
                            run_poolers, setting_text)
from harness.stack import Stack
from harness.team import steps as team_steps
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.drivers import DEFAULT_DRIVER, ran_on
from harness.tenancy.strategy import BUILTIN_SPECS, StrategySpec
from harness.workload.cell import CellResult, run_cell
from harness.workload.expectations import required_verdict
from harness.workload.generated import PROFILES, Profile, explore
from harness.workload.faults import injectable
from harness.workload.hammer import hammer
from harness.workload.named import NAMED_SCENARIOS

GENERATED = "generated"
HAMMER = "hammer"
FAULTS = FAULTS_SCENARIO

#: Settings that decide what any cell runs, besides its strategy, route, scenario, profile and seed: a replay
#: gives those not at their default. Not the external backend's DSNs: they hold passwords, and the
#: environment or pyproject.toml that gave them gives them again.
CELL_SETTINGS = ("backend", "deployment", "driver", "pg_bindir", "pgbouncer", "postgres_image", "pgbouncer_image", "session_pool_size",
                 "transaction_pool_size", "tenants", "decoys", "models", "schema_sql", "actions", "step_deadline",
                 "pgbouncer_config", "pgbouncer_set", "pgpool_config", "pgpool_set", "pgagroal_config", "pgagroal_set")
#: ... and those only one scenario reads
SCENARIO_SETTINGS = {GENERATED: ("example_db",), HAMMER: ("hammer_threads", "hammer_requests", "hammer_seconds"),
                     FAULTS_SCENARIO: ("example_db", "hammer_threads", "hammer_requests", "hammer_seconds")}
#: A front end's replay: (strategy, route, scenario, profile) -> the command that runs exactly that cell again
Replay = Callable[[StrategySpec, str, str, Profile], str]


@dataclasses.dataclass(frozen=True)
class CellContext:
    """What every cell of a run shares."""

    stack: Stack
    tenancy: Tenancy
    config: HarnessConfig
    seed: int
    #: False for the built-ins' self-check (their expectation table); True gates (every cell must pass)
    gate: bool
    #: the command that replays a cell, for this front end (CLI or pytest): every generated cell gets one,
    #: every other cell when it fails or does not measure its required verdict
    replay: Replay | None = None

    @property
    def profile(self) -> Profile:
        return PROFILES[self.config.profile]


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Callable[[CellContext, StrategySpec, str], CellResult]


def hammer_history_path(report_dir: Path, spec: StrategySpec, route: str, scenario: str = "hammer") -> Path:
    """Where a hammer cell's JSON-lines history goes: one file name per strategy x route (x scenario), safe on
    any filesystem."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", spec.name) + ("" if scenario == HAMMER else f"-{scenario}")
    return report_dir / "hammer" / f"{name}-{route}.jsonl"


def _named(name: str) -> Callable[[CellContext, StrategySpec, str], CellResult]:
    def run(ctx: CellContext, spec: StrategySpec, route: str) -> CellResult:
        layout = spec.layout(ctx.stack.url(route))
        program = NAMED_SCENARIOS[name].program(ctx.tenancy.tenants, ctx.tenancy.hostile, layout=layout)
        if layout == "schema":  # the team's tables and code are read wherever the scenario reads
            program = team_steps.woven(program, team_steps.read_names(ctx.tenancy.team))
        return run_cell(ctx.stack, ctx.tenancy, spec, route, name, program)
    return run


def _generated(ctx: CellContext, spec: StrategySpec, route: str) -> CellResult:
    config = ctx.config
    result, _ = explore(ctx.stack, ctx.tenancy, spec, route, ctx.profile, seed=ctx.seed,
                        derandomize=config.derandomize, database_dir=config.example_db)
    return result


def _faults(ctx: CellContext, spec: StrategySpec, route: str) -> CellResult:
    """Generated programs that interleave every fault the stack can inject on the route; in the nightly
    profile, when they find nothing, the hammer with faults too (its result then stands for the cell)."""
    faults = injectable(ctx.stack, route)
    config = ctx.config
    result, _ = explore(ctx.stack, ctx.tenancy, spec, route, ctx.profile, seed=ctx.seed,
                        derandomize=config.derandomize, database_dir=config.example_db, scenario=FAULTS,
                        faults=faults)
    if ctx.profile.name in FAULT_PROFILES and result.verdict is not Verdict.FAIL:
        hammered = _hammer(ctx, spec, route, faults=faults)
        if hammered.verdict is Verdict.FAIL or result.verdict is Verdict.PASS:
            hammered.reason = f"{hammered.reason} (hammer with faults, after generated programs: {result.reason})"
            hammered.seconds += result.seconds
            return hammered
    return result


def _hammer(ctx: CellContext, spec: StrategySpec, route: str, faults: tuple[str, ...] = ()) -> CellResult:
    config, profile = ctx.config, ctx.profile
    result, figures = hammer(
        ctx.stack, ctx.tenancy, spec, route, threads=config.hammer_threads,
        max_requests=config.hammer_requests or profile.hammer_requests,
        max_seconds=config.hammer_seconds or profile.hammer_seconds, seed=ctx.seed,
        history_path=hammer_history_path(config.report_dir, spec, route, FAULTS if faults else HAMMER),
        scenario=FAULTS if faults else HAMMER, faults=faults)
    result.figures = {"requests": figures.requests, "requests_per_second": round(figures.requests_per_second, 1),
                      "pool_checkouts": figures.checkouts, "threads": figures.threads,
                      "seconds": round(figures.seconds, 3), "history": str(figures.history_path)}
    return result


SCENARIOS: dict[str, Scenario] = {
    **{name: Scenario(name, named.title, _named(name)) for name, named in NAMED_SCENARIOS.items()},
    GENERATED: Scenario(GENERATED, "generated programs: concurrent workloads drawn and shrunk by Hypothesis",
                        _generated),
    HAMMER: Scenario(HAMMER, "hammer: real threads serving random requests", _hammer),
    FAULTS: Scenario(FAULTS, "faults: generated programs (and, nightly, the hammer) with backends terminated, "
                             "PgBouncer killed, paused, reloaded and restarted, timeouts and cut connections",
                     _faults),
}


def default_scenarios(config: HarnessConfig) -> list[str]:
    """The scenarios a run without --scenarios runs: all of them, faults only in the profiles that have it."""
    return [name for name in SCENARIOS if name != FAULTS or config.runs_faults]


def run_scenario(ctx: CellContext, spec: StrategySpec, route: str, scenario: str) -> CellResult:
    """Run one cell and set the verdict it is required to measure."""
    result = SCENARIOS[scenario].run(ctx, spec, route)
    result.driver = spec.driver
    if spec.driver and not ran_on(spec.driver, result.driver_used):
        # The cell is labelled with a driver its layer did not use: a pass there would be a pass on a driver
        # nothing tried. A failure stands (the leak is real), worded with the driver it ran on.
        ignored = (f"the layer ignored the driver its route URL named: asked {spec.driver}, its engine used "
                   f"{result.driver_used} (build the engine from the URL the factory gets)")
        if result.verdict is not Verdict.FAIL:
            result.verdict = Verdict.INCONCLUSIVE
        result.reason = f"{ignored}; {result.reason}"
    facts = None if ctx.gate else dataclasses.replace(ctx.stack.facts, driver=spec.driver or DEFAULT_DRIVER)
    result.required = required_verdict(spec.name, scenario, route, gate=ctx.gate, facts=facts)
    if ctx.replay is not None and (scenario in (GENERATED, FAULTS) or result.verdict is Verdict.FAIL or not result.as_required):
        result.replay = ctx.replay(spec, route, scenario, ctx.profile)
    return result


def replay_settings(config: HarnessConfig, spec: StrategySpec, scenario: str, profile: str,
                    seed: int) -> dict[str, Any]:
    """The settings a command replaying this cell gives, besides its strategy, route and scenario: the
    profile, the seed (or derandomize), the settings that decide the cell and are not at their default,
    and ``pythonpath`` when the cell imports the user's code (a strategy of theirs, models or actions).
    Not the settings of a pooler the cell's stack does not run: a cell of a ``--deployments`` run replays on
    its own deployment, which would refuse them."""
    chosen: dict[str, Any] = {"profile": profile}
    chosen.update({"derandomize": True} if config.derandomize else {"seed": seed})
    running = run_poolers(config)
    other_poolers = {name for kind, names in POOLER_SETTINGS.items() if kind not in running for name in names}
    for name in CELL_SETTINGS + SCENARIO_SETTINGS.get(scenario, ()):
        if name in other_poolers:
            continue
        if getattr(config, name) != SETTINGS_BY_NAME[name].default:
            chosen[name] = getattr(config, name)
    if spec.driver is not None:  # a cell of a --drivers run replays on its own driver
        chosen["driver"] = spec.driver
    if spec.spec not in BUILTIN_SPECS.values() or config.models or config.actions:
        chosen["pythonpath"] = config.pythonpath
        if config.env_file is not None:  # the app's settings its code needs to import (the path, not the values)
            chosen["env_file"] = config.env_file
    return chosen


def replay_command(command: list[str], settings: dict[str, Any],
                   options: Callable[[str, Any], list[str] | None]) -> str:
    """``command`` followed by each setting as the front end's ``options(name, value)`` words it; a setting
    the front end has no option for (None) goes before the command as its HARNESS_* variable."""
    env, words = [], list(command)
    for name, value in settings.items():
        given = options(name, value)
        if given is None:
            env.append(f"{SETTINGS_BY_NAME[name].env}={shlex.quote(setting_text(value))}")
        else:
            words += given
    return " ".join([*env, shlex.join(words)])
