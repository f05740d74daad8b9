"""A PgBouncer in front of the stack's PostgreSQL, with its admin console."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from harness.stack.account import Account
from harness.stack.process import ServerProcess
from harness.stack.wait import wait_until

ADMIN_DATABASE = "pgbouncer"


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


class Bouncer(ServerProcess):
    """One PgBouncer process with one ``pool_mode``.

    ``server_reset_query`` is left at its default (``DISCARD ALL``), which
    PgBouncer does not run in transaction mode: that is the behaviour under test.
    """

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
        self._admin_conn: psycopg.Connection | None = None
        self._admin_lock = threading.Lock()

    def render_config(self) -> str:
        return "\n".join([
            "[databases]",
            f"* = host=127.0.0.1 port={self.server_port}",
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            f"pool_mode = {self.pool_mode}",
            "auth_type = scram-sha-256",
            f"auth_file = {self.userlist_path}",
            f"admin_users = {self.admin_user}",
            f"stats_users = {self.admin_user}",
            f"default_pool_size = {self.pool_size}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            "max_client_conn = 1000",
            "max_db_connections = 0",
            "query_wait_timeout = 30",
            "ignore_startup_parameters = extra_float_digits",
            "",
        ])

    def write_config(self) -> None:
        self.userlist_path.write_text(
            "".join(f"{_quote(user)} {_quote(password)}\n" for user, password in self.users.items()))
        self.ini_path.write_text(self.render_config())
        self.userlist_path.chmod(0o600)
        self.account.own(self.userlist_path)
        self.account.own(self.ini_path)

    def start(self, timeout: float) -> str:
        self.write_config()
        self.spawn([self.binary, self.ini_path], cwd=self.run_dir)
        rows = wait_until(lambda: self.admin("SHOW VERSION"), what=f"{self.name} on port {self.port}",
                          timeout=timeout, log_tail=self.log_tail, alive=self.alive)
        return str(next(iter(rows[0].values())))

    def _admin_connection(self) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, dbname=ADMIN_DATABASE,
                               user=self.admin_user, password=self.users[self.admin_user],
                               connect_timeout=2, autocommit=True, row_factory=dict_row)

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run one admin console command (``SHOW POOLS``, ``RECONNECT``...) and return its rows.

        The console connection is kept open between commands (a login costs a
        SCRAM exchange); a broken one is replaced once.
        """
        with self._admin_lock:
            for attempt in (1, 2):
                if self._admin_conn is None or self._admin_conn.closed:
                    self._admin_conn = self._admin_connection()
                try:
                    cur = self._admin_conn.execute(command, prepare=False)
                    return cur.fetchall() if cur.description else []
                except psycopg.OperationalError:
                    self._admin_conn.close()
                    self._admin_conn = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        if self._admin_conn is not None:
            self._admin_conn.close()
            self._admin_conn = None
        super().stop(timeout)
