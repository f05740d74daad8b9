"""Step kinds: every step a program can take, declared once with the properties others derive from.

A declaration says what a step *is*; its implementation (what it runs on a
session) lives in :mod:`harness.workload.actions`, registered under the same
name. From these declarations:

- the runner knows when to read the backend pid (``pid``);
- the generator and the hammer know which steps they may draw (``generated``,
  ``hammer``, ``layouts``);
- the checks know which steps read a whole table (``reads_all``) and how a step
  changes a client's pending writes (``effect``).

Adding a step kind: one :class:`StepKind` here, one implementation there.
"""

from __future__ import annotations

import dataclasses
import enum


class Style(enum.StrEnum):
    """How a step reaches the database: what ``raw_sql`` a strategy declares decides which styles gate."""

    ORM = "orm"
    RAW_UNQUALIFIED = "raw_unqualified"
    RAW_QUALIFIED = "raw_qualified"
    CONTROL = "control"
    ACTION = "action"  # the team's own code path: always gating, whatever SQL it runs
    FAULT = "fault"  # something broken under the layer (harness.workload.faults): reads and writes nothing


class Effect(enum.StrEnum):
    """What a successful step does to the writes its client has not committed yet."""

    KEEP = "keep"  # pending writes stay pending (and the step's own writes join them)
    COMMIT = "commit"  # pending writes become durable
    DISCARD = "discard"  # pending writes are gone (rollback, end of request, new request)
    MARK = "mark"  # a savepoint: writes after it can be undone alone
    TO_MARK = "to_mark"  # back to the last savepoint: writes after it are gone


class PidTiming(enum.StrEnum):
    """When the runner reads the step's backend pid, search_path and role."""

    AFTER = "after"  # after the step, in the transaction it ran in
    BEFORE = "before"  # before it: the step ends the transaction (commit, rollback)
    NONE = "none"  # not at all (the transaction may be aborted, or there is none)


LAYOUTS = ("schema", "rls")


@dataclasses.dataclass(frozen=True)
class StepKind:
    name: str
    style: Style = Style.ORM
    reads_all: bool = False  # reads a whole table in which every tenant has seeded rows
    writes: bool = False  # records a Write (a row the step inserted, updated or deleted)
    raw: bool = False  # plain text() SQL: schema_translate_map does not apply
    effect: Effect = Effect.KEEP
    pid: PidTiming = PidTiming.AFTER
    layouts: tuple[str, ...] = LAYOUTS  # layouts whose programs may use it
    generated: bool = True  # drawn by generated programs
    hammer: bool = True  # drawn by the hammer (a web worker's request)
    frame: bool = False  # opens or ends a request; never drawn
    composite: bool = False  # runs requests of its own, recorded as their steps (not as itself)
    #: a fault, and what it needs from the stack: "server" (any route), "pgbouncer" (a pooled route),
    #: "restart" (a PgBouncer the harness can restart), "proxy" (the fault proxy before PostgreSQL); drawn
    #: only by the faults scenario, where the stack has what it needs
    fault: str = ""


_ORM, _UNQ, _QUAL, _CTL = Style.ORM, Style.RAW_UNQUALIFIED, Style.RAW_QUALIFIED, Style.CONTROL

