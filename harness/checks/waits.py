"""The lock_wait check: steps that outlived the step deadline, and what they waited on.

The runner's watchdog (:mod:`harness.workload.deadline`) read the server when a
step passed its deadline and stopped the step; the step's record carries what
it saw (:class:`~harness.checks.history.Wait`). This check only words it.
"""

from __future__ import annotations

from harness.checks.findings import Finding
from harness.checks.history import History, Holder, StepRecord, Wait

QUERY_SHOWN = 80  # characters of a statement an explanation quotes


def _statement(query: str) -> str:
    query = " ".join(query.split())
    return query if len(query) <= QUERY_SHOWN else query[:QUERY_SHOWN - 3] + "..."


def _holder(holder: Holder) -> str:
    who = (f"client {holder.client}, tenant {holder.tenant!r}" if holder.client is not None
           else "no step of the run ran on it" + (f"; application {holder.application_name!r}"
                                                  if holder.application_name else ""))
    doing = f"; {holder.state}: {_statement(holder.query)}" if holder.state or holder.query else ""
    return f"backend {holder.pid} ({who}{doing})"


def _why(wait: Wait) -> str:
    """What the holders' state says about the lock (facts the server showed, not a guess at the code)."""
    states = {h.state for h in wait.holders}
    if "idle" in states:
        return ("its holder is idle outside any transaction: a session-level lock, which only that connection "
                "releases")
    if "idle in transaction" in states:
        return "its holder is idle in an open transaction, waiting for its client's next statement"
    return ""


def explain_wait(step: StepRecord, wait: Wait) -> str:
    """One sentence: which step waited, on what, held by whom, and what the harness did."""
    head = f"step {step.seq} waited more than {wait.deadline:g} s"
    mine = (f"client {step.client}'s {step.step} for tenant {step.tenant!r}"
            + (f" on backend {wait.pid}" if wait.pid is not None else ""))
    if wait.lock or wait.holders:
        held = ", ".join(_holder(h) for h in wait.holders) or "a backend the server did not name"
        what = f"{head} on {wait.lock or wait.event or 'a lock'} held by {held}"
        why = _why(wait)
        what += f": {mine}" + (f"; {why}" if why else "")
    elif wait.pid is not None:
        what = (f"{head}: {mine} ran \"{_statement(wait.query)}\" for {wait.seconds:.1f} s"
                + (f" (waiting on {wait.event})" if wait.event else ""))
    else:
        what = (f"{head}: {mine}; no backend of the code under test waited or ran a statement for it "
                "(a hang in Python, or a wait in PgBouncer's queue for a server connection)")
    return what + (f"; {wait.stopped}" if wait.stopped else "") + "."


def check_lock_waits(history: History) -> list[Finding]:
    """A step the watchdog stopped: it waited past the deadline. Not an isolation finding, but a cell with
    one cannot pass: part of its program could not run."""
    return [Finding("lock_wait", explain_wait(step, step.waited), (step.seq,), step.tenant)
            for step in history.steps if step.waited is not None]
