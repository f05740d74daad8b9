"""Coverage evidence: did the run really reuse server connections across tenants?

A pass needs it. A run in which no backend served two tenants proves nothing
about pooling, so such a cell is inconclusive, never a pass.
"""

from __future__ import annotations

import dataclasses

from harness.checks.history import History, StepRecord


@dataclasses.dataclass(frozen=True)
class Coverage:
    steps: int
    backends: int
    shared_backends: int  # backends that served more than one tenant
    tenants: int
    probed_connections: int

    @property
    def exercised(self) -> bool:
        return self.shared_backends > 0

    def describe(self) -> str:
        return (f"{self.steps} steps over {self.tenants} tenants on {self.backends} backends; "
                f"{self.shared_backends} backend(s) served more than one tenant; "
                f"{self.probed_connections} pooled connection(s) probed")


class CoverageCounter:
    """Counts coverage evidence one step at a time (for histories streamed from disk)."""

    def __init__(self) -> None:
        self.steps = 0
        self.tenants: set[str] = set()
        self.tenants_by_pid: dict[int, set[str]] = {}
        self.probed = 0

    def feed(self, step: StepRecord) -> None:
        self.steps += 1
        self.tenants.add(step.tenant)
        if step.pid is not None:
            self.tenants_by_pid.setdefault(step.pid, set()).add(step.tenant)

    def result(self) -> Coverage:
        return Coverage(steps=self.steps, backends=len(self.tenants_by_pid),
                        shared_backends=sum(1 for t in self.tenants_by_pid.values() if len(t) > 1),
                        tenants=len(self.tenants), probed_connections=self.probed)


def coverage(history: History) -> Coverage:
    counter = CoverageCounter()
    for step in history.steps:
        counter.feed(step)
    counter.probed = sum(len(p.states) for p in history.probes)
    return counter.result()
