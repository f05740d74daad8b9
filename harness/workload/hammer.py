"""Hammer mode: T worker threads serving random requests for random tenants, for real.

Like a web server's thread pool: one strategy instance shared by every thread,
no coordinator, real concurrency. Bounded by a request count and a duration,
both required. The history goes to disk as JSON lines while it is recorded and
is checked by streaming it back, so a long run does not hold it in memory.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from pathlib import Path

from sqlalchemy import event

from harness.checks import check_history_file, verdict
from harness.checks.history import StepRecord, step_to_json
from harness.checks.steps import drawable
from harness.team import steps as team_steps
from harness.errors import UsageError
from harness.stack import Stack
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import StrategySpec
from harness.workload.cell import CellResult, CellSetup
from harness.workload.program import Request
from harness.workload.runner import Client

STUCK_GRACE = 60.0  # seconds past the duration bound (and two step deadlines) before a thread is given up on


@dataclasses.dataclass
class HammerRun:
    """Figures of one hammer run, next to its cell result."""

    threads: int
    requests: int
    seconds: float
    checkouts: int
    history_path: Path

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class _HistoryFile:
    """The history as JSON lines; each thread buffers its lines and writes them a batch at a time."""

    BATCH = 64

    def __init__(self, path: Path):
        self.path = path
        self.handle = path.open("w", encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, buffer: list[str], record: StepRecord) -> None:
        buffer.append(json.dumps(step_to_json(record), ensure_ascii=False))
        if len(buffer) >= self.BATCH:
            self.flush(buffer)

    def flush(self, buffer: list[str]) -> None:
        if buffer:
            with self.lock:
                self.handle.write("\n".join(buffer) + "\n")
            buffer.clear()

    def close(self) -> None:
        self.handle.close()


FAULT_RATE = 0.1  # share of the hammer's requests that meet a fault, when it injects them


def random_request(rng: random.Random, tenants: tuple[str, ...], steps: tuple[str, ...] | None = None,
                   faults: tuple[str, ...] = ()) -> Request:
    """A web worker's request: a tenant and 1 to 6 steps the hammer may draw (``steps``: for the layout);
    with ``faults``, one request in ten also meets one of them, at a random point."""
    steps = steps or drawable(hammer=True)
    drawn = [rng.choice(steps) for _ in range(rng.randint(1, 6))]
    if faults and rng.random() < FAULT_RATE:
        drawn.insert(rng.randint(0, len(drawn)), rng.choice(faults))
    return Request(rng.choice(tenants), tuple(drawn))


def hammer(stack: Stack, tenancy: Tenancy, spec: StrategySpec, route: str, *, threads: int = 8,
           max_requests: int | None, max_seconds: float | None, seed: int = 0,
           history_path: Path, scenario: str = "hammer",
           faults: tuple[str, ...] = ()) -> tuple[CellResult, HammerRun]:
    """Run the hammer; check the recorded history with the same checks as every cell. With ``faults``, a
    tenth of the requests meet one of them."""
    if not max_requests or not max_seconds or max_requests <= 0 or max_seconds <= 0:
        raise UsageError("The hammer needs both a request count and a duration.",
                         fix=["give max_requests and max_seconds, both above zero"])
    if threads < 1:
        raise UsageError(f"The hammer needs at least one thread, not {threads}.")
    history_path.parent.mkdir(parents=True, exist_ok=True)
    out = _HistoryFile(history_path)  # first: a folder it cannot write to leaves no strategy open
    try:
        cell = CellSetup(stack, tenancy, spec, route, lean=True)
    except BaseException:
        out.close()
        raise
    runner, strategy = cell.runner, cell.strategy
    steps = team_steps.weighted(drawable(hammer=True, layout=strategy.layout),
                                drawable(hammer=True, layout=strategy.layout, team=team_steps.step_names(cell.team)))
    checkouts = [0]
    issued = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    failures: list[BaseException] = []
    buffers: dict[int, list[str]] = {}  # each thread's lines not yet written, kept for a thread given up on
    thread_pools: list[dict[str, tuple[str, ...]]] = []  # the pools seen by an async layer's per-thread instances
    thread_probes: list = []  # their engines' probes, read as each thread ends (their engines close with them)

    def count_checkouts(engine) -> None:
        event.listen(getattr(engine, "sync_engine", engine), "checkout",
                     lambda *args: checkouts.__setitem__(0, checkouts[0] + 1))

    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        # An async layer gets an event loop per thread (several loops on threads), and so an instance per thread.
        mine = cell.runner_for_thread() if strategy.is_async else runner
        if mine is not runner and mine.strategy.engine is not None:
            count_checkouts(mine.strategy.engine)
        client = Client(index, loop=mine.loop() if strategy.is_async else None)
        lines = buffers[index] = []
        try:
            while True:
                with lock:
                    if issued[0] >= max_requests or time.monotonic() >= deadline:
                        break
                    issued[0] += 1
                    number = issued[0]
                request = random_request(rng, tenancy.tenants, steps, faults)
                for action in request.actions():
                    out.write(lines, mine.act(client, number, request, action))
            out.flush(lines)
        except BaseException as exc:  # noqa: BLE001 - reported after the run: no verdict on a cut history
            failures.append(exc)
        finally:
            mine._end(client)
            if mine is not runner:
                thread_pools.append(mine.pools_seen())
                # The cell names the driver its sessions ran on: a layer with no engine of its own (one per
                # tenant) shows it only on the runners that opened them, and on an async layer those are
                # these per-thread ones (else the cell says "none seen" and the asked-driver check is blind).
                with lock:
                    runner.driver_used = runner.driver_used or mine.driver_used
                try:
                    # What this thread's own pool keeps, read before its engine closes with it (PgBouncer's
                    # servers are read once, after every thread has ended).
                    thread_probes.extend(mine.probe(after_step=0, bouncer=False))
                finally:
                    mine.close_strategy()

    if strategy.engine is not None:
        count_checkouts(strategy.engine)
    started = time.monotonic()
    workers = [threading.Thread(target=worker, args=(i,), name=f"hammer-{i}", daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    # The step deadline stops a blocked step (cancel, then terminate a deadline later); a thread still
    # running after that and the grace hangs where the server cannot help (Python, PgBouncer's queue).
    grace = max_seconds + STUCK_GRACE + (2 * runner.watchdog.deadline if runner.watchdog else 0)
    for thread in workers:
        thread.join(max(0.0, started + grace - time.monotonic()))
    stuck = [t.name for t in workers if t.is_alive()]
    seconds = time.monotonic() - started
    if stuck:
        if runner.watchdog is None:
            runner.close_strategy()
            out.close()
            raise RuntimeError(f"hammer threads {', '.join(stuck)} did not finish within {grace:.0f}s "
                               "(a step hangs: a lock wait or a pool exhausted); no verdict is given for this cell")
        # Given up on: their buffered steps and the step each is stuck in go into the history, the rest is checked.
        for index, thread in enumerate(workers):
            if thread.is_alive():
                out.flush(buffers[index])
        out.flush([json.dumps(step_to_json(record), ensure_ascii=False) for record in runner.watchdog.in_flight(
            f"the hammer gave up on its thread after {grace:.0f} s")])
    try:
        probes = runner.probe(after_step=0) + thread_probes
    finally:
        runner.close_strategy()
        out.close()
    if failures:
        raise failures[0]

    pools = runner.pools_seen()
    for seen in thread_pools:
        pools = runner.pools_seen({tenant: pools.get(tenant, ()) + seen.get(tenant, ()) for tenant in {*pools, *seen}})
    history = cell.history(probes=probes, pools=pools, faults=faults, messages=runner.messages.kept(),
                           messages_not_kept=runner.messages.not_kept)
    cell.read_back(history)
    findings, flagged, cov = check_history_file(history, history_path)
    history.steps = flagged
    run = HammerRun(threads, issued[0], seconds, checkouts[0], history_path)
    return cell.result(scenario, history, findings, cov, verdict(findings, cov), seconds), run
