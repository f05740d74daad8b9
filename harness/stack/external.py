"""The external backend: servers someone else runs, given by DSNs.

Routes: ``--direct-dsn``, ``--session-dsn``, ``--transaction-dsn`` (as the
application's login role, all into one database); any may be omitted, and the
missing routes are reported as not run. ``--superuser-dsn`` names a role that
may create schemas in that database; on a PgBouncer route, its credentials (or
the route's) are tried on the admin console, which the pool checks and the
reset between cells use when it answers.

Safety, because the database is not the harness's:
- every schema the harness creates starts with a run-specific prefix
  (``th_<run>_``) and carries a comment naming the run and its owner process;
  the external backend creates no role and no database, and never writes to
  ``public`` (decoys are off, so a lost tenant context shows as context_lost);
- it refuses to start when the database holds schemas it did not create (or
  tables in ``public``) unless ``--i-own-this-database`` is given;
- teardown drops only the schemas of its own run; a later run drops the
  schemas of a run whose owner process is gone (same host), or that is older
  than a day (another host), recognised by prefix *and* comment, nothing else.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from harness.config import HarnessConfig, refuse_pooler_settings_on_external
from harness.errors import SetupError, UsageError
from harness.stack.pgbouncer import AdminConsole, PgBouncerPooler, pgbouncer_version
from harness.stack.process import owner_gone, run_owner
from harness.stack.stack import POOLED_ROUTES, ROUTES, Missing, Stack, StackAssembly, conninfo, launch

COMMENT_PREFIX = "tenant-harness run "
# "tenant-harness run <run_id> owner <host>:<pid> started <iso time>"
COMMENT = re.compile(r"^tenant-harness run (?P<run>[0-9a-f]{10}) owner (?P<host>.*):(?P<pid>\d+) "
                     r"started (?P<started>\S+)$")
ABANDONED_AFTER = dt.timedelta(days=1)
SYSTEM_SCHEMAS = ("information_schema",)
SHOWN = 10


def schema_prefix(run_id: str) -> str:
    return f"th_{run_id[:6]}_"


def _url(text: str, option: str) -> URL:
    try:
        url = make_url(text)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError
        raise UsageError(f"{option}: {text!r} is not a database URL.",
                         fix=["give a URL like postgresql://user:password@host:port/database"]) from exc
    if not url.drivername.startswith("postgresql"):
        raise UsageError(f"{option}: {url.drivername!r} is not a PostgreSQL URL.",
                         fix=["give a URL like postgresql://user:password@host:port/database"])
    return url.set(drivername="postgresql+psycopg")


def _connect(url: URL, **kwargs: Any) -> psycopg.Connection:
    return psycopg.connect(**conninfo(url), connect_timeout=5, **kwargs)


def _show(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def parse_routes(config: HarnessConfig) -> tuple[dict[str, URL], URL]:
    """The route URLs and the superuser URL, checked for shape before anything connects."""
    given = {"direct": config.direct_dsn, "session": config.session_dsn, "transaction": config.transaction_dsn}
    routes = {route: _url(dsn, f"--{route}-dsn") for route, dsn in given.items() if dsn}
    if not config.superuser_dsn:
        raise UsageError("The external backend needs --superuser-dsn (HARNESS_SUPERUSER_DSN): a role that may "
                         "create schemas in the database the routes use.",
                         fix=["give --superuser-dsn postgresql://admin:password@host:port/database"])
    if not routes:
        raise UsageError("The external backend needs at least one route: --direct-dsn, --session-dsn or "
                         "--transaction-dsn (or HARNESS_DIRECT_DSN ...).",
                         fix=["give the URLs your application uses, as its login role"])
    superuser = _url(config.superuser_dsn, "--superuser-dsn")
    users = {url.username for url in routes.values()}
    databases = {url.database for url in routes.values()} | {superuser.database}
    if len(users) != 1 or None in users:
        raise UsageError(f"The route URLs log in as {sorted(map(str, users))}: they must all name one login role, "
                         "the one your application uses.", fix=["give every route URL the same user"])
    if len(databases) != 1 or None in databases:
        raise UsageError(f"The URLs name the databases {sorted(map(str, databases))}: the routes and the superuser "
                         "URL must all name one database.", fix=["give every URL the same database"])
    return routes, superuser


def harness_schemas(conn: psycopg.Connection) -> list[tuple[str, dict[str, str]]]:
    """Schemas carrying the harness's comment and the matching prefix: (name, parsed comment)."""
    rows = conn.execute(
        "SELECT n.nspname, d.description FROM pg_namespace n JOIN pg_description d "
        "ON d.objoid = n.oid AND d.classoid = 'pg_namespace'::regclass "
        "WHERE d.description LIKE %s", (COMMENT_PREFIX + "%",)).fetchall()
    found = []
    for name, description in rows:
        match = COMMENT.match(description)
        if match and name.startswith(schema_prefix(match["run"])):
            found.append((name, match.groupdict()))
    return found


