"""The runner: executes a program's interleaving one action at a time and records a history.

Deterministic by construction: one action at a time, in the program's order,
each client with its own session (and so its own pooled connection). Every row
a step writes carries the tenant the step acts for; ids of written rows come
from one counter, so a row can be traced to the step that wrote it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
from typing import Any, Callable, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from harness.checks.history import ErrorSeen, History, ProbeRecord, StepRecord
from harness.checks.refusals import NAME_REFUSED
from harness.checks.steps import PidTiming, Style, step_kind
from harness.stack import Stack
from harness.tenancy.models import ModelSet, model_set
from harness.team import Team
from harness.team import observer
from harness.team import steps as team_steps
from harness.tenancy import drivers
from harness.tenancy.strategy import Strategy
from harness.workload import probe as pool_probe
from harness.workload import step_watch
from harness.workload.actions import ACTIONS, Context, error_seen
from harness.workload.faults import FaultInjector
from harness.workload.deadline import DEFAULT_STEP_DEADLINE, Slot, Watchdog
from harness.workload.program import Program, Request

T = TypeVar("T")
FIRST_WRITTEN_ID = 1000
SCHEDULER_CLIENT = 100
SCHEDULER_STEPS = ("job_read", "task_insert", "commit", "task_read")
DRIVER_MODULES = ("psycopg", "psycopg2", "psycopg_pool", "asyncpg", "pg8000")
PID_QUERY = text("SELECT pg_backend_pid(), current_setting('search_path'), current_user")


@dataclasses.dataclass
class Client:
    index: int
    context: Any = None  # the strategy's session context manager
    session: Session | None = None
    tenant: str = ""
    request: int = -1
    savepoints: list[Any] = dataclasses.field(default_factory=list)
    inserted: list[int] = dataclasses.field(default_factory=list)
    team_inserted: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)  # by team table
    lean_pid: dict[str, Any] = dataclasses.field(default_factory=dict)  # pid read by a lean select
    is_async: bool = False  # the strategy's session() gave an AsyncSession
    loop: asyncio.AbstractEventLoop | None = None  # where this client's async steps run
    step_context: Any = None  # the Context its steps get (models, id counter, client), made once
    watch: Slot | None = None  # its slot in the step deadline's watchdog, made once


def _pool_of(session: Any) -> tuple[str, Any] | None:
    """Which connection pool the session's connections come from, as (label, engine) (None: it cannot say,
    e.g. no single bind)."""
    sync = getattr(session, "sync_session", session)  # an AsyncSession's binds are its sync session's
    try:
        bind = sync.get_bind()
    except Exception:  # noqa: BLE001 - binds per mapper, or none: no evidence, not an error
        return None
    engine = getattr(bind, "engine", bind)  # a Session bound to a Connection
    pool = getattr(engine, "pool", None)
    return None if pool is None else (f"{type(pool).__name__}@{id(pool):x}", engine)


def _from_database(exc: BaseException) -> bool:
    """The exception, or one it was raised from, came from the database driver (SQL reached the server)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) or type(current).__module__.split(".")[0] in DRIVER_MODULES:
            return True
        current = current.__cause__ or current.__context__
    return False


