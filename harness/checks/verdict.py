"""The verdict of a cell (strategy x route x scenario): pass, fail or inconclusive, with its reason."""

from __future__ import annotations

import enum
from typing import NamedTuple

from harness.checks.coverage import Coverage
from harness.checks.findings import Finding


class Verdict(enum.StrEnum):
    """pass: isolation held, with evidence the pooling was exercised; fail: an isolation finding;
    inconclusive: the run could not create the conditions (errors, a step stopped by the step deadline,
    no backend reuse)."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Judgement(NamedTuple):
    """A verdict and the sentence that says why."""

    verdict: Verdict
    reason: str


def verdict(findings: list[Finding], cov: Coverage) -> Judgement:
    """fail on any gating isolation finding; inconclusive on a step the step deadline stopped, on errors or
    without backend reuse; else pass."""
    failing = [f for f in findings if f.isolation and f.gating]
    if failing:
        kinds = sorted({f.kind for f in failing})
        return Judgement(Verdict.FAIL, f"{len(failing)} isolation finding(s): {', '.join(kinds)}")
    stuck = [f for f in findings if f.kind == "lock_wait"]
    if stuck:
        more = f" (and {len(stuck) - 1} more step(s) stopped by the step deadline)" if len(stuck) > 1 else ""
        return Judgement(Verdict.INCONCLUSIVE, stuck[0].explanation.rstrip(".") + more)
    errors = [f for f in findings if f.kind == "error" and f.gating]
    if errors:
        return Judgement(Verdict.INCONCLUSIVE, f"{len(errors)} error(s) stopped part of the run")
    if cov.steps == 0:
        return Judgement(Verdict.INCONCLUSIVE, "nothing was exercised")
    if not cov.exercised:
        return Judgement(Verdict.INCONCLUSIVE, "no backend served more than one tenant: pooling was not exercised")
    return Judgement(Verdict.PASS, cov.describe())
