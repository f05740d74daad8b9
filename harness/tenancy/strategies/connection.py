"""Built-ins whose verdict depends on the deployment: the tenant bound when a connection is made, and the
driver's defaults.

- ``connect_event_search_path``: one engine per tenant whose pool runs ``SET search_path`` in its
  ``connect`` event (SQLAlchemy's documented recipe for a per-connection setting). Every connection the
  pool makes is bound; behind PgBouncer in transaction mode the SET runs on whichever server served that
  transaction, and later transactions of the connection may run on others: unsafe where PgBouncer does not
  keep search_path with its client (it can only from PostgreSQL 18, which reports search_path, with
  PgBouncer 1.20+ tracking it: by default from 1.26).
- ``startup_options_search_path``: one engine per tenant whose connections carry libpq
  ``options=-c search_path=<schema>``. PgBouncer before 1.26 refuses the startup parameter (FATAL), unless
  it is told to track search_path; 1.26 forwards it.
- ``translate_map_prepared``: the pinned translate map (sound) with psycopg's default
  ``prepare_threshold`` (5): what most teams run. PgBouncer before 1.21 cannot route protocol-level
  prepared statements in transaction mode ("prepared statement _pg3_0 already exists"); 1.21+ with
  ``max_prepared_statements`` (default 200 from 1.24) can.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session

from harness.tenancy.strategies.builtin import TranslateMapPinned

NO_PREPARE = {"prepare_threshold": None}


def _quoted(tenant: str) -> str:
    return '"' + tenant.replace('"', '""') + '"'


class _EnginePerTenant:
    """One engine (so one pool) per tenant, made on the tenant's first request."""

    layout = "schema"
    models = "unqualified"
    raw_sql = ("unqualified",)

    def __init__(self, url: URL):
        self.url = url
        self.engines: dict[str, Engine] = {}

    def make_engine(self, tenant: str) -> Engine:
        raise NotImplementedError

    @contextlib.contextmanager
    def session(self, tenant: str) -> Iterator[Session]:
        if tenant not in self.engines:
            self.engines[tenant] = self.make_engine(tenant)
        with Session(self.engines[tenant]) as session:
            yield session

    def close(self) -> None:
        for engine in self.engines.values():
            engine.dispose()


class ConnectEventSearchPath(_EnginePerTenant):
    """``SET search_path`` in the pool's ``connect`` event of a per-tenant engine."""

    def make_engine(self, tenant: str) -> Engine:
        engine = create_engine(self.url, connect_args=NO_PREPARE, pool_size=2, max_overflow=2)
        path = _quoted(tenant)

        @event.listens_for(engine, "connect")
        def bind(dbapi_connection, connection_record) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET search_path TO {path}")
            dbapi_connection.commit()

        return engine


class StartupOptionsSearchPath(_EnginePerTenant):
    """libpq ``options=-c search_path=<schema>`` on every connection of a per-tenant engine."""

    def make_engine(self, tenant: str) -> Engine:
        # libpq's options: a backslash escapes a space; the value is one search_path element.
        value = _quoted(tenant).replace("\\", "\\\\").replace(" ", "\\ ")
        return create_engine(self.url, connect_args={**NO_PREPARE, "options": f"-c search_path={value}"},
                             pool_size=2, max_overflow=2)


class TranslateMapPrepared(TranslateMapPinned):
    """The pinned translate map with psycopg's default ``prepare_threshold``."""

    def __init__(self, url: URL):
        self.engine = create_engine(url, pool_size=5, max_overflow=5)


connect_event_search_path = ConnectEventSearchPath
startup_options_search_path = StartupOptionsSearchPath
translate_map_prepared = TranslateMapPrepared
