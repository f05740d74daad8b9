"""What each step kind runs on a client's session.

One function per step kind of :data:`harness.checks.steps.STEP_KINDS`,
registered with :func:`action`; the declarations say what a step is, these say
what it does. Every row a step writes carries the tenant the step acts for, and
ids of written rows come from the runner's one counter, so a row can be traced
to the step that wrote it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import itertools
from typing import Any, Callable, NamedTuple

from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from harness.checks.history import ErrorSeen, RowSeen, Write
from harness.checks.steps import STEP_KINDS
from harness.tenancy import drivers
from harness.tenancy.models import ModelSet

FAILING_STATEMENT = text("SELECT 1 / 0")
#: how SQLAlchemy's asyncpg adapter words an error: "<class 'asyncpg.exceptions.UndefinedTableError'>: ..."
_ADAPTER_PREFIX = re.compile(r"^<class '[\w.]+'>:\s*")
RAW_TABLE = "product"
# Every tenant (and the decoys) share primary keys: an object already in the
# identity map would hide the owner of the row the database returned now.
FRESH = {"populate_existing": True}


def error_seen(exc: BaseException) -> ErrorSeen:
    """What a history keeps of an exception: SQLSTATE, driver type, first line of the message, whatever the
    driver (psycopg's ``sqlstate``, psycopg2's ``pgcode``, asyncpg's ``sqlstate``)."""
    orig = getattr(exc, "orig", None)
    error = orig if orig is not None else exc
    # SQLAlchemy's asyncpg adapter raises its own DBAPI error from asyncpg's: keep asyncpg's type and words.
    cause = error.__cause__
    if cause is not None and type(cause).__module__.split(".")[0] == "asyncpg":
        error = cause
    message = _ADAPTER_PREFIX.sub("", str(error).strip()).splitlines()
    return ErrorSeen(sqlstate=drivers.sqlstate_of(error) or drivers.sqlstate_of(exc), type=type(error).__name__,
                     message=message[0].strip() if message else "")


class Outcome(NamedTuple):
    rows: tuple[RowSeen, ...] = ()
    writes: tuple[Write, ...] = ()
    note: str = ""
    effect: str = ""  # an Effect value when the step's kind cannot say (a team action that committed)


@dataclasses.dataclass
class Context:
    """What a step needs besides its session: the models and the id counter of the run, its client."""

    models: ModelSet
    ids: itertools.count
    lean: bool  # the hammer: reads carry the backend pid in their own statement, no extra query
    client: Any  # harness.workload.runner.Client

    def new_id(self) -> int:
        return next(self.ids)


Action = Callable[[Context, Session], Outcome]
ACTIONS: dict[str, Action] = {}


def action(name: str) -> Callable[[Action], Action]:
    """Register the implementation of a declared step kind."""
    if name not in STEP_KINDS:
        raise ValueError(f"step {name!r} is not declared in harness.checks.steps.STEP_KINDS")

    def register(fn: Action) -> Action:
        ACTIONS[name] = fn
        return fn
    return register


def _product_rows(found) -> tuple[RowSeen, ...]:
    return tuple(RowSeen("product", p.id, p.owner) for p in found)


def _by_id(ctx: Context, session: Session, row_id: int):
    Product = ctx.models.Product  # noqa: N806
    if ctx.models.shared:  # one table for all tenants: the key is (id, owner), so ask by id
        return session.scalars(select(Product).where(Product.id == row_id).order_by(Product.owner),
                               execution_options=FRESH).first()
    return session.get(Product, row_id)


def _raw_table(qualified: bool) -> str:
    return f"tenant.{RAW_TABLE}" if qualified else RAW_TABLE


# -- reads ---------------------------------------------------------------------------------
@action("orm_select_all")
def orm_select_all(ctx: Context, session: Session) -> Outcome:
    Product = ctx.models.Product  # noqa: N806
    if ctx.lean:
        rows = session.execute(select(Product, func.pg_backend_pid()), execution_options=FRESH).all()
        ctx.client.lean_pid = {"pid": rows[0][1]} if rows else {}
        return Outcome(_product_rows(p for p, _ in rows))
    return Outcome(_product_rows(session.scalars(select(Product), execution_options=FRESH)))


@action("orm_select_pk")
def orm_select_pk(ctx: Context, session: Session) -> Outcome:
    Product = ctx.models.Product  # noqa: N806
    if ctx.models.shared:
        found = session.scalars(select(Product).where(Product.id == 1).order_by(Product.owner),
                                execution_options=FRESH).all()
    else:
        obj = session.get(Product, 1)
        found = [obj] if obj is not None else []
    return Outcome(_product_rows(found), (), "" if found else "no row 1")


def _raw_select(ctx: Context, session: Session, qualified: bool) -> Outcome:
    rows = session.execute(text(f"SELECT id, owner, pg_backend_pid() AS pid "
                                f"FROM {_raw_table(qualified)} ORDER BY id")).all()
    if ctx.lean and rows:
        ctx.client.lean_pid = {"pid": rows[0].pid}
    return Outcome(tuple(RowSeen("product", row.id, row.owner) for row in rows))


@action("job_read")
def job_read(ctx: Context, session: Session) -> Outcome:
    jobs = session.scalars(select(ctx.models.MarketplaceJob), execution_options=FRESH)
    return Outcome(tuple(RowSeen("marketplace_job", j.id, j.owner) for j in jobs))


@action("task_read")
def task_read(ctx: Context, session: Session) -> Outcome:
    tasks = session.scalars(select(ctx.models.MarketplaceTask), execution_options=FRESH)
    return Outcome(tuple(RowSeen("marketplace_task", t.id, t.owner) for t in tasks))


# -- writes --------------------------------------------------------------------------------
def _inserted(ctx: Context, new_id: int, name: str) -> Outcome:
    ctx.client.inserted.append(new_id)
    return Outcome((), (Write("insert", "product", new_id, ctx.client.tenant, name),))


@action("orm_insert")
def orm_insert(ctx: Context, session: Session) -> Outcome:
    new_id = ctx.new_id()
    session.add(ctx.models.Product(id=new_id, owner=ctx.client.tenant, name=f"ins:{new_id}", price=1))
    session.flush()
    return _inserted(ctx, new_id, f"ins:{new_id}")


def _raw_insert(ctx: Context, session: Session, qualified: bool) -> Outcome:
    new_id = ctx.new_id()
    # Lean (the hammer): the backend comes back with the insert, so a row misplaced by a search_path
    # another step left on that backend can be traced to that step (harness.checks.leftovers).
    inserted = session.execute(text(f"INSERT INTO {_raw_table(qualified)} (id, owner, name, price) "
                                    "VALUES (:id, :owner, :name, 1)"
                                    + (" RETURNING pg_backend_pid()" if ctx.lean else "")),
                               {"id": new_id, "owner": ctx.client.tenant, "name": f"ins:{new_id}"})
    if ctx.lean:
        ctx.client.lean_pid = {"pid": inserted.scalar()}
    return _inserted(ctx, new_id, f"ins:{new_id}")


def _in_both_raw_styles(operation: str, run: Callable[[Context, Session, bool], Outcome]) -> None:
    """raw_<operation>_unqualified (``... FROM product``) and raw_<operation>_qualified (``tenant.product``)."""
    for qualified in (False, True):
        style = "qualified" if qualified else "unqualified"
        action(f"raw_{operation}_{style}")(functools.partial(run, qualified=qualified))


_in_both_raw_styles("select", _raw_select)
_in_both_raw_styles("insert", _raw_insert)


@action("orm_update")
def orm_update(ctx: Context, session: Session) -> Outcome:
    target = 1 + ctx.client.index
    obj = _by_id(ctx, session, target)
    if obj is None:
        return Outcome(note=f"no row {target} to update")
    label = f"upd:{ctx.new_id()}"
    seen = RowSeen("product", obj.id, obj.owner)
    obj.name = label
    session.flush()
    return Outcome((seen,), (Write("update", "product", target, ctx.client.tenant, label),))


@action("orm_delete")
def orm_delete(ctx: Context, session: Session) -> Outcome:
    if not ctx.client.inserted:
        return Outcome(note="nothing inserted in this request to delete")
    target = ctx.client.inserted.pop()
    obj = _by_id(ctx, session, target)
    if obj is None:
        return Outcome(note=f"row {target} not found to delete")
    seen = RowSeen("product", obj.id, obj.owner)
    session.delete(obj)
    session.flush()
    return Outcome((seen,), (Write("delete", "product", target, ctx.client.tenant),))


@action("task_insert")
def task_insert(ctx: Context, session: Session) -> Outcome:
    new_id = ctx.new_id()
    label = f"task:{new_id}"
    session.add(ctx.models.MarketplaceTask(id=new_id, owner=ctx.client.tenant, job_id=1, state=label))
    session.flush()
    return Outcome((), (Write("insert", "marketplace_task", new_id, ctx.client.tenant, label),))


# -- transaction control -------------------------------------------------------------------
@action("commit")
def commit(ctx: Context, session: Session) -> Outcome:
    session.commit()
    ctx.client.savepoints.clear()
    return Outcome()


@action("rollback")
def rollback(ctx: Context, session: Session) -> Outcome:
    session.rollback()
    ctx.client.savepoints.clear()
    return Outcome()


@action("fail_and_rollback")
def fail_and_rollback(ctx: Context, session: Session) -> Outcome:
    try:
        session.execute(FAILING_STATEMENT)
    except DBAPIError as exc:
        session.rollback()
        ctx.client.savepoints.clear()
        return Outcome(note=f"failed as intended ({error_seen(exc).type}), rolled back")
    raise AssertionError("SELECT 1 / 0 did not fail")


@action("savepoint")
def savepoint(ctx: Context, session: Session) -> Outcome:
    ctx.client.savepoints.append(session.begin_nested())
    return Outcome()


@action("rollback_to_savepoint")
def rollback_to_savepoint(ctx: Context, session: Session) -> Outcome:
    savepoints = ctx.client.savepoints
    while savepoints and not savepoints[-1].is_active:
        savepoints.pop()
    if not savepoints:
        return Outcome(note="no savepoint open")
    savepoints.pop().rollback()
    return Outcome()


_UNIMPLEMENTED = [name for name, kind in STEP_KINDS.items()
                  if not kind.frame and not kind.composite and not kind.fault and name not in ACTIONS]
if _UNIMPLEMENTED:  # a declared step without an implementation is a programming error: fail at import
    raise ImportError(f"declared step kind(s) without an implementation in {__name__}: {_UNIMPLEMENTED}")
