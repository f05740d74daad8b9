"""The stack: one throwaway PostgreSQL plus two PgBouncers (session, transaction).

:class:`Stack` is what scenarios and tests see, whatever backend started it.
:func:`start_native_stack` is the native backend: local binaries, loopback only.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import psycopg
from sqlalchemy.engine import URL

from harness.config import HarnessConfig
from harness.errors import SetupError, StartupTimeout
from harness.stack.account import Account, server_account
from harness.stack.binaries import find_binaries
from harness.stack.pgbouncer import Bouncer
from harness.stack.ports import PortLease, lease_port, port_in_use
from harness.stack.postgres import APP_ROLE, DATABASE, SUPERUSER, PostgresServer, prepare_data_dir
from harness.stack.process import ServerProcess, pid_alive
from harness.stack.wait import wait_until

ROUTES = ("direct", "session", "transaction")
POOLED_ROUTES = ("session", "transaction")
PORT_ATTEMPTS = 3
RUN_DIR_PREFIX = "tenant-harness-"
OWNER_FILE = "harness.pid"


@dataclasses.dataclass
class Stack:
    """A running stack. Use it as a context manager or call :meth:`close`."""

    backend: str
    run_id: str
    routes: dict[str, URL]
    superuser_url: URL
    bouncers: dict[str, Bouncer]
    versions: dict[str, str]
    processes: list[ServerProcess]
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    run_dir: Path | None = None
    #: the login role of the code under test (``app`` on stacks the harness starts)
    app_role: str = APP_ROLE
    #: prefix of every tenant schema (the external backend's run-specific namespace)
    tenant_prefix: str = ""
    #: comment put on every schema the harness creates, so a later run knows it as its own
    schema_comment: str | None = None
    #: layouts this stack can provision (the external backend creates no database)
    layouts: tuple[str, ...] = ("schema", "rls")
    #: may the harness put decoy tables into public (not on someone else's database)
    owns_public: bool = True
    #: what this stack cannot run, and why: {"route session": "no --session-dsn given", ...}
    not_run: dict[str, str] = dataclasses.field(default_factory=dict)
    _cleanup: list[Callable[[], None]] = dataclasses.field(default_factory=list, repr=False)
    _closed: bool = dataclasses.field(default=False, repr=False)

    def url(self, route: str) -> URL:
        """SQLAlchemy URL (``postgresql+psycopg``) of a route, as the login role of the code under test."""
        try:
            return self.routes[route]
        except KeyError:
            raise KeyError(f"unknown route {route!r}; routes are {', '.join(self.routes)}") from None

    @property
    def database(self) -> str:
        """The database the code under test connects to."""
        return next(iter(self.routes.values())).database

    def tenant_name(self, name: str) -> str:
        """The schema name of tenant ``name`` on this stack: the prefix, then the name cut to 63 bytes."""
        if not self.tenant_prefix or name.startswith(self.tenant_prefix):
            return name
        room = 63 - len(self.tenant_prefix.encode("utf-8"))
        return self.tenant_prefix + name.encode("utf-8")[:room].decode("utf-8", "ignore")

    def admin(self, route: str, command: str) -> list[dict[str, Any]]:
        """An admin console command on the PgBouncer of a pooled route."""
        return self.bouncers[route].admin(command)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def log_offsets(self) -> dict[str, int]:
        return {p.name: p.log_size() for p in self.processes}

    def logs_since(self, offsets: dict[str, int]) -> dict[str, str]:
        """Log lines each server wrote since ``offsets`` (from :meth:`log_offsets`)."""
        return {p.name: p.log_since(offsets.get(p.name, 0)) for p in self.processes}

    def close(self) -> None:
        """Stop every process and remove what the start created; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        errors: list[BaseException] = []
        for step in reversed(self._cleanup):
            try:
                step()
            except BaseException as exc:  # noqa: BLE001 - keep tearing down
                errors.append(exc)
        self.timings["teardown"] = time.monotonic() - started
        _LIVE.discard(self)
        if errors:
            raise errors[0]

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __hash__(self) -> int:
        return id(self)

    def describe(self) -> str:
        lines = [f"stack {self.run_id} ({self.backend}): PostgreSQL {self.versions.get('postgres')}, "
                 f"PgBouncer {self.versions.get('pgbouncer')}"]
        for route, url in self.routes.items():
            lines.append(f"  {route:<12} {url.render_as_string(hide_password=False)}")
        lines.append(f"  {'superuser':<12} {self.superuser_url.render_as_string(hide_password=False)}")
        for route, bouncer in self.bouncers.items():
            admin = self.superuser_url.set(port=bouncer.port, database="pgbouncer")
            lines.append(f"  admin:{route:<6} {admin.render_as_string(hide_password=False)}")
        return "\n".join(lines)


