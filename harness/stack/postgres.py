"""The throwaway PostgreSQL server of a native stack, and its initdb template cache."""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import hmac
import os
import secrets
import shutil
import signal
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from harness.errors import SetupError
from harness.stack.account import Account
from harness.stack.binaries import Binaries
from harness.stack.process import ServerProcess, run_as
from harness.stack.wait import wait_until

SUPERUSER = "harness"
APP_ROLE = "app"
#: The database the code under test uses (and the stack's superuser connects to). Not ``postgres``: Pgpool-II
#: never caches connections to postgres, template0/1 or regression, so a stack on ``postgres`` would show
#: nothing of what a Pgpool-II deployment carries between clients.
DATABASE = "app"
#: The row-level-security layout's database (harness.tenancy.rls). Made with the stack, not by the layout: a
#: pooler that serves only the databases it prefills (pgagroal's transaction pipeline) must know it at start.
RLS_DATABASE = "tenant_rls"
#: What initdb made the template for: a template without the databases above is built again.
TEMPLATE_LAYOUT = f"db-{DATABASE}-{RLS_DATABASE}"

# Settings for a disposable server: durability off, loopback only.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "logging_collector": "off",
    "password_encryption": "scram-sha-256",
    # A small WAL: the cluster may live in memory (/dev/shm), one per --jobs worker.
    "max_wal_size": "64MB",
    "min_wal_size": "32MB",
}


# Iterations of the SCRAM-SHA-256 secrets the harness stores. Every client login computes PBKDF2 with this
# count on both sides (libpq, and PostgreSQL or PgBouncer); at PostgreSQL's default of 4096 a login cost about
# 4 ms of CPU on each side here, and the harness logs in thousands of times per run (every example gets a fresh
# engine and fresh probe clients). Authentication is still scram-sha-256; its cost is not what is tested.
SCRAM_ITERATIONS = 1


def _password() -> str:
    return secrets.token_hex(12)


