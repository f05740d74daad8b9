"""A sound layer and the team's code paths that misbehave inside it, for tests/test_onboarding.py
(importable as ``leftover_strategies``).

``PerTenantEngines`` is sound on its own: one engine per tenant whose connections start with the
tenant's search_path (raw SQL follows it), plus the translate map for the ORM. ``leave_path`` is an
app's code path that switches the search_path to another tenant's schema for a report and commits,
so the ``SET`` stays on the pooled connection: the next request of that tenant on it runs its raw SQL
in the other tenant's schema. ``chatty`` warns and logs as an app does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings

from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import Session

from harness.tenancy.tenants import DEFAULT_TENANTS

log = logging.getLogger("leftover_app")
log.setLevel(logging.INFO)  # the app's own logger says what it does at INFO, as apps configure it


def _quoted(engine, schema: str) -> str:
    return engine.dialect.identifier_preparer.quote_identifier(schema)


class PerTenantEngines:
    layout = "schema"
    models = "placeholder"
    raw_sql = ("unqualified",)

    def __init__(self, url):
        self.url = url
        self.engines = {}
        self.lock = threading.Lock()

    def _engine(self, tenant: str):
        with self.lock:
            engine = self.engines.get(tenant)
            if engine is None:
                engine = create_engine(self.url, connect_args={"prepare_threshold": None}, pool_size=2,
                                       max_overflow=2)
                path = _quoted(engine, tenant)

                @event.listens_for(engine, "connect")
                def bind(dbapi_connection, record):  # every connection of this engine starts in its tenant
                    cursor = dbapi_connection.cursor()
                    cursor.execute(f"SET search_path TO {path}")
                    cursor.close()
                    dbapi_connection.commit()

                self.engines[tenant] = engine
        return engine

    @contextlib.contextmanager
    def session(self, tenant: str):
        bound = self._engine(tenant).execution_options(schema_translate_map={"tenant": tenant})
        with Session(bound) as session:
            yield session

    def close(self):
        for engine in self.engines.values():
            engine.dispose()


def neighbour(tenant: str) -> str:
    """Another tenant of the default set: the one after ``tenant``."""
    tenants = list(DEFAULT_TENANTS)
    return tenants[(tenants.index(tenant) + 1) % len(tenants)] if tenant in tenants else tenants[0]


def leave_path(session, tenant):
    """A report over the neighbour's schema that forgets to switch back, and commits."""
    quoted = _quoted(session.get_bind(), neighbour(tenant))
    session.execute(text(f"SET search_path TO {quoted}"))
    session.commit()


def chatty(session, tenant):
    """Logs and warns as an app does while it serves a request."""
    log.info("serving %s", tenant)
    log.warning("slow query for %s", tenant)
    warnings.warn("total() is deprecated, use sum_total()", UserWarning, stacklevel=1)
    return session.execute(text("SELECT 1")).scalar_one()
