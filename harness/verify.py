"""`harness verify`: every strategy x route x scenario against one stack, then the report.

Without strategies it runs the built-ins against their expectation table (the
harness's own self-check and a demonstration); with user strategies it gates
them: every scenario on every route must pass.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, TextIO

from harness.config import HarnessConfig, apply_team_environment
from harness.errors import UsageError
from harness.jobs import PlannedCell, StackInfo, available_cores, run_cells
from harness.scan import ScanFinding, ScanResult, scan_paths
from harness.stack import choose_backend
from harness.team import load_team
from harness.tenancy.strategy import BUILTINS, StrategySpec, load_strategy
from harness.workload.cell import CellResult, variant_label
from harness.workload.scenarios import SCENARIOS, default_scenarios


@dataclasses.dataclass
class VerifyRun:
    """Everything one `harness verify` measured."""

    run_id: str
    started: dt.datetime
    config: HarnessConfig
    strategies: list[str]
    builtin_self_check: bool
    seed: int
    cells: list[CellResult] = dataclasses.field(default_factory=list)
    #: the plan's scenarios, in run order
    scenarios: list[str] = dataclasses.field(default_factory=list)
    scan: list[ScanFinding] | None = None
    scan_paths: list[str] = dataclasses.field(default_factory=list)
    #: the whole scan record (files read, files not scanned, tenant tables), when --scan ran
    scan_result: ScanResult | None = None
    #: what did not run on this stack, and why: [{"what": "route session", "reason": ...}]
    not_run: list[dict[str, str]] = dataclasses.field(default_factory=list)
    routes: list[str] = dataclasses.field(default_factory=list)
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    #: identifies the whole plan of cells (same in every shard of one run)
    plan: str = ""
    #: {"index": K, "count": N} for `--shard K/N`, else None
    shard: dict[str, int] | None = None
    jobs: int = 1
    #: False while cells are still running (or when the run stopped before its last cell)
    complete: bool = True
    #: the built-in deployments the cells ran on, in run order (``--deployments``); empty for one stack's
    deployments: list[str] = dataclasses.field(default_factory=list)
    #: the drivers the cells ran on, in run order (``--drivers``); empty for the one driver of ``--driver``
    drivers: list[str] = dataclasses.field(default_factory=list)

    @property
    def failing_cells(self) -> list[CellResult]:
        return [c for c in self.cells if not c.as_required]

    @property
    def ok(self) -> bool:
        return not self.failing_cells and not any(f.gating for f in self.scan or ())


class Progress:
    """One line per finished cell: which, how many done, elapsed, an estimate of what is left."""

    def __init__(self, total: int, out: TextIO = sys.stderr):
        self.total, self.done, self.out = total, 0, out
        self.started = time.monotonic()

    def cell(self, result: CellResult) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done)
        mark = "" if result.as_required else f"  (required {result.required.label})"
        where = "".join(f"{part}: " for part in (result.deployment, result.driver) if part)
        print(f"[{self.done:>3}/{self.total}] {elapsed:6.1f}s elapsed, ~{left:5.0f}s left  "
              f"{where}{result.strategy} x {result.route} x {result.scenario}: {result.verdict.value}{mark}",
              file=self.out, flush=True)


def writable_folder(folder: Path, option: str) -> None:
    """Refuse, before anything starts, a report folder the run could not write its results to."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".harness-write-check-{uuid.uuid4().hex[:8]}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"{option} {folder}: the run could not write its report there ({exc.strerror or exc}).",
                         fix=["name a folder you can write to (it is created when missing)"]) from None


def plan_cells(specs: list[StrategySpec], routes: tuple[str, ...], scenarios: list[str],
               deployments: tuple[str | None, ...] = (None,),
               drivers: tuple[str | None, ...] = (None,)) -> list[PlannedCell]:
    """Every cell of the run in report order: deployment, then driver, then strategy, then route, then
    scenario."""
    combos = [(spec.spec, route, scenario, deployment, driver) for deployment in deployments
              for driver in drivers for spec in specs for route in routes for scenario in scenarios]
    return [PlannedCell(i, *combo) for i, combo in enumerate(combos)]


def plan_id(config: HarnessConfig, specs: list[StrategySpec], scenarios: list[str], seed: int) -> str:
    """A fingerprint of everything that decides the cells and their programs: shards of one run share it."""
    what = {"strategies": [s.spec for s in specs], "routes": list(config.routes), "scenarios": scenarios,
            "profile": config.profile, "tenants": config.tenants, "models": config.models,
            "decoys": config.decoys, "seed": None if config.derandomize else seed,
            "derandomize": config.derandomize, "hammer": [config.hammer_threads, config.hammer_requests,
                                                          config.hammer_seconds],
            "step_deadline": config.step_deadline, "deployments": list(config.deployments) or config.deployment,
            **({"drivers": list(config.drivers) or config.driver} if config.drivers or config.driver else {})}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def shard_of(cells: list[PlannedCell], shard: tuple[int, int] | None) -> list[PlannedCell]:
    """Shard K of N: every N-th cell of the plan from the K-th, so each shard gets a share of every kind."""
    if shard is None:
        return cells
    index, count = shard
    return [cell for cell in cells if cell.index % count == index - 1]


