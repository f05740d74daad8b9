"""A PgBouncer in front of the stack's PostgreSQL, with its admin console."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import psycopg
from psycopg.rows import dict_row

from harness.config import HarnessConfig
from harness.errors import StartupTimeout, UsageError
from harness.pooler_settings.pgbouncer import REPORTED_SETTINGS, PoolerSettings
from harness.stack.account import Account, server_account
from harness.stack.binaries import binary_version
from harness.stack.parts import BouncerPart
from harness.stack.ports import claim_port, lease_port
from harness.stack.process import ServerProcess
from harness.stack.wait import wait_until

ADMIN_DATABASE = "pgbouncer"


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
                  auth_file: str, admin_user: str, pool_size: int, extra: Mapping[str, str] | None = None) -> str:
    """The harness's PgBouncer configuration, for the native and the docker backends alike.

    ``server_reset_query`` is left at its default (``DISCARD ALL``), which
    PgBouncer does not run in transaction mode: that is the behaviour under test.
    ``extra``: the team's settings (--pgbouncer-config, --pgbouncer-set), written
    after the harness's own lines: PgBouncer takes the last line of a name
    (seen on 1.18: a second ``default_pool_size`` line is what SHOW CONFIG shows).
    """
    team = [f"{name} = {value}" for name, value in (extra or {}).items()]
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
        *(["; the team's settings (they win over the lines above)", *team] if team else []),
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


#: SHOW SERVERS states of a server connection no client holds
IDLE_SERVER_STATES = frozenset({"idle", "used", "tested"})


class PgBouncerPooler:
    """What every PgBouncer part (native, docker, external) does as a stack's pooler, through its admin
    console (``admin``); ``extra`` is the team's carried-over settings."""

    kind = "pgbouncer"
    prefills = False
    extra = PoolerSettings({}, {})

    def admin(self, command: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def settings(self) -> dict[str, str]:
        """The team's settings and :data:`REPORTED_SETTINGS`, as SHOW CONFIG gives them."""
        return read_settings(self.admin, tuple(dict.fromkeys((*REPORTED_SETTINGS, *self.extra.values))))

    def idle_servers(self, user: str, database: str) -> int:
        return sum(1 for s in self.admin("SHOW SERVERS") if s.get("user") == user
                   and s.get("database") == database and s.get("state") in IDLE_SERVER_STATES)

    def drop_server_connections(self, databases: list[str], timeout: float = 10.0) -> None:
        """KILL drops a database's server (and client) connections at once (RECONNECT would wait for
        PgBouncer's janitor); RESUME lets clients in again."""
        known = {row["name"] for row in self.admin("SHOW DATABASES")}
        for database in databases:
            if database in known:
                self.admin(f'KILL "{database}"')
                self.admin(f'RESUME "{database}"')


class Bouncer(PgBouncerPooler, ServerProcess):
    """One native PgBouncer process with one ``pool_mode``."""

    # In PgBouncer 1.18 SIGINT is a safe shutdown (waits for clients) and
    # SIGTERM the immediate one; a throwaway stack wants the immediate one.
    stop_signal = signal.SIGTERM
    death_signal = signal.SIGTERM

    def __init__(self, binary: Path, account: Account, pool_mode: str, run_dir: Path, port: int,
                 server_port: int, users: dict[str, str], admin_user: str, pool_size: int,
                 extra: PoolerSettings | None = None, name: str | None = None):
        name = name or f"pgbouncer-{pool_mode}"
        super().__init__(name, account, run_dir / f"{name}.log")
        #: the team's settings, written after the harness's own
        self.extra = extra or PoolerSettings({}, {})
        self.binary = binary
        self.pool_mode = pool_mode
        self.run_dir = run_dir
        self.port = port
        self.server_port = server_port
        self.users = users
        self.admin_user = admin_user
        self.pool_size = pool_size
        self.ini_path = run_dir / f"{name}.ini"
        self.userlist_path = run_dir / f"userlist-{name.removeprefix('pgbouncer-')}.txt"
        self.admin = AdminConsole("127.0.0.1", port, admin_user, users[admin_user])
        self._lifecycle = threading.RLock()  # restart() and stop() one at a time
        self._stopped = False  # stop() ran: restart() no longer starts a process

    def render_config(self) -> str:
        return render_config(pool_mode=self.pool_mode, listen_addr="127.0.0.1", listen_port=self.port,
                             server_host="127.0.0.1", server_port=self.server_port,
                             auth_file=str(self.userlist_path), admin_user=self.admin_user,
                             pool_size=self.pool_size, extra=self.extra.values)

    def write_config(self) -> None:
        self.userlist_path.write_text(render_userlist(self.users))
        self.ini_path.write_text(self.render_config())
        self.userlist_path.chmod(0o600)
        self.account.own(self.userlist_path)
        self.account.own(self.ini_path)

    def start(self, timeout: float) -> str:
        """Start PgBouncer and wait for its admin console; return its version number ("" if it gave none)."""
        self.write_config()
        offset = self.log_size()
        self.spawn([self.binary, self.ini_path], cwd=self.run_dir)
        try:
            return wait_for_admin(self, what=f"{self.name} on port {self.port}", timeout=timeout)
        except StartupTimeout as exc:
            refusal = settings_refusal(self.log_since(offset), self.extra, self.binary,
                                       binary_version(self.binary) if self.extra else "")
            if refusal is None:
                raise
            super().stop()
            raise refusal from exc

    def restart(self, timeout: float = 10.0) -> None:
        """Stop PgBouncer at once and start it again, same configuration, same port (a fault step).

        Its clients and server connections are gone: a client connected before
        gets an error on its next statement. PgBouncer binds with SO_REUSEADDR,
        so the old connections in TIME_WAIT do not keep the port; a port still
        busy all the same is retried until ``timeout``.
        """
        # One at a time with stop(): a stack closing while a hammer thread restarts PgBouncer waits for the
        # restart, then stops the new process; a restart after the stop refuses to start one nobody would stop.
        with self._lifecycle:
            if self._stopped:
                raise RuntimeError(f"{self.name} was stopped: it is not restarted")
            self.admin.close()  # the next command logs in again
            super().stop()
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
                    if not busy:
                        raise
                # the port is still taken: start again once it can be bound (a StartupTimeout at the deadline)
                wait_until(lambda: claim_port(self.port), what=f"port {self.port} of {self.name}",
                           timeout=max(0.1, deadline - time.monotonic()), interval=0.05)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lifecycle:
            self._stopped = True
            self.admin.close()
            super().stop(timeout)


# -- the team's settings: which names a PgBouncer knows, what it refused, what it runs with ------------------

#: Known setting names per (binary, version), found once per process (and kept in the cache folder).
_KNOWN: dict[tuple[str, str], frozenset[str]] = {}
_KNOWN_LOCK = threading.Lock()
#: what PgBouncer (1.18 seen, as later ones) logs when it will not load its configuration
_UNKNOWN_LINE = re.compile(r"unknown parameter: pgbouncer/(\w+)")
_INVALID_LINE = re.compile(r'invalid value "(.*)" for parameter (\w+)')


def read_settings(admin, names: tuple[str, ...] | None = None) -> dict[str, str]:
    """``SHOW CONFIG`` on an admin console: name -> the value PgBouncer runs with (``names`` only, if given)."""
    rows = {str(row["key"]): str(row["value"]) for row in admin("SHOW CONFIG")}
    return rows if names is None else {name: rows[name] for name in names if name in rows}


def effective_settings(poolers: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Route -> the settings that decide what clients see, as each pooler runs with them (read back)."""
    return {route: pooler.settings() for route, pooler in poolers.items()}


def _cache_file(cache_dir: Path | None, binary: Path, version: str) -> Path | None:
    if cache_dir is None:
        return None
    try:
        stat = binary.stat()
    except OSError:
        return None
    key = hashlib.sha256(f"{binary.resolve()}|{version}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir / "pgbouncer-settings" / f"{version or 'unknown'}-{key}.json"


def known_settings(binary: Path, version: str, account: Account, *, timeout: float,
                   cache_dir: Path | None = None) -> frozenset[str]:
    """The setting names a PgBouncer binary knows: what ``SHOW CONFIG`` lists on a throwaway PgBouncer.

    PgBouncer refuses to start on a name it does not know (1.18: "unknown
    parameter: pgbouncer/track_extra_parameters", then FATAL), so the names are
    read from the binary itself, once per binary and version: in this process,
    and in ``cache_dir`` for the next one. The throwaway PgBouncer (a minimal
    configuration, a leased loopback port, a folder of its own) is always
    stopped and its folder removed.
    """
    key = (str(binary.resolve()), version)
    with _KNOWN_LOCK:
        if key in _KNOWN:
            return _KNOWN[key]
    cached = _cache_file(cache_dir, binary, version)
    if cached is not None:
        try:
            names = frozenset(json.loads(cached.read_text()))
        except (OSError, ValueError, TypeError):
            names = None
        if names:
            with _KNOWN_LOCK:
                _KNOWN[key] = names
            return names
    names = _probe_settings(binary, account, timeout)
    with _KNOWN_LOCK:
        _KNOWN[key] = names
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(sorted(names)))
            partial.replace(cached)
        except OSError:
            pass  # a cache that cannot be written only costs the next process a probe
    return names


def _probe_settings(binary: Path, account: Account, timeout: float) -> frozenset[str]:
    folder = Path(tempfile.mkdtemp(prefix="tenant-harness-probe-"))
    lease = lease_port()
    admin_user = "probe"
    probe = Bouncer(binary, account, "session", folder, lease.port, server_port=lease.port,
                    users={admin_user: secrets.token_hex(12)}, admin_user=admin_user, pool_size=1,
                    name="pgbouncer-probe")
    try:
        account.own(folder)
        probe.start(timeout)
        return frozenset(read_settings(probe.admin))
    finally:
        probe.stop()
        lease.release()
        shutil.rmtree(folder, ignore_errors=True)


def check_known(extra: PoolerSettings, known: frozenset[str], version: str, binary: Path) -> None:
    """Refuse, before the stack starts, a setting this PgBouncer does not know (it would not start)."""
    unknown = [name for name in extra.values if name not in known]
    if unknown:
        raise UsageError(
            f"PgBouncer {version or '(version unknown)'} ({binary}) does not know the setting(s) "
            f"{', '.join(unknown)}; it would refuse to start.",
            checked=[f"{name} = {extra.values[name]} (from {extra.origins.get(name, '?')})" for name in unknown]
                    + [f"SHOW CONFIG of a throwaway PgBouncer from {binary}: {len(known)} settings"],
            fix=[f"remove {', '.join(unknown)} from --pgbouncer-config / --pgbouncer-set for this PgBouncer "
                 "(track_extra_parameters is known from 1.20, max_prepared_statements from 1.21)",
                 "or run a PgBouncer that knows it: --pgbouncer (HARNESS_PGBOUNCER) pointing at a newer binary, "
                 "or the docker backend with --pgbouncer-image"])


def refuse_unknown_settings(extra: PoolerSettings, binary: Path, *, timeout: float, cache_dir: Path | None) -> None:
    """The team's setting names checked against this PgBouncer binary before anything starts."""
    if not extra:
        return
    version = binary_version(binary)
    check_known(extra, known_settings(binary, version, server_account(), timeout=timeout, cache_dir=cache_dir),
                version, binary)


def settings_refusal(log: str, extra: PoolerSettings, binary: Path | str, version: str = "") -> UsageError | None:
    """A clear error when PgBouncer refused one of the team's settings at start (from its log), else None.

    Seen on 1.18: ``ERROR invalid value "abc" for parameter server_lifetime in
    configuration (...:12)`` then ``FATAL cannot load config file``.
    """
    unknown = [name for name in _UNKNOWN_LINE.findall(log) if name in extra.values]
    invalid = [(value, name) for value, name in _INVALID_LINE.findall(log) if name in extra.values
               and name not in unknown]
    if not unknown and not invalid:
        return None
    version = f" {version}" if version else ""
    lines = [line for line in log.splitlines() if "ERROR" in line or "FATAL" in line][-6:]
    problems = [f"{name} = {value!r} (from {extra.origins.get(name, '?')})" for value, name in invalid]
    problems += [f"{name} (from {extra.origins.get(name, '?')}): unknown to this PgBouncer" for name in unknown]
    return UsageError(
        f"PgBouncer{version} ({binary}) refused the setting(s) {', '.join([n for _, n in invalid] + unknown)} "
        "and did not start.",
        checked=[*problems, "its log:\n" + "\n".join("      " + line for line in lines)],
        fix=["give a value PgBouncer takes (see https://www.pgbouncer.org/config.html: times are in "
             "seconds, booleans 0/1), in --pgbouncer-config or --pgbouncer-set",
             "or remove the setting"])
