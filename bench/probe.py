"""The cost of the session-state probe (`make bench`), one JSON line per driver x route.

On one stack, the sound translate-map layer runs the named ``pool_state``
program (two clients, probed after each of their eight requests) ``CELLS``
times with the probe and ``CELLS`` times without it, interleaved. Reported:
the median cell time of each, their difference (the probe's overhead per
cell), and the time of the probe itself per probed connection (every
``Runner.probe`` call timed, divided by the connections it read; it includes
the one fresh connection per cell that pristine values are read from). The layer
runs on each driver (psycopg, psycopg2, asyncpg): the engine probe reads its pool
through that driver.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from baseline import emit, progress, stop_on_sigterm

from harness.config import resolve_config
from harness.stack import start_stack
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import load_strategy
from harness.tenancy.tenants import DEFAULT_TENANTS
from harness.workload.cell import run_cell
from harness.workload.named import NAMED_SCENARIOS
from harness.workload.runner import Runner

CELLS = 15
STRATEGY = "translate_map"
DRIVERS = ("psycopg", "psycopg2", "asyncpg")


class ProbeTimer:
    """Times every Runner.probe call and counts the connections it read."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.connections = 0
        self.calls = 0
        self._probe = Runner.probe

    def __enter__(self) -> "ProbeTimer":
        timer, original = self, self._probe

        def timed(runner, after_step):
            started = time.perf_counter()
            records = original(runner, after_step)
            timer.seconds += time.perf_counter() - started
            timer.calls += 1
            timer.connections += sum(len(r.states) for r in records)
            return records

        Runner.probe = timed
        return self

    def __exit__(self, *exc_info: object) -> None:
        Runner.probe = self._probe


def main() -> None:
    stop_on_sigterm()
    config = resolve_config({}, env={})
    base = load_strategy(STRATEGY)
    probed = NAMED_SCENARIOS["pool_state"].build(DEFAULT_TENANTS)
    unprobed = dataclasses.replace(probed, probe="")
    with start_stack(config) as stack:
        tenancy = Tenancy(stack, DEFAULT_TENANTS)
        tenancy.provision()
        try:
            for driver, route in ((d, r) for d in DRIVERS for r in stack.routes):
                spec = base.on_driver(driver)
                progress(f"probe bench: {STRATEGY} on {driver} x {route}, {CELLS} cells with and without the probe ...")
                run_cell(stack, tenancy, spec, route, "warm-up", probed)
                with_probe, without_probe = [], []
                with ProbeTimer() as timer:
                    for _ in range(CELLS):
                        with_probe.append(run_cell(stack, tenancy, spec, route, "probe", probed).seconds)
                        without_probe.append(run_cell(stack, tenancy, spec, route, "no-probe", unprobed).seconds)
                emit(figure="state_probe_overhead", driver=driver, route=route, strategy=STRATEGY, cells=CELLS,
                     cell_ms_with_probe=round(statistics.median(with_probe) * 1000, 1),
                     cell_ms_without_probe=round(statistics.median(without_probe) * 1000, 1),
                     overhead_ms_per_cell=round((statistics.median(with_probe)
                                                 - statistics.median(without_probe)) * 1000, 1),
                     probes_per_cell=timer.calls // CELLS,
                     probe_ms_per_cell=round(timer.seconds / CELLS * 1000, 1),
                     connections_per_cell=timer.connections // CELLS,
                     ms_per_probed_connection=round(timer.seconds / max(timer.connections, 1) * 1000, 2))
        finally:
            tenancy.close()


if __name__ == "__main__":
    main()