def scram_secret(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 secret as PostgreSQL stores it (RFC 5803), which ``PASSWORD '...'`` accepts as is."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


@dataclasses.dataclass(frozen=True)
class Logins:
    """The passwords of the two roles on a stack the harness starts, fresh for every stack, and their secrets."""

    superuser: str = dataclasses.field(default_factory=_password)
    app: str = dataclasses.field(default_factory=_password)

    @functools.cached_property
    def scram(self) -> dict[str, str]:
        """Role -> SCRAM secret: the same one in PostgreSQL and in PgBouncer's auth_file, so PgBouncer can
        log in to the server with the key its client proved (it has no password to do it with)."""
        return {SUPERUSER: scram_secret(self.superuser), APP_ROLE: scram_secret(self.app)}

    @property
    def users(self) -> dict[str, str]:
        """Role -> what PgBouncer's auth_file lists: the login role's secret; the superuser's password,
        since PgBouncer refuses a SCRAM secret for its admin console (and never logs in to the server as it)."""
        return {SUPERUSER: self.superuser, APP_ROLE: self.scram[APP_ROLE]}


HBA = """\
# Written by the harness: the socket folder is private, TCP needs a password.
local all all trust
host  all all 127.0.0.1/32 scram-sha-256
"""


def _initdb(binaries: Binaries, account: Account, target: Path) -> None:
    target.mkdir(mode=0o700)
    account.own(target)
    result = run_as(account, [binaries.initdb, "-D", target, "-U", SUPERUSER, "-E", "UTF8",
                              "--locale=C", "--auth=trust", "--no-sync", "--no-instructions"])
    if result.returncode != 0:
        raise SetupError(f"initdb failed (exit {result.returncode}) in {target}.",
                         checked=[(result.stdout + result.stderr).strip()[-2000:]],
                         fix=["check that the server account can write to the temporary folder",
                              "set HARNESS_PG_BINDIR to a working PostgreSQL installation"])
    # The stack's databases, made once in the template (single-user mode: no server, no port).
    result = run_as(account, [binaries.postgres, "--single", "-D", target, "-c", "fsync=off", "template1"],
                    input=f"CREATE DATABASE {DATABASE}\nCREATE DATABASE {RLS_DATABASE}\n")
    if result.returncode != 0 or "ERROR" in result.stdout + result.stderr:
        raise SetupError(f"Creating databases {DATABASE} and {RLS_DATABASE} in the initdb template {target} failed "
                         f"(exit {result.returncode}).",
                         checked=[(result.stdout + result.stderr).strip()[-2000:]],
                         fix=["set HARNESS_PG_BINDIR to a working PostgreSQL installation"])


def prepare_data_dir(binaries: Binaries, account: Account, cache: Path, scratch: Path,
                     target: Path) -> bool:
    """Fill ``target`` with a fresh cluster; return True when the template was reused.

    The first initdb for a PostgreSQL version is kept in ``cache`` and copied for
    later stacks. Concurrent first runs each build one and the first rename wins.
    """
    template = cache / f"initdb-{binaries.postgres_version()}-{TEMPLATE_LAYOUT}"
    if not (template / "PG_VERSION").is_file():
        built = scratch / f"template-{uuid.uuid4().hex}"
        _initdb(binaries, account, built)
        cache.mkdir(parents=True, exist_ok=True)
        if built.stat().st_dev != cache.stat().st_dev:
            # The run folder is on another filesystem (/dev/shm): copy next to the cache, then rename there.
            staged = cache / f".template-{uuid.uuid4().hex}"
            shutil.copytree(built, staged, symlinks=True)
            shutil.rmtree(built, ignore_errors=True)
            built = staged
        try:
            os.rename(built, template)
        except OSError:
            shutil.rmtree(built, ignore_errors=True)  # another stack won the race
        reused = False
    else:
        reused = True
    shutil.copytree(template, target, symlinks=True)
    os.chmod(target, 0o700)
    (target / "pg_hba.conf").write_text(HBA)
    account.own(target)
    return reused


class PostgresServer(ServerProcess):
    """``postgres`` started directly (no pg_ctl) so that this object owns the postmaster."""

    # SIGQUIT is PostgreSQL's immediate shutdown: no checkpoint, children killed.
    stop_signal = signal.SIGQUIT
    death_signal = signal.SIGQUIT

    def __init__(self, binaries: Binaries, account: Account, data_dir: Path, socket_dir: Path,
                 port: int, log_path: Path):
        super().__init__("postgres", account, log_path)
        self.binaries = binaries
        self.data_dir = data_dir
        self.socket_dir = socket_dir
        self.port = port

    def start(self, timeout: float) -> None:
        argv: list[object] = [self.binaries.postgres, "-D", self.data_dir, "-p", self.port,
                              "-c", f"unix_socket_directories={self.socket_dir}"]
        for key, value in SERVER_SETTINGS.items():
            argv += ["-c", f"{key}={value}"]
        self.spawn(argv, cwd=self.data_dir)
        wait_until(lambda: self._socket_query("SELECT 1"), what=f"PostgreSQL on port {self.port}",
                   timeout=timeout, log_tail=self.log_tail, alive=self.alive)

    def _socket_query(self, sql: str):
        with psycopg.connect(host=str(self.socket_dir), port=self.port, user=SUPERUSER,
                             dbname=DATABASE, connect_timeout=2, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def bootstrap(self, logins: Logins) -> str:
        """Set the passwords and create the login role for the code under test."""
        with psycopg.connect(host=str(self.socket_dir), port=self.port, user=SUPERUSER,
                             dbname=DATABASE, autocommit=True) as conn:
            return bootstrap_roles(conn, logins)


def bootstrap_roles(conn: psycopg.Connection, logins: Logins) -> str:
    """On a fresh server: the superuser's password, the login role ``app``; returns the server version."""
    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        sql.Identifier(SUPERUSER), sql.Literal(logins.scram[SUPERUSER])))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(APP_ROLE), sql.Literal(logins.scram[APP_ROLE])))
    conn.execute(sql.SQL("GRANT CREATE, CONNECT ON DATABASE {} TO {}").format(
        sql.Identifier(DATABASE), sql.Identifier(APP_ROLE)))
    return conn.execute("SHOW server_version").fetchone()[0]
