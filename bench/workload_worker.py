"""One side (baseline or current tree) of the workload figures; run by bench/workload.py.

    PYTHONPATH=<tree> python bench/workload_worker.py examples|hammer|detection

Starts a stack of its own, runs one measurement with whichever ``harness``
package PYTHONPATH puts first, and prints raw measurements as JSON lines
(bench/workload.py pairs them up into figures). It speaks both APIs: the
baseline's (``Runner._do``) and the current one (one function per step kind in
``harness.workload.actions.ACTIONS``, called with a ``Context``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness.config import resolve_config
from harness.stack import ROUTES, signals, start_stack
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import BUILTINS, load_strategy
from harness.tenancy.tenants import DEFAULT_TENANTS
from harness.workload.expectations import required_verdict
from harness.workload.generated import PROFILES, Profile, explore
from harness.workload.hammer import hammer, random_request
from harness.workload.runner import Client, Runner

try:
    from harness.workload.program import step_count
except ImportError:  # the baseline keeps it in generated.py
    from harness.workload.generated import step_count

try:  # the current tree: step implementations registered per kind, one cell set-up
    from harness.workload.actions import ACTIONS, Context
    from harness.workload.cell import CellSetup
    API = "actions"
except ImportError:  # the baseline: Runner._do
    ACTIONS = Context = CellSetup = None
    API = "runner._do"

SOUND = "translate_map_pinned"
THREADS = 8
HAMMER_REQUESTS = 2000
HAMMER_SECONDS = 60.0
JOIN_GRACE = 60.0
MAX_COUNTEREXAMPLE_STEPS = 6  # as tests/quality/test_detection_power.py


def out(**record) -> None:
    print(json.dumps({"api": API, **record}), flush=True)


def note(message: str) -> None:
    print(f"bench   [{API}] {message}", file=sys.stderr, flush=True)


def _value(verdict) -> str:
    return str(getattr(verdict, "value", verdict))


# -- examples per second -------------------------------------------------------------------------
def examples(stack, tenancy, args) -> None:
    sound = load_strategy(SOUND)
    for route in ROUTES:
        result, seen = explore(stack, tenancy, sound, route, Profile("bench", args.examples, 0, 0), seed=7)
        out(kind="examples", route=route, strategy=SOUND, examples=seen.examples, seconds=result.seconds,
            verdict=_value(result.verdict))


# -- hammer next to a bare loop --------------------------------------------------------------------
def _bare_setup(stack, tenancy, spec, route):
    """(strategy, run one step, close): the strategy set up as the hammer's cell sets it up."""
    if API == "actions":
        cell = CellSetup(stack, tenancy, spec, route, lean=True)
        models, ids = cell.runner.models, cell.runner.ids
        contexts: dict[int, Context] = {}

        def step(client, session, name):
            context = contexts.get(client.index)
            if context is None:
                context = contexts[client.index] = Context(models, ids, True, client)
            ACTIONS[name](context, session)
        return cell.strategy, step, cell.runner.close_strategy
    tenancy.reset()
    strategy = spec.create(stack.url(route))
    runner = Runner(stack, route, strategy, tenants=tenancy.tenants, lean=True)
    return strategy, lambda client, session, name: runner._do(client, session, name), strategy.close


def bare_loop(stack, tenancy, route: str, requests: int, seed: int) -> tuple[int, float]:
    """The hammer's request shapes (same generator, seeds, threads) through the same strategy,
    with no step records, pids, history file or checks: what the harness's bookkeeping costs."""
    strategy, do_step, close = _bare_setup(stack, tenancy, load_strategy(SOUND), route)
    issued = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + HAMMER_SECONDS
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        client = Client(index)
        try:
            while True:
                with lock:
                    if issued[0] >= requests or time.monotonic() >= deadline:
                        return
                    issued[0] += 1
                request = random_request(rng, tenancy.tenants)
                client.tenant = request.tenant
                try:
                    with strategy.session(request.tenant) as session:
                        client.session, client.savepoints, client.inserted = session, [], []
                        for name in request.steps:
                            try:
                                do_step(client, session, name)
                            except Exception:  # noqa: BLE001 - the runner's recovery, nothing recorded
                                session.rollback()
                                client.savepoints.clear()
                except Exception:  # noqa: BLE001 - a failed end of request: the hammer records it and goes on
                    pass
                finally:
                    client.session = None
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HAMMER_SECONDS + JOIN_GRACE)
    seconds = time.monotonic() - started
    if any(t.is_alive() for t in threads):
        raise RuntimeError("bare loop threads did not finish (a step hangs)")
    close()
    if failures:
        raise failures[0]
    return issued[0], seconds


