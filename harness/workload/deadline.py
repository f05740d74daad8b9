"""The step deadline: a watchdog that stops a step blocked past it and records what it waited on.

A runner (and the hammer's threads, which share their cell's runner) register
one :class:`Slot` per client; a step writes its start into its client's slot
and clears it at the end: no query, no timer per step. One watchdog thread,
started with the first slot, looks at the slots every :data:`POLL` seconds.

When a step has run for the deadline, the watchdog reads, as the harness's
superuser, what the code under test's backends (the stack's login role) do:
``pg_stat_activity`` (state, wait event, statement and its start),
``pg_blocking_pids()`` and the lock each waits for in ``pg_locks``. It gives the
step the backend that waits for it (matched by the backend the client last ran
on, else oldest wait to oldest step), notes the lock and the backends holding
it (with the client and tenant whose step last ran on each, as the runner
recorded), then cancels that backend's statement with ``pg_cancel_backend``:
the step raises SQLSTATE 57014 (query_canceled) and is recorded as failed, with
the :class:`~harness.checks.history.Wait` attached. Only statements of the login
role that wait (or, when none waits, that run) and began at least half a
deadline ago are touched: a step's statement starts a little after the step.
A step still running after a second deadline gets its backend terminated
(``pg_terminate_backend``); after that the watchdog leaves it alone, so every
step costs it at most two looks. A hang with nothing on the server (Python,
PgBouncer's wait queue) is recorded the same way but cannot be stopped from
here: PgBouncer's ``query_wait_timeout`` ends a queue wait; the hammer gives up
on a thread after its grace.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from typing import NamedTuple

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Connection, Engine

from harness.checks.history import Holder, StepRecord, Wait
from harness.checks.steps import step_kind
from harness.config import SETTINGS_BY_NAME

DEFAULT_STEP_DEADLINE: float = SETTINGS_BY_NAME["step_deadline"].default
POLL = 0.05  # seconds between two looks at the slots
QUERY_CHARS = 200  # characters of a statement kept
SERVER_TIMEOUT_MS = 5000  # the watchdog's own statements and connection: never a hang of their own
STOP_JOIN = 10.0  # seconds close() waits for the watchdog thread

ACTIVITY = text(f"""
SELECT a.pid, a.usename, coalesce(a.application_name, '') AS application_name, coalesce(a.state, '') AS state,
       coalesce(a.wait_event_type, '') AS wait_type, coalesce(a.wait_event, '') AS wait_event,
       left(coalesce(a.query, ''), {QUERY_CHARS}) AS query,
       coalesce(extract(epoch FROM clock_timestamp() - a.query_start), 0)::float8 AS running,
       CASE WHEN a.usename = :role THEN pg_blocking_pids(a.pid) END AS blocked_by,
       l.locktype, l.mode, l.relation, l.classid, l.objid, l.objsubid, l.xid, l.page, l.tuple
FROM pg_stat_activity a
LEFT JOIN LATERAL (
    SELECT l.locktype, l.mode, l.classid::int8 AS classid, l.objid::int8 AS objid, l.objsubid,
           l.transactionid::text AS xid, l.page, l.tuple,
           -- a relation oid names a table only in its own database
           CASE WHEN l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                THEN l.relation::regclass::text ELSE l.relation::text END AS relation
    FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted LIMIT 1) l ON a.usename = :role
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
""")
# Signalled only while the backend still runs a statement of the login role begun at least ``age`` seconds
# ago: checked by the server at the moment it signals, so a backend that moved on is left alone.
# The function is in the select list: evaluated for the rows the WHERE keeps, never before it.
SIGNAL = "SELECT pid, {fn}(pid) FROM pg_stat_activity WHERE pid = ANY(:pids) AND usename = :role " \
         "AND state = 'active' AND query_start <= clock_timestamp() - make_interval(secs => :age)"


class Backend(NamedTuple):
    """One row of the watchdog's look at ``pg_stat_activity``."""

    pid: int
    user: str
    application_name: str
    state: str
    wait_type: str
    wait_event: str
    query: str
    running: float  # seconds since its statement began
    blocked_by: list[int] | None
    locktype: str | None
    mode: str | None
    relation: str | None
    classid: int | None
    objid: int | None
    objsubid: int | None
    xid: str | None
    page: int | None
    tuple: int | None

    @property
    def waiting(self) -> bool:
        return self.wait_type == "Lock" or bool(self.blocked_by)

    @property
    def event(self) -> str:
        return f"{self.wait_type}/{self.wait_event}" if self.wait_type else ""