def _drop(conn: psycopg.Connection, schemas: list[str]) -> None:
    for name in schemas:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def remove_abandoned_schemas(conn: psycopg.Connection, *, now: dt.datetime | None = None) -> list[str]:
    """Drop the schemas of harness runs that are over: their owner died (this host) or they are a day old."""
    now = now or dt.datetime.now(dt.timezone.utc)
    abandoned = []
    for name, run in harness_schemas(conn):
        try:
            started = dt.datetime.fromisoformat(run["started"])
        except ValueError:
            continue
        if owner_gone(run["host"], run["pid"]) or now - started > ABANDONED_AFTER:
            abandoned.append(name)
    _drop(conn, abandoned)
    return abandoned


def foreign_schemas(conn: psycopg.Connection) -> list[str]:
    """Schemas that look like someone's data: not PostgreSQL's, not the harness's; public if it holds tables."""
    ours = {name for name, _ in harness_schemas(conn)}
    rows = conn.execute(
        "SELECT n.nspname, (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid) FROM pg_namespace n "
        "WHERE n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> ALL(%s) ORDER BY 1", (list(SYSTEM_SCHEMAS),)).fetchall()
    return [f"{name} ({count} relations)" for name, count in rows
            if name not in ours and (name != "public" or count > 0)]


def _admin_console(route: str, url: URL, superuser: URL) -> tuple[AdminConsole | None, str]:
    """PgBouncer's admin console behind a pooled route, if one of the two credentials opens it."""
    last = ""
    for candidate in (superuser, url):
        console = AdminConsole(url.host or "127.0.0.1", url.port or 5432, candidate.username or "",
                               candidate.password or "")
        try:
            mode = {row["key"]: row["value"] for row in console("SHOW CONFIG")}.get("pool_mode")
        except Exception as exc:  # noqa: BLE001 - not a PgBouncer, or not an admin
            console.close()
            last = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
            continue
        if mode != route:
            console.close()
            raise UsageError(f"--{route}-dsn points at a PgBouncer with pool_mode={mode}, not {route}.",
                             fix=[f"give the URL of a PgBouncer with pool_mode={route}"])
        return console, ""
    return None, last


class ExternalServer:
    """A PostgreSQL the harness does not run: a port to reach, no pid, no log to read, nothing to stop."""

    name: str = "postgres"
    pid: int | None = None

    def __init__(self, port: int):
        self.port = port

    def alive(self) -> bool:
        # Someone else runs it: there is no process to watch, and a wait is bound by its deadline anyway.
        return True

    def log_size(self) -> int:
        return 0

    def log_since(self, offset: int) -> str:
        return ""

    def log_tail(self, lines: int = 30) -> str:
        return "(an external server: its log is not visible to the harness)"

    def stop(self, timeout: float = 5.0) -> None:
        pass  # not the harness's to stop


class ExternalBouncer(PgBouncerPooler, ExternalServer):
    """A PgBouncer the harness does not run: its pool mode, port and admin console."""

    def __init__(self, pool_mode: str, port: int, admin: AdminConsole):
        super().__init__(port)
        self.name = f"pgbouncer-{pool_mode}"
        self.pool_mode = pool_mode
        self.admin = admin

    def stop(self, timeout: float = 5.0) -> None:
        self.admin.close()  # its console connection is the harness's; the PgBouncer is not


