"""pgagroal in front of the stack's PostgreSQL: the pooler part of a ``trixie-pgagroal`` deployment.

One pgagroal process (its main process and one forked process per client, all in one process group) per
pooled route: ``session`` runs pgagroal's default pipeline ``auto`` (``performance``; ``session`` when the
team's settings turn on what only that one has: TLS, failover, ``disconnect_client``), ``transaction`` its
``transaction`` pipeline. Measured on Debian trixie's pgagroal 1.6.0 with PostgreSQL 17, a pool of one
server connection so that the next client gets the same backend (``tests/test_pgagroal.py`` checks what is
marked *tested*)::

    state the first client left (it disconnects;    performance    session        transaction
    on transaction, it stays connected, idle)       (DISCARD ALL)  (DISCARD ALL)  (nothing run)
    SET search_path (tested)                        reset          reset          carried
    SET search_path in a committed transaction      reset          reset          carried (tested)
    set_config('app.tenant', 'a', false) (tested)   reset          reset          carried
    CREATE TEMP TABLE                               reset          reset          carried
    PREPARE (SQL)                                   reset          reset          carried
    protocol prepared statement (psycopg)           reset          reset          carried
    pg_advisory_lock (session level)                released       released       carried
    LISTEN                                          reset          reset          carried
    DECLARE ... WITH HOLD cursor                    closed         closed         carried
    SET ROLE                                        reset          reset          carried
    open transaction (BEGIN; SET LOCAL), the        backend        backend        rolled back
    client disconnects                              closed         closed         (same backend)
    startup options / application_name              see below

The performance and session pipelines measured the same on every row: ``performance`` is the better
``session`` route, because it is the one pgagroal runs by default (``pipeline = auto``) and so the one a team
runs unless it asked for TLS, failover or ``disconnect_client`` (then ``auto`` runs ``session``, here too).

**Startup parameters.** A server connection keeps the startup parameters (``options``, ``application_name``)
of the client it was opened for, and any later client gets it whatever it sends: opened for a client with
``options=-c search_path=tenant_a``, the next client (no options) runs with ``search_path = tenant_a`` and
that client's ``application_name``; a client whose options differ from the connection's silently does not get
them. Here every server connection is opened by pgagroal itself before clients come (*prefill*, below): as
``application_name = pgagroal``, no options, so a client's startup options never apply (tested). With
``prefill=False`` (session route only) they are inherited as above.

**Prefill** (``pgagroal_databases.conf``: each role but the admin role gets ``pool_size`` server connections
on the stack's database, all opened at start and again after a drop; readiness waits for them):

- the transaction pipeline refuses to start without a limit entry whose ``min_size`` is above 0 ("min_size
  for transaction pipeline must be greater than 0"; ``all`` is not a user: "Unknown user 'all' for limit
  entry"), and never opens a server connection for a client (``pgagroal_get_connection`` in transaction mode
  takes a free one or waits ``blocking_timeout``): its prefilled connections are all it has;
- on the session route it avoids a crash: a server connection a client process opened is handed back to the
  main process (its file descriptor over a Unix socket), and a client process forked before it arrived gets
  a descriptor it does not have (``libev: I/O watcher with invalid fd found in epoll_ctl``, assertion, the
  client sees "server closed the connection unexpectedly"): 3 of 900 clients (3 threads connecting in a loop,
  pool 4), on every run; prefilled, 0 of 1,800.

Faults (measured; the lead's fault steps): a backend terminated from the server side (``pg_terminate_backend``
of every server connection, pool 4) leaves the transaction pipeline wedged (every slot "in use", clients get
"connection pool is full" or time out, for minutes: until a restart), and the prefilled session route hands
the dead connections to the next clients ("terminating connection due to administrator command", a timeout;
clean after about 10 s). Unprefilled, the session route recovers without an error. A refused login (wrong
password) on the transaction pipeline keeps one server connection "in use" for good (tested).
:meth:`Pgagroal.drop_server_connections` (a restart) recovers from all of them.

Times (pool 4 / 10 / 60, prefilled; median of 5 starts and 20 drops): start to the first answered query 0.06
/ 0.07 / 0.20 s; :meth:`~Pgagroal.drop_server_connections` 0.06 / 0.08 / 0.23 s; stop 0.003 / 0.008 / 0.01 s
(transaction 0.04 s at 60); ``settings()`` 0.04 s (one ``pgagroal-cli`` per setting).

Setup, and why:

- **Ports.** pgagroal 1.6.0 formats a port into a 5-byte buffer (``network.c``: ``char sport[5]`` in
  ``pgagroal_connect``, ``malloc(5)`` in ``bind_host``; 5 digits and the NUL are 6 bytes): with a port of
  10000 or more it dies with ``*** buffer overflow detected ***`` (glibc's fortified ``sprintf``), at start
  for its listen port, at the first client for a TCP server port. So it listens on a port below 10000
  (:func:`lease_listen_port`, not the kernel's ephemeral ports that :func:`~harness.stack.ports.lease_port`
  gives) and reaches PostgreSQL through its Unix socket (``host`` = the socket folder; PostgreSQL trusts the
  socket, see :data:`harness.stack.postgres.HBA`).
- **Logins.** A user vault (``-u``, made with ``pgagroal-admin``) holds every role's password: clients log in
  with SCRAM-SHA-256 against it (``pgagroal_hba.conf``), and pgagroal logs in to PostgreSQL with it.
  ``allow_unknown_users = off``: the transaction pipeline refuses to run without it, and the session route
  then checks passwords the same way (with unknown users allowed, pgagroal passes authentication through to
  PostgreSQL, which trusts the socket: any password would do).
- **The master key** that encrypts the vault is read from ``~/.pgagroal/master.key`` of the account pgagroal
  runs as: its home from ``getpwuid()``, not ``$HOME``, and there is no option for it. So the key is per
  account, not per run folder: :func:`ensure_master_key` makes one (under a lock) when there is none and never
  replaces one (every stack's vault, and maybe the account's own pgagroal, is encrypted with it).
- **The management socket** is ``.s.pgagroal`` in ``unix_socket_dir``, whatever the port: every pgagroal has a
  folder of its own (``run_dir/<name>/``). ``pgagroal-cli -c <conf> -F json`` reads the socket folder from the
  configuration and answers in JSON; 1.6.0's ``status details`` names a connection's state with the server
  state names (:data:`_SLOT_STATES`).
- **Logs.** ``log_type = file`` into the part's log file (the process's stdout and stderr go there too:
  what it says about its configuration comes before its logging starts); ``console`` would colour them.
- **Stop.** SIGTERM (pgagroal's shutdown: it closes its clients and server connections), then SIGKILL for
  whatever is left of the process group.

The team's settings (``--pgagroal-config``, ``--pgagroal-set``) are read and checked by
:mod:`harness.pooler_settings.pgagroal` (:data:`~harness.pooler_settings.pgagroal.PGAGROAL_CARRIED`, which also
says what pgagroal makes of a name or value it does not take: it refuses nothing). So
:func:`refuse_unknown_pgagroal_settings` runs a throwaway pgagroal with them before anything starts and reads
back what it runs with (``pgagroal-cli conf get``; tested). ``pipeline`` sets the session route's pipeline;
``disconnect_client`` goes to the session route only (the transaction pipeline refuses to start with it).
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import psycopg

from harness.errors import SetupError, StartupTimeout, UsageError
from harness.pooler_settings import PoolerSettings
from harness.pooler_settings.pgagroal import (NOT_IN_TRANSACTION, PGAGROAL_REPORTED, PIPELINES, SECTION,
                                              session_pipeline)
from harness.stack.account import Account, server_account
from harness.stack.ports import LOCK_DIR, PortLease, claim_port
from harness.stack.postgres import APP_ROLE, DATABASE
from harness.stack.process import ServerProcess, run_as
from harness.stack.wait import wait_until

#: the highest port pgagroal 1.6.0 can listen on or connect to (see the module docstring)
MAX_PORT = 9999
#: where :func:`lease_listen_port` looks: registered ports below pgagroal's limit, clear of the well-known ones
LISTEN_PORTS = range(2000, MAX_PORT + 1)
#: the harness's values of the settings that decide what clients see (the team may carry its own)
BLOCKING_TIMEOUT = 30  # seconds a client waits for a server connection (PgBouncer's query_wait_timeout)

# -- binaries, master key, vault, ports ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PgagroalBinaries:
    """``pgagroal`` and, beside it, ``pgagroal-cli`` and ``pgagroal-admin`` (as Debian installs them, and as
    scripts/build-deployment copies them into a deployment's native/usr/bin)."""

    pgagroal: Path

    @property
    def cli(self) -> Path:
        return self.pgagroal.with_name("pgagroal-cli")

    @property
    def admin(self) -> Path:
        return self.pgagroal.with_name("pgagroal-admin")

    def check(self) -> None:
        missing = [str(p) for p in (self.pgagroal, self.cli, self.admin) if not os.access(p, os.X_OK)]
        if missing:
            raise SetupError("pgagroal's executables are incomplete.",
                             checked=[f"{p} (not an executable)" for p in missing],
                             fix=["build the deployment: scripts/build-deployment trixie --with pgagroal",
                                  "or point at a folder with pgagroal, pgagroal-cli and pgagroal-admin"])

    def version(self) -> str:
        """``pgagroal --version`` ("pgagroal 1.6.0" gives "1.6.0"); "" if it says none."""
        return _version(self.pgagroal)


@functools.cache  # one --version run per binary and process
def _version(binary: Path) -> str:
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"(\d+\.\d+(?:\.\d+)?)", done.stdout + done.stderr)
    return match.group(1) if match else ""