def describe_lock(b: Backend) -> str:
    """The lock a backend waits for, in words (advisory keys as the application passed them)."""
    kind, mode = b.locktype, b.mode
    if kind is None:
        return ""
    if kind == "advisory":
        if b.objsubid == 1:  # one bigint key: its high half in classid, its low half in objid
            key = ((b.classid or 0) << 32) | (b.objid or 0)
            return f"advisory lock {key - (1 << 64) if key >= 1 << 63 else key} ({mode})"
        return f"advisory lock ({b.classid}, {b.objid}) ({mode})"
    if kind == "relation":
        return f"a lock on relation {b.relation} ({mode})"
    if kind == "transactionid":
        return f"transaction {b.xid} to end ({mode}: a row it wrote or locked)"
    if kind == "tuple":
        return f"a row lock on {b.relation} (page {b.page}, tuple {b.tuple}; {mode})"
    return f"a {kind} lock ({mode})"


class Slot:
    """One client's step in flight, reused for every step of that client."""

    __slots__ = ("__weakref__", "lock", "client", "started", "seq", "request", "tenant", "step", "pid", "waited",
                 "stage")

    def __init__(self, client: int):
        self.lock = threading.Lock()
        self.client = client
        self.started: float | None = None  # monotonic start of the step in flight; None between steps
        self.seq = 0
        self.request = -1
        self.tenant = ""
        self.step = ""
        self.pid: int | None = None  # the backend the client's request last ran on (a hint for matching)
        self.waited: Wait | None = None  # what the watchdog found, for the step in flight
        self.stage = 0  # 0: untouched; 1: canceled (or looked at) once; 2: done with


class _Due(NamedTuple):
    slot: Slot
    seq: int
    started: float
    stage: int
    pid: int | None


