"""Layers that are sound until something breaks under them, used by tests/test_faults.py and bench/faults.py
(importable as ``fault_strategies``).

``HeldConnection`` holds one connection for the whole request and sets search_path once on it, outside any
transaction, then resets it as the request ends. On direct and session it is sound: every statement of the
request runs on that one connection (on session, on that one server). When the backend dies mid-request,
SQLAlchemy invalidates the connection; after the rollback it reconnects on its own, and the rest of the
request runs on a new connection in the default search_path (the public decoys).

``HeldConnectionRebinding`` is its twin that binds the tenant again as each transaction begins: it passes
under faults too.

``SwallowedCommit`` is the translate-map layer (sound) whose session acknowledges every commit: a commit
that raises is logged and swallowed, as a "fire and forget" helper does. Under a fault, a commit whose
connection broke is acknowledged and its write is lost.
"""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


def _quoted(tenant: str) -> str:
    return '"' + tenant.replace('"', '""') + '"'


class HeldConnection:
    models = "unqualified"
    layout = "schema"

    def __init__(self, url):
        self.engine = create_engine(url, connect_args={"prepare_threshold": None}, pool_size=4, max_overflow=4)

    def bind(self, connection, tenant: str) -> None:
        connection.exec_driver_sql(f"SET search_path TO {_quoted(tenant)}")
        connection.commit()

    @contextlib.contextmanager
    def session(self, tenant):
        with self.engine.connect() as connection:
            self.bind(connection, tenant)
            with Session(bind=connection, join_transaction_mode="rollback_only") as session:
                yield session
            try:
                connection.rollback()
                connection.exec_driver_sql("RESET search_path")
                connection.commit()
            except DBAPIError:  # a broken connection is discarded by the pool anyway
                pass

    def close(self):
        self.engine.dispose()


class HeldConnectionRebinding(HeldConnection):
    """Binds the tenant again at the start of every transaction of the request's Session (its after_begin
    event), so a connection that was replaced mid-request is bound before anything runs on it."""

    @contextlib.contextmanager
    def session(self, tenant):
        with super().session(tenant) as session:
            @event.listens_for(session, "after_begin")
            def rebind(session, transaction, connection) -> None:
                connection.exec_driver_sql(f"SET search_path TO {_quoted(tenant)}")
            yield session


class _AcknowledgingSession(Session):
    def commit(self) -> None:
        try:
            super().commit()
        except DBAPIError as exc:  # "fire and forget": the caller is told it worked
            log.warning("commit failed and was ignored: %s", exc)
            super().rollback()


class SwallowedCommit:
    models = "placeholder"
    layout = "schema"

    def __init__(self, url):
        self.engine = create_engine(url, connect_args={"prepare_threshold": None}, pool_size=4, max_overflow=4)

    @contextlib.contextmanager
    def session(self, tenant):
        bound = self.engine.execution_options(schema_translate_map={"tenant": tenant})
        with _AcknowledgingSession(bound) as session:
            yield session

    def close(self):
        self.engine.dispose()
