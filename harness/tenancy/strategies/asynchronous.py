"""Built-in async twins: session(tenant) is an async context manager yielding an AsyncSession.

The factory still gets the route URL and swaps the driver to psycopg's async
one. (asyncpg behind PgBouncer in transaction mode needs its statement cache
off: ``connect_args={"statement_cache_size": 0}``, and SQLAlchemy's
``prepared_statement_cache_size=0``; otherwise prepared statements fail,
which the harness reports as errors, not isolation findings.)
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from harness.tenancy.strategies.rls import GUC


class _AsyncStrategy:
    layout = "schema"  # declared on the class: read without creating an instance
    models = "placeholder"
    raw_sql = ("unqualified",)

    def __init__(self, url: URL):
        self.engine = create_async_engine(url.set(drivername="postgresql+psycopg_async"),
                                          connect_args={"prepare_threshold": None}, pool_size=5, max_overflow=5)

    def quoted(self, name: str) -> str:
        return self.engine.dialect.identifier_preparer.quote_identifier(name)

    async def close(self) -> None:
        await self.engine.dispose()


class TranslateMapPinnedAsync(_AsyncStrategy):
    """translate_map_pinned on AsyncSession: the map plus a transaction-local search_path pin."""

    @contextlib.asynccontextmanager
    async def session(self, tenant: str) -> AsyncIterator[AsyncSession]:
        bound = self.engine.execution_options(schema_translate_map={"tenant": tenant})
        path = self.quoted(tenant)
        async with AsyncSession(bound) as session:
            @event.listens_for(session.sync_session, "after_begin")
            def pin(sess, transaction, connection) -> None:
                connection.exec_driver_sql("SELECT set_config('search_path', %(path)s, true)", {"path": path})
            yield session


class RlsGucPinnedAsync(_AsyncStrategy):
    """rls_guc_pinned on AsyncSession."""

    layout = "rls"
    models = "unqualified"
    settings = (GUC,)

    @staticmethod
    def provision(admin_url: URL, tenants) -> None:
        from harness.tenancy.strategies.rls import RlsGucSession

        RlsGucSession.provision(admin_url, tenants)

    @contextlib.asynccontextmanager
    async def session(self, tenant: str) -> AsyncIterator[AsyncSession]:
        async with AsyncSession(self.engine) as session:
            @event.listens_for(session.sync_session, "after_begin")
            def pin(sess, transaction, connection) -> None:
                connection.exec_driver_sql("SELECT set_config(%(name)s, %(tenant)s, true)",
                                           {"name": GUC, "tenant": tenant})
            yield session


class SearchPathSetAsync(_AsyncStrategy):
    """search_path_set on AsyncSession: session-level SET when the session opens (not sound)."""

    models = "unqualified"

    @contextlib.asynccontextmanager
    async def session(self, tenant: str) -> AsyncIterator[AsyncSession]:
        async with AsyncSession(self.engine) as session:
            await session.execute(text(f"SET search_path TO {self.quoted(tenant)}, public"))
            yield session


translate_map_pinned_async = TranslateMapPinnedAsync
rls_guc_pinned_async = RlsGucPinnedAsync
search_path_set_async = SearchPathSetAsync