def run_verify(config: HarnessConfig, *, seed: int, scan: list[Path] | None = None,
               progress_out: TextIO = sys.stderr,
               on_cell: Callable[[CellResult], None] | None = None,
               on_progress: Callable[[VerifyRun], None] | None = None) -> VerifyRun:
    """Load everything first (bad input fails before a server starts), then run every cell.

    ``on_progress`` gets the run after each cell, with the cells so far in plan order and ``complete``
    False, so a front end can keep what was gathered if the run fails late."""
    names = list(config.strategies) or list(BUILTINS)
    apply_team_environment(config)  # the app's settings (--env-file, [tool.harness.env]) before its code imports
    specs: list[StrategySpec] = [load_strategy(n) for n in names]
    load_team(config)  # a broken --models or --actions fails here, before any server starts
    scenarios = list(config.scenarios) or default_scenarios(config)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise UsageError(f"Unknown scenario(s) {', '.join(unknown)}.", fix=[f"use some of: {', '.join(SCENARIOS)}"])
    run = VerifyRun(run_id=dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6],
                    started=dt.datetime.now(dt.timezone.utc), config=config, strategies=[s.name for s in specs],
                    scenarios=scenarios, builtin_self_check=not config.strategies, seed=seed)
    run.complete = False  # until the last cell is in
    started = time.monotonic()
    if scan:
        run.scan_paths = [str(p) for p in scan]
        # The team's --models name the tenant tables; else the scan reads them from the mapped classes.
        run.scan_result = scan_paths(scan, models=config.models)
        run.scan = run.scan_result.findings
    writable_folder(config.report_dir, "--report-dir")
    run.plan = plan_id(config, specs, scenarios, seed)
    run.deployments = list(config.deployments)
    deployments = tuple(config.deployments) or (config.deployment,)
    run.drivers = list(config.drivers)
    cells = shard_of(plan_cells(specs, config.routes, scenarios, deployments, tuple(config.drivers) or (None,)),
                     config.shard)
    if config.shard is not None:
        run.shard = {"index": config.shard[0], "count": config.shard[1]}
    run.jobs = max(1, min(config.jobs or available_cores(), len(cells)))
    if choose_backend(config) == "external":
        # Every stack of the external backend is the same database and the same PgBouncers: stacks at once
        # would reset (KILL, RESUME) each other's pools.
        run.jobs = 1
    results: dict[int, CellResult] = {}
    progress = Progress(len(cells), progress_out)

    matrix = bool(config.deployments)
    stacks: dict[str | None, StackInfo] = {}

    def on_info(deployment: str | None, info: StackInfo) -> None:
        stacks[deployment] = info
        first = next(iter(stacks.values()))
        run.routes = list(dict.fromkeys(route for i in stacks.values() for route in i.routes))
        run.not_run = [{**item, "what": f"{d}: {item['what']}"} if matrix else item
                       for d, i in stacks.items() for item in i.not_run]
        run.environment = dict(first.environment)
        run.environment["jobs"] = str(run.jobs)
        if matrix:  # each deployment's versions and effective settings
            run.environment["deployments"] = {d: i.environment for d, i in stacks.items()}
        by_spec = {s.spec: s for s in specs}
        progress.total = sum(1 for c in cells if by_spec[c.strategy].runs_on(c.driver or config.driver) and (
            c.deployment not in stacks or
            (c.route in stacks[c.deployment].routes and c.strategy in stacks[c.deployment].runnable)))

    def on_result(cell: PlannedCell, result: CellResult) -> None:
        result.deployment = cell.deployment
        result.driver = cell.driver or config.driver
        result.variant = variant_label(cell.deployment if matrix else None, cell.driver if config.drivers else None)
        results[cell.index] = result
        progress.cell(result)
        if on_cell:
            on_cell(result)
        if on_progress:
            run.cells = [results[i] for i in sorted(results)]
            run.seconds = time.monotonic() - started
            on_progress(run)

    for deployment in deployments:
        these = [cell for cell in cells if cell.deployment == deployment]
        if these:
            run_cells(dataclasses.replace(config, deployment=deployment, deployments=()), specs, these, seed,
                      gate=not run.builtin_self_check, jobs=run.jobs,
                      on_info=lambda info, d=deployment: on_info(d, info), on_result=on_result)
    run.cells = [results[i] for i in sorted(results)]
    run.seconds = time.monotonic() - started
    run.complete = True
    if run.cells:
        run.environment["drivers_used"] = drivers_used(run.cells)
    return run


def drivers_used(cells: list[CellResult]) -> str:
    """The drivers the layers really used (read from their engines), each with the strategies that used it."""
    used: dict[str, dict[str, None]] = {}
    for cell in cells:
        used.setdefault(cell.driver_used or "none seen (no session opened)", {})[cell.strategy] = None
    return "; ".join(f"{driver}: {', '.join(names) if len(names) <= 3 else f'{len(names)} strategies'}"
                     for driver, names in used.items())
