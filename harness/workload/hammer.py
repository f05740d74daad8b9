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

from harness.checks import Coverage, Finding, verdict
from harness.checks.coverage import CoverageCounter
from harness.checks.isolation import (check_context_lost, check_cross_tenant_reads, check_errors,
                                      check_unsafe_identifiers)
from harness.checks.pool import check_pool_pollution
from harness.checks.writes import WriteLedger, check_writes
from harness.errors import UsageError
from harness.stack import Stack
from harness.tenancy.provisioning import SEED_ROWS, SEED_SMALL, Tenancy
from harness.tenancy.strategy import StrategySpec
from harness.workload.cell import CellResult
from harness.workload.history import History, StepRecord, step_from_json, step_to_json
from harness.workload.program import CONTROL_STEPS, DATA_STEPS, Request
from harness.workload.runner import Client, Runner

# The scheduler pass walks every tenant: too heavy for a request of a web worker.
HAMMER_STEPS = tuple(DATA_STEPS) + tuple(s for s in CONTROL_STEPS if s != "scheduler_pass")
KEEP_FLAGGED_STEPS = 200
CHUNK = 2000


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
    def __init__(self, path: Path):
        self.path = path
        self.handle = path.open("w", encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, record: StepRecord) -> None:
        line = json.dumps(step_to_json(record), ensure_ascii=False)
        with self.lock:
            self.handle.write(line + "\n")

    def close(self) -> None:
        self.handle.close()


def random_request(rng: random.Random, tenants: tuple[str, ...]) -> Request:
    return Request(rng.choice(tenants), tuple(rng.choice(HAMMER_STEPS) for _ in range(rng.randint(1, 6))))


def hammer(stack: Stack, tenancy: Tenancy, spec: StrategySpec, route: str, *, threads: int = 8,
           max_requests: int | None, max_seconds: float | None, seed: int = 0,
           history_path: Path, scenario: str = "hammer") -> tuple[CellResult, HammerRun]:
    """Run the hammer; check the recorded history with the same checks as every cell."""
    if not max_requests or not max_seconds or max_requests <= 0 or max_seconds <= 0:
        raise UsageError("The hammer needs both a request count and a duration.",
                         fix=["give max_requests and max_seconds, both above zero"])
    if threads < 1:
        raise UsageError(f"The hammer needs at least one thread, not {threads}.")
    target = tenancy.for_layout(spec.layout(stack.url(route)))
    target.reset()
    strategy = spec.create(target.url(route))
    if target is not tenancy:
        target.prepare(strategy)
    runner = Runner(stack, route, strategy, tenants=tenancy.tenants, lean=True,
                    models=target.models if target is not tenancy else None, url=target.url(route))
    history_path.parent.mkdir(parents=True, exist_ok=True)
    out = _HistoryFile(history_path)
    checkouts = [0]
    if strategy.engine is not None:
        event.listen(getattr(strategy.engine, "sync_engine", strategy.engine), "checkout",
                     lambda *args: checkouts.__setitem__(0, checkouts[0] + 1))
    issued = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        mine = runner
        if strategy.is_async:
            # An async layer gets an event loop per thread (several loops on threads), and so
            # an instance per thread: an AsyncEngine's connections belong to the loop that made them.
            mine = Runner(stack, route, spec.create(target.url(route)), tenants=tenancy.tenants, lean=True,
                          models=runner.models, url=runner.url)
            mine.ids, mine.seq = runner.ids, runner.seq
        client = Client(index, loop=mine.loop() if strategy.is_async else None)
        try:
            while True:
                with lock:
                    if issued[0] >= max_requests or time.monotonic() >= deadline:
                        return
                    issued[0] += 1
                    number = issued[0]
                request = random_request(rng, tenancy.tenants)
                for action in request.actions():
                    out.write(mine.act(client, number, request, action))
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            failures.append(exc)
        finally:
            mine._end(client)
            if mine is not runner:
                mine.close_strategy()

    started = time.monotonic()
    workers = [threading.Thread(target=worker, args=(i,), name=f"hammer-{i}", daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(max_seconds + 60)
    stuck = [t.name for t in workers if t.is_alive()]
    seconds = time.monotonic() - started
    if stuck:
        runner.close_strategy()
        out.close()
        raise RuntimeError(f"hammer threads {', '.join(stuck)} did not finish within {max_seconds + 60:.0f}s "
                           "(a step hangs: a lock wait or a pool exhausted); no verdict is given for this cell")
    try:
        probes = runner.probe(after_step=0)
    finally:
        runner.close_strategy()
        out.close()
    if failures:
        raise failures[0]

    gating = ("orm", "control") + tuple(f"raw_{s}" for s in strategy.raw_sql)
    history = History(strategy=spec.name, route=route, tenants=tenancy.tenants, schemas=tuple(target.schemas),
                      seed_ids={"product": tuple(range(1, SEED_ROWS + 1)),
                                "marketplace_task": tuple(range(1, SEED_SMALL + 1))},
                      gating_styles=gating, probes=probes, layout=strategy.layout)
    history.final_state = target.snapshot()
    findings, flagged, cov = check_history_file(history, history_path)
    history.steps = flagged
    run = HammerRun(threads, issued[0], seconds, checkouts[0], history_path)
    result = CellResult(spec.name, route, scenario, history, findings, cov, verdict(findings, cov), seconds)
    return result, run


def check_history_file(history: History, path: Path) -> tuple[list[Finding], list[StepRecord], Coverage]:
    """Stream a JSON-lines history through the checks; keep only the steps findings point at."""
    ledger = WriteLedger()
    counter = CoverageCounter()
    findings: list[Finding] = []
    flagged: list[StepRecord] = []

    def check_chunk(chunk: list[StepRecord]) -> None:
        part = dataclasses.replace(history, steps=chunk, probes=[], final_state=None)
        found = [*check_cross_tenant_reads(part), *check_context_lost(part), *check_unsafe_identifiers(part),
                 *check_errors(part)]
        findings.extend(found)
        seqs = {s for f in found for s in f.steps}
        flagged.extend(step for step in chunk if step.seq in seqs and len(flagged) < KEEP_FLAGGED_STEPS)

    chunk: list[StepRecord] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            step = step_from_json(json.loads(line))
            ledger.feed(step)
            counter.feed(step)
            chunk.append(step)
            if len(chunk) >= CHUNK:
                check_chunk(chunk)
                chunk = []
    if chunk:
        check_chunk(chunk)
    findings.extend(check_writes(dataclasses.replace(history, steps=[]), ledger))
    findings.extend(check_pool_pollution(history))
    counter.probed = sum(len(p.states) for p in history.probes)
    findings.sort(key=lambda f: (min(f.steps, default=0), f.kind))
    return findings, flagged, counter.result()
