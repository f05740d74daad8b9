"""Cells on one stack, or on N stacks at once (``--jobs N``).

A :class:`StackCells` owns one stack and its tenant schemas and runs planned
cells on it, one at a time. With one job it runs in this process. With N jobs,
N worker processes each start a stack of their own and take cells from one
queue, the longest kinds first; results come back in whatever order they
finish and are put back into plan order by the caller. A cell's verdict does
not depend on which stack ran it: every cell starts from a reset (schemas
reseeded, pools emptied) and its programs come from the run's seed.

Workers are separate processes, because the workload is Python-bound and
threads would share one interpreter lock. They are forked where the platform
can and the parent runs a single thread (it has opened no connection by then,
and a forked worker skips a second of imports), spawned otherwise. A worker
stops its stack on SIGTERM, on Ctrl-C, and when its parent is gone; a signal
that arrives while it tears down is ignored, and what an interrupted step
leaves the kernel stops (servers die with their parent).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import platform
import queue
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterator

import psycopg
import sqlalchemy

from harness.config import (REPEATABLE, SETTINGS_BY_NAME, VERIFY_SETTINGS, HarnessConfig, apply_team_environment,
                            put_first_on_sys_path, setting_text)
from harness.errors import HarnessError, UsageError
from harness.stack import Missing, Stack, signals, start_stack
from harness.team import Team, load_team
from harness.tenancy.drivers import DEFAULT_DRIVER, driver, installed_drivers
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import StrategySpec, load_strategy
from harness.tenancy.tenants import HOSTILE_TENANTS, tenant_set
from harness.workload.cell import CellResult
from harness.workload.scenarios import (FAULTS, GENERATED, HAMMER, CellContext, Replay, replay_command, replay_settings,
                                        run_scenario)
from harness.workload.generated import Profile

#: scenarios that take longest: queued first, so the last cells to finish are short ones
LONG_SCENARIOS = (GENERATED, HAMMER, FAULTS)
WORKER_POLL = 1.0  # seconds between checks that the parent and the workers are still there
STOP_GRACE = 30.0  # seconds a stopped worker has to tear its stack down before it is killed


@dataclasses.dataclass(frozen=True)
class PlannedCell:
    """One cell of a run's plan; ``index`` is its place in the whole (unsharded) plan."""

    index: int
    strategy: str  # the strategy's full spec (package.module:attr)
    route: str
    scenario: str
    deployment: str | None = None
    driver: str | None = None


@dataclasses.dataclass
class StackInfo:
    """What a stack can run, as the report tells it."""

    routes: list[str]
    runnable: list[str]  # specs whose layout this stack provides
    not_run: list[dict[str, str]]
    environment: dict[str, Any]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def environment(stack: Stack, config: HarnessConfig, seed: int, decoys: bool,
                team: Team | None = None) -> dict[str, Any]:
    """What the report's environment section and results.json say the run ran on and with: versions,
    settings, the team's models (with their tenant tables) and actions, and ``pooler_settings``: route ->
    setting -> the value its pooler runs with (read back, not as asked)."""
    code = team.describe() if team is not None else {"models": None, "tenant_tables": [], "actions": []}
    return {
        "postgresql": stack.versions.get("postgres", "?"),
        # The pooler of the pooled routes and its version ("PgBouncer 1.18.0", "Pgpool-II 4.3.5").
        "pooler": f"{stack.facts.pooler_title} {stack.versions.get(stack.pooler, '?')}",
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
        # The drivers installed, and the one the route URL names (each cell shows what its layer really used).
        "drivers": installed_drivers(),
        "driver": ", ".join(config.drivers) if config.drivers else (config.driver or DEFAULT_DRIVER),
        "python": platform.python_version(),
        "backend": stack.backend,
        **({"deployment": stack.deployment} if stack.deployment else {}),
        # What the expectation table's deployment conditions read (harness.deployments.CONDITIONS).
        "deployment_facts": stack.facts.describe(),
        **{key: stack.versions[key] for key in ("postgres_image", "pooler_image") if key in stack.versions},
        "profile": config.profile,
        "seed": "derandomized" if config.derandomize else str(seed),
        "session_pool_size": str(config.session_pool_size),
        "transaction_pool_size": str(config.transaction_pool_size),
        "tenants": setting_text(config.tenants),
        "decoys": "on" if decoys else ("off" if stack.owns_public else "off (the harness does not write to public here)"),
        "models": (f"{code['models']} (tenant tables: {', '.join(code['tenant_tables']) or 'none'})"
                   if code["models"] else "the harness's own only"),
        "actions": ", ".join(code["actions"]) or "none",
        # The team's pooler settings as asked, and what each pooler runs with (read back after it started).
        **{key: getattr(stack, key) for key in ("pooler_requested", "pooler_settings")
           if getattr(stack, key, None)},
    }


