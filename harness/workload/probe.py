"""The pool probe: after a request ends, read what state its connections carry.

Two places can hold a connection's state:
- PgBouncer's server connections (session and transaction routes): the probe
  opens one client per idle server connection, each holding a transaction so
  that PgBouncer hands every one of them a different server, and shows the
  probed backend pids against ``SHOW SERVERS``;
- the strategy's own SQLAlchemy pool (any route), when it exposes ``engine``:
  every checked-in connection is checked out and read. SQLAlchemy resets a
  returned connection with ROLLBACK only, so session state survives it.

One query per connection reads every kind of session state (history.STATE_KINDS)
and the probe keeps what differs from a pristine connection: a fresh direct
connection of the same login to the same database, read once per probe.

Custom (placeholder) settings cannot be listed: PostgreSQL hides them from
``pg_settings`` (checked on 15: ``SET myx.yy = 'q'`` leaves no row). The probe
reads a list of names: common ones, those the strategy declares in ``settings``,
those the run's statements set (``SET x.y``, ``set_config('x.y', ...)``, with the
name inline or bound; :class:`SettingNames` records them from every SQLAlchemy
engine of the process while a cell runs) and those row-level-security policies
and functions read (``current_setting('x.y'`` in ``pg_policies`` and ``pg_proc``).
A layer that sets a custom setting through a raw driver connection, outside
SQLAlchemy, with a name no policy or function reads, is not seen.

Protocol-level prepared statements (psycopg's ``_pg3_*``, after
``prepare_threshold`` executions; asyncpg's ``__asyncpg_stmt_*``) are the driver's
own cache, tied to its client connection and replanned when search_path changes;
only SQL-level ``PREPARE`` (``pg_prepared_statements.from_sql``) counts as state a
request left behind. The probe reads the application's pool through whatever
driver it uses (psycopg, psycopg2, asyncpg), with that driver's cursor.
"""

from __future__ import annotations

import asyncio

import re
import threading
from typing import Any, Iterable

import psycopg
from sqlalchemy.exc import DBAPIError
from psycopg import sql
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from harness.stack import Stack
from harness.stack.pgbouncer import IDLE_SERVER_STATES
from harness.checks.history import ConnectionState
from harness.tenancy import drivers

COMMON_SETTINGS = ("app.tenant", "app.tenant_id", "app.current_tenant", "app.schema")

# Read apart (search_path has a kind of its own) or set per transaction by the server itself.
NOT_SESSION_STATE = ("search_path", "transaction_isolation", "transaction_read_only", "transaction_deferrable")

_NAME = r"[A-Za-z_][\w$]*\.[A-Za-z_][\w$]*"
_SET_NAME = re.compile(r"\bSET\s+(?:SESSION\s+|LOCAL\s+)?(" + _NAME + r")\s*(?:=|\bTO\b)", re.IGNORECASE)
_SET_CONFIG = re.compile(r"\bset_config\s*\(\s*'(" + _NAME + r")'", re.IGNORECASE)
_BOUND_NAME = re.compile(_NAME)
_READ_IN_CATALOG = r"current_setting\(\s*'(" + _NAME + r")'"
CATALOG_NAMES_QUERY = (
    "SELECT DISTINCT m[1] FROM ("
    " SELECT regexp_matches(coalesce(qual, '') || ' ' || coalesce(with_check, ''), %(pattern)s, 'g') AS m"
    " FROM pg_policies"
    " UNION ALL SELECT regexp_matches(prosrc, %(pattern)s, 'g') FROM pg_proc"
    " WHERE prosrc LIKE '%%current_setting%%' AND pronamespace <> 'pg_catalog'::regnamespace) AS found")


def setting_names_in(statement: str, parameters: Any = None) -> set[str]:
    """Custom setting names a statement sets: inline in ``SET``/``set_config``, or bound to a ``set_config``."""
    found = set(_SET_NAME.findall(statement)) | set(_SET_CONFIG.findall(statement))
    if parameters and "set_config" in statement.lower():
        values = parameters.values() if isinstance(parameters, dict) else parameters
        for value in values if isinstance(values, Iterable) and not isinstance(values, (str, bytes)) else ():
            if isinstance(value, dict):
                found |= {v for v in value.values() if isinstance(v, str) and _BOUND_NAME.fullmatch(v)}
            elif isinstance(value, str) and _BOUND_NAME.fullmatch(value):
                found.add(value)
    return found


