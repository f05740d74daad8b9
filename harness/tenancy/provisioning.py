"""Provisioning and reset of tenant schemas, run as the harness's superuser.

- one schema per tenant, named exactly like the tenant (always quoted);
- the model set's tables in each, seeded with the same primary keys everywhere;
- decoy copies of the tables in ``public`` with rows owned by ``public``, so a
  search_path that falls back to ``public`` is a provable leak, not an empty result;
- reset between examples: truncate and reseed (cheap), RECONNECT the PgBouncer
  pools and wait until no server connection of the login role is left (total).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.engine import Connection, Engine

from harness.errors import StartupTimeout, UsageError
from harness.stack import POOLED_ROUTES, Stack
from harness.tenancy.models import model_set
from harness.tenancy.seeds import LABELS, WRITTEN_TABLES, quote, reseed_script
from harness.tenancy.tenants import HOSTILE_TENANTS, PUBLIC, validate_tenants

KILL_GRACE = 0.25  # seconds a backend may take to exit after PgBouncer's KILL


class Tenancy:
    """The tenant schemas of one stack: provision once, reset often, read back as superuser."""

    def __init__(self, stack: Stack, tenants: Iterable[str], *, decoys: bool = True,
                 extra_metadata: MetaData | None = None):
        self.stack = stack
        self.tenants: tuple[str, ...] = validate_tenants(tuple(stack.tenant_name(t) for t in tenants))
        # The hostile set as this stack names it (the external backend prefixes every schema).
        self.hostile: tuple[str, ...] = tuple(stack.tenant_name(t) for t in HOSTILE_TENANTS)
        self.decoys = decoys and stack.owns_public
        self.extra_metadata = extra_metadata
        self.models = model_set("placeholder")
        self.engine: Engine = create_engine(stack.superuser_url, connect_args={"prepare_threshold": None},
                                            poolclass=None, pool_size=2)
        self.provisioned: list[str] = []
        self._seed_fingerprint: list[tuple] | None = None
        # Databases the code under test connects to (other layouts add theirs).
        self.databases: list[str] = [stack.database]
        self._layouts: dict[str, Any] = {"schema": self}

    def for_layout(self, layout: str) -> Any:
        """The tenancy of a layout on the same stack: this one for "schema", a companion for "rls"."""
        if layout not in self._layouts:
            from harness.tenancy.rls import RlsTenancy

            if layout != "rls":
                raise UsageError(f"Unknown layout {layout!r}.", fix=["use 'schema' or 'rls'"])
            if layout not in self.stack.layouts:
                raise UsageError(f"The {layout} layout cannot run on the {self.stack.backend} backend.",
                                 checked=[self.stack.not_run.get(f"layout {layout}", "")],
                                 fix=["use the native or the docker backend for it"])
            companion = RlsTenancy(self, self.tenants + tuple(t for t in self.provisioned if t not in self.tenants))
            companion.provision()
            self._layouts[layout] = companion
        return self._layouts[layout]

    def url(self, route: str):
        """The URL the code under test gets for a route."""
        return self.stack.url(route)

    # -- schemas ------------------------------------------------------------------
    @property
    def schemas(self) -> list[str]:
        """Every schema holding harness rows: the tenants' and (with decoys) ``public``."""
        return self.provisioned + ([PUBLIC] if self.decoys else [])

    def provision(self, tenants: Iterable[str] | None = None) -> None:
        """Create the schemas and tables of ``tenants`` (default: the tenant set) and seed them."""
        wanted = (validate_tenants(tuple(self.stack.tenant_name(t) for t in tenants)) if tenants is not None
                  else self.tenants)
        new = [t for t in wanted if t not in self.provisioned]
        with self.engine.begin() as conn:
            if not self.provisioned and self.decoys:
                self._create_tables(conn, PUBLIC, create_schema=False)
            for tenant in new:
                self._create_tables(conn, tenant, create_schema=True)
        self.provisioned.extend(new)
        self.reset(reconnect=False, reseed_only_written=False)

    def _create_tables(self, conn: Connection, schema: str, *, create_schema: bool) -> None:
        q = quote(conn, schema)
        if create_schema:
            conn.execute(text(f"CREATE SCHEMA {q}"))
            if self.stack.schema_comment:
                # COMMENT takes no bind parameter; the driver-level call keeps ':' in it literal.
                comment = self.stack.schema_comment.replace("'", "''")
                conn.exec_driver_sql(f"COMMENT ON SCHEMA {q} IS '{comment}'")
        mapped = conn.execution_options(schema_translate_map={"tenant": schema})
        self.models.metadata.create_all(mapped)
        if self.extra_metadata is not None:
            self.extra_metadata.create_all(mapped)
        role = quote(conn, self.stack.app_role)
        conn.execute(text(f"GRANT USAGE ON SCHEMA {q} TO {role}"))
        conn.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {q} TO {role}"))

    def _tables(self):
        return list(self.models.metadata.sorted_tables)

    def _reset_tables(self):
        """The written tables and those referencing them: all the workload can change."""
        written = {t for t in self._tables() if t.name in WRITTEN_TABLES}
        return [t for t in self._tables()
                if t in written or any(fk.column.table in written for fk in t.foreign_keys)]

    def reset(self, *, reconnect: bool = True, timeout: float = 10.0, reseed_only_written: bool = True) -> None:
        """Truncate and reseed every schema; then leave no server connection of the login role.

        The workload writes only ``WRITTEN_TABLES``; truncating those (and the
        tables that reference them) restores every row the workload can touch.
        """
        with self.engine.begin() as conn:
            # Only the schemas whose written tables changed since the last reseed are reseeded (most
            # examples commit little or nothing): a fingerprint per schema and table proves which.
            seen = self._fingerprint(conn) if reseed_only_written and self._seed_fingerprint else None
            changed = [s for i, s in enumerate(self.schemas)
                       if seen is None or {r for r in seen if r[0] == i} != {r for r in self._seed_fingerprint if r[0] == i}]
            if changed:
                tables = tuple(self._reset_tables() if reseed_only_written else self._tables())
                script = ";\n".join(reseed_script(conn.dialect, tables, schema, (schema,)) for schema in changed)
                conn.connection.driver_connection.execute(script)  # no parameters: one simple-protocol round trip
                if seen is None:  # after a reseed of changed schemas only, the fingerprint is the seed's again
                    self._seed_fingerprint = self._fingerprint(conn)
        if reconnect:
            self.drop_server_connections(timeout)

    def drop_server_connections(self, timeout: float = 10.0) -> None:
        """Drop both PgBouncer pools' server connections and wait until the login role has no backend left.

        A backend that outlives the deadline (a leaked connection) is terminated,
        so no connection state carries over into the next example.
        """
        for route in self.stack.bouncers:
            # KILL drops the database's server (and client) connections at once;
            # RECONNECT would wait for PgBouncer's janitor. RESUME lets clients in again.
            known = {row["name"] for row in self.stack.admin(route, "SHOW DATABASES")}
            for database in self.databases:
                if database in known:
                    self.stack.admin(route, f'KILL "{database}"')
                    self.stack.admin(route, f'RESUME "{database}"')
        # Backends whose PgBouncer connection was killed exit within milliseconds.
        # One that outlives a short grace was missed by KILL (a session-pool server
        # still running its DISCARD ALL, say) or belongs to a pooled route without
        # an admin console (external backend): it is terminated from the server side.
        unmanaged = [r for r in self.stack.routes if r in POOLED_ROUTES and r not in self.stack.bouncers]
        started = time.monotonic()
        grace = started + (0 if unmanaged else min(timeout, KILL_GRACE))
        deadline = started + timeout
        query = text("SELECT pid FROM pg_stat_activity WHERE usename = :role AND datname = ANY(:dbs) "
                     "AND pid <> pg_backend_pid()")
        terminated: set[int] = set()
        with self.engine.connect() as conn:
            while True:
                pids = {row[0] for row in conn.execute(query, {"role": self.stack.app_role,
                                                               "dbs": self.databases})}
                if not pids:
                    conn.rollback()
                    return
                now = time.monotonic()
                if now >= grace:
                    for pid in pids - terminated:
                        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                    terminated |= pids
                if now >= deadline:
                    conn.commit()
                    raise StartupTimeout(
                        f"Backends of {self.stack.app_role} survived pg_terminate_backend for {timeout:.0f}s.",
                        checked=[f"pids still there: {sorted(pids)}"],
                        fix=["a server under heavy load may need longer: raise the reset timeout"])
                conn.rollback()
                time.sleep(0.002)

    # -- reading back ---------------------------------------------------------------
    def _written_rows_sql(self, conn: Connection, select: str) -> str:
        """One UNION ALL over the written tables of every schema: (schema index, table, <select>)."""
        parts = []
        for i, schema in enumerate(self.schemas):
            for table in WRITTEN_TABLES:
                parts.append(f"SELECT {i} AS s, '{table}' AS t, {select.format(label=LABELS[table])} "
                             f"FROM {quote(conn, schema)}.{quote(conn, table)}")
        return " UNION ALL ".join(parts)

    def _fingerprint(self, conn: Connection) -> list[tuple]:
        sql = self._written_rows_sql(
            conn, "md5(coalesce(string_agg(id || ':' || owner || ':' || {label}, ',' ORDER BY id), ''))")
        return [tuple(row) for row in conn.execute(text(sql))]

    def snapshot(self) -> dict[str, dict[str, list[tuple[int, str, str]]]]:
        """Rows of the written tables in every schema: {schema: {table: [(id, owner, label)]}}."""
        out: dict[str, dict[str, list[tuple[int, str, str]]]] = {
            schema: {table: [] for table in WRITTEN_TABLES} for schema in self.schemas}
        with self.engine.connect() as conn:
            sql = self._written_rows_sql(conn, "id, owner, {label} AS label") + " ORDER BY 1, 2, 3"
            for s_index, table, row_id, owner, label in conn.execute(text(sql)):
                out[self.schemas[s_index]][table].append((row_id, owner, label))
        return out

    def close(self) -> None:
        for layout, tenancy in self._layouts.items():
            if tenancy is not self:
                tenancy.close()
        self.engine.dispose()
