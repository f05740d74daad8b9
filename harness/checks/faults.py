"""Histories with faults: what a fault may cause, and what it must never cause.

In Jepsen's terms:

- a request whose connection broke under it may **fail**: an error of the
  connection-loss or cancel family after a fault is the fault's consequence,
  not an ``error`` finding (:func:`is_fault_error`);
- a commit that raised with such an error is **indeterminate**: its writes may
  be there or not, never in another tenant's data (the write checks keep
  looking for them anywhere else; :func:`check_indeterminate` lists them);
- an **acknowledged** commit must be there: ``lost_write`` as always;
- after a reconnect a request must go on with its own tenant or fail: a read
  of another tenant's rows, of ``public``'s decoys or a "relation does not
  exist" after a fault are isolation findings as always, and
  :func:`after_faults` words them with the fault that preceded them.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from harness.checks.findings import Finding
from harness.checks.history import ErrorSeen, History, StepRecord
from harness.checks.steps import is_fault

#: fault -> (what it breaks, what a sound layer does after it); the report's legend of fault kinds
FAULT_LEGEND: dict[str, tuple[str, str]] = {
    "fault_terminate_backend": ("pg_terminate_backend() of the backend serving the client, inside its transaction",
                                "the request fails, or goes on with its own tenant on a new connection"),
    "fault_idle_timeout": ("idle_in_transaction_session_timeout fires: the server ends the client's session",
                           "as for a terminated backend"),
    "fault_statement_timeout": ("statement_timeout fires on the client's statement (57014), its transaction aborts",
                                "rolls back; the tenant is still bound after the rollback"),
    "fault_pgbouncer_reconnect": ("PgBouncer RECONNECT: every server connection is closed once it is released",
                                  "state a layer put on a server connection is gone: it binds the tenant again"),
    "fault_pgbouncer_kill": ("PgBouncer KILL, then RESUME: every client and server connection of the database "
                             "is dropped at once", "as for a terminated backend"),
    "fault_pgbouncer_pause": ("PgBouncer PAUSE, then RESUME: idle server connections are closed, new queries wait",
                              "carries on"),
    "fault_pgbouncer_reload": ("PgBouncer RELOAD: the configuration is read again", "carries on"),
    "fault_server_lifetime": ("server_lifetime = 0 for the rest of the cell: every server connection is used once",
                              "binds the tenant on every new server connection"),
    "fault_pgbouncer_restart": ("PgBouncer stopped and started again on the same port",
                                "as for a terminated backend, for every client"),
    "fault_proxy_cut": ("every connection between PgBouncer and PostgreSQL is cut (the fault proxy resets it)",
                        "as for a terminated backend"),
    "fault_proxy_delay": ("every packet between PgBouncer and PostgreSQL is held for a while (the fault proxy)",
                          "carries on, slower"),
}

#: SQLSTATEs a fault causes: connection exceptions (08), operator intervention (57: admin shutdown,
#: query canceled), idle-in-transaction timeout, and a transaction aborted by one of those
_FAULT_SQLSTATE_CLASSES = ("08", "57")
_FAULT_SQLSTATES = ("25P03", "25P02", "40P01")
#: driver and SQLAlchemy errors of a connection that broke (no SQLSTATE)
_FAULT_TYPES = ("OperationalError", "InterfaceError", "PendingRollbackError", "ResourceClosedError",
                "InvalidRequestError", "ConnectionDoesNotExistError", "InternalClientError", "InternalError")
#: ... and their words (psycopg's "received 2 results from command" is PgBouncer's error next to the result)
_FAULT_WORDS = ("connection", "closed", "terminat", "server", "timeout", "canceling", "reconnect", "invalid transaction",
                "received")


def is_fault_error(error: ErrorSeen) -> bool:
    """An error a fault causes: the connection broke, the statement was canceled, or the transaction it
    aborted was used again."""
    if error.sqlstate is not None:
        return error.sqlstate[:2] in _FAULT_SQLSTATE_CLASSES or error.sqlstate in _FAULT_SQLSTATES
    message = error.message.lower()
    return error.type in _FAULT_TYPES and any(word in message for word in _FAULT_WORDS)


def expected_under_faults(history: History, step: StepRecord) -> bool:
    """A step's error is a fault's doing: a fault step's own (a statement_timeout) or, in a cell that
    injects faults, an error of the fault family."""
    if step.error is None:
        return False
    return is_fault(step.step) or (bool(history.faults) and is_fault_error(step.error))


def fault_counts(steps: Iterable[StepRecord]) -> dict[str, int]:
    """How often each fault was injected (a fault step that reached the stack; a statement_timeout raises)."""
    counts: dict[str, int] = {}
    for step in steps:
        if is_fault(step.step) and (step.error is None or step.error.sqlstate == "57014"):
            counts[step.step] = counts.get(step.step, 0) + 1
    return counts


def after_faults(findings: list[Finding], steps: Iterable[StepRecord]) -> list[Finding]:
    """Isolation findings shown by a step after a fault (a lost write: its commit), worded with the last
    fault before that step."""
    faults = [(step.seq, step.step) for step in steps if is_fault(step.step)]
    if not faults:
        return findings
    worded = []
    for finding in findings:
        last = max(finding.steps, default=None)
        before = [f for f in faults if last is not None and f[0] < last]
        if finding.isolation and before:
            seq, name = before[-1]
            finding = dataclasses.replace(finding, explanation=(
                f"{finding.explanation.rstrip('.')} (after {name} at step {seq}: the request did not go on with "
                f"its own tenant)."))
        worded.append(finding)
    return worded


def check_indeterminate(history: History, indeterminate: list[tuple[int, int, str]]) -> list[Finding]:
    """An ``indeterminate`` finding (never gating) per commit that raised under a fault with writes pending:
    ``indeterminate`` holds (step seq, writes, tenant) from the write ledger. Their rows may be in their
    tenant's schema or not; in any other schema they are a misplaced_write, found by the write checks."""
    return [Finding("indeterminate", f"the commit at step {seq} raised under a fault with {count} write(s) of "
                                     f"tenant {tenant!r} pending: they may or may not have been committed "
                                     "(they are not counted as lost; a copy in another schema would be a misplaced_write)",
                    (seq,), tenant, gating=False)
            for seq, count, tenant in indeterminate]