def verify_replay(config: HarnessConfig, seed: int) -> Replay:
    """The `harness verify` command that runs exactly one cell again, with every setting that decides it."""

    def options(name: str, value: object) -> list[str] | None:
        if name == "derandomize":
            return ["--derandomize"]
        if name not in VERIFY_SETTINGS:
            return None  # given as its HARNESS_* variable
        option = SETTINGS_BY_NAME[name].option
        items = value if name in REPEATABLE else (value,)  # a repeatable option takes one item each time
        return [word for item in items for word in (option, setting_text(item))]

    def replay(spec: StrategySpec, route: str, scenario: str, profile: Profile) -> str:
        command = ["harness", "verify", "--strategy", spec.name, "--routes", route, "--scenarios", scenario]
        return replay_command(command, replay_settings(config, spec, scenario, profile.name, seed), options)
    return replay


def _not_run(stack: Stack, config: HarnessConfig, specs: list[StrategySpec],
             layouts: dict[str, str]) -> list[dict[str, str]]:
    """Routes, strategies and checks this stack cannot run, each with its reason."""
    items = [{"what": f"route {route}", "reason": stack.why_not(Missing.ROUTE, route, "the stack has no such route")}
             for route in config.routes if route not in stack.routes]
    items += [{"what": f"strategy {spec.name}",
               "reason": stack.why_not(Missing.LAYOUT, layouts[spec.spec],
                                       f"the {layouts[spec.spec]} layout cannot run here")}
              for spec in specs if spec.spec in layouts and layouts[spec.spec] not in stack.layouts]
    items += [{"what": what, "reason": reason} for what, reason in stack.missing(Missing.CHECK).items()]
    items += [{"what": f"strategy {spec.name} on driver {name}",
               "reason": f"the layer declares the drivers it runs on: {', '.join(spec.drivers or ())}"
                         + ("" if driver(name).asynchronous else f" ({name} has no asyncio support)")}
              for spec in specs for name in (config.drivers or (config.driver,)) if not spec.runs_on(name)]
    return items


class StackCells:
    """One stack with its tenant schemas, running planned cells (a context manager)."""

    def __init__(self, config: HarnessConfig, specs: list[StrategySpec], seed: int, *, gate: bool):
        self.config, self.seed, self.gate = config, seed, gate
        self.specs = {spec.spec: spec for spec in specs}
        put_first_on_sys_path(config.pythonpath)  # the team's models and actions are imported next
        self.team = load_team(config)  # a broken --models or --actions fails here, before any server starts
        self._stack: Stack | None = None
        self.tenancy: Tenancy | None = None
        self.info: StackInfo | None = None
        self.context: CellContext | None = None

    def __enter__(self) -> "StackCells":
        config = self.config
        self._stack = stack = start_stack(config)
        try:
            routes = [r for r in config.routes if r in stack.routes]
            layouts = {s.spec: s.layout(stack.url(routes[0])) for s in self.specs.values()} if routes else {}
            runnable = [s for s in self.specs if layouts.get(s) in stack.layouts]
            not_run = _not_run(stack, config, list(self.specs.values()), layouts)
            if not routes or not runnable:
                raise UsageError("Nothing can run on this stack.",
                                 checked=[f"{item['what']}: {item['reason']}" for item in not_run],
                                 fix=["give the routes' DSNs, or use the native or docker backend"])
            self.tenancy = Tenancy(stack, tenant_set(config.tenants), decoys=config.decoys,
                                   team=self.team, step_deadline=config.step_deadline)
            self.info = StackInfo(routes, runnable, not_run,
                                  environment(stack, config, self.seed, self.tenancy.decoys, self.team))
            self.tenancy.provision()
            self.tenancy.provision(HOSTILE_TENANTS)
            self.context = CellContext(stack, self.tenancy, config, self.seed, self.gate,
                                       verify_replay(config, self.seed))
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.tenancy is not None:
                self.tenancy.close()
        finally:
            if self._stack is not None:
                self._stack.close()

    def runs(self, cell: PlannedCell) -> bool:
        assert self.info is not None
        return (cell.route in self.info.routes and cell.strategy in self.info.runnable
                and self.specs[cell.strategy].runs_on(cell.driver or self.config.driver))

    def run(self, cell: PlannedCell) -> CellResult:
        assert self.context is not None
        spec = self.specs[cell.strategy].on_driver(cell.driver or self.config.driver)
        return run_scenario(self.context, spec, cell.route, cell.scenario)


def queue_order(cells: list[PlannedCell]) -> list[PlannedCell]:
    """The longest kinds of cell first, each kind in plan order."""
    return sorted(cells, key=lambda c: (c.scenario not in LONG_SCENARIOS, c.index))


def run_cells(config: HarnessConfig, specs: list[StrategySpec], cells: list[PlannedCell], seed: int, *,
              gate: bool, jobs: int, on_info: Callable[[StackInfo], None],
              on_result: Callable[[PlannedCell, CellResult], None]) -> None:
    """Run ``cells`` on ``jobs`` stacks; ``on_info`` once the first stack is up, ``on_result`` per cell."""
    if jobs <= 1:
        with StackCells(config, specs, seed, gate=gate) as here:
            assert here.info is not None
            on_info(here.info)
            for cell in cells:
                if here.runs(cell):
                    on_result(cell, here.run(cell))
        return
    _run_in_workers(config, specs, cells, seed, gate=gate, jobs=jobs, on_info=on_info, on_result=on_result)


