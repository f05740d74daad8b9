"""The row-level security layout: one shared table per model, a tenant column, RLS.

The tables live in ``public`` of a database of their own (``tenant_rls``), are
owned by the application's login role (as migrations usually leave them) and
have row-level security enabled. Whether policies are forced, and what they
key on, is the strategy's business: its optional ``provision(admin_url,
tenants)`` hook creates roles, functions and policies; the harness then seeds
rows as superuser (superusers bypass RLS). Note that the table owner, like any
superuser or BYPASSRLS role, skips policies unless they are FORCEd.

Snapshots group rows by their tenant column, so the write checks of the schema
layout apply unchanged: a tenant's "schema" is its rows.

The tables are ``model_set(SHARED)``'s, mapped imperatively; a layer that wants
declarative classes for them uses :mod:`harness.tenancy.declarative`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

from harness.errors import UsageError
from harness.stack.postgres import APP_ROLE, RLS_DATABASE
from harness.tenancy.models import SHARED, model_set
from harness.tenancy.seeds import LABELS, WRITTEN_TABLES, quote, reseed_script

DATABASE = RLS_DATABASE  # made with the stack natively (harness.stack.postgres), here on other backends


class RlsTenancy:
    layout = "rls"

    def __init__(self, parent, tenants: tuple[str, ...]):
        self.parent = parent
        self.stack = parent.stack
        self.tenants = parent.tenants  # what programs draw from
        self.seeded = tenants  # every tenant with rows (the default set and the hostile names)
        self.models = model_set(SHARED)
        self.admin_url = self.stack.superuser_url.set(database=DATABASE)
        self.engine: Engine | None = None
        self.prepared_for: str | None = None
        self._seed_fingerprint: list[tuple] | None = None

    @property
    def schemas(self) -> list[str]:
        return list(self.seeded)

    def url(self, route: str):
        return self.stack.url(route).set(database=DATABASE)

    def provision(self) -> None:
        with self.parent.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": DATABASE}).first()
            if not exists:
                conn.execute(text(f"CREATE DATABASE {DATABASE}"))
            conn.execute(text(f"GRANT CONNECT, CREATE ON DATABASE {DATABASE} TO {APP_ROLE}"))
        self.engine = create_engine(self.admin_url, connect_args={"prepare_threshold": None}, pool_size=2)
        with self.engine.begin() as conn:
            self.models.metadata.create_all(conn)
            for table in self.models.metadata.sorted_tables:
                conn.execute(text(f"ALTER TABLE {quote(conn, table.name)} OWNER TO {APP_ROLE}"))
                conn.execute(text(f"ALTER TABLE {quote(conn, table.name)} ENABLE ROW LEVEL SECURITY"))
        if DATABASE not in self.parent.databases:
            self.parent.databases.append(DATABASE)
        self.reset(reconnect=False, full=True)

    # -- policies -------------------------------------------------------------------
    def prepare(self, strategy: Any) -> None:
        """Give the tables the strategy's policies (its provision hook), once per strategy."""
        if self.prepared_for == strategy.name:
            return
        assert self.engine is not None
        with self.engine.begin() as conn:
            for table in self.models.metadata.sorted_tables:
                q = quote(conn, table.name)
                for (policy,) in conn.execute(text("SELECT policyname FROM pg_policies WHERE schemaname = 'public' "
                                                   "AND tablename = :t"), {"t": table.name}):
                    conn.execute(text(f"DROP POLICY {quote(conn, policy)} ON {q}"))
                conn.execute(text(f"ALTER TABLE {q} ENABLE ROW LEVEL SECURITY"))
                conn.execute(text(f"ALTER TABLE {q} NO FORCE ROW LEVEL SECURITY"))
        hook = getattr(strategy.instance, "provision", None)
        if callable(hook):
            try:
                hook(self.admin_url, self.seeded)
            except Exception as exc:
                raise UsageError(f"Strategy {strategy.name!r}: provision(admin_url, tenants) raised "
                                 f"{type(exc).__name__}: {exc}.",
                                 fix=["the hook runs as superuser on the RLS database; make it idempotent"]) from exc
        self.prepared_for = strategy.name

    # -- state ------------------------------------------------------------------------
    def _fingerprint(self, conn: Connection) -> list[tuple]:
        parts = [f"SELECT '{t}', md5(coalesce(string_agg(owner || ':' || id || ':' || {LABELS[t]}, ',' "
                 f"ORDER BY owner, id), '')) FROM {t}" for t in WRITTEN_TABLES]
        return [tuple(r) for r in conn.execute(text(" UNION ALL ".join(parts)))]

    def reset(self, *, reconnect: bool = True, full: bool = False, timeout: float = 10.0) -> None:
        """Leave no server connection of the login role, then reseed the shared tables if they changed.

        As for the schema layout, the pools are emptied first, so nothing of the
        code under test writes while the reseed runs; the shared tables are
        compared with the seed by one fingerprint query.
        """
        assert self.engine is not None
        if reconnect:
            self.parent.drop_server_connections(timeout)
        with self.engine.begin() as conn:
            if full or not self._seed_fingerprint or self._fingerprint(conn) != self._seed_fingerprint:
                tables = tuple(self.models.metadata.sorted_tables)
                script = reseed_script(conn.dialect, tables, None, tuple(self.seeded))
                conn.connection.driver_connection.execute(script)  # no parameters: one simple-protocol round trip
                self._seed_fingerprint = self._fingerprint(conn)

    def snapshot(self) -> dict[str, dict[str, list[tuple[int, str, str]]]]:
        """Rows of the written tables grouped by their tenant column: {tenant: {table: rows}}."""
        assert self.engine is not None
        out: dict[str, dict[str, list[tuple[int, str, str]]]] = {}
        with self.engine.connect() as conn:
            for table in WRITTEN_TABLES:
                for owner, row_id, label in conn.execute(
                        text(f"SELECT owner, id, {LABELS[table]} FROM {table} ORDER BY owner, id")):
                    out.setdefault(owner, {t: [] for t in WRITTEN_TABLES})[table].append((row_id, owner, label))
        for tenant in self.seeded:
            out.setdefault(tenant, {t: [] for t in WRITTEN_TABLES})
        return out

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
