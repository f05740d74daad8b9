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

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

from harness.checks.history import Snapshot
from harness.config import SETTINGS_BY_NAME
from harness.errors import StartupTimeout, UsageError
from harness.stack import POOLED_ROUTES, Missing, Stack
from harness.team import Team, observer
from harness.team import provisioning as team_provisioning
from harness.tenancy.models import model_set
from harness.tenancy.seeds import LABELS, WRITTEN_TABLES, quote, reseed_script
from harness.tenancy.tenants import HOSTILE_TENANTS, PUBLIC, validate_tenants

KILL_GRACE = 0.25  # seconds a backend may take to exit after PgBouncer's KILL


class Tenancy:
    """The tenant schemas of one stack: provision once, reset often, read back as superuser."""

    def __init__(self, stack: Stack, tenants: Iterable[str], *, decoys: bool = True, team: Team | None = None,
                 step_deadline: float = SETTINGS_BY_NAME["step_deadline"].default):
        self.stack = stack
        self.step_deadline = step_deadline  # seconds a step of a cell on these schemas may take
        self.tenants: tuple[str, ...] = validate_tenants(tuple(stack.tenant_name(t) for t in tenants))
        # The hostile set as this stack names it (the external backend prefixes every schema).
        self.hostile: tuple[str, ...] = tuple(stack.tenant_name(t) for t in HOSTILE_TENANTS)
        self.decoys = decoys and stack.owns_public
        self.team = team  # the team's own tables (canaries, observed) and code paths
        self.team_models = team.models if team is not None else None
        self.observer_schema = stack.tenant_name(observer.SCHEMA)
        self.models = model_set("placeholder")
        self.engine: Engine = create_engine(stack.superuser_url, connect_args={"prepare_threshold": None},
                                            poolclass=None, pool_size=2)
        self.provisioned: list[str] = []
        self._seed_state: Snapshot | None = None  # the written tables right after a full seed
        # read back by the last cell after its strategy closed, with the next transaction id at that moment
        self._last_state: tuple[int, Snapshot] | None = None
        self._state_sql: str | None = None
        # Databases the code under test connects to (other layouts add theirs).
        self.databases: list[str] = [stack.database]
        # The pooled routes a cell ran on since their poolers last dropped their server connections (None:
        # unknown, every pooler drops): a pooler no cell used since keeps only clean connections.
        self._used_routes: set[str] | None = None
        self._layouts: dict[str, Any] = {"schema": self}

    def for_layout(self, layout: str) -> Any:
        """The tenancy of a layout on the same stack: this one for "schema", a companion for "rls"."""
        if layout not in self._layouts:
            from harness.tenancy.rls import RlsTenancy

            if layout != "rls":
                raise UsageError(f"Unknown layout {layout!r}.", fix=["use 'schema' or 'rls'"])
            if layout not in self.stack.layouts:
                raise UsageError(f"The {layout} layout cannot run on the {self.stack.backend} backend.",
                                 checked=[self.stack.why_not(Missing.LAYOUT, layout)],
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
        if not self.provisioned and self.team_models is not None:  # the team's --schema-sql, once per database
            team_provisioning.run_schema_sql(self.engine, self.team_models)
        with self.engine.begin() as conn:
            if not self.provisioned and self.team_models is not None:
                team_provisioning.check_shared_tables(self.team_models, self.stack.owns_public)
                self._create_schema(conn, self.observer_schema)
                team_provisioning.prepare_observer(conn, self.observer_schema, self.stack.app_role)
            if not self.provisioned and self.decoys:
                self._create_tables(conn, PUBLIC, create_schema=False)
            for tenant in new:
                self._create_tables(conn, tenant, create_schema=True)
        self.provisioned.extend(new)
        self._state_sql = None  # more schemas to read back
        self.reset(reconnect=False, reseed_only_written=False)

    def _create_schema(self, conn: Connection, schema: str) -> None:
        q = quote(conn, schema)
        conn.execute(text(f"CREATE SCHEMA {q}"))
        if self.stack.schema_comment:
            # COMMENT takes no bind parameter; the driver-level call keeps ':' in it literal.
            comment = self.stack.schema_comment.replace("'", "''")
            conn.exec_driver_sql(f"COMMENT ON SCHEMA {q} IS '{comment}'")

    def _create_tables(self, conn: Connection, schema: str, *, create_schema: bool) -> None:
        q = quote(conn, schema)
        if create_schema:
            self._create_schema(conn, schema)
        mapped = conn.execution_options(schema_translate_map={"tenant": schema})
        self.models.metadata.create_all(mapped)
        if self.team_models is not None:
            team_provisioning.create_tables(conn, self.team_models, schema, schema, self.observer_schema,
                                            self.stack.app_role)
            team_provisioning.continue_sequences(conn, self.team_models, schema)
        role = quote(conn, self.stack.app_role)
        conn.execute(text(f"GRANT USAGE ON SCHEMA {q} TO {role}"))
        conn.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA {q} TO {role}"))
        conn.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {q} TO {role}"))

    def _tables(self):
        return list(self.models.metadata.sorted_tables)

    def _reset_tables(self):
        """The written tables and those referencing them: all the workload can change."""
        written = {t for t in self._tables() if t.name in WRITTEN_TABLES}
        return [t for t in self._tables()
                if t in written or any(fk.column.table in written for fk in t.foreign_keys)]

    def reset(self, *, reconnect: bool = True, timeout: float = 10.0, reseed_only_written: bool = True) -> None:
        """Leave no server connection of the login role, then reseed the schemas the last run changed.

        The workload writes only ``WRITTEN_TABLES``; emptying those (and the
        tables that reference them) and seeding them again restores every row
        the workload can touch. Which schemas changed is read off the state the
        last cell read back (:meth:`snapshot`, taken after its strategy was
        closed), or read now when there is none; most examples commit little or
        nothing, and an unchanged schema is left alone.
        """
        if reconnect:  # first: no connection of the code under test writes while the reseed runs
            self.drop_server_connections(timeout)
        last, self._last_state = self._last_state, None
        with self.engine.begin() as conn:
            full = not reseed_only_written or self._seed_state is None
            # The read-back holds only if no transaction wrote since (a connection the code under test
            # leaked, a background task): any write takes a transaction id, so the next one to be given
            # out must be the same as when the read-back was taken.
            trusted = last is not None and last[0] == self._next_xid(conn)
            state = None if full else (last[1] if trusted else self._read_state(conn))
            changed = [s for s in self.schemas if full or state.get(s) != self._seed_state.get(s)]
            if changed:
                tables = tuple(self._tables() if full else self._reset_tables())
                script = ";\n".join(reseed_script(conn.dialect, tables, schema, (schema,)) for schema in changed)
                conn.connection.driver_connection.execute(script)  # no parameters: one simple-protocol round trip
            if self.team_models is not None:  # what the team's steps and code changed is not read back: reseed all
                team_provisioning.reseed(conn, self.team_models, self.schemas)
            if full:
                self._seed_state = self._read_state(conn)

    def uses(self, route: str) -> None:
        """A cell is about to run on ``route``: its pooler drops its server connections at the next reset."""
        if self._used_routes is not None:
            self._used_routes.add(route)

    def drop_server_connections(self, timeout: float = 10.0) -> None:
        """Drop the server connections of every pooler a cell used since the last drop (of every pooler, the
        first time) and wait until the login role has no backend left.

        A backend that outlives the deadline (a leaked connection) is terminated,
        so no connection state carries over into the next example.
        """
        poolers = self.stack.poolers
        used, self._used_routes = self._used_routes, set()
        # The fault proxy stands between every pooler and PostgreSQL: a fault it injected for one route's cell
        # cut or slowed the others' server connections too, so every pooler drops.
        dropped = {r: p for r, p in poolers.items() if used is None or r in used or self.stack.proxy is not None}
        # A pooler that prefills (pgagroal) opens fresh server connections as soon as it has dropped the old
        # ones, and one that was not dropped keeps its own. Reached through PostgreSQL's socket, it waits for
        # the backends it dropped itself, and the wait below is for the other backends (TCP); reached over TCP
        # (the fault proxy, docker), every pooler drops and only the backends seen before must go.
        prefilled = [p for p in poolers.values() if getattr(p, "prefills", False)]
        through_socket = all(str(getattr(p, "server_host", "")).startswith("/") for p in prefilled)
        if prefilled and not through_socket:
            dropped = dict(poolers)
        query = text("SELECT pid FROM pg_stat_activity WHERE usename = :role AND datname = ANY(:dbs) "
                     "AND pid <> pg_backend_pid()" + (" AND client_addr IS NOT NULL" if prefilled and through_socket
                                                      else ""))
        before: set[int] | None = None
        if prefilled and not through_socket:
            with self.engine.connect() as conn:
                before = {row[0] for row in conn.execute(query, {"role": self.stack.app_role, "dbs": self.databases})}
        for pooler in dropped.values():
            pooler.drop_server_connections(self.databases, timeout)
        # Backends whose pooler connection was dropped exit within milliseconds.
        # One that outlives a short grace was missed (a session-pool server still
        # running its DISCARD ALL, say) or belongs to a pooled route the harness
        # cannot manage (external backend): it is terminated from the server side.
        unmanaged = [r for r in self.stack.routes if r in POOLED_ROUTES and r not in self.stack.poolers]
        started = time.monotonic()
        grace = started + (0 if unmanaged else min(timeout, KILL_GRACE))
        deadline = started + timeout
        terminated: set[int] = set()
        with self.engine.connect() as conn:
            while True:
                pids = {row[0] for row in conn.execute(query, {"role": self.stack.app_role,
                                                               "dbs": self.databases})}
                if before is not None:
                    pids &= before
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
    def _read_state(self, conn: Connection) -> Snapshot:
        """Rows of the written tables in every schema: {schema: {table: [(id, owner, label)]}}."""
        if self._state_sql is None:
            parts = [f"SELECT {i} AS s, '{table}' AS t, id, owner, {LABELS[table]} AS label "
                     f"FROM {quote(conn, schema)}.{quote(conn, table)}"
                     for i, schema in enumerate(self.schemas) for table in WRITTEN_TABLES]
            self._state_sql = " UNION ALL ".join(parts) + " ORDER BY 1, 2, 3"
        out: Snapshot = {schema: {table: [] for table in WRITTEN_TABLES} for schema in self.schemas}
        # Prepared: the same query after every cell, planned once per connection.
        for s_index, table, row_id, owner, label in conn.connection.driver_connection.execute(
                self._state_sql, prepare=True):
            out[self.schemas[s_index]][table].append((row_id, owner, label))
        return out

    @staticmethod
    def _next_xid(conn: Connection) -> int:
        """The next transaction id the server will give out (txid_* works on every supported version)."""
        return int(conn.exec_driver_sql("SELECT txid_snapshot_xmax(txid_current_snapshot())").scalar())

    def snapshot(self) -> Snapshot:
        """The superuser's read-back of every schema, for the write checks (and the next reset)."""
        with self.engine.begin() as conn:
            next_xid = self._next_xid(conn)
            state = self._read_state(conn)
        self._last_state = (next_xid, state)
        return state

    def close(self) -> None:
        for layout, tenancy in self._layouts.items():
            if tenancy is not self:
                tenancy.close()
        self.engine.dispose()
