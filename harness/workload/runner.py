"""The runner: executes a program's interleaving one action at a time and records a history.

Deterministic by construction: one action at a time, in the program's order,
each client with its own session (and so its own pooled connection). Every row
a step writes carries the tenant the step acts for; ids of written rows come
from one counter, so a row can be traced to the step that wrote it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Any, Callable, TypeVar

from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from harness.stack import Stack
from harness.tenancy.models import ModelSet, model_set
from harness.tenancy.strategy import Strategy
from harness.workload import probe as pool_probe
from harness.workload.history import ErrorSeen, History, ProbeRecord, RowSeen, StepRecord, Write
from harness.workload.program import STEP_STYLES, Program, Request

T = TypeVar("T")
FIRST_WRITTEN_ID = 1000
SCHEDULER_CLIENT = 100
SCHEDULER_STEPS = ("job_read", "task_insert", "commit", "task_read")
PID_QUERY = text("SELECT pg_backend_pid(), current_setting('search_path'), current_user")
FAILING_STATEMENT = text("SELECT 1 / 0")
# Every tenant (and the decoys) share primary keys: an object already in the
# identity map would hide the owner of the row the database returned now.
FRESH = {"populate_existing": True}


def _error(exc: BaseException) -> ErrorSeen:
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    message = str(orig if orig is not None else exc).strip().splitlines()
    return ErrorSeen(sqlstate=sqlstate, type=type(orig if orig is not None else exc).__name__,
                     message=message[0] if message else "")


@dataclasses.dataclass
class Client:
    index: int
    context: Any = None  # the strategy's session context manager
    session: Session | None = None
    tenant: str = ""
    request: int = -1
    savepoints: list[Any] = dataclasses.field(default_factory=list)
    inserted: list[int] = dataclasses.field(default_factory=list)
    lean_pid: dict[str, Any] = dataclasses.field(default_factory=dict)  # pid read by a lean select
    is_async: bool = False  # the strategy's session() gave an AsyncSession
    loop: asyncio.AbstractEventLoop | None = None  # where this client's async steps run


class Runner:
    """Runs programs for one strategy instance on one route of a stack."""

    def __init__(self, stack: Stack, route: str, strategy: Strategy, *, raw_table: str = "product",
                 tenants: tuple[str, ...] = (), lean: bool = False, models: ModelSet | None = None,
                 url=None):
        self.url = url or stack.url(route)  # what the strategy connects to
        self.stack = stack
        self._loop: asyncio.AbstractEventLoop | None = None
        self.tenants = tenants  # what a scheduler pass walks
        # lean: no extra query per step (the hammer); reads carry the backend pid in their own statement.
        self.lean = lean
        self._bouncer_probe: pool_probe.PgBouncerProbe | None = None
        self.route = route
        self.strategy = strategy
        self.models: ModelSet = models or model_set(strategy.models)
        self.ids = itertools.count(FIRST_WRITTEN_ID)
        self.seq = itertools.count(1)
        self.raw_table = raw_table

    # -- program --------------------------------------------------------------------
    def run(self, program: Program, history: History) -> History:
        clients = [Client(i) for i in range(len(program.clients))]
        actions = program.client_actions()
        cursor = [0] * len(clients)
        try:
            for c in program.order():
                r, request, action = actions[c][cursor[c]]
                cursor[c] += 1
                if action == "scheduler_pass":
                    history.steps.extend(self.scheduler_pass(clients[c], r, request))
                    continue
                record = self.act(clients[c], r, request, action)
                history.steps.append(record)
                if action == "end_request" and program.probe == "request":
                    history.probes.extend(self.probe(record.seq))
            if program.probe == "end" and history.steps:
                for client in clients:
                    self._end(client)
                history.probes.extend(self.probe(history.steps[-1].seq))
        finally:
            for client in clients:
                self._end(client)
            if self._bouncer_probe is not None:
                self._bouncer_probe.close()
        return history

    def scheduler_pass(self, client: Client, r: int, request: Request) -> list[StepRecord]:
        """A background job inside a request: one session per tenant, in turn, over every tenant.

        Its steps are recorded under their own client number (the request's
        client + SCHEDULER_CLIENT) since they run in sessions of their own.
        """
        job = Client(client.index + SCHEDULER_CLIENT)
        records = []
        for tenant in self.tenants or (request.tenant,):
            sub = Request(tenant, SCHEDULER_STEPS)
            for action in sub.actions():
                records.append(self.act(job, r, sub, action))
        return records

    # -- one action -----------------------------------------------------------------
    def act(self, client: Client, r: int, request: Request, action: str) -> StepRecord:
        seq = next(self.seq)
        base = dict(seq=seq, client=client.index, request=r, tenant=request.tenant, step=action,
                    style=STEP_STYLES[action])
        if action == "open":
            return self._open(client, r, request.tenant, base)
        if action == "end_request":
            error = self._end(client)
            return StepRecord(**base, error=error)
        if client.session is None:
            return StepRecord(**base, note="skipped: the session did not open")
        pid_info: dict[str, Any] = {}
        try:
            if action in ("commit", "rollback", "fail_and_rollback"):
                pid_info = self._call(client, self._where)
            rows, writes, note = self._call(client, lambda session: self._do(client, session, action))
            if action not in ("commit", "rollback", "fail_and_rollback", "rollback_to_savepoint"):
                pid_info = self._call(client, self._where) or client.lean_pid
            return StepRecord(**base, **pid_info, rows=rows, writes=writes, note=note)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, not raised
            error = _error(exc)
            note = self._recover(client)
            return StepRecord(**base, **pid_info, error=error, note=note)

    # -- sync and async sessions alike ---------------------------------------------------
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop async clients share: their steps are interleaved tasks on one loop."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    @staticmethod
    def _call(client: Client, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` with the client's sync Session; for an AsyncSession through run_sync,
        so one implementation of every step serves both (its SQL goes through the async driver)."""
        if client.is_async:
            assert client.loop is not None
            return client.loop.run_until_complete(client.session.run_sync(fn))
        return fn(client.session)

    def _open(self, client: Client, r: int, tenant: str, base: dict[str, Any]) -> StepRecord:
        client.tenant, client.request, client.savepoints, client.inserted = tenant, r, [], []
        try:
            client.context = self.strategy.session(tenant)
            if hasattr(client.context, "__aenter__"):
                client.is_async = True
                client.loop = client.loop or self.loop()
                client.session = client.loop.run_until_complete(client.context.__aenter__())
            else:
                client.is_async = False
                client.session = client.context.__enter__()
            return StepRecord(**base, **self._call(client, self._where))
        except Exception as exc:  # noqa: BLE001
            if client.session is not None:
                self._end(client)  # entered, then failed: leave no connection checked out
            client.context = client.session = None
            return StepRecord(**base, error=_error(exc))

    def _end(self, client: Client) -> ErrorSeen | None:
        context, client.context, client.session = client.context, None, None
        if context is None:
            return None
        try:
            if client.is_async:
                assert client.loop is not None
                client.loop.run_until_complete(context.__aexit__(None, None, None))
            else:
                context.__exit__(None, None, None)
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        return None

    def close_strategy(self) -> None:
        """Close the strategy (on the loop its async engine lives on), then the loop."""
        try:
            if self._bouncer_probe is not None:
                self._bouncer_probe.close()
            self.strategy.close(loop=self._loop)
        finally:
            if self._loop is not None:
                self._loop.close()
                self._loop = None

    def _recover(self, client: Client) -> str:
        """After a failed step, roll back as an application would."""
        client.savepoints.clear()
        try:
            if client.session is not None:
                self._call(client, lambda session: session.rollback())
            return "rolled back after the error"
        except Exception as exc:  # noqa: BLE001
            return f"rollback after the error failed too: {_error(exc).message}"

    def _where(self, session: Session) -> dict[str, Any]:
        """Backend pid, search_path and role of the session's current transaction."""
        if self.lean or not session.in_transaction():
            return {}
        pid, path, user = session.execute(PID_QUERY).one()
        return {"pid": pid, "search_path": path, "user": user}

    # -- the steps ------------------------------------------------------------------
    def _by_id(self, session: Session, row_id: int):
        Product = self.models.Product  # noqa: N806
        if self.models.shared:
            return session.scalars(select(Product).where(Product.id == row_id).order_by(Product.owner),
                                   execution_options=FRESH).first()
        return session.get(Product, row_id)

    def _raw(self, qualified: bool) -> str:
        return f"tenant.{self.raw_table}" if qualified else self.raw_table

    def _do(self, client: Client, session: Session, action: str) -> tuple[tuple[RowSeen, ...], tuple[Write, ...], str]:
        m, tenant = self.models, client.tenant
        Product = m.Product  # noqa: N806
        client.lean_pid = {}
        if action == "orm_select_all":
            if self.lean:
                rows = session.execute(select(Product, func.pg_backend_pid()), execution_options=FRESH).all()
                client.lean_pid = {"pid": rows[0][1]} if rows else {}
                return tuple(RowSeen("product", p.id, p.owner) for p, _ in rows), (), ""
            return tuple(RowSeen("product", p.id, p.owner)
                         for p in session.scalars(select(Product), execution_options=FRESH)), (), ""
        if action == "orm_select_pk":
            if m.shared:  # one table for all tenants: the key is (id, owner), so ask by id
                found = session.scalars(select(Product).where(Product.id == 1).order_by(Product.owner),
                                        execution_options=FRESH).all()
                return tuple(RowSeen("product", p.id, p.owner) for p in found), (), "" if found else "no row 1"
            obj = session.get(Product, 1)
            return ((RowSeen("product", obj.id, obj.owner),) if obj else ()), (), "" if obj else "no row 1"
        if action in ("orm_insert", "raw_insert_unqualified", "raw_insert_qualified"):
            new_id = next(self.ids)
            name = f"ins:{new_id}"
            if action == "orm_insert":
                session.add(Product(id=new_id, owner=tenant, name=name, price=1))
                session.flush()
            else:
                session.execute(text(f"INSERT INTO {self._raw(action.endswith('_qualified'))} (id, owner, name, price) "
                                     "VALUES (:id, :owner, :name, 1)"), {"id": new_id, "owner": tenant, "name": name})
            client.inserted.append(new_id)
            return (), (Write("insert", "product", new_id, tenant, name),), ""
        if action in ("raw_select_unqualified", "raw_select_qualified"):
            rows = session.execute(text(f"SELECT id, owner, pg_backend_pid() AS pid "
                                        f"FROM {self._raw(action.endswith('_qualified'))} ORDER BY id")).all()
            if self.lean and rows:
                client.lean_pid = {"pid": rows[0].pid}
            return tuple(RowSeen("product", row.id, row.owner) for row in rows), (), ""
        if action == "orm_update":
            target = 1 + client.index
            obj = self._by_id(session, target)
            if obj is None:
                return (), (), f"no row {target} to update"
            label = f"upd:{next(self.ids)}"
            seen = RowSeen("product", obj.id, obj.owner)
            obj.name = label
            session.flush()
            return (seen,), (Write("update", "product", target, tenant, label),), ""
        if action == "orm_delete":
            if not client.inserted:
                return (), (), "nothing inserted in this request to delete"
            target = client.inserted.pop()
            obj = self._by_id(session, target)
            if obj is None:
                return (), (), f"row {target} not found to delete"
            seen = RowSeen("product", obj.id, obj.owner)
            session.delete(obj)
            session.flush()
            return (seen,), (Write("delete", "product", target, tenant),), ""
        if action == "job_read":
            return tuple(RowSeen("marketplace_job", j.id, j.owner) for j in session.scalars(select(m.MarketplaceJob), execution_options=FRESH)), (), ""
        if action == "task_insert":
            new_id = next(self.ids)
            label = f"task:{new_id}"
            session.add(m.MarketplaceTask(id=new_id, owner=tenant, job_id=1, state=label))
            session.flush()
            return (), (Write("insert", "marketplace_task", new_id, tenant, label),), ""
        if action == "task_read":
            return tuple(RowSeen("marketplace_task", t.id, t.owner) for t in session.scalars(select(m.MarketplaceTask), execution_options=FRESH)), (), ""
        if action == "commit":
            session.commit()
            client.savepoints.clear()
            return (), (), ""
        if action == "rollback":
            session.rollback()
            client.savepoints.clear()
            return (), (), ""
        if action == "fail_and_rollback":
            try:
                session.execute(FAILING_STATEMENT)
            except DBAPIError as exc:
                session.rollback()
                client.savepoints.clear()
                return (), (), f"failed as intended ({_error(exc).type}), rolled back"
            raise AssertionError("SELECT 1 / 0 did not fail")
        if action == "savepoint":
            client.savepoints.append(session.begin_nested())
            return (), (), ""
        if action == "rollback_to_savepoint":
            while client.savepoints and not client.savepoints[-1].is_active:
                client.savepoints.pop()
            if not client.savepoints:
                return (), (), "no savepoint open"
            client.savepoints.pop().rollback()
            return (), (), ""
        raise AssertionError(f"unhandled step {action}")

    # -- pool probe -------------------------------------------------------------------
    def probe(self, after_step: int) -> list[ProbeRecord]:
        records = []
        settings = self.strategy.settings
        if self.route in self.stack.bouncers:
            try:
                if self._bouncer_probe is None:
                    self._bouncer_probe = pool_probe.PgBouncerProbe(self.stack, self.route, settings, self.url)
                states, servers = self._bouncer_probe.probe()
                records.append(ProbeRecord(next(self.seq), after_step, f"pgbouncer:{self.route}", tuple(states), servers))
            except Exception as exc:  # noqa: BLE001
                records.append(ProbeRecord(next(self.seq), after_step, f"pgbouncer:{self.route}", (),
                                           error=f"{type(exc).__name__}: {exc}"))
        engine = self.strategy.engine
        if engine is not None:
            try:
                if self.strategy.is_async:
                    states = self.loop().run_until_complete(pool_probe.probe_async_engine(engine, settings))
                else:
                    states = pool_probe.probe_engine(engine, settings)
                records.append(ProbeRecord(next(self.seq), after_step, "engine", tuple(states)))
            except Exception as exc:  # noqa: BLE001
                records.append(ProbeRecord(next(self.seq), after_step, "engine", (),
                                           error=f"{type(exc).__name__}: {exc}"))
        return records
