"""The stack: one throwaway PostgreSQL plus its pooler on each pooled route (two PgBouncers by default:
session and transaction; a deployment may name Pgpool-II or pgagroal instead).

:class:`Stack` is what scenarios and tests see, whatever backend started it.
:func:`launch` is the one way a backend starts one: the backend says how to
start its parts (a ``boot`` function filling a :class:`StackAssembly`);
``launch`` registers the stack, tears down whatever was started when the boot
fails or is interrupted, checks every route with a real query, and times it.
The backends: :mod:`harness.stack.native`, :mod:`harness.stack.containers`
(docker), :mod:`harness.stack.external`.
"""

from __future__ import annotations

import atexit
import dataclasses
import enum
import functools
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

import psycopg
from sqlalchemy.engine import URL

from harness.config import HarnessConfig
from harness.deployments import DeploymentFacts
from harness.stack.parts import BouncerPart, PoolerPart, ProxyPart, ServerPart
from harness.stack.postgres import APP_ROLE, DATABASE, SUPERUSER
from harness.stack.wait import wait_until

ROUTES = ("direct", "session", "transaction")
POOLED_ROUTES = ("session", "transaction")

Part = TypeVar("Part", bound=ServerPart)


class Missing(enum.StrEnum):
    """Kinds of thing a stack may lack: a route, a layout, or a check (the pool probe of a route)."""

    ROUTE = "route"
    LAYOUT = "layout"
    CHECK = "check"


@dataclasses.dataclass
class Stack:
    """A running stack. Use it as a context manager or call :meth:`close`."""

    backend: str
    run_id: str
    routes: dict[str, URL]
    superuser_url: URL
    #: route -> the pooler part serving it
    poolers: dict[str, PoolerPart]
    #: postgres, the pooler's kind (pgbouncer, pgpool, pgagroal) and images -> their versions
    versions: dict[str, str]
    #: every server part in start order (the external backend's too); stopped in reverse
    processes: list[ServerPart]
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    #: route -> pooler setting -> the value it runs with, read back after the start (PgBouncer: SHOW CONFIG):
    #: the team's carried-over settings and those of the harness's that decide what clients see (native, docker)
    pooler_settings: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    #: what the team asked for (--pgbouncer-config, --pgbouncer-set, --pgpool-set...), in words ("" if nothing)
    pooler_requested: str = ""
    #: which pooler serves the pooled routes (harness.deployments.POOLERS)
    pooler: str = "pgbouncer"
    #: the built-in deployment it runs (``--deployment``), or None for the binaries or images configured
    deployment: str | None = None
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
    #: what this stack cannot run, and why: {(Missing.ROUTE, "session"): "no --session-dsn given", ...}
    not_run: dict[tuple["Missing", str], str] = dataclasses.field(default_factory=dict)
    #: the PostgreSQL part (behind the direct route, and behind every PgBouncer)
    server: ServerPart | None = None
    #: the fault proxy between the PgBouncers and PostgreSQL; only a native stack that runs the faults scenario
    proxy: ProxyPart | None = None
    _cleanup: list[Callable[[], object]] = dataclasses.field(default_factory=list, repr=False)
    _closed: bool = dataclasses.field(default=False, repr=False)

    @property
    def facts(self) -> DeploymentFacts:
        """What decides the verdicts that depend on the deployment, as this stack reads it."""
        return DeploymentFacts.read(self.versions, self.pooler_settings, self.pooler)

    @property
    def bouncers(self) -> dict[str, BouncerPart]:
        """Route -> its PgBouncer (the pooled routes a PgBouncer serves: its admin console answers)."""
        return {route: part for route, part in self.poolers.items() if part.kind == "pgbouncer"}  # type: ignore

    def why_not(self, kind: Missing, name: str, default: str = "") -> str:
        """Why this stack cannot run a route, a layout or a check (``default`` when it does not say)."""
        return self.not_run.get((kind, name), default)

    def missing(self, kind: Missing) -> dict[str, str]:
        """Name -> reason, for every missing thing of one kind."""
        return {name: reason for (what, name), reason in self.not_run.items() if what is kind}

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
        return [pid for pid in (p.pid for p in self.processes) if pid is not None]

    def log_offsets(self) -> dict[str, int]:
        return {p.name: p.log_size() for p in self.processes}

    def logs_since(self, offsets: dict[str, int]) -> dict[str, str]:
        """Log lines each server wrote since ``offsets`` (from :meth:`log_offsets`)."""
        return {p.name: p.log_since(offsets.get(p.name, 0)) for p in self.processes}

    def close(self) -> None:
        """Stop every server part, then undo what the start created; safe to call twice.

        Every step runs even when one fails (the first error is raised at the
        end), so that a broken server never keeps the others running.
        """
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        errors: list[BaseException] = []
        steps = [*(part.stop for part in reversed(self.processes)), *reversed(self._cleanup)]
        for step in steps:
            try:
                step()
            except BaseException as exc:  # noqa: BLE001 - keep tearing down
                errors.append(exc)
        self.timings["teardown"] = time.monotonic() - started
        with _LIVE_LOCK:
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
                 f"{self.facts.pooler_title} {self.versions.get(self.pooler)}"]
        for route, url in self.routes.items():
            lines.append(f"  {route:<12} {url.render_as_string(hide_password=False)}")
        lines.append(f"  {'superuser':<12} {self.superuser_url.render_as_string(hide_password=False)}")
        for route, bouncer in self.bouncers.items():
            admin = self.superuser_url.set(port=bouncer.port, database="pgbouncer")
            lines.append(f"  admin:{route:<6} {admin.render_as_string(hide_password=False)}")
        if self.pooler_requested:
            lines.append(f"  {self.pooler:<12} {self.pooler_requested}")
        if self.proxy is not None:
            lines.append(f"  {'proxy':<12} 127.0.0.1:{self.proxy.port} (fault proxy: PgBouncers -> PostgreSQL)")
        return "\n".join(lines)