def hammer_rounds(stack, tenancy, args) -> None:
    """Rounds of hammer and bare loop, the first of the two alternating, so drift hits both alike."""
    sound = load_strategy(SOUND)

    def run_hammer(seed: int) -> tuple[int, float, str]:
        with tempfile.TemporaryDirectory(prefix="harness-bench-hammer-") as scratch:
            result, run = hammer(stack, tenancy, sound, "transaction", threads=THREADS, max_requests=args.requests,
                                 max_seconds=HAMMER_SECONDS, seed=seed, history_path=Path(scratch) / "h.jsonl")
        return run.requests, run.seconds, _value(result.verdict)

    # Unmeasured: the first requests of a process warm caches both loops share (SQLAlchemy's ORM loading
    # paths, psycopg's adapters), and would otherwise be charged to whichever of the two runs first.
    run_hammer(2)
    bare_loop(stack, tenancy, "transaction", args.requests, 2)
    for round_ in range(args.rounds):
        seed = 3 + round_
        if round_ % 2 == 0:
            h_requests, h_seconds, verdict = run_hammer(seed)
            b_requests, b_seconds = bare_loop(stack, tenancy, "transaction", args.requests, seed)
        else:
            b_requests, b_seconds = bare_loop(stack, tenancy, "transaction", args.requests, seed)
            h_requests, h_seconds, verdict = run_hammer(seed)
        note(f"hammer round {round_ + 1}/{args.rounds}: hammer {h_requests / h_seconds:.0f} req/s, "
             f"bare loop {b_requests / b_seconds:.0f} req/s")
        out(kind="hammer", round=round_, threads=THREADS, hammer_requests=h_requests, hammer_seconds=h_seconds,
            bare_requests=b_requests, bare_seconds=b_seconds, verdict=verdict)


# -- detection ---------------------------------------------------------------------------------
def detection(stack, tenancy, args) -> None:
    cells = [(s, r) for s in BUILTINS for r in ROUTES if _value(required_verdict(s, "generated", r).verdict) == "fail"]
    for n, (strategy, route) in enumerate(cells, 1):
        for seed in args.seeds:
            result, seen = explore(stack, tenancy, load_strategy(strategy), route, PROFILES["ci"], seed=seed)
            steps = step_count(result.program) if result.program is not None else None
            found = _value(result.verdict) == "fail"
            out(kind="detection", strategy=strategy, route=route, seed=seed, verdict=_value(result.verdict),
                found=found, steps=steps, small=found and steps is not None and steps <= MAX_COUNTEREXAMPLE_STEPS,
                seconds_to_first_failure=seen.seconds_to_first_failure,
                examples_to_first_failure=seen.examples_to_first_failure, examples=seen.examples,
                seconds=result.seconds)
        note(f"detection {n}/{len(cells)} {strategy} x {route} done")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("examples", "hammer", "detection"))
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=HAMMER_REQUESTS)
    parser.add_argument("--seeds", type=lambda v: [int(s) for s in v.split(",")], default=[11])
    args = parser.parse_args()
    note(f"{args.what}: harness from {Path(sys.modules['harness'].__file__).parent.parent}")
    with signals.teardown_on_signals():
        with start_stack(resolve_config()) as stack:
            tenancy = Tenancy(stack, DEFAULT_TENANTS)
            tenancy.provision()
            try:
                {"examples": examples, "hammer": hammer_rounds, "detection": detection}[args.what](stack, tenancy, args)
            finally:
                tenancy.close()


if __name__ == "__main__":
    main()
