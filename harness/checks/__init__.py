"""Checks: pure functions of a history. No database, no clock.

``check_history`` runs them all; ``verdict`` turns findings plus coverage
evidence into pass / fail / inconclusive.
"""

from harness.checks.coverage import Coverage, coverage
from harness.checks.findings import ISOLATION_KINDS, KINDS, Finding
from harness.checks.isolation import check_context_lost, check_cross_tenant_reads, check_errors, check_unsafe_identifiers
from harness.checks.pool import check_pool_pollution
from harness.checks.verdict import Verdict, verdict
from harness.checks.writes import check_writes
from harness.workload.history import History

__all__ = ["Coverage", "Finding", "ISOLATION_KINDS", "KINDS", "Verdict", "check_history", "coverage", "verdict"]


def check_history(history: History) -> list[Finding]:
    """Every finding of a history, in the order of the steps that show it."""
    findings = [
        *check_cross_tenant_reads(history),
        *check_writes(history),
        *check_context_lost(history),
        *check_pool_pollution(history),
        *check_unsafe_identifiers(history),
        *check_errors(history),
    ]
    return sorted(findings, key=lambda f: (min(f.steps, default=0), f.kind))