class Runner:
    """Runs programs for one strategy instance on one route of a stack."""

    def __init__(self, stack: Stack, route: str, strategy: Strategy, *,
                 tenants: tuple[str, ...] = (), lean: bool = False, models: ModelSet | None = None,
                 url=None, team: Team | None = None, step_deadline: float | None = DEFAULT_STEP_DEADLINE,
                 setting_names: pool_probe.SettingNames | None = None):
        self.url = url or stack.url(route)  # what the strategy connects to
        self.stack = stack
        self._loop: asyncio.AbstractEventLoop | None = None
        self.tenants = tenants  # what a scheduler pass walks
        # lean: no extra query per step (the hammer); reads carry the backend pid in their own statement.
        self.lean = lean
        self._bouncer_probe: pool_probe.PoolerProbe | None = None
        # Custom setting names the run's statements set, for the pool probe; shared by a cell's runners.
        self.owns_setting_names = setting_names is None
        self.setting_names = setting_names or pool_probe.SettingNames()
        self._pristine: tuple[dict[str, str], tuple[str, ...]] | None = None  # read at the first probe
        self.route = route
        self.strategy = strategy
        self.models: ModelSet = models or model_set(strategy.models)
        self.team = team  # the team's tables and code paths, whose steps programs may list
        self.ids = itertools.count(FIRST_WRITTEN_ID)
        self.seq = itertools.count(1)
        # Stops a step blocked past the deadline (None: no deadline); no thread or connection until a step runs.
        self.watchdog = Watchdog(stack.superuser_url, stack.app_role, step_deadline) if step_deadline else None
        self.owns_watchdog = True  # False for a runner sharing another's (the hammer's per-thread instances)
        #: per tenant, the pools its sessions' connections came from (structural isolation's evidence)
        self.pools: dict[str, dict[str, None]] = {}
        #: the engine of each of those pools: probed when the strategy exposes no single engine (one per tenant)
        self.engines: dict[str, Any] = {}
        self.faults = FaultInjector(stack, route)  # connects nothing until the first fault step
        #: the driver the layer's sessions used, read from the engine of the first one opened
        self.driver_used = ""
        #: the app's warnings and log records while steps run: the cell's evidence (shared by a cell's runners)
        self.messages = step_watch.AppMessages()
        step_watch.install()
        self.setting_names.start()  # last: a runner that failed to start leaves no listener behind

    # -- program --------------------------------------------------------------------
    def run(self, program: Program, history: History) -> History:
        clients = [Client(i) for i in range(len(program.clients))]
        actions = program.client_actions()
        cursor = [0] * len(clients)
        try:
            for c in program.order():
                r, request, action = actions[c][cursor[c]]
                cursor[c] += 1
                if step_kind(action).composite:
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
            history.pools = self.pools_seen(history.pools)
            history.messages, history.messages_not_kept = self.messages.kept(), self.messages.not_kept
        return history

    def pools_seen(self, before: dict[str, tuple[str, ...]] | None = None) -> dict[str, tuple[str, ...]]:
        """The pools each tenant's sessions drew from, added to ``before`` (a history's)."""
        merged = {tenant: dict.fromkeys(pools) for tenant, pools in (before or {}).items()}
        for tenant, pools in self.pools.items():
            merged.setdefault(tenant, {}).update(pools)
        return {tenant: tuple(pools) for tenant, pools in merged.items()}

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
        """Run one action of a client and record it; past the step deadline, the watchdog stops it and the
        record says what it waited on. While it runs, the app's warnings and log records go to the cell's
        evidence and every statement that sets session state is recorded with its backend (:mod:`step_watch`)."""
        seq = next(self.seq)
        watch, token = step_watch.watching(self.messages, seq)
        try:
            record = self._deadline_act(client, r, request, action, seq)
        finally:
            step_watch.CURRENT.reset(token)
        return dataclasses.replace(record, state_set=tuple(watch.state_set)) if watch.state_set else record

    def _deadline_act(self, client: Client, r: int, request: Request, action: str, seq: int) -> StepRecord:
        watchdog = self.watchdog
        if watchdog is None:
            return self._act(client, r, request, action, seq)
        slot = client.watch or self._watch(client, watchdog)
        watchdog.begin(slot, seq, r, request.tenant, action)
        record = None
        try:
            record = self._act(client, r, request, action, seq)
        finally:
            waited = watchdog.end(slot, None if record is None else record.pid)
        return record if waited is None else dataclasses.replace(record, waited=waited)

    @staticmethod
    def _watch(client: Client, watchdog: Watchdog) -> Slot:
        client.watch = watchdog.slot(client.index)
        return client.watch

    def _act(self, client: Client, r: int, request: Request, action: str, seq: int) -> StepRecord:
        kind = step_kind(action)
        base = dict(seq=seq, client=client.index, request=r, tenant=request.tenant, step=action, style=kind.style)
        if action in ("open", "end_request"):
            # What the layer itself does as a request opens or ends (a flush on exit, say) is observed too.
            with observer.observing() as observed:
                record = (self._open(client, r, request.tenant, base) if action == "open"
                          else StepRecord(**base, error=self._end(client)))
            if observed:
                read, wrote = team_steps.observed_rows(observed)
                record = dataclasses.replace(record, rows=record.rows + read, wrote=wrote)
            return record
        if client.session is None:
            return StepRecord(**base, note="skipped: the session did not open")
        pid_info: dict[str, Any] = {}
        if client.step_context is None:
            client.step_context = Context(self.models, self.ids, self.lean, client)
        context = client.step_context
        run = self._implementation(client, action, kind.style, context)
        with observer.observing() as observed:
            try:
                # Not after a fault: the harness's own query would be the first to meet the broken connection,
                # and the layer would see its error instead of the step's.
                if kind.pid is PidTiming.BEFORE and not self.lean and not self.faults.injected:
                    pid_info = self._call(client, self._where)
                client.lean_pid = {}
                outcome = run()
                if kind.pid is PidTiming.AFTER:
                    pid_info = client.lean_pid if self.lean else self._call(client, self._where)
                read, wrote = team_steps.observed_rows(observed)
                return StepRecord(**base, **pid_info, rows=outcome.rows + read, writes=outcome.writes,
                                  note=outcome.note, wrote=wrote, effect=outcome.effect or None)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded, not raised
                error = error_seen(exc)
                note = self._recover(client)
                read, wrote = team_steps.observed_rows(observed)  # what it read before it failed counts too
                return StepRecord(**base, **pid_info, error=error, note=note, rows=read, wrote=wrote)

    def _implementation(self, client: Client, action: str, style: Style, context: Context) -> Callable[[], Any]:
        """The call that runs a step on the client's session: a built-in one, or the team's."""
        if style is Style.FAULT:
            return functools.partial(self.faults.inject, action, functools.partial(self._call, client))
        builtin = ACTIONS.get(action)
        if builtin is not None:
            return functools.partial(self._call, client, functools.partial(builtin, context))
        if self.team is None:
            raise ValueError(f"step {action!r} needs the team's models or actions (--models, --actions)")
        if style is Style.ACTION and client.is_async:
            return functools.partial(team_steps.run_async_action, self.team, action, context, client.session,
                                     client.loop)
        return functools.partial(self._call, client, lambda session: team_steps.run(self.team, context, session,
                                                                                      action))

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
        client.team_inserted = {}
        try:
            client.context = self.strategy.session(tenant)
            if hasattr(client.context, "__aenter__"):
                client.is_async = True
                client.loop = client.loop or self.loop()
                client.session = client.loop.run_until_complete(client.context.__aenter__())
            else:
                client.is_async = False
                client.session = client.context.__enter__()
            pool = _pool_of(client.session)
            if pool is not None:
                self.pools.setdefault(tenant, {})[pool[0]] = None
                self.engines.setdefault(pool[0], pool[1])
                self.driver_used = self.driver_used or drivers.used_by(pool[1])
            return StepRecord(**base, **({} if self.lean else self._call(client, self._where)))
        except Exception as exc:  # noqa: BLE001
            # session(tenant) or entering it raised, not the driver: no session was handed over and no
            # statement failed on the server. The layer refused the name (see harness.checks.refusals).
            refused = client.session is None and not _from_database(exc)
            if client.session is not None:
                self._end(client)  # entered, then failed: leave no connection checked out
            client.context = client.session = None
            return StepRecord(**base, error=error_seen(exc), note=NAME_REFUSED if refused else "")

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
            return error_seen(exc)
        return None

    def close_strategy(self) -> None:
        """Close the strategy (on the loop its async engine lives on), then the loop; stop the watchdog."""
        try:
            if self.watchdog is not None and self.owns_watchdog:
                self.watchdog.close()
            if self._bouncer_probe is not None:
                self._bouncer_probe.close()
            if self.owns_setting_names:
                self.setting_names.stop()
            self.strategy.close(loop=self._loop)
        finally:
            try:
                self.faults.close()  # what a fault changed on the stack is set back for the next cell
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
            return f"rollback after the error failed too: {error_seen(exc).message}"

    def _where(self, session: Session) -> dict[str, Any]:
        """Backend pid, search_path and role of the session's current transaction."""
        if self.lean or not session.in_transaction():
            return {}
        pid, path, user = session.execute(PID_QUERY).one()
        return {"pid": pid, "search_path": path, "user": user}

    # -- pool probe -------------------------------------------------------------------
    def probe(self, after_step: int, bouncer: bool = True) -> list[ProbeRecord]:
        """Read the state the route's PgBouncer servers (``bouncer``) and the layer's own pools keep."""
        records = []
        settings = self.strategy.settings
        try:
            if self._pristine is None:
                self._pristine = pool_probe.read_pristine(self.stack, self.url, self.strategy.name)
            pristine, read_in_catalog = self._pristine
        except Exception as exc:  # noqa: BLE001 - then every setting of the session counts, none compared
            pristine, read_in_catalog = {}, ()
            records.append(ProbeRecord(next(self.seq), after_step, "pristine", (),
                                       error=f"reading a fresh connection failed: {type(exc).__name__}: {exc}"))
        names = read_in_catalog + tuple(self.setting_names.names)
        if bouncer and self.route in self.stack.poolers:
            target = f"{self.stack.pooler}:{self.route}"
            try:
                if self._bouncer_probe is None:
                    self._bouncer_probe = pool_probe.PoolerProbe(
                        self.stack, self.route, settings, self.url,
                        driver=(self.driver_used.split() or [drivers.of_url(self.url).name])[0])
                states, servers = self._bouncer_probe.probe(names, pristine)
                records.append(ProbeRecord(next(self.seq), after_step, target, tuple(states), servers))
            except Exception as exc:  # noqa: BLE001
                records.append(ProbeRecord(next(self.seq), after_step, target, (),
                                           error=f"{type(exc).__name__}: {exc}"))
        for where, (engine, owner) in self._engines_to_probe().items():
            try:
                if getattr(getattr(engine, "sync_engine", engine), "dialect").is_async:
                    states = self.loop().run_until_complete(pool_probe.probe_async_engine(
                        drivers.as_async(engine), settings, names, pristine))
                else:
                    states = pool_probe.probe_engine(engine, settings, names, pristine)
                records.append(ProbeRecord(next(self.seq), after_step, where, tuple(states), owner=owner))
            except Exception as exc:  # noqa: BLE001
                records.append(ProbeRecord(next(self.seq), after_step, where, (),
                                           error=f"{type(exc).__name__}: {exc}", owner=owner))
        return records

    def keeps_no_connections(self) -> bool:
        """Did the layer use engines only, each without a pool that keeps connections (NullPool)?"""
        engines = self._engines_to_probe()
        return bool(engines) and all(isinstance(getattr(engine, "sync_engine", engine).pool, NullPool)
                                     for engine, _ in engines.values())

    def _engines_to_probe(self) -> dict[str, tuple[Any, str | None]]:
        """name -> (engine, the one tenant using it): the strategy's engine; without one, each engine its
        sessions drew from (a layer with one engine per tenant), named after the tenants that used it."""
        if self.strategy.engine is not None:
            return {"engine": (self.strategy.engine, None)}
        users: dict[str, list[str]] = {}
        for tenant, pools in self.pools.items():
            for pool in pools:
                users.setdefault(pool, []).append(tenant)
        return {f"engine of {', '.join(repr(t) for t in users.get(label, ())) or 'no tenant'}":
                (engine, users[label][0] if len(users.get(label, ())) == 1 else None)
                for label, engine in self.engines.items()}
