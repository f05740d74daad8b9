"""The built-in strategies, written from the patterns they mirror.

Each factory takes the route URL and returns an object with ``session(tenant)``
and ``close()``. They run on the driver the URL names (:mod:`harness.tenancy.drivers`):
a sync Session on psycopg and psycopg2, an AsyncSession on asyncpg (which has no
sync form), with the same binding code. They set what a careful user would set:
the driver's protocol-level prepares off (psycopg's ``prepare_threshold=None``,
asyncpg's statement caches at 0) because PgBouncer before 1.21 cannot route
prepared statements in transaction mode (Debian bookworm ships 1.18).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from harness.tenancy.drivers import close_engine, make_engine, open_session

#: a transaction-local search_path, in SQL every driver takes (its bind parameters are SQLAlchemy's)
PIN_SEARCH_PATH = text("SELECT set_config('search_path', :path, true)")


def _engine(url: URL, prepare: bool = False) -> Any:
    return make_engine(url, prepare=prepare, pool_size=5, max_overflow=5)


def _quoted(engine: Any, schema: str) -> str:
    return engine.dialect.identifier_preparer.quote_identifier(schema)


class _EngineStrategy:
    layout = "schema"  # declared on the class: read without creating an instance
    models = "placeholder"
    raw_sql = ("unqualified",)

    def __init__(self, url: URL):
        self.engine = _engine(url)

    def close(self):
        return close_engine(self.engine)


class SearchPathSet(_EngineStrategy):
    """Legacy: session-level ``SET search_path TO <schema>, public`` when the session opens."""

    models = "unqualified"

    def set_path(self, session: Session, tenant: str) -> None:
        session.execute(text(f"SET search_path TO {_quoted(self.engine, tenant)}, public"))

    def session(self, tenant: str):
        return open_session(self.engine, on_open=lambda session: self.set_path(session, tenant))


class _RestoringSession(Session):
    """The legacy ``commit_and_restore_path`` / ``restore_search_path`` helpers, as a Session."""

    def commit(self) -> None:
        super().commit()
        self.info["restore"](self)

    def rollback(self) -> None:
        super().rollback()
        self.info["restore"](self)


class SearchPathRestore(SearchPathSet):
    """Legacy plus re-issuing the SET after every commit and rollback."""

    def session(self, tenant: str):
        return open_session(self.engine, on_open=lambda session: self.set_path(session, tenant),
                            session_class=_RestoringSession,
                            info={"restore": lambda session: self.set_path(session, tenant)})


class SearchPathLocal(_EngineStrategy):
    """The migration's "before": ``SET LOCAL search_path`` once when the session opens."""

    models = "unqualified"

    def session(self, tenant: str):
        statement = text(f"SET LOCAL search_path TO {_quoted(self.engine, tenant)}, public")
        return open_session(self.engine, on_open=lambda session: session.execute(statement))


class SetConfigLocal(_EngineStrategy):
    """``set_config('search_path', :schema, true)`` once when the session opens.

    The schema name goes in as a bind parameter, unquoted, as such code is
    usually written; search_path parses it as an identifier list.
    """

    models = "unqualified"

    def session(self, tenant: str):
        return open_session(self.engine, on_open=lambda session: session.execute(
            text("SELECT set_config('search_path', :schema, true)"), {"schema": tenant}))


class TranslateMap(_EngineStrategy):
    """The migration's "after": ``execution_options(schema_translate_map={"tenant": schema})``."""

    def session(self, tenant: str):
        return open_session(self.engine.execution_options(schema_translate_map={"tenant": tenant}))


class TranslateMapPinned(_EngineStrategy):
    """The translate map plus a transaction-local search_path pinned in every transaction."""

    def session(self, tenant: str):
        bound = self.engine.execution_options(schema_translate_map={"tenant": tenant})
        quoted = _quoted(self.engine, tenant)

        def pin(sess: Session, transaction, connection) -> None:
            connection.execute(PIN_SEARCH_PATH, {"path": quoted})
        return open_session(bound, on_begin=pin)


search_path_set = SearchPathSet
search_path_restore = SearchPathRestore
search_path_local = SearchPathLocal
set_config_local = SetConfigLocal
translate_map = TranslateMap
translate_map_pinned = TranslateMapPinned
