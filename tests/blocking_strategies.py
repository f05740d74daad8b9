"""Layers that make a step wait, used by tests/test_deadlines.py (importable as ``blocking_strategies``).

Each holds one connection for the whole request (a common pattern) and binds
its Session to it.
"""

from __future__ import annotations

import contextlib
import threading

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session


class _RequestConnection:
    layout = "schema"
    models = "placeholder"
    OPEN = ""  # SQL run in the session as the request opens (":tenant" bound)
    END = ""  # SQL run on the request's connection as it ends

    def __init__(self, url):
        self.engine = create_engine(url, connect_args={"prepare_threshold": None}, pool_size=4, max_overflow=4)

    @contextlib.contextmanager
    def session(self, tenant):
        with self.engine.connect() as conn:
            conn.execution_options(schema_translate_map={"tenant": tenant})
            with Session(bind=conn) as session:
                if self.OPEN:
                    session.execute(text(self.OPEN), {"tenant": tenant})
                try:
                    yield session
                finally:
                    if self.END:
                        session.rollback()
                        session.execute(text(self.END), {"tenant": tenant})
                        session.commit()

    def close(self):
        self.engine.dispose()


class SessionLock(_RequestConnection):
    """A per-tenant mutex: a session-level advisory lock from the request's open to its end, so a second
    request of the same tenant waits until the first one ends."""

    OPEN = "SELECT pg_advisory_lock(hashtext(:tenant))"
    END = "SELECT pg_advisory_unlock(hashtext(:tenant))"


class XactLock(_RequestConnection):
    """The twin: a transaction-level advisory lock, released by the request's first commit or rollback."""

    OPEN = "SELECT pg_advisory_xact_lock(hashtext(:tenant))"


class SlowOpen(_RequestConnection):
    """A request whose open runs a statement far longer than any step deadline, waiting on no lock."""

    OPEN = "SELECT pg_sleep(60)"


class LeakedLock:
    """The layer of the report: a session-level advisory lock per tenant as the request opens, released
    as it ends on another pooled connection, which does not hold it (pg_advisory_unlock returns false).
    The lock stays on a pooled connection; the next request of that tenant on another one waits forever."""

    layout = "schema"
    models = "placeholder"

    def __init__(self, url):
        self.engine = create_engine(url, connect_args={"prepare_threshold": None}, pool_size=4, max_overflow=4)

    @contextlib.contextmanager
    def session(self, tenant):
        bound = self.engine.execution_options(schema_translate_map={"tenant": tenant})
        with Session(bound) as session:
            session.execute(text("SELECT pg_advisory_lock(hashtext(:tenant))"), {"tenant": tenant})
            try:
                yield session
            finally:
                with self.engine.connect() as other:  # the bug: not the connection that took the lock
                    other.execute(text("SELECT pg_advisory_unlock(hashtext(:tenant))"), {"tenant": tenant})
                    other.commit()

    def close(self):
        self.engine.dispose()


#: Set by a test once it is done with PythonHang: the waiting threads then fail their open and end.
RELEASE = threading.Event()


class PythonHang(_RequestConnection):
    """A request whose open waits in Python (on an event), with nothing on the server to cancel."""

    @contextlib.contextmanager
    def session(self, tenant):
        RELEASE.wait(120)
        raise RuntimeError("released by the test")
        yield  # a generator, for contextmanager