STEP_KINDS: dict[str, StepKind] = {kind.name: kind for kind in (
    StepKind("orm_select_all", reads_all=True),
    StepKind("orm_select_pk"),
    StepKind("orm_insert", writes=True),
    StepKind("orm_update", writes=True),
    StepKind("orm_delete", writes=True),
    StepKind("job_read", reads_all=True),
    StepKind("task_insert", writes=True),
    StepKind("task_read", reads_all=True),
    StepKind("raw_select_unqualified", _UNQ, reads_all=True, raw=True),
    StepKind("raw_insert_unqualified", _UNQ, writes=True, raw=True),
    StepKind("raw_select_qualified", _QUAL, reads_all=True, raw=True, layouts=("schema",)),
    StepKind("raw_insert_qualified", _QUAL, writes=True, raw=True, layouts=("schema",)),
    StepKind("commit", _CTL, effect=Effect.COMMIT, pid=PidTiming.BEFORE),
    StepKind("rollback", _CTL, effect=Effect.DISCARD, pid=PidTiming.BEFORE),
    StepKind("fail_and_rollback", _CTL, effect=Effect.DISCARD, pid=PidTiming.BEFORE),
    StepKind("savepoint", _CTL, effect=Effect.MARK),
    StepKind("rollback_to_savepoint", _CTL, effect=Effect.TO_MARK, pid=PidTiming.NONE),
    # A background job inside a request: one session per tenant over every tenant; too heavy for
    # a web worker's request, so the hammer does not draw it.
    StepKind("scheduler_pass", _CTL, hammer=False, composite=True),
    # Faults (harness.workload.faults; their legend: harness.checks.faults.FAULT_LEGEND).
    *(StepKind(name, Style.FAULT, pid=PidTiming.NONE, generated=False, hammer=False, fault=needs)
      for name, needs in (("fault_terminate_backend", "server"), ("fault_idle_timeout", "server"),
                          ("fault_statement_timeout", "server"), ("fault_pgbouncer_reconnect", "pgbouncer"),
                          ("fault_pgbouncer_kill", "pgbouncer"), ("fault_pgbouncer_pause", "pgbouncer"),
                          ("fault_pgbouncer_reload", "pgbouncer"), ("fault_server_lifetime", "pgbouncer"),
                          ("fault_pgbouncer_restart", "restart"), ("fault_proxy_cut", "proxy"),
                          ("fault_proxy_delay", "proxy"))),
    StepKind("open", _CTL, effect=Effect.DISCARD, frame=True, generated=False, hammer=False),
    StepKind("end_request", _CTL, effect=Effect.DISCARD, pid=PidTiming.NONE, frame=True, generated=False,
             hammer=False),
)}

#: Steps a request may list between its open and its end_request.
REQUEST_STEPS = tuple(name for name, kind in STEP_KINDS.items() if not kind.frame)
#: Every fault step, in declaration order.
FAULT_STEPS = tuple(name for name, kind in STEP_KINDS.items() if kind.fault)


# The team's steps, named after its tables and code paths (``team_read:invoice``,
# ``action:monthly_report``): declared by their prefix, drawn only where the run
# has a team (see harness.team.steps), in the schema layout.
TEAM_STEP_KINDS: dict[str, StepKind] = {kind.name: kind for kind in (
    StepKind("team_read:", reads_all=True, layouts=("schema",)),  # every tenant's copy holds canaries
    StepKind("team_insert:", layouts=("schema",)),
    StepKind("team_update:", layouts=("schema",)),
    StepKind("team_delete:", layouts=("schema",)),
    StepKind("action:", Style.ACTION, layouts=("schema",)),
)}


def team_step_kind(name: str) -> StepKind | None:
    """The declaration of a team step (by its prefix), or None for any other name."""
    prefix, colon, rest = name.partition(":")
    kind = TEAM_STEP_KINDS.get(prefix + colon) if colon and rest else None
    return dataclasses.replace(kind, name=name) if kind is not None else None


def is_request_step(name: str) -> bool:
    """A step a request may list between its open and its end_request."""
    return name in REQUEST_STEPS or team_step_kind(name) is not None


def step_kind(name: str) -> StepKind:
    """The declaration of a step; a name no declaration knows (a history from elsewhere) reads as a plain step."""
    kind = STEP_KINDS.get(name)
    if kind is None:
        kind = team_step_kind(name)
    return kind if kind is not None else StepKind(name)


def drawable(*, hammer: bool = False, layout: str | None = None, team: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The steps generated programs (or the hammer) draw from, in declaration order, then the
    team's steps (``team``: their names) that the layout allows. Faults are drawn apart (the faults scenario)."""
    kinds = [*STEP_KINDS.values(), *(step_kind(name) for name in team)]
    return tuple(kind.name for kind in kinds
                 if (kind.hammer if hammer else kind.generated) and (layout is None or layout in kind.layouts))


def is_fault(name: str) -> bool:
    return bool(step_kind(name).fault)
