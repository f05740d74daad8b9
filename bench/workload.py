"""Workload figures, one JSON line each (`make bench`).

- generated-program examples per second, per route (a sound cell, so every example runs);
- hammer requests/s through the transaction route next to a bare loop running the same
  request shapes without the harness's bookkeeping, in the same run (goal: ratio >= 0.9);
- seconds and examples to the first failure for each failing built-in cell (goal: median < 2 s).
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from harness.config import resolve_config
from harness.stack import ROUTES, start_stack
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import BUILTINS, load_strategy
from harness.tenancy.tenants import DEFAULT_TENANTS
from harness.workload.expectations import required_verdict
from harness.workload.generated import PROFILES, Profile, explore
from harness.workload.hammer import hammer, random_request
from harness.workload.runner import Client, Runner

THREADS = 8
HAMMER_REQUESTS = 2000
HAMMER_SECONDS = 60.0
SOUND = "translate_map_pinned"


def emit(**figure) -> None:
    print(json.dumps(figure), flush=True)


def bare_loop(stack, tenancy, route: str, requests: int, seed: int) -> float:
    """The hammer's request shapes through the same strategy, with no records, pids or history."""
    tenancy.reset()
    strategy = load_strategy(SOUND).create(stack.url(route))
    runner = Runner(stack, route, strategy, tenants=tenancy.tenants, lean=True)
    issued = [0]
    lock = threading.Lock()

    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        client = Client(index)
        while True:
            with lock:
                if issued[0] >= requests:
                    return
                issued[0] += 1
            request = random_request(rng, tenancy.tenants)
            client.tenant = request.tenant
            with strategy.session(request.tenant) as session:
                client.session, client.savepoints, client.inserted = session, [], []
                for step in request.steps:
                    try:
                        runner._do(client, session, step)
                    except Exception:  # noqa: BLE001 - the same recovery as the runner, nothing recorded
                        session.rollback()
                        client.savepoints.clear()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    strategy.close()
    return issued[0] / seconds


def main() -> None:
    with start_stack(resolve_config()) as stack:
        tenancy = Tenancy(stack, DEFAULT_TENANTS)
        tenancy.provision()
        sound = load_strategy(SOUND)
        for route in ROUTES:
            result, seen = explore(stack, tenancy, sound, route, Profile("bench", 60, 0, 0), seed=7)
            emit(figure="generated_examples_per_second", route=route, strategy=SOUND, examples=seen.examples,
                 per_second=round(seen.examples / result.seconds, 2))
        with tempfile.TemporaryDirectory() as scratch:
            _, run = hammer(stack, tenancy, sound, "transaction", threads=THREADS, max_requests=HAMMER_REQUESTS,
                            max_seconds=HAMMER_SECONDS, seed=3, history_path=Path(scratch) / "h.jsonl")
        bare = bare_loop(stack, tenancy, "transaction", HAMMER_REQUESTS, seed=3)
        emit(figure="hammer_requests_per_second", route="transaction", threads=THREADS, requests=run.requests,
             hammer=round(run.requests_per_second, 1), bare_loop=round(bare, 1),
             ratio=round(run.requests_per_second / bare, 3))
        firsts = []
        for strategy in BUILTINS:
            for route in ROUTES:
                if required_verdict(strategy, "generated", route).verdict != "fail":
                    continue
                _, seen = explore(stack, tenancy, load_strategy(strategy), route, PROFILES["ci"], seed=11)
                firsts.append(seen.seconds_to_first_failure or float("inf"))
                emit(figure="first_failure", strategy=strategy, route=route,
                     seconds=round(seen.seconds_to_first_failure or -1, 3), examples=seen.examples_to_first_failure)
        emit(figure="first_failure_median", cells=len(firsts), median_s=round(statistics.median(firsts), 3))


if __name__ == "__main__":
    main()
