"""Coverage evidence: did the run really reuse server connections across tenants?

A pass needs it. A run in which no backend served two tenants proves nothing
about pooling, so such a cell is inconclusive, never a pass.
"""

from __future__ import annotations

import dataclasses

from harness.workload.history import History


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


def coverage(history: History) -> Coverage:
    tenants_by_pid: dict[int, set[str]] = {}
    for step in history.steps:
        if step.pid is not None:
            tenants_by_pid.setdefault(step.pid, set()).add(step.tenant)
    return Coverage(
        steps=len(history.steps),
        backends=len(tenants_by_pid),
        shared_backends=sum(1 for t in tenants_by_pid.values() if len(t) > 1),
        tenants=len({s.tenant for s in history.steps}),
        probed_connections=sum(len(p.states) for p in history.probes),
    )