class SettingNames:
    """Custom setting names seen in the statements SQLAlchemy executed while a cell ran.

    Listens on the Engine class (so on every engine, also those a layer makes
    per request or binds through a Connection) from :meth:`start` to
    :meth:`stop`; a statement costs one regular-expression scan.
    """

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._lock = threading.Lock()
        self._listening = False

    def _seen(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if "set" in statement or "SET" in statement or "Set" in statement:
            found = setting_names_in(statement, parameters)
            if found - self.names:
                with self._lock:
                    self.names |= found

    def start(self) -> None:
        if not self._listening:
            event.listen(Engine, "before_cursor_execute", self._seen)
            self._listening = True

    def stop(self) -> None:
        if self._listening:
            event.remove(Engine, "before_cursor_execute", self._seen)
            self._listening = False


def catalog_setting_names(conn: psycopg.Connection) -> tuple[str, ...]:
    """Custom setting names that row-level-security policies and functions read."""
    rows = conn.execute(CATALOG_NAMES_QUERY, {"pattern": _READ_IN_CATALOG}).fetchall()
    return tuple(sorted(r[0] for r in rows))


def _probe_query(settings: Iterable[str]) -> sql.Composed:
    custom = [sql.SQL("current_setting({}, true)").format(sql.Literal(name)) for name in settings]
    array = sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(custom)) if custom else sql.SQL("ARRAY[]::text[]")
    excluded = sql.SQL(", ").join(sql.Literal(n) for n in NOT_SESSION_STATE)
    return sql.SQL(
        "SELECT pg_backend_pid(), current_setting('search_path'), current_user::text, session_user::text, "
        "{settings}, "
        "ARRAY(SELECT relname::text FROM pg_class WHERE relnamespace = pg_my_temp_schema() "
        "AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f') ORDER BY 1), "
        "ARRAY(SELECT CASE WHEN objsubid = 1 THEN ((classid::bigint << 32) | objid::bigint)::text "
        "ELSE classid::text || ',' || objid::text END || CASE WHEN mode = 'ShareLock' THEN ' (shared)' ELSE '' END "
        "FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted ORDER BY 1), "
        "ARRAY(SELECT pg_listening_channels() ORDER BY 1), "
        # the login role: the function behind pg_stat_activity, for this backend only (the view joins more)
        # (regrole's text would quote a mixed-case name; session_user's does not)
        "(SELECT rolname::text FROM pg_roles WHERE oid = "
        "(SELECT usesysid FROM pg_stat_get_activity(pg_backend_pid()))), "
        "ARRAY(SELECT name || '=' || setting FROM pg_settings WHERE source = 'session' AND name NOT IN ({excluded}) "
        "ORDER BY 1), "
        "ARRAY(SELECT name FROM pg_prepared_statements WHERE from_sql ORDER BY 1), "
        # the unnamed portal is the probe's own statement (asyncpg's, psycopg's), not a cursor a request left
        "ARRAY(SELECT name FROM pg_cursors WHERE name <> '' ORDER BY 1)"
    ).format(settings=array, excluded=excluded)


def _state(row: tuple[Any, ...], names: tuple[str, ...], pristine: dict[str, str],
           open_transaction: bool = False) -> ConnectionState:
    (pid, path, current_user, session_user, values, temp, locks, channels, login, session, prepared,
     cursors) = row
    differing = []
    for entry in session or ():
        name, _, value = entry.partition("=")
        if pristine.get(name) != value:
            differing.append((name, value, pristine.get(name, "")))
    return ConnectionState(pid=pid, search_path=path, current_user=current_user, session_user=session_user,
                           settings=tuple((n, v) for n, v in zip(names, values or []) if v),
                           temp_tables=len(temp or ()), advisory_locks=len(locks or ()),
                           listen_channels=len(channels or ()), open_transaction=open_transaction,
                           login_user=login or "", session_settings=tuple(differing),
                           prepared_statements=tuple(prepared or ()), cursors=tuple(cursors or ()),
                           temp_table_names=tuple(temp or ()), advisory_lock_keys=tuple(locks or ()),
                           channel_names=tuple(channels or ()))


def probed_names(settings: Iterable[str], *more: Iterable[str]) -> tuple[str, ...]:
    """The custom setting names to read: the common ones, then the others in a stable order."""
    extra = sorted({n for group in (settings, *more) for n in group} - set(COMMON_SETTINGS))
    return COMMON_SETTINGS + tuple(extra)


_PRISTINE: dict[tuple[str, ...], tuple[dict[str, str], tuple[str, ...]]] = {}


