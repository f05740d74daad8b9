"""Refusals: a layer that declines to serve, before or instead of running any SQL.

Two kinds, told apart from the history alone:

- a **name refusal**: ``session(tenant)``, or entering the context manager it
  returned, raised an exception that did not come from the database driver
  (the runner marks such an ``open`` step with :data:`NAME_REFUSED`). No
  statement of that session failed on the server, the request never started,
  and nothing was read or written: refusing a name it cannot serve safely is
  sound, and is shown as a ``refused`` finding, which does not gate.
- a **connection refusal**: the server or the pooler refused the connection
  itself (e.g. PgBouncer 1.18 answering ``FATAL: unsupported startup parameter:
  options`` to a layer passing libpq ``options``). When every failure of a run
  is one and no step ever reached a backend, the layer cannot run on that route.
"""

from __future__ import annotations

from harness.checks.findings import Finding
from harness.checks.history import ErrorSeen, History, StepRecord

#: the note the runner gives an ``open`` step whose layer refused the tenant before any SQL reached the server
NAME_REFUSED = "refused by the layer before any SQL reached the server"
#: SQLSTATE classes of a refused connection: connection exception, invalid authorization, insufficient
#: resources (too many connections), operator intervention (shutting down)
_REFUSAL_CLASSES = ("08", "28", "53", "57")


def is_name_refusal(step: StepRecord) -> bool:
    """An ``open`` step whose layer refused the tenant cleanly (see the module's docstring)."""
    return step.step == "open" and step.error is not None and step.note == NAME_REFUSED


def is_connection_refusal(error: ErrorSeen) -> bool:
    """A driver error that says the connection itself was refused (not a failed statement)."""
    if error.type not in ("OperationalError", "ConnectionFailure", "InterfaceError"):
        return False
    if error.sqlstate is not None:
        return error.sqlstate[:2] in _REFUSAL_CLASSES
    message = error.message.lower()
    return "connection" in message or "fatal" in message


def server_message(error: ErrorSeen) -> str:
    """What the server said, without the driver's "connection to server at ... failed:" preamble."""
    message = error.message
    at = message.find("FATAL:")
    return " ".join(message[at:].split()) if at >= 0 else message


def check_refusals(history: History) -> list[Finding]:
    """A ``refused`` finding per tenant name the layer refused cleanly; never gating."""
    findings = []
    for step in history.steps:
        if step.error is not None and is_name_refusal(step):
            findings.append(Finding(
                "refused", f"step {step.seq} (client {step.client}): the layer refused tenant {step.tenant!r} "
                           f"before any SQL reached the server ({step.error.type}: {step.error.message}); "
                           "refusing a name it cannot serve is sound",
                (step.seq,), step.tenant, gating=False))
    return findings
