"""The native backend: PostgreSQL and its pooler (two PgBouncers by default) from local binaries, on loopback ports.

Every server runs from a temporary run folder (data directory, configuration,
logs) owned by the unprivileged server account; the folder names the harness
process that owns it, so a run killed outright is swept by the next start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

from harness.config import HarnessConfig
from harness.errors import SetupError, StartupTimeout
from harness.stack.account import server_account
from harness.deployments import POOLERS, deployment
from harness.stack.binaries import Binaries, find_binaries, pooler_version
from harness.stack.deployment_builds import native_binaries
from harness.pooler_settings import PoolerSettings, requested_for
from harness.stack.pgagroal import Pgagroal, lease_listen_port, refuse_unknown_pgagroal_settings, vault_users
from harness.stack.pgbouncer import Bouncer, effective_settings, pool_size, refuse_unknown_settings
from harness.stack.pgpool import Pgpool, refuse_unknown_pgpool_settings
from harness.stack.ports import PortLease, lease_port, port_in_use
from harness.stack.postgres import APP_ROLE, RLS_DATABASE, SUPERUSER, Logins, PostgresServer, prepare_data_dir
from harness.stack.parts import ServerPart
from harness.stack.process import pid_alive
from harness.stack.proxy import FaultProxy
from harness.stack.stack import POOLED_ROUTES, Missing, Stack, StackAssembly, launch, route_url

PORT_ATTEMPTS = 3
RUN_DIR_PREFIX = "tenant-harness-"
OWNER_FILE = "harness.pid"

Process = TypeVar("Process", bound=ServerPart)


SHM = Path("/dev/shm")
SHM_NEEDED = 512 * 1024 * 1024  # bytes free in /dev/shm before run folders go there


def run_root() -> Path:
    """Where run folders go: /dev/shm (memory) when it is there, writable and roomy, else the temp folder.

    The cluster is throwaway, so its files need no disk; in memory, copying the
    initdb template takes a tenth of the time and every CREATE, DELETE and
    INSERT of provisioning and reset skips the filesystem.
    """
    try:
        if SHM.is_dir() and os.access(SHM, os.W_OK | os.X_OK) and shutil.disk_usage(SHM).free >= SHM_NEEDED:
            return SHM
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def remove_abandoned_run_dirs() -> list[Path]:
    """Remove run folders whose harness process died without tearing down (SIGKILL).

    Its servers died with it (see ``process._die_with_parent``); only the folder
    is left. A folder whose owner is alive, or that names no owner, is kept.
    """
    removed = []
    roots = dict.fromkeys((run_root(), Path(tempfile.gettempdir())))
    for folder in (f for root in roots for f in root.glob(f"{RUN_DIR_PREFIX}*")):
        try:
            owner = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not pid_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _start_on_free_port(assembly: StackAssembly, make: Callable[[int], Process],
                        start: Callable[[Process], str | None],
                        lease: Callable[[], PortLease] = lease_port) -> tuple[Process, str | None]:
    """Start a server on a leased port; a port taken by an outsider in between gets a retry.

    Each lease is released when the stack closes, and each server is tracked
    before it starts, so an interrupted start leaves neither behind. ``lease``:
    where the port comes from (pgagroal's must be below 10000).
    """
    last: StartupTimeout | None = None
    for _ in range(PORT_ATTEMPTS):
        leased: PortLease = lease()
        assembly.on_close(leased.release)
        if port_in_use(leased.port):
            continue
        process = assembly.track(make(leased.port))
        try:
            return process, start(process)
        except StartupTimeout as exc:
            process.stop()
            if not _port_was_taken(process):
                raise
            last = exc
    raise SetupError(f"Could not find a free loopback port in {PORT_ATTEMPTS} attempts.",
                     checked=[str(last) if last else "every leased port was taken"],
                     fix=["free some ports on 127.0.0.1, or stop other servers"])


def _port_was_taken(process: ServerPart) -> bool:
    """Did the server fail to start because its port was taken? (pgagroal says it in its own words)"""
    taken = getattr(process, "port_taken", None)
    return taken() if callable(taken) else "already in use" in process.log_tail()


def start_native_stack(config: HarnessConfig) -> Stack:
    """Start PostgreSQL and two PgBouncers from local binaries (and the fault proxy between them for faults).

    Everything is checked before anything starts (binaries, account); a failure
    part-way stops what was started and removes the temporary folder.
    """
    return launch("native", config, _boot)


def _boot(assembly: StackAssembly) -> None:
    config = assembly.config
    wanted = deployment(config.deployment) if config.deployment else None
    kind = wanted.pooler if wanted else "pgbouncer"
    if wanted:
        bindir, pooler_binary = native_binaries(wanted)
        binaries = find_binaries(bindir, pooler_binary) if kind == "pgbouncer" else None
    else:
        binaries = find_binaries(config.pg_bindir, config.pgbouncer)
        bindir, pooler_binary = binaries.postgres.parent, binaries.pgbouncer
    account = server_account()
    # The team's pooler settings: every name checked against this binary before anything starts.
    extra = requested_for(config, kind)
    refuse_unknown = {
        "pgbouncer": lambda: refuse_unknown_settings(extra, pooler_binary, timeout=config.start_timeout,
                                                     cache_dir=config.template_cache),
        "pgpool": lambda: refuse_unknown_pgpool_settings(extra, pooler_binary, timeout=config.start_timeout,
                                                         account=account),
        "pgagroal": lambda: refuse_unknown_pgagroal_settings(extra, pooler_binary, timeout=config.start_timeout,
                                                             account=account),
    }
    if extra:
        refuse_unknown[kind]()
    remove_abandoned_run_dirs()
    stack = assembly.stack
    stack.pooler = kind
    run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{assembly.run_id}-", dir=run_root()))
    stack.run_dir = run_dir
    if not config.keep_tmp:
        assembly.on_close(lambda: shutil.rmtree(run_dir, ignore_errors=True))
    (run_dir / OWNER_FILE).write_text(str(os.getpid()))
    account.own(run_dir)
    os.chmod(run_dir, 0o700)
    data_dir = run_dir / "data"
    server_binaries = binaries or Binaries(initdb=bindir / "initdb", postgres=bindir / "postgres",
                                           pgbouncer=pooler_binary)
    reused = prepare_data_dir(server_binaries, account, config.template_cache, run_dir, data_dir)
    stack.timings["template_reused"] = float(reused)
    logins = Logins()

    postgres, _ = _start_on_free_port(
        assembly,
        lambda port: PostgresServer(server_binaries, account, data_dir, run_dir, port, run_dir / "postgres.log"),
        lambda server: server.start(config.start_timeout))
    assembly.add_server(postgres)
    stack.versions["postgres"] = postgres.bootstrap(logins)
    stack.superuser_url = route_url(SUPERUSER, logins.superuser, postgres.port)
    assembly.add_route("direct", route_url(APP_ROLE, logins.app, postgres.port))

    # The faults scenario cuts and slows the poolers' server connections: they reach PostgreSQL
    # through the fault proxy. The direct route stays direct.
    server_port = postgres.port
    if config.runs_faults:
        proxy, _ = _start_on_free_port(
            assembly, lambda port: FaultProxy(run_dir, port, postgres.port),
            lambda proxy: proxy.start(config.start_timeout),
            lease=lease_listen_port if kind == "pgagroal" else lease_port)
        assembly.add_proxy(proxy)
        server_port = proxy.port

    offered = POOLERS[kind]
    for mode in POOLED_ROUTES:
        if mode not in offered.modes:
            stack.not_run[Missing.ROUTE, mode] = offered.lacks
            continue
        make, lease = _pooler_part(kind, config, pooler_binary, account, mode, run_dir, server_port,
                                   direct_socket=not config.runs_faults, logins=logins, extra=extra)
        part, version = _start_on_free_port(assembly, make, lambda part: part.start(config.start_timeout),
                                            lease=lease)
        assembly.add_pooler(part)
        stack.versions[kind] = version or pooler_version(pooler_binary)
        assembly.add_route(mode, route_url(APP_ROLE, logins.app, part.port))
    stack.pooler_settings = effective_settings(stack.poolers)
    stack.pooler_requested = extra.describe() if extra or extra.ignored else ""


def _pooler_part(kind: str, config: HarnessConfig, binary: Path, account, mode: str, run_dir: Path,
                 server_port: int, *, direct_socket: bool, logins: Logins, extra: PoolerSettings
                 ) -> tuple[Callable[[int], ServerPart], Callable[[], PortLease]]:
    """How to make the pooler part of one pooled route on a port, and where its port comes from.

    pgagroal reaches PostgreSQL through its Unix socket (the run folder), unless the fault proxy stands
    between them; its ports are below 10000 (see :mod:`harness.stack.pgagroal`).
    """
    size = pool_size(config, mode)
    if kind == "pgpool":
        return (lambda port: Pgpool(binary, account, run_dir, port, server_port, vault_users(logins), SUPERUSER,
                                    size, extra)), lease_port
    if kind == "pgagroal":
        server_host = run_dir if direct_socket else "127.0.0.1"
        # its transaction pipeline serves only the databases it prefills: the row-level-security layout's too
        also = (RLS_DATABASE,) if mode == "transaction" else ()
        return (lambda port: Pgagroal(binary, account, mode, run_dir, port, server_host, server_port,
                                      vault_users(logins), SUPERUSER, size, extra, also_prefill=also)), lease_listen_port
    return (lambda port: Bouncer(binary, account, mode, run_dir, port, server_port, logins.users, SUPERUSER,
                                 size, extra)), lease_port
