"""A finding: one violation, its kind, the steps that show it, and a sentence that explains it."""

from __future__ import annotations

import dataclasses

ISOLATION_KINDS = ("cross_tenant_read", "misplaced_write", "lost_write", "context_lost", "pool_pollution",
                   "unsafe_identifier")
#: not about isolation, kept apart: ``error`` (any other failure), ``lock_wait`` (a step that outlived the
#: step deadline, stopped by the harness; its explanation names what it waited on and who held it) and
#: ``refused`` (the layer refused a tenant name before any SQL reached the server: sound, never gating) and
#: ``indeterminate`` (a commit raised under a fault: its writes may be there or not; never gating)
KINDS = ISOLATION_KINDS + ("error", "lock_wait", "refused", "indeterminate")


@dataclasses.dataclass(frozen=True)
class Finding:
    kind: str
    explanation: str
    steps: tuple[int, ...] = ()
    tenant: str | None = None
    # False when every step showing it uses a raw SQL style the strategy does not rely on:
    # measured and shown, but it does not gate the verdict.
    gating: bool = True
    #: the step whose leftover session state caused it (a step of another request, or earlier in the same
    #: one), when the history shows it (:mod:`harness.checks.leftovers`); its explanation then names it too
    left_by: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}")

    @property
    def isolation(self) -> bool:
        return self.kind in ISOLATION_KINDS
