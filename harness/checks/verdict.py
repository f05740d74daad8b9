"""The verdict of a cell (strategy x route x scenario): pass, fail or inconclusive, with its reason."""

from __future__ import annotations

import enum
from typing import NamedTuple

from harness.checks.coverage import Coverage
from harness.checks.findings import Finding


class Verdict(enum.StrEnum):
    """pass: isolation held, with evidence the pooling was exercised (or, for a layer that keeps one pool
    per tenant, with evidence that no backend could serve two tenants: structural isolation); fail: an
    isolation finding; inconclusive: the run could not create the conditions (errors, a step stopped by the
    step deadline, no backend reuse on a shared pool); cannot_run: the layer cannot run on this route at all
    (every connection it made was refused; the reason carries the server's message). Only pass passes a
    gate."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    CANNOT_RUN = "cannot_run"


class Judgement(NamedTuple):
    """A verdict and the sentence that says why."""

    verdict: Verdict
    reason: str


POOLER_BROKE = ("does not work behind this pooler: the driver's prepared statements are not on the server the "
                "pooler gives its next transaction (every failure of the run was one)")
STRUCTURAL = "structural isolation: no backend served two tenants, and the layer keeps one pool per tenant"


def verdict(findings: list[Finding], cov: Coverage) -> Judgement:
    """fail on any gating isolation finding; cannot_run when every connection was refused; inconclusive on a
    step the step deadline stopped, on errors or without backend reuse on a shared pool; else pass (a
    tenant name the layer refused before any SQL counts as sound, and the reason names it)."""
    failing = [f for f in findings if f.isolation and f.gating]
    if failing:
        kinds = sorted({f.kind for f in failing})
        return Judgement(Verdict.FAIL, f"{len(failing)} isolation finding(s): {', '.join(kinds)}")
    if cov.connection_refused:
        where = "does not work behind this pooler" if cov.pooled else "cannot run on this route"
        return Judgement(Verdict.CANNOT_RUN, f"{where}: every connection the layer made was refused "
                                             f"({cov.connection_refused})")
    if cov.pooler_broke:
        return Judgement(Verdict.CANNOT_RUN, f"{POOLER_BROKE}: {cov.pooler_broke}")
    stuck = [f for f in findings if f.kind == "lock_wait"]
    if stuck:
        more = f" (and {len(stuck) - 1} more step(s) stopped by the step deadline)" if len(stuck) > 1 else ""
        return Judgement(Verdict.INCONCLUSIVE, stuck[0].explanation.rstrip(".") + more)
    errors = [f for f in findings if f.kind == "error" and f.gating]
    if errors:
        return Judgement(Verdict.INCONCLUSIVE, f"{len(errors)} error(s) stopped part of the run")
    if cov.steps == 0:
        return Judgement(Verdict.INCONCLUSIVE, "nothing was exercised")
    refused = _refused(cov)
    if cov.refused_tenants and cov.backends == 0:
        return Judgement(Verdict.PASS, f"every tenant name was {refused[2:]}")
    if cov.structural:
        return Judgement(Verdict.PASS, f"{STRUCTURAL}; {cov.describe()}{refused}")
    if not cov.exercised:
        return Judgement(Verdict.INCONCLUSIVE, "no backend served more than one tenant: pooling was not exercised"
                                               + refused)
    return Judgement(Verdict.PASS, cov.describe() + refused)


def _refused(cov: Coverage) -> str:
    if not cov.refused_tenants:
        return ""
    names = ", ".join(repr(t) for t in cov.refused_tenants[:4])
    more = f" and {len(cov.refused_tenants) - 4} more" if len(cov.refused_tenants) > 4 else ""
    return (f"; refused by the layer before any SQL reached the server (sound): {len(cov.refused_tenants)} "
            f"name(s), {names}{more}")
