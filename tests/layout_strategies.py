"""User-style RLS and async layers for tests/test_layouts.py (importable as ``layout_strategies``)."""

from __future__ import annotations

import contextlib

from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

TABLES = ("product", "marketplace_task", "marketplace_job")


class UnforcedGucPinned:
    """Pinned app.tenant_id, but policies NOT forced: the owner role that queries skips them."""

    layout = "rls"

    def __init__(self, url):
        self.engine = create_engine(url, connect_args={"prepare_threshold": None})

    @staticmethod
    def provision(admin_url, tenants):
        engine = create_engine(admin_url)
        with engine.begin() as conn:
            for table in TABLES:
                conn.execute(text(f"CREATE POLICY by_guc ON {table} USING "
                                  f"(owner = current_setting('app.tenant_id', true))"))
        engine.dispose()

    @contextlib.contextmanager
    def session(self, tenant):
        with Session(self.engine) as session:
            @event.listens_for(session, "after_begin")
            def pin(sess, transaction, connection):
                connection.exec_driver_sql("SELECT set_config('app.tenant_id', %(t)s, true)", {"t": tenant})
            yield session

    def close(self):
        self.engine.dispose()


def async_translate_map(url):
    """A user's async layer: translate map only (raw SQL is not covered)."""

    class Layer:
        def __init__(self):
            self.engine = create_async_engine(url.set(drivername="postgresql+psycopg_async"),
                                              connect_args={"prepare_threshold": None})

        @contextlib.asynccontextmanager
        async def session(self, tenant):
            async with AsyncSession(self.engine.execution_options(schema_translate_map={"tenant": tenant})) as s:
                yield s

        async def close(self):
            await self.engine.dispose()

    return Layer()