# Stacks still running; closed at interpreter exit if their owner forgot.
_LIVE: set[Stack] = set()
_LIVE_LOCK = threading.Lock()


def register(stack: Stack) -> None:
    """Count ``stack`` as running until it closes: it is closed at interpreter exit if its owner forgets."""
    with _LIVE_LOCK:
        _LIVE.add(stack)


def live_stacks() -> list[Stack]:
    """The stacks started in this process and not closed yet."""
    with _LIVE_LOCK:
        return list(_LIVE)


@atexit.register
def _close_leftovers() -> None:
    for stack in live_stacks():
        try:
            stack.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def route_url(user: str, password: str, port: int, host: str = "127.0.0.1") -> URL:
    """The SQLAlchemy URL of a route on a stack the harness started (its one database)."""
    return URL.create("postgresql+psycopg", username=user, password=password, host=host,
                      port=port, database=DATABASE)


def conninfo(url: URL) -> dict[str, Any]:
    """psycopg's connection arguments for ``url``; a URL without host or port means 127.0.0.1:5432."""
    return {"host": url.host or "127.0.0.1", "port": url.port or 5432, "user": url.username,
            "password": url.password, "dbname": url.database}


def check_route(url: URL) -> None:
    """A real query on a route, as the client under test will make it; raises when it does not answer."""
    with psycopg.connect(**conninfo(url), connect_timeout=2) as conn:
        conn.execute("SELECT 1").fetchone()


class StackAssembly:
    """A stack being started: a backend's boot adds its parts, routes and clean-up steps here."""

    def __init__(self, stack: Stack, config: HarnessConfig):
        self.stack = stack
        self.config = config

    @property
    def run_id(self) -> str:
        return self.stack.run_id

    def track(self, part: Part) -> Part:
        """Stop ``part`` when the stack closes, and show its log.

        Track a part before starting it: a start that fails or is interrupted
        half-way is then stopped too.
        """
        if not any(known is part for known in self.stack.processes):
            self.stack.processes.append(part)
        return part

    def add_server(self, server: ServerPart) -> None:
        """The stack's PostgreSQL (tracked, if it is not yet)."""
        self.stack.server = self.track(server)

    def add_pooler(self, pooler: PoolerPart) -> None:
        """The pooler behind the route named by its pool mode (tracked, if it is not yet)."""
        self.stack.poolers[pooler.pool_mode] = self.track(pooler)
        self.stack.pooler = pooler.kind

    def add_proxy(self, proxy: ProxyPart) -> None:
        """The fault proxy the PgBouncers reach PostgreSQL through (tracked, if it is not yet)."""
        self.stack.proxy = self.track(proxy)

    def add_route(self, route: str, url: URL) -> None:
        """A route the stack serves; :func:`launch` checks it with a query before the stack is handed out."""
        self.stack.routes[route] = url

    def on_close(self, step: Callable[[], object]) -> None:
        """Run ``step`` when the stack closes, after its parts stopped; the last one added runs first."""
        self.stack._cleanup.append(step)


def new_run_id() -> str:
    """A run id: ten hex digits, in folder names, container labels and schema comments."""
    return uuid.uuid4().hex[:10]


def launch(backend: str, config: HarnessConfig, boot: Callable[[StackAssembly], None]) -> Stack:
    """Start a stack: ``boot`` starts the backend's parts; everything else is the same for every backend.

    The stack is registered before ``boot`` runs, so that whatever it started is
    torn down at exit; when ``boot`` or the readiness check fails (also on
    Ctrl-C or SIGTERM, see :mod:`harness.stack.signals`), the stack is closed and
    the error raised. ``timings["start"]`` covers the checks ``boot`` makes before
    it starts anything.
    """
    started = time.monotonic()
    stack = Stack(backend=backend, run_id=new_run_id(), routes={}, superuser_url=route_url(SUPERUSER, "", 0),
                  poolers={}, versions={}, processes=[])
    stack.deployment = config.deployment
    register(stack)
    try:
        boot(StackAssembly(stack, config))
        _wait_for_routes(stack, config.start_timeout)
    except BaseException:
        stack.close()
        raise
    stack.timings["start"] = time.monotonic() - started
    return stack


def _wait_for_routes(stack: Stack, timeout: float) -> None:
    """Every route answers a query as the login role; a timeout shows the log of the server behind it."""
    if stack.server is None:
        raise AssertionError(f"the {stack.backend} backend's boot added no PostgreSQL part")
    for route, url in stack.routes.items():
        part = stack.poolers.get(route) or stack.server
        wait_until(functools.partial(check_route, url), what=f"route {route!r}", timeout=timeout,
                   log_tail=part.log_tail, alive=part.alive)