def start_external_stack(config: HarnessConfig) -> Stack:
    """Check the DSNs and the database, clean up the harness's own leftovers, and describe the stack."""
    return launch("external", config, _boot)


def _boot(assembly: StackAssembly) -> None:
    config = assembly.config
    refuse_pooler_settings_on_external(config)  # before anything connects
    routes, superuser = parse_routes(config)
    stack, run_id = assembly.stack, assembly.run_id
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    stack.superuser_url = superuser
    stack.app_role = str(next(iter(routes.values())).username)  # parse_routes: one role, never None
    stack.tenant_prefix = schema_prefix(run_id)
    stack.schema_comment = f"{COMMENT_PREFIX}{run_id} owner {run_owner()} started {stamp}"
    stack.layouts = ("schema",)
    stack.owns_public = False
    for route in ROUTES:
        if route not in routes:
            stack.not_run[Missing.ROUTE, route] = f"no --{route}-dsn given"
    stack.not_run[Missing.LAYOUT, "rls"] = ("the rls layout needs a database of its own; the external backend creates "
                                   "only schemas")
    try:
        conn = _connect(superuser, autocommit=True)
    except psycopg.Error as exc:
        raise SetupError(f"Could not connect with --superuser-dsn {_show(superuser)}.",
                         checked=[str(exc).strip()], fix=["check the URL, the password and pg_hba.conf"]) from exc
    with conn:
        may_create = conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()[0]
        if not may_create:
            raise SetupError(f"{superuser.username} may not create schemas in {superuser.database}.",
                             fix=[f"GRANT CREATE ON DATABASE {superuser.database} TO {superuser.username}, "
                                  "or give another --superuser-dsn"])
        stack.versions["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
        removed = remove_abandoned_schemas(conn)
        if removed:
            stack.timings["abandoned_schemas_removed"] = float(len(removed))
        foreign = foreign_schemas(conn)
        if foreign and not config.i_own_this_database:
            shown = ", ".join(foreign[:SHOWN]) + (f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else "")
            raise SetupError(
                f"Refusing to run: database {superuser.database!r} on {superuser.host}:{superuser.port} holds "
                f"schemas the harness did not create: {shown}.",
                checked=["the harness creates only schemas named th_<run>_..., and drops only those"],
                fix=["point the external backend at a database made for this (an empty one)",
                     "or, if the database is yours to test on, pass --i-own-this-database "
                     "(HARNESS_I_OWN_THIS_DATABASE=1); the harness still touches only its own schemas"])
    # From here on the run may create schemas: teardown drops them (and only them).
    assembly.on_close(lambda: _drop_run(superuser, run_id))
    assembly.add_server(ExternalServer(superuser.port or 5432))
    for route, url in routes.items():
        try:
            with _connect(url) as probe:
                user = probe.execute("SELECT current_user").fetchone()[0]
        except psycopg.Error as exc:
            raise SetupError(f"Route {route}: could not connect to {_show(url)}.",
                             checked=[str(exc).strip()], fix=[f"check --{route}-dsn"]) from exc
        assembly.add_route(route, url)
        if route in POOLED_ROUTES:
            console, why = _admin_console(route, url, superuser)
            if console is None:
                stack.not_run[Missing.CHECK, f"pgbouncer probe {route}"] = (
                    f"the admin console of {url.host}:{url.port} did not open ({why}); pool checks are "
                    f"inconclusive and the pool is emptied by terminating {user}'s backends")
                continue
            assembly.add_pooler(ExternalBouncer(route, url.port or 5432, console))
            stack.versions["pgbouncer"] = pgbouncer_version(console("SHOW VERSION"))


def _drop_run(superuser: URL, run_id: str) -> None:
    """Drop the schemas of this run: prefix and comment both say they are its own."""
    with _connect(superuser, autocommit=True) as conn:
        _drop(conn, [name for name, run in harness_schemas(conn) if run["run"] == run_id])