def read_pristine(stack: Stack, url: URL, strategy: str = "") -> tuple[dict[str, str], tuple[str, ...]]:
    """A fresh direct connection as ``url``'s login to its database: every setting's value, and the custom
    setting names its row-level-security policies and functions read.

    Read once per stack, login, database and strategy (whose provisioning may add policies) and kept: a
    generated cell runs dozens of programs, each probed, and a fresh login each time would cost more
    than the probes themselves."""
    key = (stack.run_id, str(url.username), str(url.database), strategy)
    if key not in _PRISTINE:
        direct = stack.url("direct") if "direct" in stack.routes else url
        with psycopg.connect(host=direct.host, port=direct.port, user=url.username, password=url.password,
                             dbname=url.database, prepare_threshold=None, connect_timeout=5) as conn:
            settings = dict(conn.execute("SELECT name, setting FROM pg_settings").fetchall())
            _PRISTINE[key] = (settings, catalog_setting_names(conn))
    return _PRISTINE[key]


class PoolerProbe:
    """Probes one pooled route; keeps its client connections where that changes nothing.

    As many clients as the pooler keeps idle server connections for the login
    role (:meth:`PoolerPart.idle_servers`) open a transaction each, which pins
    each to one server connection. In transaction mode an idle client holds no
    server, so probe clients are kept between probes (a login costs a SCRAM
    exchange). In session mode a client keeps its server until it disconnects,
    so probe clients are closed after every probe (the pooler then resets their
    servers, PgBouncer with server_reset_query, Pgpool-II with reset_query_list,
    as it would for any client).
    """

    def __init__(self, stack: Stack, route: str, settings: tuple[str, ...], url: URL | None = None,
                 driver: str = "psycopg"):
        self.stack = stack
        self.route = route
        self.url: URL = url or stack.url(route)  # the database the code under test uses
        self.settings = tuple(settings)
        self.names: tuple[str, ...] = ()
        self.query: sql.Composed | None = None
        self.pooler = stack.poolers[route]
        self.keep = self.pooler.pool_mode == "transaction"
        self.spare: list[psycopg.Connection] = []
        # Pgpool-II reuses a cached backend only for a client whose startup packet is the same byte for byte
        # as the one that made it, and drops the backend for any other: a libpq client (psycopg, psycopg2)
        # would neither see the state an asyncpg layer left (its packet names client_encoding) nor let it
        # reach the layer's next client. The probe logs in as the layer's driver does.
        self.as_asyncpg = self.pooler.kind == "pgpool" and driver == "asyncpg"
        # A pooler that says which of its processes served a client since (Pgpool-II's children): the marks
        # after the last probe. Unchanged marks: no client left a backend since, and the probe is skipped.
        self._marks: dict[str, Any] | None = None

    def _client(self) -> psycopg.Connection:
        if self.spare:
            return self.spare.pop()
        url = self.url
        return psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                               dbname=url.database, prepare_threshold=None, connect_timeout=5)

    def probe(self, names: Iterable[str] = (), pristine: dict[str, str] | None = None
              ) -> tuple[list[ConnectionState], tuple[int, ...]]:
        """Probe every idle server connection; return the states and the pids of the pooler's server
        connections where it lists them (PgBouncer's SHOW SERVERS), for coverage.

        ``names``: custom setting names to read besides the common and declared ones; ``pristine``: a fresh
        connection's settings (:func:`read_pristine`), which session settings are compared with."""
        wanted = probed_names(self.settings, names)
        if wanted != self.names:
            self.names, self.query = wanted, _probe_query(wanted)
        user, database = self.url.username or "", self.url.database or ""
        if self.pooler.kind == "pgbouncer":
            servers = [s for s in self.stack.admin(self.route, "SHOW SERVERS")
                       if s.get("user") == user and s.get("database") == database]
            count = sum(1 for s in servers if s.get("state") in IDLE_SERVER_STATES)
            pids = tuple(int(s["remote_pid"]) for s in servers if s.get("remote_pid"))
        else:
            marks = getattr(self.pooler, "client_marks", None)
            if marks is not None and self._marks is not None and marks() == self._marks:
                return [], ()
            count, pids = self.pooler.idle_servers(user, database), ()
        try:
            return self._probe_clients(count, pristine), pids
        finally:
            if self.pooler.kind != "pgbouncer" and getattr(self.pooler, "client_marks", None) is not None:
                self._marks = self.pooler.client_marks()

    def _probe_clients(self, count: int, pristine: dict[str, str] | None) -> list[ConnectionState]:
        if self.as_asyncpg:
            return asyncio.run(self._probe_as_asyncpg(count, pristine or {}))
        clients: list[psycopg.Connection] = []
        states: list[ConnectionState] = []
        try:
            for _ in range(count):
                conn = self._client()
                clients.append(conn)
                # The open transaction pins this client to one server until rollback.
                states.append(_state(conn.execute(self.query).fetchone(), self.names, pristine or {}))
        finally:
            for conn in clients:
                try:
                    conn.rollback()
                except psycopg.Error:
                    conn.close()
                    continue
                if self.keep:
                    self.spare.append(conn)
                else:
                    conn.close()
        return states

    async def _probe_as_asyncpg(self, count: int, pristine: dict[str, str]) -> list[ConnectionState]:
        """The probe with asyncpg clients (as SQLAlchemy's asyncpg dialect connects: no statement cache), each
        in a transaction until all have read; closed after (Pgpool-II pools per session)."""
        import asyncpg

        url, query = self.url, self.query.as_string(None)
        clients, states = [], []
        try:
            for _ in range(count):
                conn = await asyncpg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                                             database=url.database, statement_cache_size=0, timeout=5)
                clients.append(conn)
                await conn.execute("BEGIN")
                states.append(_state(tuple(await conn.fetchrow(query)), self.names, pristine))
        finally:
            for conn in clients:
                try:
                    await conn.execute("ROLLBACK")
                finally:
                    await conn.close()
        return states

    def close(self) -> None:
        for conn in self.spare:
            conn.close()
        self.spare.clear()


