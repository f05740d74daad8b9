"""Pgpool-II in front of the stack's PostgreSQL: the pooler part of a ``bookworm-pgpool`` deployment.

One Pgpool-II process (its main process, ``num_init_children`` children, a PCP process and two workers, all
in one process group) in raw mode with one backend, no load balancing, connection pooling on: it serves the
``session`` route (Pgpool-II pools per session only). Measured on Debian bookworm's Pgpool-II 4.3.5 with
PostgreSQL 15 (``tests/test_pgpool.py`` checks what is marked *tested*).

What a client leaves on its pooled backend for the next client of the same child (one child, one cached
backend; the next client gets the same backend pid)::

    state the client left                 reset_query_list:  default            'ABORT'    '' (empty)
                                                             'ABORT; DISCARD ALL'
    SET search_path (tested)                                 reset              carried    carried
    set_config('app.tenant', ..., false)                     reset              carried    carried
    CREATE TEMP TABLE                                        dropped            carried    carried
    PREPARE (SQL)                                            deallocated        carried    carried
    protocol prepared statement (psycopg)                    deallocated        carried    carried
    pg_advisory_lock (session level)                         released           carried    carried
    LISTEN                                                   unlistened         carried    carried
    DECLARE ... WITH HOLD cursor                             closed             carried    carried
    open transaction (BEGIN, SET LOCAL, tested)              rolled back        rolled     carried
                                                                                back

With an empty list the next client runs inside the previous client's transaction (same transaction id, its
SET LOCAL and its uncommitted table visible) while libpq reports the connection idle.

- Startup ``options=-c search_path=...`` is accepted and passed to the backend (the session runs with it; tested).
  Pgpool-II reuses a cached backend only for a byte-identical startup packet (``child.c``: "we should make
  sure that the startup packet contents are identical. OPTION data and others might be different"), so a
  client with other ``options`` or another ``application_name`` gets a fresh backend and the cached one is
  closed: startup parameters never reach a client that did not send them.
  The same holds between drivers (tested): psycopg and psycopg2 (libpq, same parameters) share cached
  backends, asyncpg (other startup parameters) gets a fresh one. A probe of what a client left must connect
  the way that client did (libpq or asyncpg, the same URL parameters) to reach its backend.
- Pgpool-II never caches connections to the databases postgres, template0, template1 and regression: the
  part's own queries (readiness, ``PGPOOL SHOW``, ``SHOW POOL_POOLS``) go to ``postgres`` and leave no
  backend behind. The code under test must use another database (the stack's ``app``).
- ``memory_cache_enabled = on`` (the in-memory query cache) serves one tenant's rows to another: its cache
  key is the query text, user and database, not the search_path (measured: ``SET search_path = tenant_b;
  SELECT owner FROM product`` returned tenant_a's cached row, also with ``options=-c search_path=tenant_b``;
  tested).
  It is carried over like the reset settings, so a team that runs it sees the leak.
- Times (this part, ``num_init_children`` 4 / 60, every child with a cached backend; median (max) of 5 runs,
  20 for drop): start to the first answered query 0.08 (0.09) s / 0.10 (0.22) s; stop 0.03 (0.03) s / 0.16
  (0.17) s (fast shutdown: every child closes its backends); restart 0.09 (0.17) s / 0.34 (0.82) s;
  ``drop_server_connections`` 0.03 (0.04) s / 0.09 (0.11) s, after which none of 1,200 clients saw an error
  or the search_path left behind.

Authentication: clients log in with md5 (``pool_hba.conf``), and Pgpool-II logs in to PostgreSQL with
SCRAM-SHA-256, using the clear-text passwords of ``pool_passwd`` (``role:TEXT<password>``; the file is
0600 in the run folder, as PgBouncer's auth_file is). Unlike PgBouncer, Pgpool-II 4.3 cannot log in to a
SCRAM server with a stored SCRAM secret (measured: "SCRAM authentication failed / username "app" has invalid
password type"): it needs the password itself, clear or AES-encrypted with a key file. The AES form adds a key
file and ``pg_enc`` and protects nothing on a throwaway loopback stack. ``allow_clear_text_frontend_auth``
would work too, but it asks the client for its password in clear text. Clients do not log in with SCRAM:
with a clear-text password Pgpool-II answers SCRAM with 4096 iterations of its own (the stack's secrets
take 1, :data:`harness.stack.postgres.SCRAM_ITERATIONS`), 12 ms a login on both sides, and the state probe
logs in once per child (60 on the session route) after every request: 0.6 s a probe, against 0.2 s with
md5. How a client logs in decides nothing about what a pooled connection carries.

Shared memory: Pgpool-II sizes its System V segment from the query cache settings even with the cache off
(``enable_shared_relcache`` keeps it in use): 128 MiB by default. The harness sets ``memqcache_total_size =
4MB`` (about 5 MiB in all) and start takes a third of the time. A process removes the segments it made when
it exits (an ``on_shmem_exit`` hook: the main process its segment and semaphores, the PCP process a 1-byte
one): SIGKILL leaks them (seen), so the part stops with SIGINT (fast shutdown), then SIGQUIT (immediate), and
SIGKILLs only what is left of its process group.

The team's settings (``--pgpool-config``, ``--pgpool-set``) are read and checked by
:mod:`harness.pooler_settings.pgpool` (:data:`~harness.pooler_settings.pgpool.PGPOOL_CARRIED`). Pgpool-II does
not refuse a name it does not know (it logs it below its default log_min_messages and runs without it), so the
binary itself is asked before anything starts (:func:`refuse_unknown_pgpool_settings`: ``pgpool -f probe.conf
stop`` parses a configuration and exits on the missing pid file: 7 ms, no port, no shared memory).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Mapping

import psycopg

from harness.errors import SetupError, StartupTimeout, UsageError
from harness.pooler_settings import PoolerSettings
from harness.pooler_settings.pgpool import PGPOOL_REPORTED, parse_bool
from harness.stack.account import Account, server_account
from harness.stack.ports import claim_port
from harness.stack.process import ServerProcess, run_as
from harness.stack.wait import wait_until

#: The database the part's own queries go to: Pgpool-II never caches its connections (nor those to template0,
#: template1, regression), so they leave no backend in a child's pool.
ADMIN_DATABASE = "postgres"
NEVER_CACHED = ("postgres", "template0", "template1", "regression")

#: The query cache the harness sizes down (see the module docstring): bytes of the shared memory segment.
QUERY_CACHE_SIZE = "4MB"
QUERY_CACHE_ENTRIES = 10000
#: bytes of a Unix socket path (sun_path less its terminating NUL): Pgpool-II's sockets are in its folder
SOCKET_PATH_MAX = 107

# -- the binary ----------------------------------------------------------------------------------------------

def find_pgpool(pgpool: Path | None = None) -> Path:
    """The ``pgpool`` executable: the one given, else PATH, else /usr/sbin/pgpool (Debian's pgpool2)."""
    if pgpool is not None:
        if not (pgpool.is_file() and os.access(pgpool, os.X_OK)):
            raise SetupError(f"{pgpool} is not an executable pgpool binary.", checked=[str(pgpool)],
                             fix=["point the setting at the pgpool binary (on Debian: /usr/sbin/pgpool)"])
        return pgpool
    on_path = shutil.which("pgpool")
    if on_path:
        return Path(on_path)
    debian = Path("/usr/sbin/pgpool")
    if debian.is_file() and os.access(debian, os.X_OK):
        return debian
    raise SetupError("The pgpool binary (Pgpool-II) was not found.",
                     checked=["PATH", str(debian)],
                     fix=["install Debian's package as root: apt-get install pgpool2 (then stop its service: "
                          "service pgpool2 stop; the harness starts its own)",
                          "or run a PgBouncer deployment instead"])


def pgpool_version(binary: Path) -> str:
    """``pgpool --version`` ("pgpool-II version 4.3.5 (tamahomeboshi)" gives "4.3.5"); "" if it says none."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"version (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else ""


#: What Pgpool-II logs when it will not take a value (4.3: FATAL, and it exits).
_INVALID = re.compile(r'invalid value for parameter "(\w+)": "(.*)"')
_RANGE = re.compile(r'(\S+) is outside the valid range for parameter "(\w+)" \((.*)\)')
_UNKNOWN = re.compile(r'unrecognized configuration parameter "(\w+)"')
#: what ``pgpool ... stop`` says once it has read its configuration and found no pid file
_PARSED = "could not read pid file"


def _quote(value: str) -> str:
    return "'" + value + "'"


def probe_pgpool_settings(settings: Mapping[str, str], binary: Path, account: Account,
                          timeout: float = 10.0) -> str:
    """What ``binary`` says about ``settings`` (name -> value) without starting: its log lines.

    ``pgpool -f probe.conf -m fast stop`` reads the configuration (FATAL on a value it refuses; INFO,
    shown at log_min_messages = info, on a name it does not know) and then exits because the pid file it
    would signal does not exist: no port, no shared memory, no process left. The pid file is the last line,
    in a fresh folder, so that no setting can point the stop at a running Pgpool-II.
    """
    folder = Path(tempfile.mkdtemp(prefix="tenant-harness-pgpool-probe-"))
    try:
        conf = folder / "pgpool.conf"
        lines = ["log_min_messages = info", "log_destination = 'stderr'",
                 *(f"{name} = {_quote(value)}" for name, value in settings.items()),
                 f"logdir = '{folder}'", f"pid_file_name = '{folder / 'absent.pid'}'"]
        conf.write_text("\n".join(lines) + "\n")
        account.own(folder)
        done = run_as(account, [binary, "-f", conf, "-m", "fast", "stop"], cwd=folder, timeout=timeout)
        return done.stdout + done.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def refuse_unknown_pgpool_settings(extra: PoolerSettings, binary: Path, *, timeout: float = 10.0,
                                   account: Account | None = None) -> None:
    """The team's settings checked against this Pgpool-II binary before anything starts.

    Names the harness does not carry were refused when the settings were read; here the binary itself says
    whether it knows each name (another Pgpool-II release may lack one) and takes each value.
    """
    if not extra:
        return
    log = probe_pgpool_settings(extra.values, binary, account or server_account(), timeout)
    version = pgpool_version(binary)
    refusal = settings_refusal(log, extra, binary, version)
    if refusal is not None:
        raise refusal
    if _PARSED not in log:
        raise SetupError(f"{binary} did not read a test configuration (pgpool -f ... stop).",
                         checked=["its output:\n" + "\n".join("      " + line for line in log.splitlines()[-10:])],
                         fix=["check that the binary is Pgpool-II 4.x (pgpool --version)"])


def settings_refusal(log: str, extra: PoolerSettings, binary: Path | str, version: str = "") -> UsageError | None:
    """A clear error when Pgpool-II refused or did not know one of the team's settings (from its log), else None.

    Seen on 4.3.5: ``FATAL:  invalid value for parameter "child_life_time": "abc"``, ``FATAL:  -5 is outside
    the valid range for parameter "child_life_time" (0 .. 2147483647)`` and ``INFO:  unrecognized
    configuration parameter "no_such_setting"``.
    """
    problems: list[str] = []
    names: list[str] = []
    for name, value in _INVALID.findall(log):
        if name in extra.values:
            names.append(name)
            problems.append(f"{name} = {value!r} (from {extra.origins.get(name, '?')}): not a value it takes")
    for value, name, bounds in _RANGE.findall(log):
        if name in extra.values:
            names.append(name)
            problems.append(f"{name} = {value} (from {extra.origins.get(name, '?')}): outside {bounds}")
    unknown = [name for name in _UNKNOWN.findall(log) if name in extra.values]
    problems += [f"{name} (from {extra.origins.get(name, '?')}): unknown to this Pgpool-II" for name in unknown]
    if not problems:
        return None
    lines = [line for line in log.splitlines() if "FATAL" in line or "unrecognized" in line][-6:]
    release = f" {version}" if version else ""
    return UsageError(
        f"Pgpool-II{release} ({binary}) refused the setting(s) {', '.join(dict.fromkeys(names + unknown))}.",
        checked=[*problems, "its log:\n" + "\n".join("      " + line for line in lines)],
        fix=["give a value Pgpool-II takes (https://www.pgpool.net/docs/43/en/html/runtime-config.html: times "
             "in seconds or with a unit, booleans on/off), in --pgpool-config or --pgpool-set",
             "or remove the setting (a name this release does not know it would ignore)"])


# -- configuration ---------------------------------------------------------------------------------------------

def render_pgpool_conf(*, folder: Path | str, listen_addr: str, listen_port: int, server_host: str,
                       server_port: int, pool_size: int, extra: Mapping[str, str] | None = None) -> str:
    """The harness's pgpool.conf, for the native backend (and a docker one: ``folder`` is where its files go).

    Raw mode, one backend that never fails over, no load balancing, connection cache on, the defaults of
    everything that decides what clients see (``reset_query_list`` 'ABORT; DISCARD ALL', ``max_pool`` 4).
    ``pool_size`` is ``num_init_children``: the number of clients it serves at once (more wait for a child).
    ``extra``: the team's settings, after the harness's own lines: Pgpool-II takes the last line of a name.
    """
    team = [f"{name} = {_quote(value)}" for name, value in (extra or {}).items()]
    return "\n".join([
        "# Written by the harness: Pgpool-II pooling sessions for one PostgreSQL (raw mode, no load balancing).",
        "backend_clustering_mode = 'raw'",
        f"listen_addresses = '{listen_addr}'",
        f"port = {listen_port}",
        f"socket_dir = '{folder}'",
        "pcp_listen_addresses = ''",
        f"pcp_socket_dir = '{folder}'",
        f"wd_ipc_socket_dir = '{folder}'",
        "use_watchdog = off",
        f"backend_hostname0 = '{server_host}'",
        f"backend_port0 = {server_port}",
        "backend_weight0 = 1",
        # A backend error (a terminated backend, a cut connection) must not detach the only node.
        "backend_flag0 = 'DISALLOW_TO_FAILOVER'",
        "failover_on_backend_error = off",
        "health_check_period = 0",
        "sr_check_period = 0",
        "load_balance_mode = off",
        f"num_init_children = {pool_size}",
        "connection_cache = on",
        "enable_pool_hba = on",
        f"pool_passwd = '{folder}/pool_passwd'",
        "allow_clear_text_frontend_auth = off",
        f"pid_file_name = '{folder}/pgpool.pid'",
        f"logdir = '{folder}'",
        "log_destination = 'stderr'",
        "logging_collector = off",
        f"memqcache_oiddir = '{folder}/oiddir'",
        f"memqcache_total_size = '{QUERY_CACHE_SIZE}'",
        f"memqcache_max_num_cache = {QUERY_CACHE_ENTRIES}",
        *(["# the team's settings (they win over the lines above)", *team] if team else []),
        "",
    ])


def render_pool_hba(clients: str = "127.0.0.1/32") -> str:
    """Clients log in over TCP with md5 (see the module docstring: Authentication): over loopback (native), or
    from ``clients`` (a docker stack's clients come through the engine's network, from its gateway)."""
    where = "loopback TCP" if clients == "127.0.0.1/32" else "TCP"
    return (f"# Written by the harness: md5 over {where} (a SCRAM login here costs 4096 iterations).\n"
            f"host all all {clients} md5\n")


def render_pool_passwd(users: Mapping[str, str]) -> str:
    """``pool_passwd``: each role's password in clear (``TEXT`` prefix): Pgpool-II answers the client's SCRAM
    with it and logs in to PostgreSQL (SCRAM) with it."""
    for user, password in users.items():
        if ":" in user or "\n" in user + password:
            raise ValueError(f"pool_passwd cannot hold the role {user!r} or its password")
    return "".join(f"{user}:TEXT{password}\n" for user, password in users.items())


# -- the process -----------------------------------------------------------------------------------------------

def _simple_query(conn: psycopg.Connection, sql: str) -> list[dict[str, str]]:
    """Rows of one statement over the simple query protocol, as text.

    Pgpool-II answers ``SHOW POOL_VERSION`` with no rows over the extended protocol (psycopg's ``execute``)
    and with one over the simple one.
    """
    result = conn.pgconn.exec_(sql.encode())
    if result.status not in (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK):
        raise psycopg.OperationalError((result.error_message or b"").decode(errors="replace").strip()
                                       or f"{sql}: {result.status.name}")
    names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
    return [{names[i]: (result.get_value(row, i) or b"").decode(errors="replace") for i in range(result.nfields)}
            for row in range(result.ntuples)]


class PgpoolPooler:
    """What a Pgpool-II part (native, docker) does as a stack's pooler: its readiness, its settings, the servers
    it may keep idle, its children's marks and the drop of its cached backends, all through connections of its
    own (none kept open: each would hold a child).

    A subclass provides ``_connect(timeout)``, a connection through it as ``admin_user`` on
    :data:`ADMIN_DATABASE` (never cached); ``extra``, the team's settings; and ``restart(timeout)``, the
    fallback of :meth:`drop_server_connections`.
    """

    kind = "pgpool"
    prefills = False
    pool_mode = "session"
    extra: PoolerSettings

    def query(self, sql: str) -> list[dict[str, str]]:
        """One statement through Pgpool-II (its own commands too: ``PGPOOL SHOW``, ``SHOW POOL_POOLS``), as
        ``admin_user`` on database postgres (never cached), over the simple protocol; rows as text."""
        with self._connect() as conn:
            return _simple_query(conn, sql)

    def _ready(self) -> str:
        # A real query on the real path: Pgpool-II answers only once it has a backend connection.
        with self._connect() as conn:
            _simple_query(conn, "SELECT 1")
            rows = _simple_query(conn, "SHOW POOL_VERSION")
        return rows[0]["pool_version"].split()[0] if rows else ""

    # -- what the harness asks of a pooler -------------------------------------------------------------------
    def settings(self) -> dict[str, str]:
        """``PGPOOL SHOW ALL``: the values it runs with of :data:`PGPOOL_REPORTED` and the team's settings.

        As Pgpool-II shows them: ``reset_query_list`` as ``ABORT;DISCARD ALL``, times with a unit
        (``30s``, ``5min``), booleans as on/off.
        """
        rows = {row["item"]: row["value"] for row in self.query("PGPOOL SHOW ALL")}
        names = dict.fromkeys((*PGPOOL_REPORTED, *self.extra.values))
        return {name: rows[name] for name in names if name in rows}

    def caches_connections(self) -> bool:
        """Whether it keeps backends between clients (``connection_cache``, on unless the team turned it off)."""
        value = self.extra.values.get("connection_cache")
        return value is None or parse_bool(value) is not False

    def idle_servers(self, user: str, database: str) -> int:
        """How many clients at once land on every child that may hold an idle cached backend of ``user`` on
        ``database``: every child no client is connected to (``SHOW POOL_PROCESSES`` status "Wait for
        connection"), a new client lands on any of them. The child that answered this very query is free again
        once it has answered, so it counts too. A child still holding a client (a connection pool of the code
        under test) is not counted: a probe client would wait for it for good (Pgpool-II has no wait timeout).
        When it caches nothing (``connection_cache = off``, or a database it never caches): 0."""
        if not self.caches_connections() or database in NEVER_CACHED:
            return 0
        free = sum(1 for row in self.query("SHOW POOL_PROCESSES") if row.get("status") == "Wait for connection")
        return free + 1

    def client_marks(self) -> dict[str, tuple[str, bool]]:
        """Child -> (clients it served, whether it is free now), from ``SHOW POOL_PROCESSES``. While no child's
        mark changes, no client left a backend since: the state probe has nothing new to read."""
        return {row["pool_pid"]: (row.get("client_connection_count", ""), row.get("status") == "Wait for connection")
                for row in self.query("SHOW POOL_PROCESSES")}

    def drop_server_connections(self, databases: list[str], timeout: float = 10.0) -> None:
        """Close every backend it keeps to ``databases`` (and the clients on them), then return once they are
        gone; it accepts new clients at once after.

        ``SHOW POOL_POOLS`` lists each child's backend pids; they are terminated from the server side
        (``pg_terminate_backend``) and waited for. A child whose cached backend was terminated finds its
        socket closed when the next client comes (``pool_get_cp`` checks it) and connects afresh: measured,
        no client sees an error (0.09 s for 60 backends). A restart (0.34 s with 60 children) is the fallback
        when no child is free to ask (every one has a client) or a backend outlives ``timeout``; it is also
        the way when the query cache is on, since only a restart empties it.
        """
        if not databases:
            return
        if parse_bool(self.extra.values.get("memory_cache_enabled", "off")):
            self.restart(timeout)
            return
        deadline = time.monotonic() + timeout
        try:
            if self._terminate_cached(databases, deadline):
                return
        except psycopg.OperationalError:
            pass  # no child free to ask, or Pgpool-II is not answering: the restart below settles it
        self.restart(max(1.0, deadline - time.monotonic()))

    def _terminate_cached(self, databases: list[str], deadline: float) -> bool:
        """Terminate the backends its children keep to ``databases``; True once they are gone, False if one
        outlived the deadline."""
        with self._connect(min(2.0, max(0.0, deadline - time.monotonic()))) as conn:
            own = _simple_query(conn, "SELECT pg_backend_pid() AS pid")[0]["pid"]
            pids = sorted({row["pool_backendpid"] for row in _simple_query(conn, "SHOW POOL_POOLS")
                           if row["database"] in databases} - {"", "0", own}, key=int)
            if not pids:
                return True
            listed = f"ARRAY[{','.join(str(int(pid)) for pid in pids)}]::int[]"
            _simple_query(conn, f"SELECT pg_terminate_backend(pid) FROM unnest({listed}) AS pid")
            while _simple_query(conn, f"SELECT count(*) AS n FROM pg_stat_activity WHERE pid = ANY({listed})"
                                )[0]["n"] != "0":
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.002)
            return True


class Pgpool(PgpoolPooler, ServerProcess):
    """One native Pgpool-II (``pgpool -n``) serving the session route.

    ``users``: role -> clear-text password, for ``pool_passwd`` (every role that logs in through it: the
    code under test's, and ``admin_user``, whose logins to database ``postgres`` are the part's own queries:
    readiness, ``PGPOOL SHOW``, ``SHOW POOL_POOLS``, ``pg_terminate_backend``). No connection of its own is
    kept open: each would hold a child, one client fewer for the code under test.
    """

    # Fast shutdown: the children close their backends, the main process removes its shared memory and
    # semaphores. SIGTERM would be a smart shutdown (waits for clients); SIGKILL would leak the IPC objects.
    stop_signal = signal.SIGINT
    death_signal = signal.SIGINT

    def __init__(self, binary: Path, account: Account, run_dir: Path, port: int, server_port: int,
                 users: Mapping[str, str], admin_user: str, pool_size: int,
                 extra: PoolerSettings | None = None, name: str | None = None, server_host: str = "127.0.0.1"):
        name = name or f"pgpool-{self.pool_mode}"
        super().__init__(name, account, run_dir / f"{name}.log")
        if admin_user not in users:
            raise ValueError(f"admin_user {admin_user!r} needs a password in users")
        #: the team's settings, written after the harness's own
        self.extra = extra or PoolerSettings({}, {})
        self.binary = binary
        self.run_dir = run_dir
        #: its own folder: configuration, pool_passwd, pid file, sockets, query cache oid maps
        self.folder = run_dir / name
        self.port = port
        self.server_host = server_host
        self.server_port = server_port
        self.users = dict(users)
        self.admin_user = admin_user
        #: num_init_children: at least the largest client pool of the route (clients beyond it wait)
        self.pool_size = pool_size
        self.conf_path = self.folder / "pgpool.conf"
        self.version = ""
        self._lifecycle = threading.RLock()  # restart() and stop() one at a time
        self._stopped = False  # stop() ran: restart() no longer starts a process

    # -- files ---------------------------------------------------------------------------------------------
    def render_config(self) -> str:
        return render_pgpool_conf(folder=self.folder, listen_addr="127.0.0.1", listen_port=self.port,
                                  server_host=self.server_host, server_port=self.server_port,
                                  pool_size=self.pool_size, extra=self.extra.values)

    def write_config(self) -> None:
        socket_path = f"{self.folder}/.s.PGSQL.{max(self.port, 65535)}"
        if len(socket_path.encode()) > SOCKET_PATH_MAX:
            raise SetupError(f"The run folder's path is too long for Pgpool-II's sockets ({socket_path}).",
                             checked=[f"a Unix socket path holds at most {SOCKET_PATH_MAX} bytes"],
                             fix=["set TMPDIR to a shorter folder (the run folders go to /dev/shm or TMPDIR)"])
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self.conf_path.write_text(self.render_config())
        (self.folder / "pool_hba.conf").write_text(render_pool_hba())
        (self.folder / "pcp.conf").write_text("# no PCP users: the harness does not use PCP\n")
        passwd = self.folder / "pool_passwd"
        passwd.write_text(render_pool_passwd(self.users))
        passwd.chmod(0o600)
        self._clear_leftovers()
        self.account.own(self.folder)

    def _clear_leftovers(self) -> None:
        """A pid file or socket of a process that is gone: Pgpool-II refuses to start over a pid file whose
        number is some other live process's."""
        for leftover in (self.folder / "pgpool.pid", *self.folder.glob(".s.PGSQL.*")):
            leftover.unlink(missing_ok=True)

    def _argv(self) -> list[object]:
        # -n: stay in the foreground, log to stderr (the log file); -D: forget the backend status of a
        # previous run (pgpool_status), so that a node once marked down is not kept down.
        return [self.binary, "-n", "-D", "-f", self.conf_path, "-F", self.folder / "pcp.conf",
                "-a", self.folder / "pool_hba.conf"]

    # -- its own queries -------------------------------------------------------------------------------------
    def _connect(self, timeout: float = 2.0) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.admin_user,
                               password=self.users[self.admin_user], dbname=ADMIN_DATABASE,
                               connect_timeout=max(1, int(timeout)), autocommit=True)

    def _wait_ready(self, what: str, timeout: float) -> str:
        return wait_until(self._ready, what=what, timeout=timeout, interval=0.01, log_tail=self.log_tail,
                          alive=self.alive)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self, timeout: float) -> str:
        """Start Pgpool-II and wait until a query answers through it; return its version ("4.3.5")."""
        self.write_config()
        offset = self.log_size()
        self.spawn(self._argv(), cwd=self.folder)
        try:
            self.version = self._wait_ready(f"{self.name} on port {self.port}", timeout)
            return self.version
        except StartupTimeout as exc:
            refusal = settings_refusal(self.log_since(offset), self.extra, self.binary)
            if refusal is None:
                raise
            self._halt()
            raise refusal from exc

    def restart(self, timeout: float = 10.0) -> None:
        """Stop Pgpool-II (fast shutdown) and start it again, same configuration, same port (a fault step).

        Its clients and cached backends are gone: a client connected before gets an error on its next
        statement; the query cache is empty. Pgpool-II binds with SO_REUSEADDR; a port still busy all the
        same ("bind on socket failed ... Address already in use") is retried until ``timeout``.
        """
        with self._lifecycle:
            if self._stopped:
                raise RuntimeError(f"{self.name} was stopped: it is not restarted")
            self._halt()
            deadline = time.monotonic() + timeout
            while True:
                self._clear_leftovers()
                offset = self.log_size()
                self.spawn(self._argv(), cwd=self.folder)
                try:
                    self._wait_ready(f"{self.name} restarting on port {self.port}",
                                     max(0.1, deadline - time.monotonic()))
                    return
                except StartupTimeout:
                    busy = "already in use" in self.log_since(offset)
                    self._halt()
                    if not busy:
                        raise
                wait_until(lambda: claim_port(self.port), what=f"port {self.port} of {self.name}",
                           timeout=max(0.1, deadline - time.monotonic()), interval=0.05)

    def _halt(self, timeout: float = 5.0) -> None:
        """Fast shutdown, then immediate shutdown, then SIGKILL for what is left of the process group."""
        if self.popen is not None and self.popen.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 2.0)):
                try:
                    self.popen.send_signal(sig)
                    self.popen.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        super().stop(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lifecycle:
            self._stopped = True
            self._halt(timeout)
