"""`harness verify`: every strategy x route x scenario against one stack, then the report.

Without strategies it runs the built-ins against their expectation table (the
harness's own self-check and a demonstration); with user strategies it gates
them: every scenario on every route must pass.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, TextIO

import psycopg
import sqlalchemy

from harness.config import HarnessConfig
from harness.errors import UsageError
from harness.scan.scanner import ScanFinding, scan_path
from harness.stack import Stack, start_stack
from harness.tenancy.models import load_user_metadata
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import BUILTINS, StrategySpec, load_strategy
from harness.tenancy.tenants import HOSTILE_TENANTS, default_tenants
from harness.workload.cell import CellResult, run_cell
from harness.workload.expectations import required_verdict
from harness.workload.generated import PROFILES, explore
from harness.workload.hammer import hammer
from harness.workload.named import NAMED_SCENARIOS

GENERATED = "generated"
HAMMER = "hammer"
SCENARIOS = (*NAMED_SCENARIOS, GENERATED, HAMMER)


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
    scan: list[ScanFinding] | None = None
    scan_paths: list[str] = dataclasses.field(default_factory=list)
    #: what did not run on this stack, and why: [{"what": "route session", "reason": ...}]
    not_run: list[dict[str, str]] = dataclasses.field(default_factory=list)
    routes: list[str] = dataclasses.field(default_factory=list)
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failing_cells(self) -> list[CellResult]:
        return [c for c in self.cells if not c.as_required]

    @property
    def ok(self) -> bool:
        return not self.failing_cells and not self.scan


def environment(stack: Stack, config: HarnessConfig, seed: int, decoys: bool) -> dict[str, str]:
    return {
        "postgresql": stack.versions.get("postgres", "?"),
        "pgbouncer": stack.versions.get("pgbouncer", "?"),
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
        "python": platform.python_version(),
        "backend": stack.backend,
        **{key: stack.versions[key] for key in ("postgres_image", "pgbouncer_image") if key in stack.versions},
        "profile": config.profile,
        "seed": "derandomized" if config.derandomize else str(seed),
        "session_pool_size": str(config.session_pool_size),
        "transaction_pool_size": str(config.transaction_pool_size),
        "tenants": str(config.tenants),
        "decoys": "on" if decoys else ("off" if stack.owns_public else "off (the harness does not write to public here)"),
    }


class Progress:
    """One line per finished cell: which, how many done, elapsed, an estimate of what is left."""

    def __init__(self, total: int, out: TextIO = sys.stderr):
        self.total, self.done, self.out = total, 0, out
        self.started = time.monotonic()

    def cell(self, result: CellResult) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done)
        mark = "" if result.as_required else f"  (required {result.required.verdict})"
        print(f"[{self.done:>3}/{self.total}] {elapsed:6.1f}s elapsed, ~{left:5.0f}s left  "
              f"{result.strategy} x {result.route} x {result.scenario}: {result.verdict.value}{mark}",
              file=self.out, flush=True)


def run_verify(config: HarnessConfig, *, seed: int, scan: list[Path] | None = None,
               progress_out: TextIO = sys.stderr,
               on_cell: Callable[[CellResult], None] | None = None) -> VerifyRun:
    """Load everything first (bad input fails before a server starts), then run every cell."""
    names = list(config.strategies) or list(BUILTINS)
    specs: list[StrategySpec] = [load_strategy(n) for n in names]
    extra = load_user_metadata(config.models) if config.models else None
    tenants = default_tenants(config.tenants)
    run = VerifyRun(run_id=dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6],
                    started=dt.datetime.now(dt.timezone.utc), config=config, strategies=[s.name for s in specs],
                    builtin_self_check=not config.strategies, seed=seed)
    started = time.monotonic()
    if scan:
        run.scan_paths = [str(p) for p in scan]
        run.scan = [f for p in scan for f in scan_path(p)]
        if not any(p.is_file() or any(p.rglob("*.py")) for p in scan):
            raise UsageError(f"--scan {', '.join(run.scan_paths)}: no Python file to scan.",
                             fix=["give the folder of your application code"])
    scenarios = list(config.scenarios) or list(SCENARIOS)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise UsageError(f"Unknown scenario(s) {', '.join(unknown)}.", fix=[f"use some of: {', '.join(SCENARIOS)}"])
    profile = PROFILES[config.profile]
    with start_stack(config) as stack:
        run.routes = [r for r in config.routes if r in stack.routes]
        layouts = {s.name: s.layout(stack.url(run.routes[0])) for s in specs} if run.routes else {}
        runnable = [s for s in specs if layouts.get(s.name) in stack.layouts]
        run.not_run = _not_run(stack, config, specs, layouts)
        if not run.routes or not runnable:
            raise UsageError("Nothing can run on this stack.",
                             checked=[f"{item['what']}: {item['reason']}" for item in run.not_run],
                             fix=["give the routes' DSNs, or use the native or docker backend"])
        progress = Progress(len(runnable) * len(run.routes) * len(scenarios), progress_out)
        tenancy = Tenancy(stack, tenants, decoys=config.decoys, extra_metadata=extra)
        run.environment = environment(stack, config, seed, tenancy.decoys)
        try:
            tenancy.provision()
            tenancy.provision(HOSTILE_TENANTS)
            for spec in runnable:
                for route in run.routes:
                    for scenario in scenarios:
                        result = _run_one(stack, tenancy, spec, route, scenario, config, profile, seed)
                        result.required = required_verdict(spec.name, scenario, route,
                                                           gate=not run.builtin_self_check)
                        run.cells.append(result)
                        progress.cell(result)
                        if on_cell:
                            on_cell(result)
        finally:
            tenancy.close()
    run.seconds = time.monotonic() - started
    return run


def _not_run(stack: Stack, config: HarnessConfig, specs: list[StrategySpec],
             layouts: dict[str, str]) -> list[dict[str, str]]:
    """Routes, strategies and checks this stack cannot run, each with its reason."""
    items = [{"what": f"route {route}", "reason": stack.not_run.get(f"route {route}", "the stack has no such route")}
             for route in config.routes if route not in stack.routes]
    items += [{"what": f"strategy {spec.name}",
               "reason": stack.not_run.get(f"layout {layouts[spec.name]}",
                                           f"the {layouts[spec.name]} layout cannot run here")}
              for spec in specs if spec.name in layouts and layouts[spec.name] not in stack.layouts]
    items += [{"what": what, "reason": reason} for what, reason in stack.not_run.items()
              if not what.startswith(("route ", "layout "))]
    return items


def _run_one(stack: Stack, tenancy: Tenancy, spec: StrategySpec, route: str, scenario: str,
             config: HarnessConfig, profile, seed: int) -> CellResult:
    if scenario == GENERATED:
        result, _ = explore(stack, tenancy, spec, route, profile, seed=seed, derandomize=config.derandomize,
                            database_dir=config.example_db)
        seed_option = "--derandomize" if config.derandomize else f"--seed {seed}"
        result.replay = (f"harness verify --strategy {spec.spec} --routes {route} --profile {profile.name} "
                         f"{seed_option}")
        return result
    if scenario == HAMMER:
        result, figures = hammer(
            stack, tenancy, spec, route, threads=config.hammer_threads,
            max_requests=config.hammer_requests or profile.hammer_requests,
            max_seconds=config.hammer_seconds or profile.hammer_seconds, seed=seed,
            history_path=config.report_dir / "hammer" / f"{spec.name.replace(':', '_').replace('.', '_')}-{route}.jsonl")
        result.figures = {"requests": figures.requests, "requests_per_second": round(figures.requests_per_second, 1),
                          "pool_checkouts": figures.checkouts, "threads": figures.threads,
                          "history": str(figures.history_path)}
        return result
    named = NAMED_SCENARIOS[scenario]
    return run_cell(stack, tenancy, spec, route, scenario, named.program(tenancy.tenants, tenancy.hostile))
