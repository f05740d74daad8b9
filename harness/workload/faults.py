"""Faults: steps that break something under the layer, mid-request.

Each fault declared in :data:`harness.checks.steps.STEP_KINDS` (``fault=`` says
what it needs from the stack) has its implementation here. A fault step runs
between the client's other steps, so it shrinks like any of them; what it
breaks, and what a sound layer does after it, is in
:data:`harness.checks.faults.FAULT_LEGEND`.

The client-side faults run their statement on the client's own session (its
connection is the one that breaks); everything else is done as the harness's
superuser, on PgBouncer's admin console, or on the stack's fault proxy.
Whatever a fault changes on the stack is undone before the cell ends
(:meth:`FaultInjector.close`): a paused database is resumed at once, a
shortened ``server_lifetime`` is set back.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import psycopg
from sqlalchemy import text
from sqlalchemy.orm import Session

from harness.checks.steps import FAULT_STEPS, step_kind
from harness.stack import Stack
from harness.stack.stack import conninfo
from harness.errors import StartupTimeout
from harness.stack.wait import wait_until
from harness.workload.actions import Outcome

GONE_TIMEOUT = 5.0  # seconds a terminated or timed-out backend may take to go
PAUSE_WAIT = 1.0  # seconds a PAUSE may take to take effect before it is resumed
DELAY = (0.02, 0.5)  # the proxy holds each packet 20 ms, for half a second
SERVER_TIMEOUT_MS = 5000

POOL_LOG = logging.getLogger("sqlalchemy.pool")
PID = text("SELECT pg_backend_pid()")
ARM_IDLE_TIMEOUT = text("SELECT pg_backend_pid() FROM set_config('idle_in_transaction_session_timeout', '1', true)")


def available_faults(stack: Stack, route: str) -> dict[str, str]:
    """Every fault, and why it cannot be injected on this stack and route ("" when it can)."""
    bouncer = stack.bouncers.get(route)
    pooler = stack.poolers.get(route)
    title = stack.facts.pooler_title
    why = {
        "server": "",
        "pgbouncer": ("" if bouncer is not None else "the route has no PgBouncer" if pooler is None else
                      f"the route's pooler is {title}, which has no PgBouncer admin console"),
        "restart": ("the route has no pooler" if pooler is None else
                    "" if hasattr(pooler, "restart") else f"the {stack.backend} backend cannot restart {title}"),
        "proxy": ("the route has no pooler" if pooler is None else
                  "" if getattr(stack, "proxy", None) is not None else
                  f"the {stack.backend} backend has no fault proxy" if stack.backend != "native" else
                  "the stack was started without the faults scenario"),
    }
    return {name: why[step_kind(name).fault] for name in FAULT_STEPS}


def injectable(stack: Stack, route: str) -> tuple[str, ...]:
    """The faults this stack can inject on this route."""
    return tuple(name for name, why in available_faults(stack, route).items() if not why)


class FaultInjector:
    """Injects faults for one runner (and the hammer's threads sharing it), one fault at a time; nothing is
    connected or changed before the first fault."""

    def __init__(self, stack: Stack, route: str):
        self.stack = stack
        self.route = route
        self.injected = 0  # faults injected so far
        self._lock = threading.Lock()
        self._superuser: psycopg.Connection | None = None
        self._lifetime: str | None = None  # server_lifetime before a fault changed it

    # -- helpers -----------------------------------------------------------------------
    def _sql(self, query: str, *args: Any) -> list[tuple]:
        if self._superuser is None or self._superuser.closed:
            self._superuser = psycopg.connect(**conninfo(self.stack.superuser_url), autocommit=True,
                                              connect_timeout=5, options=f"-c statement_timeout={SERVER_TIMEOUT_MS}")
        cur = self._superuser.execute(query, args or None)
        return cur.fetchall() if cur.description else []

    def _admin(self, command: str) -> list[dict[str, Any]]:
        return self.stack.admin(self.route, command)

    def _wait_gone(self, pid: int) -> None:
        wait_until(lambda: not self._sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", pid),
                   what=f"backend {pid} to end", timeout=GONE_TIMEOUT, interval=0.005)

    # -- the faults ----------------------------------------------------------------------
    def inject(self, name: str, call: Callable[[Callable[[Session], Any]], Any]) -> Outcome:
        """Inject fault ``name``; ``call(fn)`` runs ``fn`` on the client's session (sync or async alike)."""
        with self._lock:
            if not self.injected:
                # SQLAlchemy's pool logs every reset of a connection a fault broke ("Exception during reset"):
                # the fault's expected consequence, kept out of the terminal unless the user's logging asks.
                if not any(isinstance(h, logging.NullHandler) for h in POOL_LOG.handlers):
                    POOL_LOG.addHandler(logging.NullHandler())
            self.injected += 1
            return Outcome(note=getattr(self, name)(call))

    def fault_terminate_backend(self, call) -> str:
        pid = call(lambda session: session.execute(PID).scalar())
        self._sql("SELECT pg_terminate_backend(%s, %s)", pid, int(GONE_TIMEOUT * 1000))
        return f"terminated backend {pid} (inside the client's transaction)"

    def fault_idle_timeout(self, call) -> str:
        # One statement: the session is idle in its transaction right after it, and the timeout fires.
        pid = call(lambda session: session.execute(ARM_IDLE_TIMEOUT).scalar())
        self._wait_gone(pid)
        return f"idle_in_transaction_session_timeout ended backend {pid}"

    def fault_statement_timeout(self, call) -> str:
        def fire(session: Session) -> None:
            session.execute(text("SET LOCAL statement_timeout = 1"))
            session.execute(text("SELECT pg_sleep(1)"))
        call(fire)  # raises QueryCanceled (57014), recorded as the step's error
        return "statement_timeout did not fire"

    def fault_pgbouncer_reconnect(self, call) -> str:
        self._admin(f"RECONNECT {self._database}")
        return "PgBouncer RECONNECT: server connections close once released"

    def fault_pgbouncer_kill(self, call) -> str:
        try:
            self._admin(f"KILL {self._database}")
        finally:
            self._admin(f"RESUME {self._database}")
        return "PgBouncer KILL then RESUME: every connection of the database dropped"

    def fault_pgbouncer_pause(self, call) -> str:
        """PAUSE waits for every server connection to be released (in session mode, for its client to leave):
        sent without waiting for its answer on a connection of its own, resumed within PAUSE_WAIT."""
        bouncer = self.stack.bouncers[self.route]
        admin = getattr(bouncer, "admin", None)
        console = getattr(admin, "host", None) and admin  # the native and external consoles know their login
        if console is None:
            self._admin(f"RECONNECT {self._database}")
            return "PgBouncer PAUSE is not available here; RECONNECT instead"
        conn = psycopg.connect(host=console.host, port=console.port, dbname="pgbouncer", user=console.user,
                               password=console.password, autocommit=True, connect_timeout=5)
        try:
            conn.pgconn.send_query(f"PAUSE {self._database}".encode())
            def is_paused() -> None:
                if not any(str(row.get("paused")) == "1" and row.get("name") == self._database
                           for row in self._admin("SHOW DATABASES")):
                    raise LookupError("not paused yet")
            try:
                wait_until(is_paused, what="PgBouncer's PAUSE", timeout=PAUSE_WAIT, interval=0.005)
                paused = True
            except StartupTimeout:  # in session mode PAUSE waits for the clients that hold servers
                paused = False
        finally:
            self._admin(f"RESUME {self._database}")
            conn.close()
        return f"PgBouncer PAUSE ({'took effect' if paused else 'still waiting'}) then RESUME"

    def fault_pgbouncer_reload(self, call) -> str:
        self._admin("RELOAD")
        return "PgBouncer RELOAD"

    def fault_server_lifetime(self, call) -> str:
        if self._lifetime is None:
            rows = self._admin("SHOW CONFIG")
            self._lifetime = next((str(r["value"]) for r in rows if r.get("key") == "server_lifetime"), "3600")
        self._admin("SET server_lifetime = 0")
        return "PgBouncer server_lifetime = 0: every server connection is used once, for the rest of the cell"

    def fault_pgbouncer_restart(self, call) -> str:
        pooler = self.stack.poolers[self.route]
        started = time.monotonic()
        pooler.restart()
        return (f"{self.stack.facts.pooler_title} restarted on port {pooler.port} in "
                f"{time.monotonic() - started:.2f} s")

    def fault_proxy_cut(self, call) -> str:
        return (f"the fault proxy cut {self.stack.proxy.cut()} connection(s) between "
                f"{self.stack.facts.pooler_title} and PostgreSQL")

    def fault_proxy_delay(self, call) -> str:
        hold, duration = DELAY
        self.stack.proxy.delay(hold, duration)
        return f"the fault proxy holds every packet {hold * 1000:.0f} ms for {duration} s"

    @property
    def _database(self) -> str:
        return self.stack.database

    def close(self) -> None:
        """Undo what the faults changed on the stack (server_lifetime), and close the superuser connection."""
        if not self.injected:
            return
        try:
            if self._lifetime is not None:
                self._admin(f"SET server_lifetime = {self._lifetime}")
                self._lifetime = None
        finally:
            if self._superuser is not None:
                self._superuser.close()
                self._superuser = None


_UNIMPLEMENTED = [name for name in FAULT_STEPS if not callable(getattr(FaultInjector, name, None))]
if _UNIMPLEMENTED:  # a declared fault without an implementation is a programming error: fail at import
    raise ImportError(f"declared fault(s) without an implementation in {__name__}: {_UNIMPLEMENTED}")