def _as_binaries(binary: Path | PgagroalBinaries) -> PgagroalBinaries:
    return binary if isinstance(binary, PgagroalBinaries) else PgagroalBinaries(Path(binary))


_MASTER_KEY_LOCK = Path(tempfile.gettempdir()) / "tenant-harness-pgagroal-master-key.lock"


def master_key_path(account: Account) -> Path:
    """Where pgagroal reads the vault's master key: ``~/.pgagroal/master.key`` of ``account`` (``getpwuid``)."""
    return Path(pwd.getpwuid(account.uid).pw_dir) / ".pgagroal" / "master.key"


def ensure_master_key(binaries: PgagroalBinaries, account: Account) -> Path:
    """The account's pgagroal master key, made when it has none; an existing one is kept as it is.

    ``pgagroal-admin master-key`` replaces a key without asking, which would leave every vault encrypted
    with the old one unreadable (other stacks', the account's own pgagroal's): so it runs only when there is
    no key, under a lock shared by every harness process on this machine.
    """
    key = master_key_path(account)
    LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
    handle = os.open(_MASTER_KEY_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            os.fchmod(handle, 0o666)  # past the umask: a harness run by another user takes the same lock
        except OSError:
            pass  # someone else's lock file, already shared
        fcntl.flock(handle, fcntl.LOCK_EX)
        done = run_as(account, ["test", "-s", key])
        if done.returncode == 0:
            return key
        home = key.parent.parent
        if not home.is_dir():
            raise SetupError(f"pgagroal keeps its master key in the home folder of {account.name}, {home}, "
                             "which does not exist.",
                             checked=[f"getpwuid({account.uid}).pw_dir = {home}"],
                             fix=[f"create it: mkdir -p {home} && chown {account.name} {home}",
                                  "or run the harness as a user with a home folder"])
        done = run_as(account, [binaries.admin, "master-key", "-P", secrets.token_urlsafe(24)])
        if done.returncode != 0 or run_as(account, ["test", "-s", key]).returncode != 0:
            raise SetupError(f"pgagroal-admin could not make the master key {key}.",
                             checked=[(done.stdout + done.stderr).strip()[-1000:] or f"exit {done.returncode}"],
                             fix=[f"check that {account.name} may write to {home}"])
        return key
    finally:
        os.close(handle)


def write_vault(binaries: PgagroalBinaries, account: Account, path: Path, users: Mapping[str, str]) -> None:
    """A users vault (``-u``) holding ``users`` (role -> password), encrypted with the account's master key."""
    ensure_master_key(binaries, account)
    path.unlink(missing_ok=True)
    for user, password in users.items():
        done = run_as(account, [binaries.admin, "-f", path, "-U", user, "-P", password, "user", "add"])
        if done.returncode != 0:
            raise SetupError(f"pgagroal-admin could not add {user} to the users vault {path}.",
                             checked=[(done.stdout + done.stderr).strip()[-1000:] or f"exit {done.returncode}"],
                             fix=[f"check the master key {master_key_path(account)} (remove it if it is empty)"])


def lease_listen_port(attempts: int = 200) -> PortLease:
    """A loopback port pgagroal 1.6.0 can listen on (below 10000, see the module docstring), leased like
    :func:`~harness.stack.ports.lease_port` (the same lock files, so no two harness processes take it) and
    free when leased (bound with SO_REUSEADDR, as pgagroal binds)."""
    LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
    pick = random.SystemRandom()
    for _ in range(attempts):
        port = pick.choice(LISTEN_PORTS)
        handle = os.open(LOCK_DIR / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            claim_port(port)
        except OSError:  # leased by another harness process, or taken by some server
            os.close(handle)
            continue
        return PortLease(port, handle)
    raise SetupError(f"No free loopback port below {MAX_PORT + 1} for pgagroal in {attempts} attempts.",
                     checked=[f"ports {LISTEN_PORTS.start}-{LISTEN_PORTS.stop - 1} on 127.0.0.1"],
                     fix=["free some ports on 127.0.0.1 below 10000, or stop other servers"])


# -- configuration ---------------------------------------------------------------------------------------------

def _conf_value(value: str) -> str:
    return f'"{value}"' if re.search(r"[\s#;'\"]", value) else value


def render_pgagroal_conf(*, pipeline: str, listen_addr: str, listen_port: int, socket_dir: Path | str,
                         log_path: Path | str, server_host: str, server_port: int, pool_size: int,
                         extra: Mapping[str, str] | None = None) -> str:
    """The harness's pgagroal.conf, for the native backend (and a docker one).

    ``pipeline`` is the route's; ``extra``, the team's settings, is written after the harness's own lines
    (pgagroal takes the last line of a name), without ``pipeline``, which is the route's, and on the
    transaction pipeline without :data:`NOT_IN_TRANSACTION`.
    """
    team = [f"{name} = {_conf_value(value)}" for name, value in (extra or {}).items()
            if name != "pipeline" and not (pipeline == "transaction" and name in NOT_IN_TRANSACTION)]
    return "\n".join([
        "# Written by the harness: pgagroal pooling for one PostgreSQL, reached through its Unix socket.",
        f"[{SECTION}]",
        f"host = {listen_addr}",
        f"port = {listen_port}",
        f"unix_socket_dir = {_conf_value(str(socket_dir))}",
        "log_type = file",
        f"log_path = {_conf_value(str(log_path))}",
        "log_mode = append",
        "log_level = info",
        f"pipeline = {pipeline}",
        f"max_connections = {pool_size}",
        "allow_unknown_users = off",
        f"blocking_timeout = {BLOCKING_TIMEOUT}",
        "idle_timeout = 0",
        "max_connection_age = 0",
        "validation = off",
        "hugepage = off",
        *(["# the team's settings (they win over the lines above)", *team] if team else []),
        "",
        "[postgres]",
        f"host = {_conf_value(server_host)}",
        f"port = {server_port}",
        "",
    ])


def render_pgagroal_hba() -> str:
    """Clients log in with md5 against the users vault (pgagroal listens on loopback only). Not SCRAM: pgagroal
    answers it with 4096 iterations (the stack's own secrets take 1), 12 ms a login, and the state probe logs
    in once per free server connection (60 on the session route) after every request: 0.9 s a probe, against
    0.26 s with md5. How a client logs in decides nothing about what a pooled connection carries."""
    return ("# Written by the harness: md5 against the users vault.\n"
            "host all all all md5\n")


def render_pgagroal_limits(database: str | Iterable[str], users: Iterable[str], pool_size: int) -> str:
    """``pgagroal_databases.conf`` of the transaction pipeline: each role on ``database`` (or on each of
    several) gets ``pool_size`` server connections, all prefilled (initial and minimum size): that pipeline
    never opens one for a client (``pgagroal_get_connection`` with ``transaction_mode``: an existing free
    connection or a wait), so the prefilled ones are all there is; it refuses a minimum of 0."""
    databases = (database,) if isinstance(database, str) else tuple(database)
    users = list(users)
    lines = [f"{db} {user} {pool_size} {pool_size} {pool_size}" for db in databases for user in users]
    return "# DATABASE USER MAX_SIZE INITIAL_SIZE MIN_SIZE (written by the harness)\n" + "\n".join(lines) + "\n"


# -- what it says ----------------------------------------------------------------------------------------------

#: what pgagroal 1.6.0 prints for a name it does not know or a value it cannot read (and then runs without it)
_UNKNOWN_KEY = re.compile(r"Unknown key <([^>]*)> with value <([^>]*)> in section \[([^\]]*)\]")
_FATAL = re.compile(r"^.*\bFATAL\b.*$|^pgagroal: Invalid .*$", re.MULTILINE)
_NOT_BOUND = "Could not bind to"

#: 1.6.0's ``status details`` shows a connection's state through the *server* state names (management.c): the
#: connection states it means (pool.c's STATE_FREE 0, STATE_IN_USE 1, STATE_GRACEFULLY 2, STATE_FLUSH 3...)
_SLOT_STATES = {"Not init": "not init", "Primary": "free", "Replica": "in use", "Failover": "gracefully",
                "Failed": "flush"}


def _same_value(name: str, wanted: str, running: str) -> bool:
    if name == "pipeline" and wanted == "auto":
        return running in ("performance", "session")
    return wanted.strip().lower() == running.strip().lower()


class PgagroalPooler:
    """What a pgagroal part (native, docker) does as a stack's pooler: its readiness (the prefill check, then a
    query as the code under test's role), its settings and free server connections as ``pgagroal-cli`` reads
    them, and the drop of its server connections (a restart, then the socket backends it held gone).

    A subclass provides ``cli(*args)``, one ``pgagroal-cli`` command and its JSON output; ``_connect(timeout)``,
    a connection through it as ``client_user`` on ``database``; ``_server_connection(timeout)``, one to
    PostgreSQL itself (not through it) that sees every backend; ``restart(timeout)``; ``name`` and ``log_tail()``; and
    ``extra`` (the team's settings), ``users``, ``admin_user``, ``pool_size``, ``prefill``,
    ``prefilled_databases`` and ``server_host`` (PostgreSQL's socket folder, or an address).
    """

    kind = "pgagroal"
    extra: PoolerSettings
    users: dict[str, str]
    admin_user: str
    pool_size: int
    prefill: bool
    prefilled_databases: tuple[str, ...]
    server_host: str

    @property
    def prefills(self) -> bool:
        """Its server connections are opened before clients come (see the module docstring)."""
        return self.prefill

    @property
    def limited_users(self) -> list[str]:
        """The roles the transaction pipeline prefills ``pool_size`` server connections for: all but the admin
        role. A role without them cannot get a server connection through that pipeline at all."""
        return [user for user in self.users if user != self.admin_user] or [self.admin_user]

    def get(self, name: str) -> str:
        """``conf get NAME``: the value it runs with ("" for a name it does not know, and for some it does not
        show, such as ``disconnect_client_force``)."""
        output = self.cli("conf", "get", name)
        return str(output.get("value", "")) if isinstance(output, dict) else ""

    def slots(self) -> list[dict[str, str]]:
        """Its connection slots (``status details``) that hold a server connection: database, user, state
        (``free``, ``in use``, ...: see :data:`_SLOT_STATES`)."""
        output = self.cli("status", "details") or {}
        rows = (output.get("connections") or {}).get("list") or []
        return [{"database": str(r.get("database", "")), "user": str(r.get("user", "")),
                 "state": _SLOT_STATES.get(str(r.get("state", "")), str(r.get("state", "")))}
                for r in rows if _SLOT_STATES.get(str(r.get("state", ""))) != "not init"]

    def _ready(self) -> None:
        # The transaction pipeline serves clients only from its prefilled connections, and a client that comes
        # before they are all there may wait blocking_timeout (30 s) for one (measured at start, once in a few).
        if self.prefill:
            self._check_prefilled()
        # A real query on the real path: pgagroal authenticates against its vault and opens a server connection.
        with self._connect() as conn:
            conn.execute("SELECT 1").fetchone()

    def _check_prefilled(self) -> None:
        slots = self.slots()
        for database in self.prefilled_databases:
            for user in self.limited_users:
                free = sum(1 for s in slots if s["user"] == user and s["database"] == database
                           and s["state"] == "free")
                if free < self.pool_size:
                    raise RuntimeError(f"{free} of {self.pool_size} prefilled server connections of {user} on "
                                       f"{database} are there")

    # -- what the harness asks of a pooler -------------------------------------------------------------------
    def settings(self) -> dict[str, str]:
        """``conf get``: the values it runs with of :data:`PGAGROAL_REPORTED` and the team's settings (a
        setting it does not show, such as ``disconnect_client_force``, is left out)."""
        values = {}
        for name in dict.fromkeys((*PGAGROAL_REPORTED, *self.extra.values)):
            value = self.get(name)
            if value != "":
                values[name] = value
        return values

    def idle_servers(self, user: str, database: str) -> int:
        """The server connections of ``user`` on ``database`` it keeps free (``status details``)."""
        return sum(1 for slot in self.slots()
                   if slot["user"] == user and slot["database"] == database and slot["state"] == "free")

    def drop_server_connections(self, databases: list[str], timeout: float = 10.0) -> None:
        """Close every server connection it keeps to ``databases`` (and the clients on them) now, then return
        once PostgreSQL no longer shows the backends it closed; it accepts new clients at once after.

        It restarts (:meth:`restart`: about 0.06 s, the transaction route's readiness waiting for its
        prefilled connections): ``pgagroal-cli flush all`` is not safe to repeat on 1.6.0 (measured, 40 rounds
        of 3 connected clients and a flush each):

        - performance pipeline: a flush SIGQUITs the processes of clients that hold a server connection and
          the pool's count of active connections is not given back: after about 14 flushes every new client
          gets ``FATAL: connection pool is full``, for good (60 s later still, with no slot in use);
        - transaction pipeline: its main process hands the fresh prefilled connections to every client
          process over that process's management socket, and blocks for good when one sleeps waiting for a
          connection (``pgagroal: main`` in ``unix_wait_for_peer``, ``pgagroal-cli`` unanswered for minutes),
          once in about 13 flushes.

        A restart cuts the same clients a flush does (a flush cuts the idle clients of the transaction
        pipeline too). Which backends were its own PostgreSQL cannot say (every pgagroal of the stack comes in
        through the same socket, as the same roles): as many of the socket backends of its roles seen before
        as it held (its slots; every prefilled one for the transaction route) must be gone.
        """
        if not databases:
            return
        deadline = time.monotonic() + timeout
        roles = sorted(self.users)
        if self.prefill:
            mine = self.pool_size * len(self.limited_users) * sum(d in databases for d in self.prefilled_databases)
        else:
            try:
                mine = sum(1 for slot in self.slots() if slot["database"] in databases)
            except (RuntimeError, subprocess.TimeoutExpired):
                mine = 0  # it does not answer: the restart settles it, there is nothing to count
        with self._server_connection(timeout) as conn:
            before = self._socket_backends(conn, roles, databases)
            self.restart(max(1.0, deadline - time.monotonic()))
            while mine and before:
                gone = before - self._socket_backends(conn, roles, databases)
                if len(gone) >= min(mine, len(before)):
                    break
                if time.monotonic() >= deadline:
                    raise StartupTimeout(
                        f"{self.name}: the server connections it closed were still open after {timeout:.1f}s.",
                        checked=[f"its server connections to {', '.join(databases)} before: {mine}",
                                 f"socket backends of {', '.join(roles)} before: {sorted(before)}, gone: "
                                 f"{sorted(gone)}", "log tail:\n" + self.log_tail(10)],
                        fix=["a server under heavy load may need longer: raise the reset timeout"])
                time.sleep(0.002)

    def _socket_backends(self, conn: psycopg.Connection, roles: list[str], databases: list[str]) -> set[int]:
        """Backends of ``roles`` on ``databases`` that may be its own: over the socket when it comes that way (a
        Unix-socket client has no client_addr; the direct route comes over TCP)."""
        socket = "AND client_addr IS NULL " if self.server_host.startswith("/") else ""
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE usename = ANY(%s) AND datname = ANY(%s) "
                            f"{socket}AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                            (roles, databases)).fetchall()
        return {row[0] for row in rows}


class Pgagroal(PgagroalPooler, ServerProcess):
    """One native pgagroal serving one pooled route (``pool_mode`` ``session`` or ``transaction``).

    ``users``: role -> clear-text password, for the users vault: every role that logs in through it (the code
    under test's; ``admin_user``, the superuser, may be among them but gets no prefilled connection).
    ``admin_user`` logs in to PostgreSQL through its socket (trusted) for the part's own checks: which
    backends are gone after :meth:`drop_server_connections`. ``server_host``/``server_port``: PostgreSQL's
    Unix socket folder and port (the stack's way), or an address and a port below 10000 (a fault proxy on a
    port of :func:`lease_listen_port`). ``port``: below 10000 (:func:`lease_listen_port`). ``prefill``: see
    the module docstring (the transaction pipeline always prefills).
    """

    stop_signal = signal.SIGTERM
    death_signal = signal.SIGTERM

    def __init__(self, binary: Path | PgagroalBinaries, account: Account, pool_mode: str, run_dir: Path, port: int,
                 server_host: Path | str, server_port: int, users: Mapping[str, str], admin_user: str, pool_size: int,
                 extra: PoolerSettings | None = None, name: str | None = None, database: str = DATABASE,
                 prefill: bool = True, also_prefill: Iterable[str] = ()):
        if pool_mode not in PIPELINES:
            raise ValueError(f"pool_mode {pool_mode!r}: pgagroal serves {', '.join(PIPELINES)}")
        name = name or f"pgagroal-{pool_mode}"
        super().__init__(name, account, run_dir / f"{name}.log")
        if port > MAX_PORT:
            raise SetupError(f"{name}: pgagroal 1.6 cannot listen on port {port}: it crashes on a port of five "
                             "digits (a 5-byte buffer; 'buffer overflow detected').",
                             fix=["lease its port with harness.stack.pgagroal.lease_listen_port()"])
        #: the team's settings, written after the harness's own
        self.extra = extra or PoolerSettings({}, {})
        self.binaries = _as_binaries(binary)
        self.binary = self.binaries.pgagroal
        self.pool_mode = pool_mode
        self.pipeline = session_pipeline(self.extra) if pool_mode == "session" else PIPELINES[pool_mode]
        self.run_dir = run_dir
        self.port = port
        #: PostgreSQL's socket folder (pgagroal takes a host starting with "/" for one) or an address
        self.server_host = str(server_host)
        if not self.server_host.startswith("/") and server_port > MAX_PORT:
            raise SetupError(f"{name}: pgagroal 1.6 cannot connect to {self.server_host}:{server_port}: it crashes "
                             "on a TCP port of five digits ('buffer overflow detected').",
                             fix=["give PostgreSQL's Unix socket folder as server_host",
                                  "or a port below 10000 (a fault proxy on harness.stack.pgagroal.lease_listen_port())"])
        self.server_port = server_port
        self.users = dict(users)
        self.admin_user = admin_user
        self.pool_size = pool_size
        self.database = database
        #: the databases it prefills: ``database``, and ``also_prefill`` (the transaction pipeline serves no
        #: other database: the row-level-security layout's, say)
        self.prefilled_databases = (database, *(d for d in also_prefill if d != database))
        #: every server connection opened by pgagroal itself before clients come (the transaction pipeline
        #: always: it refuses to run without); see the module docstring for what it changes
        self.prefill = prefill or pool_mode == "transaction"
        #: the role its readiness query logs in as: the code under test's
        self.client_user = APP_ROLE if APP_ROLE in self.users else next(
            (u for u in self.users if u != admin_user), admin_user)
        #: its own folder: the management socket (.s.pgagroal, one name per folder), the pid file
        self.socket_dir = run_dir / name
        self.conf_path = run_dir / f"{name}.conf"
        self.hba_path = run_dir / f"{name}_hba.conf"
        self.limits_path = run_dir / f"{name}_databases.conf"
        self.vault_path = run_dir / f"{name}_users.conf"
        self.version = ""
        self._spawned_at = 0  # the log offset of the last spawn
        self._lifecycle = threading.RLock()  # restart() and stop() one at a time
        self._stopped = False  # stop() ran: restart() no longer starts a process

    # -- files ---------------------------------------------------------------------------------------------------
    def render_config(self) -> str:
        # max_connections: room for every prefilled connection
        size = self.pool_size * (len(self.limited_users) * len(self.prefilled_databases) if self.prefill else 1)
        return render_pgagroal_conf(pipeline=self.pipeline, listen_addr="127.0.0.1", listen_port=self.port,
                                    socket_dir=self.socket_dir, log_path=self.log_path,
                                    server_host=self.server_host, server_port=self.server_port,
                                    pool_size=size, extra=self.extra.values)

    def write_config(self) -> None:
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.conf_path.write_text(self.render_config())
        self.hba_path.write_text(render_pgagroal_hba())
        if self.prefill:
            self.limits_path.write_text(render_pgagroal_limits(self.prefilled_databases, self.limited_users,
                                                                    self.pool_size))
        for path in (self.conf_path, self.hba_path, self.limits_path):
            if path.exists():
                self.account.own(path)
        self.account.own(self.socket_dir)
        write_vault(self.binaries, self.account, self.vault_path, self.users)

    def _argv(self) -> list[object]:
        argv: list[object] = [self.binary, "-c", self.conf_path, "-a", self.hba_path, "-u", self.vault_path]
        return [*argv, "-l", self.limits_path] if self.prefill else argv

    # -- its admin ----------------------------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 5.0) -> Any:
        """One ``pgagroal-cli`` command (``status details``, ``flush all app``, ``conf get pipeline``...), run as
        the server account; its JSON ``output`` (None for a command that has none). RuntimeError if it fails."""
        done = run_as(self.account, [self.binaries.cli, "-c", self.conf_path, "-F", "json", *args],
                      timeout=timeout)
        if done.returncode == 0 and not done.stdout.strip():
            return None  # flush, shutdown: 1.6.0 prints nothing, also in JSON
        try:
            command = json.loads(done.stdout)["command"]
        except (ValueError, KeyError, TypeError):
            command = None
        if done.returncode != 0 or command is None or command.get("status") != "OK":
            raise RuntimeError(f"pgagroal-cli {' '.join(args)} failed (exit {done.returncode}): "
                               f"{(done.stdout + done.stderr).strip()[-500:]}")
        return command.get("output")

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def _connect(self, timeout: float = 2.0) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.client_user,
                               password=self.users[self.client_user], dbname=self.database,
                               connect_timeout=max(1, int(timeout)), autocommit=True, prepare_threshold=None)

    def _server_connection(self, timeout: float) -> psycopg.Connection:
        return psycopg.connect(host=self.server_host, port=self.server_port, user=self.admin_user,
                               password=self.users.get(self.admin_user), dbname=self.database,
                               connect_timeout=max(1, int(timeout)), autocommit=True)

    def _spawn(self) -> None:
        for leftover in self.socket_dir.glob("*.pid"):
            leftover.unlink(missing_ok=True)  # pgagroal refuses to start over a pid file
        self._spawned_at = self.log_size()
        self.spawn(self._argv(), cwd=self.run_dir)

    def _wait(self, what: str, timeout: float, probe=None) -> None:
        wait_until(probe or self._ready, what=what, timeout=timeout, interval=0.01, log_tail=self.log_tail,
                   alive=self.alive)

    def start(self, timeout: float) -> str:
        """Start pgagroal and wait until a query answers through it as the code under test's role; return its
        version ("1.6.0"). A setting of the team's it did not take is a UsageError naming it."""
        self.write_config()
        self._spawn()
        try:
            self._wait(f"{self.name} on port {self.port}", timeout)
        except StartupTimeout as exc:
            refusal = self.settings_refusal()
            if refusal is None:
                raise
            super().stop()
            raise refusal from exc
        refusal = self.settings_refusal(read_back=True)
        if refusal is not None:
            super().stop()
            raise refusal
        self.version = self.binaries.version()
        return self.version

    def launch(self, timeout: float) -> None:
        """Start it and wait only until its management socket answers (``ping``): no server needed (the
        throwaway of :func:`refuse_unknown_pgagroal_settings`)."""
        self.write_config()
        self._spawn()
        self._wait(f"{self.name} on port {self.port}", timeout, probe=lambda: self.cli("ping"))

    def port_taken(self) -> bool:
        """Whether its last start failed because its port was taken ("Could not bind to 127.0.0.1:PORT")."""
        return _NOT_BOUND in self.log_since(self._spawned_at)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop pgagroal and start it again, same configuration, same port (a fault step).

        Its clients and server connections are gone: a client connected before gets an error on its next
        statement. pgagroal binds with SO_REUSEADDR; a port still busy all the same is retried until ``timeout``.
        """
        with self._lifecycle:
            if self._stopped:
                raise RuntimeError(f"{self.name} was stopped: it is not restarted")
            deadline = time.monotonic() + timeout
            # A wedged main process (see drop_server_connections) may not get to its SIGTERM: not long.
            super().stop(min(1.0, timeout / 4))
            while True:
                self._spawn()
                try:
                    self._wait(f"{self.name} restarting on port {self.port}", max(0.1, deadline - time.monotonic()))
                    return
                except StartupTimeout:
                    busy = self.port_taken()
                    super().stop()
                    if not busy:
                        raise
                wait_until(lambda: claim_port(self.port), what=f"port {self.port} of {self.name}",
                           timeout=max(0.1, deadline - time.monotonic()), interval=0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (pgagroal closes its clients and server connections), then SIGKILL for its process group."""
        with self._lifecycle:
            self._stopped = True
            super().stop(timeout)

    # -- the team's settings: what it did not take ---------------------------------------------------------------
    def settings_refusal(self, read_back: bool = False) -> UsageError | None:
        """A clear error when pgagroal did not take one of the team's settings, else None: its log since the
        last start (a name it does not know, a value it could not read, a FATAL), and with ``read_back`` what
        ``conf get`` says it runs with (a value it replaced by its default, or capped)."""
        if not self.extra:
            return None
        log = self.log_since(self._spawned_at)
        problems: list[str] = []
        names: list[str] = []
        for name, value, section in _UNKNOWN_KEY.findall(log):
            if section == SECTION and name in self.extra.values:
                names.append(name)
                known = read_back and self.alive() and self._known(name)
                problems.append(f"{name} = {value} (from {self.extra.origins.get(name, '?')}): "
                                + ("a value it cannot read: it runs with its default" if known
                                   else "unknown to it (or a value it cannot read)"))
        if read_back and self.alive():
            for name, wanted in self.extra.values.items():
                if name in names or (name == "pipeline" and (self.pool_mode != "session" or wanted == "transaction")) \
                        or (self.pipeline == "transaction" and name in NOT_IN_TRANSACTION):
                    continue
                running = self.get(name)
                if running and not _same_value(name, wanted, running):
                    names.append(name)
                    problems.append(f"{name} = {wanted} (from {self.extra.origins.get(name, '?')}): it runs "
                                    f"with {running}")
        fatal = _FATAL.findall(log)
        if not problems and not (fatal and not self.alive()):
            return None
        if not problems:
            problems.append("it stopped at start, on its configuration (its FATAL lines are below)")
        lines = [line for line in log.splitlines() if "Unknown key" in line or _FATAL.match(line)][-6:]
        release = f" {self.binaries.version()}"
        shown = ", ".join(dict.fromkeys(names)) or ", ".join(self.extra.values)
        return UsageError(
            f"pgagroal{release} ({self.binary}) did not take the setting(s) {shown}.",
            checked=[*problems, "its log:\n" + ("\n".join("      " + line for line in lines) or "      (nothing)")],
            fix=["give a value pgagroal takes (https://agroal.github.io/pgagroal/: times in whole seconds, "
                 "booleans on/off), in --pgagroal-config or --pgagroal-set",
                 "or remove the setting"])

    def _known(self, name: str) -> bool:
        try:
            return self.get(name) != ""
        except RuntimeError:
            return False


# -- the team's settings checked before anything starts ----------------------------------------------------------

def refuse_unknown_pgagroal_settings(extra: PoolerSettings, binary: Path | PgagroalBinaries, *,
                                     timeout: float = 10.0, account: Account | None = None) -> None:
    """The team's settings checked against this pgagroal before anything starts.

    Names the harness does not carry, and values of the wrong kind, were refused when the settings were read;
    here a throwaway pgagroal (its own folder, a leased port, no server: it opens none until a client comes)
    runs with them: a name this release does not know, a value it cannot read and one it runs without (its
    ``conf get`` says another) are a UsageError. Always stopped, its folder removed; about 0.1 s.
    """
    if not extra:
        return
    binaries = _as_binaries(binary)
    binaries.check()
    account = account or server_account()
    folder = Path(tempfile.mkdtemp(prefix="tenant-harness-pgagroal-probe-"))
    lease = lease_listen_port()
    mode = "transaction" if extra.values.get("pipeline") == "transaction" else "session"
    probe = Pgagroal(binaries, account, mode, folder, lease.port, server_host=folder, server_port=5432,
                     users={"probe": secrets.token_hex(12)}, admin_user="probe", pool_size=1, extra=extra,
                     name="pgagroal-probe")
    try:
        account.own(folder)
        try:
            probe.launch(timeout)
        except StartupTimeout as exc:
            refusal = probe.settings_refusal()
            if refusal is not None:
                raise refusal from exc
            raise
        refusal = probe.settings_refusal(read_back=True)
        if refusal is not None:
            raise refusal
    finally:
        probe.stop()
        lease.release()
        shutil.rmtree(folder, ignore_errors=True)


def vault_users(logins) -> dict[str, str]:
    """Role -> clear-text password for the users vault, from a stack's :class:`~harness.stack.postgres.Logins`
    (unlike PgBouncer's auth_file, the vault needs the passwords themselves: pgagroal logs in with them)."""
    from harness.stack.postgres import SUPERUSER

    return {SUPERUSER: logins.superuser, APP_ROLE: logins.app}
