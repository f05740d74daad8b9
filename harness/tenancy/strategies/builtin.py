"""The built-in strategies, written from the patterns they mirror.

Each factory takes the route URL and returns an object with ``session(tenant)``
and ``close()``. They set what a careful user would set: ``prepare_threshold=None``
because psycopg 3 prepares statements after 5 executions and PgBouncer before
1.21 cannot route prepared statements in transaction mode (Debian bookworm
ships 1.18).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session


def _engine(url: URL) -> Engine:
    return create_engine(url, connect_args={"prepare_threshold": None}, pool_size=5, max_overflow=5)


def _quoted(engine: Engine, schema: str) -> str:
    return engine.dialect.identifier_preparer.quote_identifier(schema)


class _EngineStrategy:
    layout = "schema"  # declared on the class: read without creating an instance
    models = "placeholder"
    raw_sql = ("unqualified",)

    def __init__(self, url: URL):
        self.engine = _engine(url)

    def close(self) -> None:
        self.engine.dispose()


class SearchPathSet(_EngineStrategy):
    """Legacy: session-level ``SET search_path TO <schema>, public`` when the session opens."""

    models = "unqualified"

    def set_path(self, session: Session, tenant: str) -> None:
        session.execute(text(f"SET search_path TO {_quoted(self.engine, tenant)}, public"))

    @contextlib.contextmanager
    def session(self, tenant: str) -> Iterator[Session]:
        with Session(self.engine) as session:
            self.set_path(session, tenant)
            yield session


class _RestoringSession(Session):
    """The legacy ``commit_and_restore_path`` / ``restore_search_path`` helpers, as a Session."""

    def __init__(self, *args, restore, **kwargs):
        super().__init__(*args, **kwargs)
        self._restore = restore

    def commit(self) -> None:
        super().commit()
        self._restore(self)

    def rollback(self) -> None:
        super().rollback()
        self._restore(self)


class SearchPathRestore(SearchPathSet):
    """Legacy plus re-issuing the SET after every commit and rollback."""

    @contextlib.contextmanager
    def session(self, tenant: str) -> Iterator[Session]:
        with _RestoringSession(self.engine, restore=lambda s: self.set_path(s, tenant)) as session:
            self.set_path(session, tenant)
            yield session


class SearchPathLocal(_EngineStrategy):
    """The migration's "before": ``SET LOCAL search_path`` once when the session opens."""

    models = "unqualified"

    @contextlib.contextmanager
    def session(self, tenant: str) -> Iterator[Session]:
        with Session(self.engine) as session:
            session.execute(text(f"SET LOCAL search_path TO {_quoted(self.engine, tenant)}, public"))
            yield session


class SetConfigLocal(_EngineStrategy):
    """``set_config('search_path', :schema, true)`` once when the session opens.

    The schema name goes in as a bind parameter, unquoted, as such code is
    usually written; search_path parses it as an identifier list.
    """

    models = "unqualified"

    @contextlib.contextmanager
    def session(self, tenant: str) -> Iterator[Session]:
        with Session(self.engine) as session:
            session.execute(text("SELECT set_config('search_path', :schema, true)"), {"schema": tenant})
            yield session


class TranslateMap(_EngineStrategy):
    """The migration's "after": ``execution_options(schema_translate_map={"tenant": schema})``."""

    @contextlib.contextmanager
    def session(self, tenant: str) -> Iterator[Session]:
        bound = self.engine.execution_options(schema_translate_map={"tenant": tenant})
        with Session(bound) as session:
            yield session


class TranslateMapPinned(_EngineStrategy):
    """The translate map plus a transaction-local search_path pinned in every transaction."""

    @contextlib.contextmanager
    def session(self, tenant: str) -> Iterator[Session]:
        bound = self.engine.execution_options(schema_translate_map={"tenant": tenant})
        quoted = _quoted(self.engine, tenant)
        with Session(bound) as session:
            @event.listens_for(session, "after_begin")
            def pin(sess: Session, transaction, connection) -> None:
                connection.exec_driver_sql("SELECT set_config('search_path', %(path)s, true)",
                                           {"path": quoted})
            yield session


search_path_set = SearchPathSet
search_path_restore = SearchPathRestore
search_path_local = SearchPathLocal
set_config_local = SetConfigLocal
translate_map = TranslateMap
translate_map_pinned = TranslateMapPinned
