"""A PgBouncer in front of the stack's PostgreSQL, with its admin console."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from harness.config import HarnessConfig
from harness.errors import StartupTimeout
from harness.stack.account import Account
from harness.stack.parts import BouncerPart
from harness.stack.process import ServerProcess
from harness.stack.wait import wait_until

ADMIN_DATABASE = "pgbouncer"
#: pause between two attempts of a restart whose port is still taken
RESTART_RETRY_INTERVAL = 0.05


def pool_size(config: HarnessConfig, pool_mode: str) -> int:
    """The ``default_pool_size`` of the PgBouncer with ``pool_mode``.

    The session pool is sized above the largest client pool: a smaller one ends
    in ``query_wait_timeout`` (see DESIGN.md).
    """
    return config.session_pool_size if pool_mode == "session" else config.transaction_pool_size


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def render_userlist(users: dict[str, str]) -> str:
    """An ``auth_file``: PgBouncer answers SCRAM with these passwords and logs in to the server with them."""
    return "".join(f"{_quote(user)} {_quote(password)}\n" for user, password in users.items())


def render_config(*, pool_mode: str, listen_addr: str, listen_port: int, server_host: str, server_port: int,
                  auth_file: str, admin_user: str, pool_size: int) -> str:
    """The harness's PgBouncer configuration, for the native and the docker backends alike.

    ``server_reset_query`` is left at its default (``DISCARD ALL``), which
    PgBouncer does not run in transaction mode: that is the behaviour under test.
    """
    return "\n".join([
        "[databases]",
        f"* = host={server_host} port={server_port}",
        "",
        "[pgbouncer]",
        f"listen_addr = {listen_addr}",
        f"listen_port = {listen_port}",
        "unix_socket_dir =",
        f"pool_mode = {pool_mode}",
        "auth_type = scram-sha-256",
        f"auth_file = {auth_file}",
        f"admin_users = {admin_user}",
        f"stats_users = {admin_user}",
        f"default_pool_size = {pool_size}",
        "min_pool_size = 0",
        "reserve_pool_size = 0",
        "max_client_conn = 1000",
        "max_db_connections = 0",
        "query_wait_timeout = 30",
        "ignore_startup_parameters = extra_float_digits",
        "",
    ])


class AdminConsole:
    """PgBouncer's admin console (database ``pgbouncer``), one connection kept open.

    A login costs a SCRAM exchange, so the connection is kept between
    commands; a broken one is replaced once.
    """

    def __init__(self, host: str, port: int, user: str, password: str):
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(host=self.host, port=self.port, dbname=ADMIN_DATABASE, user=self.user,
                               password=self.password, connect_timeout=2, autocommit=True, row_factory=dict_row)

    def __call__(self, command: str) -> list[dict[str, Any]]:
        """Run one admin command (``SHOW POOLS``, ``KILL db``...) and return its rows."""
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                try:
                    cur = self._conn.execute(command, prepare=False)
                    return cur.fetchall() if cur.description else []
                except psycopg.OperationalError:
                    self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def pgbouncer_version(rows: list[dict[str, Any]]) -> str:
    """The version number in the rows of ``SHOW VERSION`` ("PgBouncer 1.18.0" gives "1.18.0"); "" if none."""
    words = str(next(iter(rows[0].values()))).split() if rows else []
    return words[-1] if words else ""


def wait_for_admin(bouncer: BouncerPart, *, what: str, timeout: float, interval: float = 0.02) -> str:
    """Wait until the admin console of ``bouncer`` answers ``SHOW VERSION``; return the version number.

    As in PgBouncer's own test suite, readiness is a real query on the admin
    console: it answers once PgBouncer listens and has read its configuration.
    """
    rows = wait_until(lambda: bouncer.admin("SHOW VERSION"), what=what, timeout=timeout, interval=interval,
                      log_tail=bouncer.log_tail, alive=bouncer.alive)
    return pgbouncer_version(rows)


class Bouncer(ServerProcess):
    """One native PgBouncer process with one ``pool_mode``."""

    # In PgBouncer 1.18 SIGINT is a safe shutdown (waits for clients) and
    # SIGTERM the immediate one; a throwaway stack wants the immediate one.
    stop_signal = signal.SIGTERM
    death_signal = signal.SIGTERM

    def __init__(self, binary: Path, account: Account, pool_mode: str, run_dir: Path, port: int,
                 server_port: int, users: dict[str, str], admin_user: str, pool_size: int):
        super().__init__(f"pgbouncer-{pool_mode}", account, run_dir / f"pgbouncer-{pool_mode}.log")
        self.binary = binary
        self.pool_mode = pool_mode
        self.run_dir = run_dir
        self.port = port
        self.server_port = server_port
        self.users = users
        self.admin_user = admin_user
        self.pool_size = pool_size
        self.ini_path = run_dir / f"pgbouncer-{pool_mode}.ini"
        self.userlist_path = run_dir / f"userlist-{pool_mode}.txt"
        self.admin = AdminConsole("127.0.0.1", port, admin_user, users[admin_user])

    def render_config(self) -> str:
        return render_config(pool_mode=self.pool_mode, listen_addr="127.0.0.1", listen_port=self.port,
                             server_host="127.0.0.1", server_port=self.server_port,
                             auth_file=str(self.userlist_path), admin_user=self.admin_user,
                             pool_size=self.pool_size)

    def write_config(self) -> None:
        self.userlist_path.write_text(render_userlist(self.users))
        self.ini_path.write_text(self.render_config())
        self.userlist_path.chmod(0o600)
        self.account.own(self.userlist_path)
        self.account.own(self.ini_path)

    def start(self, timeout: float) -> str:
        """Start PgBouncer and wait for its admin console; return its version number ("" if it gave none)."""
        self.write_config()
        self.spawn([self.binary, self.ini_path], cwd=self.run_dir)
        return wait_for_admin(self, what=f"{self.name} on port {self.port}", timeout=timeout)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop PgBouncer at once and start it again, same configuration, same port (a fault step).

        Its clients and server connections are gone: a client connected before
        gets an error on its next statement. PgBouncer binds with SO_REUSEADDR,
        so the old connections in TIME_WAIT do not keep the port; a port still
        busy all the same is retried until ``timeout``.
        """
        self.stop()  # closes the admin console's connection too: the next command logs in again
        deadline = time.monotonic() + timeout
        while True:
            offset = self.log_size()
            self.spawn([self.binary, self.ini_path], cwd=self.run_dir)
            try:
                wait_for_admin(self, what=f"{self.name} restarting on port {self.port}",
                               timeout=max(0.1, deadline - time.monotonic()))
                return
            except StartupTimeout:
                busy = "already in use" in self.log_since(offset)
                super().stop()
                if not busy or time.monotonic() + RESTART_RETRY_INTERVAL >= deadline:
                    raise
            time.sleep(RESTART_RETRY_INTERVAL)

    def stop(self, timeout: float = 5.0) -> None:
        self.admin.close()
        super().stop(timeout)
