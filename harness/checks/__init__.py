"""Checks: pure functions of a history. No database, no clock.

:data:`CHECKS` is the one list of checks. :func:`check_history` runs them over
a history in memory; :func:`check_history_file` over a history streamed from a
JSON-lines file (the hammer's), in one pass for the checks that can stream and
over a re-readable view of the file for the others, so a long run is never held
in memory. :func:`verdict` turns findings plus coverage evidence into a
:class:`Judgement`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, NamedTuple

from harness.checks.coverage import Coverage, CoverageCounter, coverage
from harness.checks.faults import after_faults
from harness.checks.findings import ISOLATION_KINDS, KINDS, Finding
from harness.checks.history import History, HistoryFileSteps, StepRecord
from harness.checks.isolation import (check_context_lost, check_cross_tenant_reads, check_errors, check_team_writes,
                                      check_unsafe_identifiers)
from harness.checks.leftovers import blame_leftovers
from harness.checks.pool import check_pool_pollution
from harness.checks.refusals import check_refusals
from harness.checks.verdict import Judgement, Verdict, verdict
from harness.checks.waits import check_lock_waits
from harness.checks.writes import check_writes

__all__ = ["CHECKS", "Check", "Coverage", "Finding", "ISOLATION_KINDS", "Judgement", "KINDS", "Verdict",
           "check_history", "check_history_file", "coverage", "verdict"]

KEEP_FLAGGED_STEPS = 200  # steps of a streamed history kept as evidence
CHUNK = 2000  # steps a streaming check sees at once


class Check(NamedTuple):
    name: str
    run: Callable[[History], list[Finding]]
    #: True when the findings over a history are the findings over its parts: the check looks at one
    #: step at a time and needs neither the probes nor the final state, so it can run chunk by chunk.
    streams: bool


CHECKS: tuple[Check, ...] = (
    Check("cross_tenant_read", check_cross_tenant_reads, streams=True),
    Check("writes", check_writes, streams=False),  # follows every client's pending writes to the end
    Check("team_writes", check_team_writes, streams=True),  # rows of the team's tables, as observed
    Check("context_lost", check_context_lost, streams=True),
    Check("pool_pollution", check_pool_pollution, streams=False),  # reads the probes
    Check("unsafe_identifier", check_unsafe_identifiers, streams=True),
    Check("error", check_errors, streams=True),
    Check("lock_wait", check_lock_waits, streams=True),  # steps the step deadline stopped
    Check("refused", check_refusals, streams=True),  # tenant names the layer refused before any SQL
)


def _in_step_order(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (min(f.steps, default=0), f.kind))


def check_history(history: History) -> list[Finding]:
    """Every finding of a history, in the order of the steps that show it (worded with the fault before it,
    and naming the step whose leftover session state a misread inherited)."""
    findings = _in_step_order([finding for check in CHECKS for finding in check.run(history)])
    findings, _ = blame_leftovers(history, findings)
    return after_faults(findings, history.steps) if history.faults else findings


def check_history_file(history: History, path: Path) -> tuple[list[Finding], list[StepRecord], Coverage]:
    """Check a JSON-lines history; ``history`` holds everything but the steps (probes, final state).

    Returns the findings, the steps the streamed findings point at (at most
    ``KEEP_FLAGGED_STEPS``, plus those a misread inherited its state from) and the coverage evidence.
    """
    steps = HistoryFileSteps(path)
    counter = CoverageCounter()
    counter.pooled = history.route != "direct"
    counter.under_faults = bool(history.faults)
    findings: list[Finding] = []
    flagged: list[StepRecord] = []
    streaming = [c for c in CHECKS if c.streams]

    def check_chunk(chunk: list[StepRecord]) -> None:
        part = dataclasses.replace(history, steps=chunk, probes=[], final_state=None)
        found = [finding for check in streaming for finding in check.run(part)]
        findings.extend(found)
        seqs = {s for f in found for s in f.steps}
        # The file is in step order per client only (threads write in batches): keep the earliest steps.
        flagged.extend(step for step in chunk if step.seq in seqs)
        flagged.sort(key=lambda step: step.seq)
        del flagged[KEEP_FLAGGED_STEPS:]

    chunk: list[StepRecord] = []
    for step in steps:
        counter.feed(step)
        chunk.append(step)
        if len(chunk) >= CHUNK:
            check_chunk(chunk)
            chunk = []
    if chunk:
        check_chunk(chunk)
    whole = dataclasses.replace(history, steps=steps)
    findings.extend(finding for check in CHECKS if not check.streams for finding in check.run(whole))
    counter.probed = sum(len(p.states) for p in history.probes)
    counter.pools = history.pools
    # The hammer cannot shrink: its findings name the step whose leftover state a misread inherited.
    blamed, named = blame_leftovers(whole, _in_step_order(findings))
    kept = {step.seq for step in flagged}
    flagged.extend(step for seq, step in sorted(named.items()) if seq not in kept)
    flagged.sort(key=lambda step: step.seq)
    return blamed, flagged, counter.result()
