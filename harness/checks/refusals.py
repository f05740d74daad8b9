"""Refusals: a layer that declines to serve, or a pooler that refuses to serve it.

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
- a **pooler break**: on a pooled route, the driver's protocol-level prepared
  statements are missing from (or clash on) the server the pooler hands the
  next transaction to. When every failure of a run is one (or the aborted
  transaction after one), the layer does not work behind that pooler.
"""

from __future__ import annotations

from harness.checks.findings import Finding
from harness.checks.history import ErrorSeen, History, StepRecord

#: the note the runner gives an ``open`` step whose layer refused the tenant before any SQL reached the server
NAME_REFUSED = "refused by the layer before any SQL reached the server"
#: SQLSTATE classes of a refused connection: connection exception, invalid authorization, insufficient
#: resources (too many connections), operator intervention (shutting down)
_REFUSAL_CLASSES = ("08", "28", "53", "57")
#: the driver errors a refused connection raises: psycopg's and psycopg2's OperationalError, asyncpg's own
#: (a startup parameter PgBouncer refuses is its ProtocolViolationError, 08P01)
_REFUSAL_TYPES = ("OperationalError", "ConnectionFailure", "InterfaceError", "ProtocolViolationError",
                  "ConnectionFailureError", "ClientCannotConnectError", "CannotConnectNowError",
                  "InvalidAuthorizationSpecificationError", "InvalidPasswordError", "TooManyConnectionsError")


#: SQLSTATEs of a protocol-level prepared statement missing on the server (invalid_sql_statement_name) or
#: already there (duplicate_prepared_statement): what a pooler that moves a client between servers between
#: transactions does to a driver that prepares (psycopg's _pg3_*, asyncpg's __asyncpg_stmt_*)
PREPARED_STATEMENT_SQLSTATES = frozenset({"26000", "42P05"})
#: in_failed_sql_transaction: a statement after the failed one in the same transaction (its consequence)
ABORTED_TRANSACTION = "25P02"


def is_prepared_statement_error(error: ErrorSeen) -> bool:
    """A driver's prepared statement was not where it was prepared (or a same-named one was): asyncpg also
    meets another statement under its name ("bind message supplies 1 parameters, but prepared statement
    ... requires 2")."""
    return (error.sqlstate in PREPARED_STATEMENT_SQLSTATES or "prepared statement" in error.message
            or error.type == "InvalidCachedStatementError" or "cached plan must not change result type" in error.message)


def is_name_refusal(step: StepRecord) -> bool:
    """An ``open`` step whose layer refused the tenant cleanly (see the module's docstring)."""
    return step.step == "open" and step.error is not None and step.note == NAME_REFUSED


def is_connection_refusal(error: ErrorSeen) -> bool:
    """A driver error that says the connection itself was refused (not a failed statement)."""
    if error.type not in _REFUSAL_TYPES or is_prepared_statement_error(error):
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
