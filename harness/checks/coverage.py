"""Coverage evidence: did the run really reuse server connections across tenants?

A pass needs it. A run in which no backend served two tenants proves nothing
about pooling, so such a cell is inconclusive, never a pass.
"""

from __future__ import annotations

import dataclasses

from harness.checks.history import History, StepRecord
from harness.checks.faults import fault_counts, is_fault_error
from harness.checks.steps import is_fault
from harness.checks.isolation import INSUFFICIENT_PRIVILEGE, UNDEFINED_TABLE
from harness.checks.refusals import (ABORTED_TRANSACTION, is_connection_refusal, is_name_refusal,
                                     is_prepared_statement_error, server_message)


FAULT_PREFIX = "fault_"


@dataclasses.dataclass(frozen=True)
class Coverage:
    steps: int
    backends: int
    shared_backends: int  # backends that served more than one tenant
    tenants: int
    probed_connections: int
    #: every tenant's sessions drew their connections from pools no other tenant's sessions used (the layer
    #: keeps one pool per tenant, so no backend can serve two tenants by construction)
    separate_pools: bool = False
    #: the server's message when every failure of the run was a refused connection (else "")
    connection_refused: str = ""
    #: tenant names the layer refused before any SQL reached the server
    refused_tenants: tuple[str, ...] = ()
    #: (fault, times injected), for a cell that injects faults
    faults: tuple[tuple[str, int], ...] = ()
    #: on a pooled route, when every failure of the run was a prepared-statement error (or the aborted
    #: transaction after one): how many, and the first one's words (else "")
    pooler_broke: str = ""
    #: the route goes through a pooler (PgBouncer): a refusal or a prepared-statement error is the pooler's
    pooled: bool = True

    @property
    def exercised(self) -> bool:
        return self.shared_backends > 0

    @property
    def structural(self) -> bool:
        """No backend served two tenants because the layer keeps one pool per tenant, not by chance."""
        return self.separate_pools and self.shared_backends == 0 and self.backends > 0

    def describe(self) -> str:
        faults = (f"; faults injected: {', '.join(f'{name.removeprefix(FAULT_PREFIX)} x{count}' for name, count in self.faults)}"
                  if self.faults else "")
        return (f"{self.steps} steps over {self.tenants} tenants on {self.backends} backends; "
                f"{self.shared_backends} backend(s) served more than one tenant; "
                f"{self.probed_connections} pooled connection(s) probed{faults}")


class CoverageCounter:
    """Counts coverage evidence one step at a time (for histories streamed from disk)."""

    def __init__(self) -> None:
        self.steps = 0
        self.tenants: set[str] = set()
        self.tenants_by_pid: dict[int, set[str]] = {}
        self.probed = 0
        self.pools: dict[str, tuple[str, ...]] = {}  # the history's pools per tenant
        self.refusals: list[str] = []  # the server's messages of refused connections (the first few)
        self.other_errors = 0  # failures that were not a refused connection
        self.refused: dict[str, None] = {}  # tenant names the layer refused, in order
        self.faults: dict[str, int] = {}  # faults injected, by kind
        self.pooled = True  # the route goes through a pooler (coverage() reads it off the history)
        self.under_faults = False  # the cell injects faults: a broken connection is a fault's doing
        self.prepared: list[str] = []  # prepared-statement errors: the first's words, then a count
        self.prepared_count = 0
        #: failures that are neither a refusal, nor the pooler's, nor a finding kind of their own (a missing
        #: relation is context_lost, judged by its style): one of these and the pooler is not all there is
        self.unexplained = 0

    def feed(self, step: StepRecord) -> None:
        self.steps += 1
        if is_fault(step.step):
            for name, count in fault_counts((step,)).items():
                self.faults[name] = self.faults.get(name, 0) + count
            return  # a fault's own error is no failure of the layer
        self.tenants.add(step.tenant)
        if step.pid is not None:
            self.tenants_by_pid.setdefault(step.pid, set()).add(step.tenant)
        if step.error is not None and is_name_refusal(step):
            self.refused.setdefault(step.tenant)
        elif step.error is not None:
            if step.waited is None and is_connection_refusal(step.error):
                if len(self.refusals) < 3:
                    self.refusals.append(server_message(step.error))
            elif self.pooled and step.waited is None and (is_prepared_statement_error(step.error)
                                                          or step.error.sqlstate == ABORTED_TRANSACTION):
                if step.error.sqlstate != ABORTED_TRANSACTION:
                    self.prepared_count += 1
                    if not self.prepared:
                        self.prepared.append(f"{step.error.type}: {step.error.message}")
            elif step.waited is not None and step.waited.pid is None:
                # Stopped with nothing on the server: a wait in Python (a pool waiting for a connection that
                # cannot be made) or in PgBouncer's queue. No sign either way that the layer can run.
                pass
            else:
                self.other_errors += 1
                self.unexplained += (step.error.sqlstate not in (UNDEFINED_TABLE, INSUFFICIENT_PRIVILEGE)
                                     and not (self.under_faults and is_fault_error(step.error)))

    def _separate_pools(self) -> bool:
        served = [t for t in self.tenants if t not in self.refused]
        if len(served) < 2 or any(not self.pools.get(t) for t in served):
            return False
        owners: dict[str, str] = {}
        for tenant in served:
            for pool in self.pools[tenant]:
                if owners.setdefault(pool, tenant) != tenant:
                    return False
        return True

    def result(self) -> Coverage:
        refused_connection = (self.refusals[0] if self.refusals and not self.other_errors
                              and not self.tenants_by_pid else "")
        return Coverage(steps=self.steps, backends=len(self.tenants_by_pid),
                        shared_backends=sum(1 for t in self.tenants_by_pid.values() if len(t) > 1),
                        tenants=len(self.tenants), probed_connections=self.probed,
                        separate_pools=self._separate_pools(), connection_refused=refused_connection,
                        refused_tenants=tuple(self.refused), faults=tuple(sorted(self.faults.items())),
                        pooler_broke=(f"{self.prepared_count} prepared-statement error(s), the first: "
                                      f"{self.prepared[0]}" if self.prepared_count and not self.unexplained else ""),
                        pooled=self.pooled)


def coverage(history: History) -> Coverage:
    counter = CoverageCounter()
    counter.pooled = history.route != "direct"
    counter.under_faults = bool(history.faults)
    for step in history.steps:
        counter.feed(step)
    counter.probed = sum(len(p.states) for p in history.probes)
    counter.pools = history.pools
    return counter.result()
