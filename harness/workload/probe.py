"""The pool probe: after a request ends, read what state its connections carry.

Two places can hold a connection's state:
- PgBouncer's server connections (session and transaction routes): the probe
  opens one client per idle server connection, each holding a transaction so
  that PgBouncer hands every one of them a different server, and shows the
  probed backend pids against ``SHOW SERVERS``;
- the strategy's own SQLAlchemy pool (any route), when it exposes ``engine``:
  every checked-in connection is checked out and read. SQLAlchemy resets a
  returned connection with ROLLBACK only, so session state survives it.

Custom settings cannot be listed (placeholder GUCs are hidden from
``pg_settings``), so the probe reads a list of names: common ones plus those the
strategy declares in ``settings``.
"""

from __future__ import annotations

from typing import Any, Iterable

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, Engine

from harness.stack import Stack
from harness.checks.history import ConnectionState

COMMON_SETTINGS = ("app.tenant", "app.tenant_id", "app.current_tenant", "app.schema")
IDLE_SERVER_STATES = {"idle", "used", "tested"}


def _probe_query(settings: Iterable[str]) -> sql.Composed:
    custom = [sql.SQL("current_setting({}, true)").format(sql.Literal(name)) for name in settings]
    array = sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(custom)) if custom else sql.SQL("ARRAY[]::text[]")
    return sql.SQL(
        "SELECT pg_backend_pid(), current_setting('search_path'), current_user::text, session_user::text, "
        "{settings}, "
        "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::int, "
        "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())::int, "
        "(SELECT count(*) FROM pg_listening_channels())::int"
    ).format(settings=array)


def _state(row: tuple[Any, ...], names: tuple[str, ...], open_transaction: bool = False) -> ConnectionState:
    pid, path, current_user, session_user, values, temp, locks, channels = row
    return ConnectionState(pid=pid, search_path=path, current_user=current_user, session_user=session_user,
                           settings=tuple((n, v) for n, v in zip(names, values or []) if v),
                           temp_tables=temp, advisory_locks=locks, listen_channels=channels,
                           open_transaction=open_transaction)


class PgBouncerProbe:
    """Probes one PgBouncer route; keeps its client connections where that changes nothing.

    In transaction mode an idle client holds no server, so probe clients are
    kept between probes (a login costs a SCRAM exchange). In session mode a
    client keeps its server until it disconnects, so probe clients are closed
    after every probe (PgBouncer then runs server_reset_query on their servers,
    as it would for any client).
    """

    def __init__(self, stack: Stack, route: str, settings: tuple[str, ...], url: URL | None = None):
        self.stack = stack
        self.route = route
        self.url: URL = url or stack.url(route)  # the database the code under test uses
        self.names = COMMON_SETTINGS + tuple(s for s in settings if s not in COMMON_SETTINGS)
        self.query = _probe_query(self.names)
        self.keep = stack.bouncers[route].pool_mode == "transaction"
        self.spare: list[psycopg.Connection] = []

    def _client(self) -> psycopg.Connection:
        if self.spare:
            return self.spare.pop()
        url = self.url
        return psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                               dbname=url.database, prepare_threshold=None, connect_timeout=5)

    def probe(self) -> tuple[list[ConnectionState], tuple[int, ...]]:
        """Probe every idle server connection; return the states and the SHOW SERVERS pids."""
        servers = [s for s in self.stack.admin(self.route, "SHOW SERVERS")
                   if s.get("user") == self.url.username and s.get("database") == self.url.database]
        idle = [s for s in servers if s.get("state") in IDLE_SERVER_STATES]
        clients: list[psycopg.Connection] = []
        states: list[ConnectionState] = []
        try:
            for _ in idle:
                conn = self._client()
                clients.append(conn)
                # The open transaction pins this client to one server until rollback.
                states.append(_state(conn.execute(self.query).fetchone(), self.names))
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
        return states, tuple(int(s["remote_pid"]) for s in servers if s.get("remote_pid"))

    def close(self) -> None:
        for conn in self.spare:
            conn.close()
        self.spare.clear()


def probe_engine(engine: Engine, settings: tuple[str, ...]) -> list[ConnectionState]:
    """Check out every idle connection of the strategy's pool and read its state."""
    names = COMMON_SETTINGS + tuple(s for s in settings if s not in COMMON_SETTINGS)
    query = _probe_query(names)
    pool = engine.pool
    count = pool.checkedin() if hasattr(pool, "checkedin") else 0
    held = []
    states: list[ConnectionState] = []
    try:
        for _ in range(count):
            held.append(engine.raw_connection())
        for proxy in held:
            driver = proxy.driver_connection
            open_transaction = driver.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
            with driver.cursor() as cur:
                cur.execute(query, prepare=False)
                states.append(_state(cur.fetchone(), names, open_transaction))
            driver.rollback()
    finally:
        for proxy in held:
            proxy.close()
    return states


async def probe_async_engine(engine, settings: tuple[str, ...]) -> list[ConnectionState]:
    """The same for an AsyncEngine: check out every idle connection at once, read each."""
    names = COMMON_SETTINGS + tuple(s for s in settings if s not in COMMON_SETTINGS)
    query = _probe_query(names).as_string(None)
    pool = engine.sync_engine.pool
    count = pool.checkedin() if hasattr(pool, "checkedin") else 0
    held = []
    states: list[ConnectionState] = []
    try:
        for _ in range(count):
            held.append(await engine.connect())
        for conn in held:
            row = (await conn.exec_driver_sql(query)).one()
            states.append(_state(tuple(row), names))
            await conn.rollback()
    finally:
        for conn in held:
            await conn.close()
    return states