def _connection_broken(engine: Engine) -> tuple[type[BaseException], ...]:
    """The driver's errors of a connection that broke (its backend or PgBouncer gone)."""
    dbapi = getattr(engine.dialect, "loaded_dbapi", None) or engine.dialect.dbapi
    return tuple(getattr(dbapi, name) for name in ("OperationalError", "InterfaceError") if hasattr(dbapi, name))


def _read(proxy: Any, query: str) -> tuple[Any, ...]:
    """Run the probe's query on a checked-out pooled connection, through its DBAPI cursor (any driver);
    psycopg 3 is told not to prepare it (it would, at the 5th probe of one connection)."""
    cursor = proxy.cursor()
    try:
        if type(proxy.driver_connection).__module__.startswith("psycopg."):
            cursor.execute(query, prepare=False)
        else:
            cursor.execute(query)
        return tuple(cursor.fetchone())
    finally:
        cursor.close()


def probe_engine(engine: Engine, settings: tuple[str, ...], names: Iterable[str] = (),
                 pristine: dict[str, str] | None = None) -> list[ConnectionState]:
    """Check out every idle connection of the strategy's pool and read its state (psycopg, psycopg2)."""
    names = probed_names(settings, names)
    query = _probe_query(names).as_string(None)
    pool = engine.pool
    count = pool.checkedin() if hasattr(pool, "checkedin") else 0
    broken = _connection_broken(engine)
    held = []
    states: list[ConnectionState] = []
    try:
        for _ in range(count):
            held.append(engine.raw_connection())
        for proxy in held:
            open_transaction = drivers.in_transaction(proxy.driver_connection)
            try:
                states.append(_state(_read(proxy, query), names, pristine or {}, open_transaction))
                proxy.rollback()
            except broken:
                # A connection a fault broke (its backend or PgBouncer is gone) carries no session state:
                # it is invalidated, as the pool would on its next use, and not counted as probed.
                proxy.invalidate()
    finally:
        for proxy in held:
            proxy.close()
    return states


async def probe_async_engine(engine, settings: tuple[str, ...], names: Iterable[str] = (),
                             pristine: dict[str, str] | None = None) -> list[ConnectionState]:
    """The same for an AsyncEngine (psycopg's async driver, asyncpg): check out every idle connection at
    once, read each."""
    names = probed_names(settings, names)
    query = _probe_query(names).as_string(None)
    pool = engine.sync_engine.pool
    count = pool.checkedin() if hasattr(pool, "checkedin") else 0
    broken = _connection_broken(engine.sync_engine)
    held = []
    states: list[ConnectionState] = []
    try:
        for _ in range(count):
            held.append(await engine.connect())
        for conn in held:
            raw = await conn.get_raw_connection()
            open_transaction = drivers.in_transaction(raw.driver_connection)
            try:
                row = (await conn.exec_driver_sql(query)).one()
            except DBAPIError as exc:
                if not (exc.connection_invalidated or isinstance(exc.orig, broken)):
                    raise
                await conn.invalidate()  # broken by a fault: no state (see probe_engine)
                continue
            states.append(_state(tuple(row), names, pristine or {}, open_transaction))
            await conn.rollback()
    finally:
        for conn in held:
            await conn.close()
    return states
