"""The verdict of a cell (strategy x route x scenario): pass, fail or inconclusive."""

from __future__ import annotations

import dataclasses

from harness.checks.coverage import Coverage
from harness.checks.findings import Finding

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
VERDICTS = (PASS, FAIL, INCONCLUSIVE)


@dataclasses.dataclass(frozen=True)
class Verdict:
    value: str
    reason: str


def verdict(findings: list[Finding], cov: Coverage) -> Verdict:
    """fail on any gating isolation finding; inconclusive on errors or without backend reuse; else pass."""
    failing = [f for f in findings if f.isolation and f.gating]
    if failing:
        kinds = sorted({f.kind for f in failing})
        return Verdict(FAIL, f"{len(failing)} isolation finding(s): {', '.join(kinds)}")
    errors = [f for f in findings if f.kind == "error" and f.gating]
    if errors:
        return Verdict(INCONCLUSIVE, f"{len(errors)} error(s) stopped part of the run")
    if cov.steps == 0:
        return Verdict(INCONCLUSIVE, "nothing was exercised")
    if not cov.exercised:
        return Verdict(INCONCLUSIVE, "no backend served more than one tenant: pooling was not exercised")
    return Verdict(PASS, cov.describe())