class Watchdog:
    """Stops steps that outlive ``deadline`` seconds; one per cell, shared by every runner of the cell."""

    def __init__(self, superuser_url: URL, app_role: str, deadline: float):
        self.deadline = deadline
        self._url = superuser_url
        self._role = app_role
        self._slots: weakref.WeakSet[Slot] = weakref.WeakSet()
        self._lock = threading.Lock()
        #: backend pid -> (client, tenant, seq) of the last step recorded on it
        self._owners: dict[int, tuple[int, str, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None

    # -- the runner's side: cheap -------------------------------------------------------
    def slot(self, client: int) -> Slot:
        """A slot for a client (once per client); starts the watchdog thread with the first one."""
        slot = Slot(client)
        with self._lock:
            self._slots.add(slot)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._watch, name="step-deadline", daemon=True)
                self._thread.start()
        return slot

    @staticmethod
    def begin(slot: Slot, seq: int, request: int, tenant: str, step: str) -> None:
        with slot.lock:
            slot.seq, slot.request, slot.tenant, slot.step = seq, request, tenant, step
            slot.waited, slot.stage = None, 0
            if step == "open":
                slot.pid = None
            slot.started = time.monotonic()

    def end(self, slot: Slot, pid: int | None) -> Wait | None:
        """The step ended: what the watchdog found if it had to step in (None: it did not)."""
        with slot.lock:
            slot.started = None
            waited = slot.waited
        if pid is not None:
            slot.pid = pid
            self._owners[pid] = (slot.client, slot.tenant, slot.seq)
        return waited

    def in_flight(self, why: str) -> list[StepRecord]:
        """The steps still running, recorded as they are (what the watchdog found, and ``why`` they are
        given up on), for a history that has to end without them."""
        with self._lock:
            slots = list(self._slots)
        out = []
        for slot in slots:
            with slot.lock:
                if slot.started is not None:
                    wait = slot.waited or Wait(self.deadline)
                    wait = dataclasses.replace(wait, stopped="; ".join(filter(None, (wait.stopped, why))))
                    out.append(StepRecord(slot.seq, slot.client, slot.request, slot.tenant, slot.step,
                                          style=step_kind(slot.step).style, pid=wait.pid, waited=wait,
                                          note="still running when the run ended"))
        return sorted(out, key=lambda record: record.seq)

    def close(self) -> None:
        """Stop the watchdog thread and release its connection."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        if thread is not None:
            thread.join(STOP_JOIN)
        if self._engine is not None:
            self._engine.dispose()

    # -- the watchdog's side ---------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(POLL):
            now = time.monotonic()
            with self._lock:
                slots = list(self._slots)
            due = []
            for slot in slots:
                with slot.lock:
                    started, stage = slot.started, slot.stage
                    if started is not None and stage < 2 and now - started >= self.deadline * (stage + 1):
                        due.append(_Due(slot, slot.seq, started, stage, slot.pid))
            if due:
                self._step_in(due)

    def _step_in(self, due: list[_Due]) -> None:
        try:
            backends = self._look()
            first = sorted((d for d in due if d.stage == 0), key=lambda d: d.started)
            if first:
                self._cancel(first, backends)
            for d in due:
                if d.stage == 1:
                    self._terminate(d, backends)
        except Exception as exc:  # noqa: BLE001 - the watchdog never dies: the step says why it was not stopped
            failed = f"the harness could not stop it ({type(exc).__name__}: {exc})".replace("\n", " ")
            for d in due:
                with d.slot.lock:
                    wait = (d.slot.waited if d.slot.seq == d.seq else None) or Wait(self.deadline)
                self._attach(d, dataclasses.replace(wait, stopped=failed), 2)

    def _connect(self) -> Connection:
        """The watchdog's own superuser connection (made on its first use), with a statement timeout."""
        if self._engine is None:
            self._engine = create_engine(self._url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT",
                                         connect_args={"prepare_threshold": None,
                                                       "connect_timeout": SERVER_TIMEOUT_MS // 1000})
        conn = self._engine.connect()
        conn.exec_driver_sql(f"SET statement_timeout = {SERVER_TIMEOUT_MS}")
        return conn

    def _look(self) -> list[Backend]:
        with self._connect() as conn:
            return [Backend(*row) for row in conn.execute(ACTIVITY, {"role": self._role})]

    def _signal(self, fn: str, pids: list[int], age: float) -> list[int]:
        """Signal those of ``pids`` still running a statement begun ``age`` seconds ago; the pids signalled."""
        with self._connect() as conn:
            rows = conn.execute(text(SIGNAL.format(fn=fn)), {"pids": pids, "role": self._role, "age": age})
            return [pid for pid, signalled in rows if signalled]

    def _holder(self, pid: int, by_pid: dict[int, Backend]) -> Holder:
        b = by_pid.get(pid)
        client, tenant, seq = self._owners.get(pid, (None, None, None))
        if b is None:
            return Holder(pid, client=client, tenant=tenant, step=seq)
        return Holder(pid, b.state, b.query, b.application_name, client, tenant, seq)

    def _cancel(self, due: list[_Due], backends: list[Backend]) -> None:
        """The first look at steps past the deadline: find what each waits on, note it, cancel it."""
        by_pid = {b.pid: b for b in backends}
        # A step's statement starts a little after the step: half a deadline tells an old wait from a young one.
        old = [b for b in backends if b.user == self._role and b.running >= self.deadline / 2]
        waiters = sorted((b for b in old if b.waiting), key=lambda b: -b.running)
        running = sorted((b for b in old if b.state == "active" and not b.waiting), key=lambda b: -b.running)
        for d, backend in _match(due, waiters, running):
            if backend is None:
                self._attach(d, Wait(self.deadline), 1)
                continue
            wait = Wait(self.deadline, backend.pid, backend.event, describe_lock(backend), backend.query,
                        round(backend.running, 3), tuple(self._holder(p, by_pid) for p in backend.blocked_by or ()),
                        f"the harness canceled its statement (pg_cancel_backend({backend.pid}))")
            # Noted before the cancel: the step may end the moment its statement is canceled.
            if not self._attach(d, wait, 1):
                continue  # it ended on its own meanwhile
            if not self._signal("pg_cancel_backend", [backend.pid], self.deadline / 2):
                self._attach(d, dataclasses.replace(wait, stopped="its backend had moved on; nothing was canceled"), 1)

    def _terminate(self, d: _Due, backends: list[Backend]) -> None:
        """The second look, a deadline later: the step still runs; terminate its backend."""
        with d.slot.lock:
            wait = d.slot.waited if d.slot.seq == d.seq else None
        wait = wait or Wait(self.deadline)
        pids = [wait.pid] if wait.pid is not None else [
            b.pid for b in backends if b.user == self._role and b.state == "active" and b.running >= self.deadline]
        done = self._signal("pg_terminate_backend", pids, 0) if pids else []
        after = f"still running after {2 * self.deadline:g} s: "
        stopped = (after + f"the harness terminated backend(s) {', '.join(map(str, done))}" if done
                   else after + "nothing on the server to stop")
        self._attach(d, dataclasses.replace(wait, stopped="; ".join(filter(None, (wait.stopped, stopped)))), 2)

    def _attach(self, d: _Due, wait: Wait, stage: int) -> bool:
        """Give the step in flight what was found, if it is still the step that was due."""
        with d.slot.lock:
            if d.slot.started is None or d.slot.seq != d.seq:
                return False
            d.slot.waited, d.slot.stage = wait, stage
            return True


def _match(due: list[_Due], waiters: list[Backend], running: list[Backend]) -> list[tuple[_Due, Backend | None]]:
    """Each due step with the backend that waits for it: the one its client last ran on, else the oldest
    wait for the oldest step; a step with no wait gets a long-running statement, if any."""
    pairs: dict[int, Backend | None] = {}
    for pool in (waiters, running):
        free = list(pool)
        for d in due:
            if id(d) not in pairs:
                mine = next((b for b in free if b.pid == d.pid), None)
                if mine is not None:
                    pairs[id(d)] = mine
                    free.remove(mine)
        for d in due:
            if id(d) not in pairs and free:
                pairs[id(d)] = free.pop(0)
    return [(d, pairs.get(id(d))) for d in due]
