"""What the team's steps run: reads and writes through its tables, and its own code paths.

Step names carry what they act on (``team_read:invoice``, ``team_insert:invoice``,
``action:monthly_total``), so a counterexample reads as the team's own program
and shrinks like any other. Their declarations are in
:data:`harness.checks.steps.TEAM_STEP_KINDS`. Rows are attributed by the read
observer (:mod:`harness.team.observer`), not by what the step returns: the
runner records every row the step touched, whatever SQL ran.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from sqlalchemy import BLANK_SCHEMA, MetaData, Table, and_, delete, event, insert, inspect, select, update
from sqlalchemy.orm import Session

from harness.checks.history import RowSeen
from harness.checks.steps import Effect, step_kind
from harness.team import ACTION_PREFIX, Team
from harness.team.models import CANARY_ROWS, TeamModels, canary_value
from harness.team import observer
from harness.team.observer import Observed
from harness.tenancy.tenants import PLACEHOLDER_SCHEMA
from harness.workload.actions import FRESH, Context, Outcome
from harness.workload.program import Program, Request

READ, INSERT, UPDATE, DELETE = "team_read", "team_insert", "team_update", "team_delete"


def step_names(team: Team | None) -> tuple[str, ...]:
    """Every team step of a run: per tenant table a read and (with a key) insert, update, delete; then its actions."""
    if team is None:
        return ()
    names: list[str] = []
    models = team.models
    for table in models.tenant_tables if models is not None else ():
        names.append(f"{READ}:{table.name}")
        if models.writable(table):
            names.append(f"{INSERT}:{table.name}")
            if models.updatable_column(table) is not None:
                names.append(f"{UPDATE}:{table.name}")
            names.append(f"{DELETE}:{table.name}")
    names.extend(action.step for action in team.actions)
    return tuple(names)


def groups(team_steps: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The team's steps split into its table steps and its actions (drawn as groups of their own)."""
    actions = tuple(name for name in team_steps if name.startswith(ACTION_PREFIX))
    return tuple(name for name in team_steps if name not in actions), actions


def weighted(builtin: tuple[str, ...], everything: tuple[str, ...]) -> tuple[str, ...]:
    """The hammer's step list (``everything``: ``builtin`` then the team's steps) with each group of the
    team's steps (tables, actions) repeated so that a uniform choice picks from the built-in steps, the
    team's tables and its actions about equally often, as generated programs do."""
    out = builtin
    for group in groups(everything[len(builtin):]):
        if group:
            out += group * max(1, round(len(builtin) / len(group)))
    return out


def read_names(team: Team | None) -> tuple[str, ...]:
    """The team's steps that only read (its tables' reads) and its actions: what a named scenario adds."""
    return tuple(name for name in step_names(team) if name.startswith((f"{READ}:", ACTION_PREFIX)))


def woven(program: Program, steps: tuple[str, ...]) -> Program:
    """The named program with ``steps`` after each of its steps that reads a whole table, so the team's
    tables and code are read wherever the scenario reads (after a commit, a rollback, on a reused
    connection). Named programs have no schedule (round robin), so added steps keep it valid."""
    if not steps or program.schedule is not None:
        return program

    def weave(request: Request) -> Request:
        return Request(request.tenant, tuple(added for step in request.steps
                                             for added in ((step, *steps) if step_kind(step).reads_all
                                                           else (step,))))

    return dataclasses.replace(program, clients=tuple(tuple(weave(r) for r in requests)
                                                      for requests in program.clients))


@functools.lru_cache(maxsize=16)
def _schema_less(models: TeamModels) -> dict[str, Table]:
    """The tenant tables without their placeholder schema (foreign keys between them too), for layers
    that bind the tenant through search_path only."""
    copy = MetaData()

    def referred(table: Table, to_schema: str | None, constraint: Any, referred_schema: str | None) -> str | None:
        return BLANK_SCHEMA if referred_schema == PLACEHOLDER_SCHEMA else referred_schema

    for table in models.metadata.sorted_tables:
        table.to_metadata(copy, schema=None if table.schema == PLACEHOLDER_SCHEMA else table.schema,
                          referred_schema_fn=referred)
    return {t.name: copy.tables[t.name] for t in models.tenant_tables}


def _table(models: TeamModels, name: str, flavour: str) -> Table:
    return _schema_less(models)[name] if flavour == "unqualified" else models.table(name)


