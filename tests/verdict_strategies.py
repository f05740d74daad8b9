"""Layers for the verdicts that say what happened (importable as ``verdict_strategies``).

- :class:`PerTenantEngines`: one engine (and so one pool) per tenant; no backend can serve two tenants.
- :class:`SharedNullPool`: one shared engine that never reuses a connection: no reuse, by chance of its pool.
- :class:`StartupOptions`: binds the tenant with libpq ``options=-c search_path=...``, which PgBouncer
  before 1.26 refuses at connect time unless search_path is tracked.
- :class:`SlugsOnly`: refuses a tenant name that is not a lower-case ASCII slug, before any SQL.
- :class:`QuotesNaively`: puts the name in double quotes without doubling the quotes inside it, in SQL.
"""

from __future__ import annotations

import contextlib
import re

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

NO_PREPARE = {"prepare_threshold": None}
SLUG = re.compile(r"[a-z][a-z0-9_]*")


class PerTenantEngines:
    """A sound layer that keeps one engine per tenant (its pool never serves another tenant)."""

    raw_sql = ()  # schema_translate_map does not reach text(): an application of it runs no raw SQL

    def __init__(self, url):
        self.url = url
        self.engines = {}

    def _engine(self, tenant):
        if tenant not in self.engines:
            self.engines[tenant] = create_engine(self.url, connect_args=NO_PREPARE, pool_size=2).execution_options(
                schema_translate_map={"tenant": tenant})
        return self.engines[tenant]

    @contextlib.contextmanager
    def session(self, tenant):
        with Session(self._engine(tenant)) as session:
            yield session

    def close(self):
        for engine in self.engines.values():
            engine.dispose()


class SharedEngine:
    """A sound layer on one shared engine: the tenant's schema through schema_translate_map."""

    pool: dict = {}  # create_engine's pool arguments
    raw_sql = ()  # schema_translate_map does not reach text(): an application of it runs no raw SQL

    def __init__(self, url):
        self.engine = create_engine(url, connect_args=NO_PREPARE, **self.pool)

    @contextlib.contextmanager
    def session(self, tenant):
        with Session(self.engine.execution_options(schema_translate_map={"tenant": tenant})) as session:
            yield session

    def close(self):
        self.engine.dispose()


class SharedNullPool(SharedEngine):
    """A pool that opens a new connection per checkout: no backend is ever reused, and nothing about the
    layer keeps tenants apart by construction."""

    pool = {"poolclass": NullPool}


class StartupOptions(PerTenantEngines):
    """search_path given as a startup parameter, one engine per tenant (plain tenant names only)."""

    models = "unqualified"

    def _engine(self, tenant):
        if tenant not in self.engines:
            self.engines[tenant] = create_engine(
                self.url, connect_args={**NO_PREPARE, "options": f"-c search_path={tenant}"}, pool_size=2)
        return self.engines[tenant]


class SlugsOnly(SharedEngine):
    """Accepts lower-case ASCII slugs only, and says so before any SQL."""

    def session(self, tenant):
        if not SLUG.fullmatch(tenant):
            raise ValueError(f"tenant name {tenant!r} is not a slug ([a-z][a-z0-9_]*)")
        return super().session(tenant)


class QuotesNaively(SharedEngine):
    """Binds with ``SET LOCAL search_path TO "<name>"`` without doubling the name's own double quotes:
    a name holding one breaks the SQL on the server."""

    models = "unqualified"

    @contextlib.contextmanager
    def session(self, tenant):
        with Session(self.engine) as session:
            session.execute(text(f'SET LOCAL search_path TO "{tenant}"'))
            yield session


class PerTenantLeavesTimeout(PerTenantEngines):
    """One engine per tenant whose requests end by committing ``SET statement_timeout``: the tenant's next
    request gets a connection with it (pool_pollution, even though no other tenant ever gets it)."""

    @contextlib.contextmanager
    def session(self, tenant):
        with super().session(tenant) as session:
            yield session
            session.rollback()
            session.execute(text("SET statement_timeout = '5s'"))
            session.commit()