# -- worker processes ------------------------------------------------------------------------
def _worker(config: HarnessConfig, spec_names: list[str], seed: int, gate: bool, tasks: Any, results: Any,
            parent: int) -> None:
    """A worker's whole life: a stack, then cells from the queue until it is empty or the parent is gone."""
    # Ctrl-C reaches the worker and its parent (one process group), and the parent then sends SIGTERM:
    # the first signal starts the teardown, later ones must not interrupt it.
    for signum in (signal.SIGINT, *signals.HANDLED):
        signal.signal(signum, _stop_once)
    try:
        # A spawned worker starts from a fresh interpreter: the user's code is imported with the pythonpath
        # folders first on sys.path, as in the parent.
        apply_team_environment(config)  # inherited from the parent already; a no-op then, kept for clarity
        specs = [load_strategy(name, config.pythonpath) for name in spec_names]
        with StackCells(config, specs, seed, gate=gate) as here:
            results.put(("info", here.info))
            while os.getppid() == parent:
                try:
                    cell = tasks.get(timeout=WORKER_POLL)
                except queue.Empty:
                    continue
                if cell is None:
                    break
                results.put(("cell", cell, here.run(cell) if here.runs(cell) else None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        if isinstance(exc, (HarnessError, KeyboardInterrupt)):
            results.put(("error", exc))
        else:
            results.put(("error", RuntimeError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")))
    # From here on the process only exits, and exiting flushes what it put into the queue: a signal now (a
    # timeout killing the process group) would cut a message in half in the pipe, and the parent, reading
    # it, would wait for the rest for ever.
    for ignored in (signal.SIGINT, *signals.HANDLED):
        signal.signal(ignored, signal.SIG_IGN)
    results.put(("done", os.getpid()))


def _stop_once(signum: int, frame: object) -> None:
    for ignored in (signal.SIGINT, *signals.HANDLED):
        signal.signal(ignored, signal.SIG_IGN)
    raise signals.Terminated(signum)


def _run_in_workers(config: HarnessConfig, specs: list[StrategySpec], cells: list[PlannedCell], seed: int, *,
                    gate: bool, jobs: int, on_info: Callable[[StackInfo], None],
                    on_result: Callable[[PlannedCell, CellResult], None]) -> None:
    # Fork only a parent with one thread: a thread started by an imported module (a user's strategy, say)
    # could hold a lock the forked child would wait on forever.
    can_fork = "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    context = multiprocessing.get_context("fork" if can_fork else "spawn")
    tasks, results = context.Queue(), context.Queue()
    for cell in queue_order(cells):
        tasks.put(cell)
    for _ in range(jobs):
        tasks.put(None)
    workers = [context.Process(target=_worker, name=f"harness-job-{i + 1}",
                               args=(config, [s.spec for s in specs], seed, gate, tasks, results, os.getpid()))
               for i in range(jobs)]
    for worker in workers:
        worker.start()
    completed = False
    try:
        informed = False
        running = len(workers)
        for message in _messages(results, workers):
            kind = message[0]
            if kind == "info" and not informed:
                informed = True
                on_info(message[1])
            elif kind == "cell" and message[2] is not None:
                on_result(message[1], message[2])
            elif kind == "error":
                raise message[1]
            elif kind == "done":
                running -= 1
                if not running:
                    break
        completed = True
    finally:
        _stop(workers, results, ask=not completed)
        # Cells no worker took are still in the tasks pipe (a stack that could not start, Ctrl-C): this
        # process must not wait at exit for its feeder thread to write them to nobody.
        for pipe in (tasks, results):
            pipe.cancel_join_thread()
            pipe.close()


def _messages(results: Any, workers: list[Any]) -> Iterator[tuple]:
    """Messages from the workers; an error when one died without a word (killed, out of memory)."""
    while True:
        try:
            yield results.get(timeout=WORKER_POLL)
        except queue.Empty:
            dead = [w for w in workers if not w.is_alive() and w.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(f"worker {dead[0].name} died with exit code {dead[0].exitcode} "
                                   "without reporting; its stack is torn down by the kernel (servers die "
                                   "with their parent)")


def _stop(workers: list[Any], results: Any, *, ask: bool) -> None:
    """Wait for the workers to exit; with ``ask``, first tell those still running to stop (SIGTERM: each
    tears its stack down). One grace for all of them; a worker still there after it is killed (its
    servers die with it). Messages still coming are drained: a worker whose last ones sit unread in the
    queue's pipe could not exit."""
    for worker in workers:
        if ask and worker.is_alive():
            worker.terminate()
    deadline = time.monotonic() + STOP_GRACE
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        try:
            while True:
                results.get_nowait()
        except (queue.Empty, OSError, EOFError, ValueError):
            pass
        for worker in workers:
            worker.join(0.05)
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(5)
