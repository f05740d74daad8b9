"""The read observer: which tenant's rows any code read, including raw SQL and aggregates.

The team's code (its actions, its raw ``text()`` queries) returns whatever it
likes: a sum, a count, a report row. To attribute every row such code *reads*,
each copy of a team table carries row-level security with a restrictive policy
whose expression calls :data:`FUNCTION` with the copy's owner (the schema it
lives in), the table and the row's key. The function raises an ``INFO``
message and returns true, so:

- the rows and results the code gets are unchanged: the policy admits every row
  (a permissive ``true`` policy next to it). Row-level security does change a
  few things, on these test copies only: ``COPY FROM`` is refused, a unique or
  CHECK violation's DETAIL is left out, plans may differ (the function is not
  leakproof);
- every row the executor scans for the code under test, in a plain select, a
  join, an aggregate, an UPDATE or DELETE (their ``USING``) or an INSERT or
  UPDATE (``WITH CHECK``: a write), is reported on the very connection that ran
  the statement. PostgreSQL sends ``INFO`` to the client whatever
  ``client_min_messages`` says (docs, "Reporting Errors and Messages");
- the harness's own superuser bypasses row-level security, so seeding and the
  read-back stay silent.

The driver hands each message to a notice handler the harness attaches to every
pooled DBAPI connection (a ``connect`` listener on SQLAlchemy's ``Pool`` class),
which adds it to the sink of the context running the current step: psycopg 3's
``add_notice_handler``, psycopg2's ``connection.notices``, asyncpg's log listener
(buffered per connection until the statement has run: asyncpg calls it on its
event loop, outside the step's context). The runner
opens the sink around a step (:func:`observing`), so the rows land in that
step's record, under the tenant that step acts for.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import threading
from typing import Any, Iterator, NamedTuple

from sqlalchemy import Table, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import Pool

FUNCTION = "harness_observe"
SCHEMA = "harness_observer"  # where the function lives (named through the stack: the external backend prefixes it)
MARKER = "harness-observe "
PERMISSIVE = "harness_admit"
RESTRICTIVE = "harness_observe"


class Observed(NamedTuple):
    op: str  # "r": a row was read (scanned), "w": a row was written
    owner: str  # the schema of the table copy: a tenant, or public for a decoy
    table: str
    key: str


# A context variable, not a thread-local: code that runs its SQL on a worker thread (asyncio.to_thread,
# an executor given a copied context) and the tasks of an event loop see the sink of the step they serve.
_sink: contextvars.ContextVar[list[Observed] | None] = contextvars.ContextVar("harness_observer_sink", default=None)


@contextlib.contextmanager
def observing() -> Iterator[list[Observed]]:
    """Collect what the code under test reads and writes in this context until the block ends."""
    sink: list[Observed] = []
    token = _sink.set(sink)
    try:
        yield sink
    finally:
        _sink.reset(token)


def seen() -> int:
    """How many rows the open sink holds (0 outside :func:`observing`)."""
    sink = _sink.get()
    return 0 if sink is None else len(sink)


def _record(message: str | None) -> None:
    sink = _sink.get()
    if sink is None or not message or not message.startswith(MARKER):
        return
    try:
        op, owner, table, key = json.loads(message[len(MARKER):])
    except (ValueError, TypeError):
        return
    sink.append(Observed(op, owner, table, "" if key is None else str(key)))


def _on_psycopg_notice(diagnostic: Any) -> None:
    _record(diagnostic.message_primary)


class _Psycopg2Notices:
    """psycopg2 appends each notice to ``connection.notices`` as it arrives (any object with ``append`` will
    do), in the thread and context that ran the statement, worded ``"INFO:  text\n"``."""

    __slots__ = ()

    def append(self, notice: str) -> None:
        _, _, text = notice.partition(":  ")
        _record(text.splitlines()[0] if text else None)


#: asyncpg calls log listeners later, on its event loop, in the context the connection was made in: their
#: messages wait in the connection record's ``info`` until the statement that caused them has run
_PENDING = "harness_observer_pending"


def _drain(conn: Any, *args: Any) -> None:
    """After a statement ran (or failed) on a connection whose driver buffers its messages: hand them to
    the sink of the step that ran it."""
    try:
        pending = conn.connection.info.get(_PENDING)
    except Exception:  # noqa: BLE001 - a connection already closed or invalidated has nothing to hand over
        return
    if pending:
        messages = list(pending)
        pending.clear()
        for message in messages:
            _record(message)


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Attach the notice handler to every DBAPI connection any SQLAlchemy pool opens from now on."""
    global _installed
    with _install_lock:
        if _installed:
            return
        event.listen(Pool, "connect", _attach)
        event.listen(Engine, "after_cursor_execute", _drain)
        event.listen(Engine, "handle_error", lambda context: _drain(context.connection) if context.connection
                     is not None else None)
        _installed = True


def _attach(dbapi_connection: Any, record: Any) -> None:
    raw = getattr(dbapi_connection, "driver_connection", None) or dbapi_connection
    if hasattr(raw, "add_notice_handler"):  # psycopg 3, sync and async
        raw.add_notice_handler(_on_psycopg_notice)
    elif hasattr(raw, "add_log_listener"):  # asyncpg
        pending: list[str | None] = []
        record.info[_PENDING] = pending
        raw.add_log_listener(lambda connection, message: pending.append(getattr(message, "message", None)))
    elif type(raw).__module__.split(".")[0] == "psycopg2":
        raw.notices = _Psycopg2Notices()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def function_sql(schema_sql: str) -> str:
    """The observer function, in the (quoted) schema ``schema_sql``."""
    return (f"CREATE OR REPLACE FUNCTION {schema_sql}.{FUNCTION}(op text, owner text, tbl text, key text) "
            "RETURNS boolean LANGUAGE plpgsql VOLATILE AS $observe$ BEGIN "
            f"RAISE INFO '{MARKER}%', json_build_array(op, owner, tbl, key)::text; RETURN true; "
            "END $observe$;\n"
            f"GRANT USAGE ON SCHEMA {schema_sql} TO PUBLIC;\n"
            f"GRANT EXECUTE ON FUNCTION {schema_sql}.{FUNCTION}(text, text, text, text) TO PUBLIC")


def policies_sql(conn: Connection, function_schema: str, schema: str, owner: str, table: Table) -> str:
    """Row-level security on ``schema``'s copy of ``table``: admit every row, report each one touched."""
    quote = conn.dialect.identifier_preparer.quote_identifier
    target = f"{quote(schema)}.{quote(table.name)}"
    keys = [f"{quote(c.name)}::text" for c in table.primary_key.columns]
    key = f"concat_ws(',', {', '.join(keys)})" if keys else "NULL"

    def observe(op: str) -> str:
        return f"{quote(function_schema)}.{FUNCTION}('{op}', {_literal(owner)}, {_literal(table.name)}, {key})"

    # FORCE: the policies hold even for a role that owns the table (a layer that creates its own tables).
    return (f"ALTER TABLE {target} ENABLE ROW LEVEL SECURITY;\n"
            f"ALTER TABLE {target} FORCE ROW LEVEL SECURITY;\n"
            f"CREATE POLICY {PERMISSIVE} ON {target} USING (true) WITH CHECK (true);\n"
            f"CREATE POLICY {RESTRICTIVE} ON {target} AS RESTRICTIVE USING ({observe('r')}) "
            f"WITH CHECK ({observe('w')})")
