"""Built-in async twins: session(tenant) is an async context manager yielding an AsyncSession.

The factory still gets the route URL and takes the async form of its driver:
psycopg's async one, or asyncpg (psycopg2 has none: these layers cannot run on
it). The driver's prepares are off, as for the sync built-ins
(:meth:`harness.tenancy.drivers.Driver.no_prepare`).
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

from harness.tenancy.drivers import make_engine, of_url
from harness.tenancy.strategies.rls import GUC, PIN_SETTING
from harness.tenancy.strategies.builtin import PIN_SEARCH_PATH


class _AsyncStrategy:
    layout = "schema"  # declared on the class: read without creating an instance
    drivers = ("psycopg", "asyncpg")  # the drivers with an asyncio form (psycopg2 has none)
    models = "placeholder"
    raw_sql = ("unqualified",)

    def __init__(self, url: URL):
        self.engine = make_engine(of_url(url).url(url, asynchronous=True), pool_size=5, max_overflow=5)

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
                connection.execute(PIN_SEARCH_PATH, {"path": path})
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
                connection.execute(PIN_SETTING, {"name": GUC, "tenant": tenant})
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
