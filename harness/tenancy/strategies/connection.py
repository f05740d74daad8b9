"""Built-ins whose verdict depends on the deployment and the driver: the tenant bound when a connection is
made, and the driver's defaults.

- ``connect_event_search_path``: one engine per tenant whose pool runs ``SET search_path`` in its
  ``connect`` event (SQLAlchemy's documented recipe for a per-connection setting). Every connection the
  pool makes is bound; behind PgBouncer in transaction mode the SET runs on whichever server served that
  transaction, and later transactions of the connection may run on others: unsafe where PgBouncer does not
  keep search_path with its client (it can only from PostgreSQL 18, which reports search_path, with
  PgBouncer 1.20+ tracking it: by default from 1.26).
- ``search_path_per_connection``: as ``connect_event_search_path``, without a pool of its own (NullPool,
  what SQLAlchemy's documentation advises behind an external pooler): every session gets a new connection,
  bound in the ``connect`` event, and closing it leaves the reset to the pooler. Sound only where the pooler
  resets a server connection when its client leaves (PgBouncer's session mode runs ``DISCARD ALL``, Pgpool-II
  its ``reset_query_list``); a pooler that keeps session state hands the tenant's search_path to whoever
  gets that server next.
- ``startup_options_search_path``: one engine per tenant whose connections start with ``search_path`` set:
  libpq ``options=-c search_path=<schema>`` on psycopg and psycopg2, ``server_settings={"search_path":
  ...}`` on asyncpg (a startup parameter of its own). PgBouncer before 1.26 refuses either (FATAL),
  unless it is told to track search_path; 1.26 forwards it.
- ``translate_map_prepared``: the pinned translate map (sound) with the driver's default prepares: what
  most teams run. psycopg prepares a statement at its 5th execution on a connection, asyncpg prepares every
  statement and keeps the named ones in its statement cache, psycopg2 never prepares. PgBouncer before
  1.21 cannot route protocol-level prepared statements in transaction mode ("prepared statement _pg3_0
  does not exist", "__asyncpg_stmt_1__"); 1.21+ with ``max_prepared_statements`` (default 200 from 1.24)
  can.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from harness.tenancy.drivers import close_engine, make_engine, of_url, open_session
from harness.tenancy.strategies.builtin import TranslateMapPinned, _engine


def _quoted(tenant: str) -> str:
    return '"' + tenant.replace('"', '""') + '"'


async def _all(closing: list) -> None:
    for coroutine in closing:
        await coroutine


class _EnginePerTenant:
    """One engine (so one pool) per tenant, made on the tenant's first request."""

    layout = "schema"
    models = "unqualified"
    raw_sql = ("unqualified",)

    def __init__(self, url: URL):
        self.url = url
        self.driver = of_url(url)
        self.engines: dict[str, Any] = {}

    def make_engine(self, tenant: str) -> Any:
        raise NotImplementedError

    def session(self, tenant: str):
        if tenant not in self.engines:
            self.engines[tenant] = self.make_engine(tenant)
        return open_session(self.engines[tenant])

    def close(self):
        """Dispose of every tenant's engine: a coroutine when they are async (one driver, one kind)."""
        closing = [close_engine(engine) for engine in self.engines.values()]
        waiting = [c for c in closing if c is not None]
        return _all(waiting) if waiting else None


class ConnectEventSearchPath(_EnginePerTenant):
    """``SET search_path`` in the pool's ``connect`` event of a per-tenant engine."""

    def pool_options(self) -> dict[str, Any]:
        return {"pool_size": 2, "max_overflow": 2}

    def make_engine(self, tenant: str) -> Any:
        engine = make_engine(self.url, **self.pool_options())
        path = _quoted(tenant)

        # The pool's events live on the sync engine, also for an AsyncEngine (whose DBAPI connection is
        # SQLAlchemy's adapter: its cursor runs the statement on the event loop).
        @event.listens_for(getattr(engine, "sync_engine", engine), "connect")
        def bind(dbapi_connection, connection_record) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"SET search_path TO {path}")
            finally:
                cursor.close()
            dbapi_connection.commit()

        return engine


class SearchPathPerConnection(ConnectEventSearchPath):
    """``connect_event_search_path`` on a NullPool engine: a new connection per session, never reset by the
    layer itself."""

    def pool_options(self) -> dict[str, Any]:
        return {"poolclass": NullPool}


class StartupOptionsSearchPath(_EnginePerTenant):
    """search_path as a startup parameter of every connection of a per-tenant engine: libpq
    ``options=-c search_path=<schema>`` (psycopg, psycopg2), asyncpg's ``server_settings={"search_path": ...}``."""

    def make_engine(self, tenant: str) -> Any:
        return make_engine(self.url, connect_args=self.driver.startup_search_path(_quoted(tenant)),
                           pool_size=2, max_overflow=2)


class TranslateMapPrepared(TranslateMapPinned):
    """The pinned translate map with the driver's default prepares: psycopg's ``prepare_threshold`` (5),
    asyncpg's statement cache; psycopg2 never prepares."""

    def __init__(self, url: URL):
        self.engine = _engine(url, prepare=True)


connect_event_search_path = ConnectEventSearchPath
search_path_per_connection = SearchPathPerConnection
startup_options_search_path = StartupOptionsSearchPath
translate_map_prepared = TranslateMapPrepared