def _attributes(mapped: type, table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """Column values as the mapped class's attribute names (a column may be mapped under another name)."""
    mapper = inspect(mapped)
    return {mapper.get_property_by_column(table.c[name]).key: value for name, value in values.items()}


def _identity(table: Table, values: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(values[column.name] for column in table.primary_key.columns)


def _key_clause(table: Table, values: dict[str, Any]):
    return and_(*(column == values[column.name] for column in table.primary_key.columns))


def run(team: Team, ctx: Context, session: Session, name: str) -> Outcome:
    """Run the team step ``name`` for ``ctx``'s client on ``session``."""
    operation, _, target = name.partition(":")
    if operation == "action":
        return _action(team, name, ctx, session)
    models = team.models
    assert models is not None
    flavour = ctx.models.flavour
    table = _table(models, target, flavour)
    tenant = ctx.client.tenant
    mapped = models.classes.get(target) if flavour == "placeholder" else None
    if operation == READ:
        before = observer.seen()
        if mapped is not None:
            found = session.scalars(select(mapped), execution_options=FRESH).all()
        else:
            found = session.execute(select(table)).all()
        if observer.seen() - before < len(found):  # the observer must see what the read returned
            raise ObserverBlind(f"the read observer saw {observer.seen() - before} of the {len(found)} row(s) "
                                f"{target} returned: the login role bypasses row-level security, or the driver "
                                "reports no notices; the team's reads cannot be attributed")
        # no note when nothing came back: an empty read is the tenant context gone (context_lost)
        return Outcome(note=f"{len(found)} row(s) returned" if found else "")
    if operation == INSERT:
        number = ctx.new_id()
        values = models.row(table, tenant, number)
        if mapped is not None:  # through the mapped class: the unit of work, its defaults and events
            session.add(mapped(**_attributes(mapped, table, values)))
            session.flush()
        else:
            session.execute(insert(table).values(values))
        ctx.client.team_inserted.setdefault(target, []).append(values)
        return Outcome(note=f"inserted row {models.key_of(table, values)}")
    if operation == UPDATE:
        column = models.updatable_column(table)
        assert column is not None
        mine = models.row(table, tenant, 1 + ctx.client.index % CANARY_ROWS)  # a row no other client updates
        value = canary_value(column, tenant, ctx.new_id(), key=False)
        if mapped is not None:
            obj = session.get(mapped, _identity(table, mine), populate_existing=True)
            if obj is None:
                return Outcome(note="updated 0 row(s): the row is not there")
            setattr(obj, _attributes(mapped, table, {column.name: value}).popitem()[0], value)
            session.flush()
            return Outcome(note="updated 1 row(s)")
        changed = session.execute(update(table).where(_key_clause(table, mine)).values({column.name: value}))
        return Outcome(note=f"updated {changed.rowcount} row(s)")
    if operation == DELETE:
        mine = ctx.client.team_inserted.get(target)
        if not mine:
            return Outcome(note="nothing inserted in this request to delete")
        values = mine.pop()
        if mapped is not None:
            obj = session.get(mapped, _identity(table, values), populate_existing=True)
            if obj is None:
                return Outcome(note="deleted 0 row(s): the row is not there")
            session.delete(obj)
            session.flush()
            return Outcome(note="deleted 1 row(s)")
        gone = session.execute(delete(table).where(_key_clause(table, values)))
        return Outcome(note=f"deleted {gone.rowcount} row(s)")
    raise ValueError(f"unknown team step {name!r}")


def _action(team: Team, name: str, ctx: Context, session: Session) -> Outcome:
    """The team's code path (a sync function) on the client's sync session."""
    action = team.action(name)
    if action.is_async:
        raise TypeError(f"{action.spec} is async: it needs a tenancy layer whose session() yields an AsyncSession")
    return _tracked(session, lambda: action.call(session, ctx.client.tenant))


def run_async_action(team: Team, name: str, ctx: Context, session: Any, loop: Any) -> Outcome:
    """An async code path, awaited on the client's loop with its AsyncSession (a sync one runs through run_sync)."""
    action = team.action(name)
    if not action.is_async:
        return loop.run_until_complete(session.run_sync(lambda sync: _action(team, name, ctx, sync)))
    return _tracked(session.sync_session, lambda: loop.run_until_complete(action.call(session, ctx.client.tenant)))


def _tracked(session: Session, call: Callable[[], Any]) -> Outcome:
    """Run ``call``; what it did to the transaction (commit, rollback) is read off the session's events,
    so the write checks know whether the client's pending writes became durable."""
    ended: list[str] = []

    # Only the root transaction counts: a savepoint (begin_nested) released or rolled back fires the same
    # events, with the savepoint still the session's current transaction, and leaves pending writes pending.
    def on_commit(sess: Session) -> None:
        if not sess.in_nested_transaction():
            ended.append(Effect.COMMIT.value)

    def on_rollback(sess: Session) -> None:
        if not sess.in_nested_transaction():
            ended.append(Effect.DISCARD.value)

    event.listen(session, "after_commit", on_commit)
    event.listen(session, "after_rollback", on_rollback)
    try:
        returned = call()
    finally:
        event.remove(session, "after_commit", on_commit)
        event.remove(session, "after_rollback", on_rollback)
    note = "" if returned is None else f"returned {_short(returned)}"
    # A commit anywhere made the writes pending before it durable, whatever came after.
    effect = Effect.COMMIT.value if Effect.COMMIT.value in ended else (ended[-1] if ended else "")
    return Outcome(note=note, effect=effect)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class ObserverBlind(RuntimeError):
    """The read observer missed rows a team read returned: the run cannot attribute the team's reads."""


def observed_rows(observed: list[Observed]) -> tuple[tuple[RowSeen, ...], tuple[RowSeen, ...]]:
    """The rows a step read and wrote, once each, in the order first seen."""
    read = dict.fromkeys(RowSeen(o.table, o.key, o.owner) for o in observed if o.op == "r")
    wrote = dict.fromkeys(RowSeen(o.table, o.key, o.owner) for o in observed if o.op == "w")
    return tuple(read), tuple(wrote)