# Stacks still running; closed at interpreter exit if their owner forgot.
_LIVE: set[Stack] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _close_leftovers() -> None:
    for stack in list(_LIVE):
        try:
            stack.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def remove_abandoned_run_dirs() -> list[Path]:
    """Remove run folders whose harness process died without tearing down (SIGKILL).

    Its servers died with it (see ``process._die_with_parent``); only the folder
    is left. A folder whose owner is alive, or that names no owner, is kept.
    """
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not pid_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _url(user: str, password: str, port: int, host: str = "127.0.0.1") -> URL:
    return URL.create("postgresql+psycopg", username=user, password=password, host=host,
                      port=port, database=DATABASE)


def _check_route(url: URL) -> None:
    with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                         dbname=url.database, connect_timeout=2) as conn:
        conn.execute("SELECT 1").fetchone()


def _start_on_free_port(make: Callable[[int], ServerProcess], leases: list[PortLease],
                        timeout: float, start: Callable[[ServerProcess], Any]) -> tuple[ServerProcess, Any]:
    """Start a server on a leased port; a port taken by an outsider in between gets a retry."""
    last: StartupTimeout | None = None
    for _ in range(PORT_ATTEMPTS):
        lease = lease_port()
        leases.append(lease)
        if port_in_use(lease.port):
            continue
        process = make(lease.port)
        try:
            return process, start(process)
        except StartupTimeout as exc:
            process.stop()
            if "already in use" not in process.log_tail():
                raise
            last = exc
    raise SetupError(f"Could not find a free loopback port in {PORT_ATTEMPTS} attempts.",
                     checked=[str(last) if last else "every leased port was taken"],
                     fix=["free some ports on 127.0.0.1, or stop other servers"])


def start_native_stack(config: HarnessConfig) -> Stack:
    """Start PostgreSQL and two PgBouncers from local binaries.

    Everything is checked before anything starts (binaries, account); a failure
    part-way stops what was started and removes the temporary folder.
    """
    started = time.monotonic()
    binaries = find_binaries(config.pg_bindir, config.pgbouncer)
    account = server_account()
    run_id = uuid.uuid4().hex[:10]
    remove_abandoned_run_dirs()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{run_id}-"))
    (run_dir / OWNER_FILE).write_text(str(os.getpid()))
    leases: list[PortLease] = []
    processes: list[ServerProcess] = []
    cleanup: list[Callable[[], None]] = [
        lambda: shutil.rmtree(run_dir, ignore_errors=True) if not config.keep_tmp else None,
        lambda: [lease.release() for lease in leases],
        lambda: [p.stop() for p in reversed(processes)],
    ]
    stack = Stack(backend="native", run_id=run_id, routes={}, superuser_url=_url(SUPERUSER, "", 0),
                  bouncers={}, versions={}, processes=processes, run_dir=run_dir, _cleanup=cleanup)
    with _LIVE_LOCK:
        _LIVE.add(stack)
    try:
        _boot(stack, config, binaries, account, run_dir, leases, processes)
    except BaseException:
        stack.close()
        raise
    stack.timings["start"] = time.monotonic() - started
    return stack


def _boot(stack: Stack, config: HarnessConfig, binaries, account: Account, run_dir: Path,
          leases: list[PortLease], processes: list[ServerProcess]) -> None:
    account.own(run_dir)
    os.chmod(run_dir, 0o700)
    data_dir = run_dir / "data"
    reused = prepare_data_dir(binaries, account, config.template_cache, run_dir, data_dir)
    stack.timings["template_reused"] = float(reused)
    superuser_password = secrets.token_hex(12)
    app_password = secrets.token_hex(12)

    def make_postgres(port: int) -> PostgresServer:
        server = PostgresServer(binaries, account, data_dir, run_dir, port, run_dir / "postgres.log")
        processes.append(server)
        return server

    postgres, _ = _start_on_free_port(make_postgres, leases, config.start_timeout,
                                      lambda p: p.start(config.start_timeout))
    assert isinstance(postgres, PostgresServer)
    stack.versions["postgres"] = postgres.bootstrap(superuser_password, app_password)
    stack.superuser_url = _url(SUPERUSER, superuser_password, postgres.port)
    stack.routes["direct"] = _url(APP_ROLE, app_password, postgres.port)

    users = {SUPERUSER: superuser_password, APP_ROLE: app_password}
    for mode in POOLED_ROUTES:
        size = config.session_pool_size if mode == "session" else config.transaction_pool_size

        def make_bouncer(port: int, mode: str = mode, size: int = size) -> Bouncer:
            bouncer = Bouncer(binaries.pgbouncer, account, mode, run_dir, port, postgres.port,
                              users, SUPERUSER, size)
            processes.append(bouncer)
            return bouncer

        bouncer, version = _start_on_free_port(make_bouncer, leases, config.start_timeout,
                                               lambda b: b.start(config.start_timeout))
        assert isinstance(bouncer, Bouncer)
        stack.bouncers[mode] = bouncer
        stack.versions["pgbouncer"] = version.split()[-1] if version else binaries.pgbouncer_version()
        stack.routes[mode] = _url(APP_ROLE, app_password, bouncer.port)

    for route in ROUTES:
        process = stack.bouncers.get(route) or postgres
        wait_until(lambda: _check_route(stack.routes[route]), what=f"route {route!r}",
                   timeout=config.start_timeout, log_tail=process.log_tail, alive=process.alive)
