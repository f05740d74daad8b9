"""Time to first failure under faults (`make bench`), one JSON line per route.

The held-connection layer (tests/fault_strategies.py: one connection held for the request, search_path
set once on it) is sound on direct and session without faults; under faults a terminated backend or a
killed PgBouncer makes it reconnect in the default search_path. For each of ``SEEDS`` seeds the faults
scenario's search (the ci profile) runs until its first failing example; reported: the median seconds
and examples to that first failure, how many seeds found it, and the faults injected per example.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from baseline import emit, progress, stop_on_sigterm

from harness.config import resolve_config
from harness.stack import start_stack
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import load_strategy
from harness.tenancy.tenants import DEFAULT_TENANTS
from harness.workload.faults import injectable
from harness.workload.generated import PROFILES, explore

SEEDS = 10
LAYER = "fault_strategies:HeldConnection"
ROUTES = ("direct", "session")


def main() -> None:
    stop_on_sigterm()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # fault_strategies
    config = resolve_config({"scenarios": "faults"}, env={})
    spec = load_strategy(LAYER)
    with start_stack(config) as stack:
        tenancy = Tenancy(stack, DEFAULT_TENANTS)
        tenancy.provision()
        try:
            for route in ROUTES:
                faults = injectable(stack, route)
                progress(f"faults bench: {LAYER} x {route}, {SEEDS} seeds, {len(faults)} fault kinds ...")
                seconds, examples, injected, runs = [], [], 0, 0
                for seed in range(1, SEEDS + 1):
                    _, seen = explore(stack, tenancy, spec, route, PROFILES["ci"], seed=seed, scenario="faults",
                                      faults=faults)
                    if seen.seconds_to_first_failure is not None:
                        seconds.append(seen.seconds_to_first_failure)
                        examples.append(seen.examples_to_first_failure)
                    injected += sum(seen.faults.values())
                    runs += seen.examples
                emit(figure="time_to_first_failure_under_faults", route=route, layer=LAYER, seeds=SEEDS,
                     found=len(seconds), median_seconds=round(statistics.median(seconds), 2) if seconds else None,
                     median_examples=statistics.median(examples) if examples else None,
                     max_seconds=round(max(seconds), 2) if seconds else None,
                     faults_per_example=round(injected / max(runs, 1), 2))
        finally:
            tenancy.close()


if __name__ == "__main__":
    main()
