"""What happened, step by step: the input of every check.

Plain dataclasses that serialise to JSON, so a history can be written to disk,
read back, and checked again; checks never talk to a database.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

DEFAULT_SEARCH_PATH = '"$user", public'


@dataclasses.dataclass(frozen=True)
class RowSeen:
    table: str
    id: int | str  # the key: an id of the harness's tables, the key columns' text of a team table
    owner: str


@dataclasses.dataclass(frozen=True)
class Write:
    """A write a step made and saw succeed (not yet committed)."""

    op: str  # insert | update | delete
    table: str
    id: int
    owner: str
    label: str = ""  # the name/state written, so a misplaced update is recognisable


@dataclasses.dataclass(frozen=True)
class ErrorSeen:
    sqlstate: str | None
    type: str
    message: str


@dataclasses.dataclass(frozen=True)
class Holder:
    """A backend a stuck step waited for, as ``pg_stat_activity`` showed it when the deadline passed."""

    pid: int
    state: str = ""  # idle, idle in transaction, active, ...
    query: str = ""  # its last statement (shortened)
    application_name: str = ""
    #: who last ran a step on that backend, as the runner recorded it (None: no step of the run did)
    client: int | None = None
    tenant: str | None = None
    step: int | None = None  # that step's seq


@dataclasses.dataclass(frozen=True)
class Wait:
    """What a step that outlived its deadline waited on, read from the server as superuser, and what
    the watchdog did about it."""

    deadline: float  # seconds
    pid: int | None = None  # the backend that waited; None: nothing on the server waited or ran for the step
    event: str = ""  # wait_event_type/wait_event, e.g. "Lock/advisory"
    lock: str = ""  # the lock it waited for, e.g. "advisory lock 1234 (ExclusiveLock)"
    query: str = ""  # the statement that waited (shortened)
    seconds: float = 0.0  # how long that statement had run when the watchdog looked
    holders: tuple[Holder, ...] = ()
    stopped: str = ""  # what the watchdog did: "canceled backend 4242", ...


@dataclasses.dataclass(frozen=True)
class StepRecord:
    seq: int
    client: int
    request: int
    tenant: str
    step: str
    style: str = "orm"  # orm | raw_unqualified | raw_qualified | control
    pid: int | None = None
    search_path: str | None = None
    user: str | None = None
    rows: tuple[RowSeen, ...] = ()
    writes: tuple[Write, ...] = ()
    error: ErrorSeen | None = None
    note: str = ""
    #: rows of the team's tables the step wrote, as the read observer saw them (owner: the table copy's schema)
    wrote: tuple[RowSeen, ...] = ()
    #: what the step did to pending writes when its kind cannot say (a team action that committed
    #: or rolled back), as an Effect value; None: the kind's own effect
    effect: str | None = None
    #: the step outlived the step deadline: what it waited on (its error is then the watchdog's cancel)
    waited: Wait | None = None


@dataclasses.dataclass(frozen=True)
class ConnectionState:
    """What the pool probe read on one server connection."""

    pid: int
    search_path: str
    current_user: str
    session_user: str
    settings: tuple[tuple[str, str], ...] = ()
    temp_tables: int = 0
    advisory_locks: int = 0
    listen_channels: int = 0
    open_transaction: bool = False

    def leftovers(self) -> list[str]:
        found = []
        if self.search_path != DEFAULT_SEARCH_PATH:
            found.append(f"search_path = {self.search_path}")
        found.extend(f"{name} = {value!r}" for name, value in self.settings if value)
        if self.current_user != self.session_user:
            found.append(f"role {self.current_user} (logged in as {self.session_user})")
        if self.open_transaction:
            found.append("an open transaction")
        if self.temp_tables:
            found.append(f"{self.temp_tables} temp table(s)")
        if self.advisory_locks:
            found.append(f"{self.advisory_locks} advisory lock(s)")
        if self.listen_channels:
            found.append(f"LISTEN on {self.listen_channels} channel(s)")
        return found


@dataclasses.dataclass(frozen=True)
class ProbeRecord:
    """One pool probe, taken after a request ended."""

    seq: int
    after_step: int
    target: str  # "pgbouncer:<route>" or "engine"
    states: tuple[ConnectionState, ...]
    server_pids: tuple[int, ...] = ()  # SHOW SERVERS remote_pid, for coverage of the probe
    error: str | None = None

    @property
    def uncovered(self) -> tuple[int, ...]:
        probed = {s.pid for s in self.states}
        return tuple(p for p in self.server_pids if p not in probed)


def step_to_json(step: StepRecord) -> dict[str, Any]:
    """The same dict as ``dataclasses.asdict(step)``, built directly (asdict deep-copies: slow on a hot path)."""
    error = step.error
    return {"seq": step.seq, "client": step.client, "request": step.request, "tenant": step.tenant,
            "step": step.step, "style": step.style, "pid": step.pid, "search_path": step.search_path,
            "user": step.user,
            "rows": [{"table": r.table, "id": r.id, "owner": r.owner} for r in step.rows],
            "writes": [{"op": w.op, "table": w.table, "id": w.id, "owner": w.owner, "label": w.label}
                       for w in step.writes],
            "error": None if error is None else {"sqlstate": error.sqlstate, "type": error.type,
                                                  "message": error.message},
            "note": step.note, "wrote": [{"table": r.table, "id": r.id, "owner": r.owner} for r in step.wrote],
            "effect": step.effect, "waited": None if step.waited is None else dataclasses.asdict(step.waited)}


def step_from_json(d: dict[str, Any]) -> StepRecord:
    """A StepRecord from ``dataclasses.asdict`` output (a history file's line)."""
    return StepRecord(**{**d, "rows": tuple(RowSeen(**r) for r in d["rows"]),
                         "writes": tuple(Write(**w) for w in d["writes"]),
                         "wrote": tuple(RowSeen(**r) for r in d.get("wrote", ())),
                         "error": ErrorSeen(**d["error"]) if d["error"] else None,
                         "waited": _wait_from_json(d.get("waited"))})


def _wait_from_json(d: dict[str, Any] | None) -> Wait | None:
    if not d:
        return None
    return Wait(**{**d, "holders": tuple(Holder(**h) for h in d.get("holders", ()))})


class HistoryFileSteps:
    """The steps of a JSON-lines history file, read afresh each time they are iterated (never held)."""

    def __init__(self, path: Path):
        self.path = path

    def __iter__(self) -> Iterator[StepRecord]:
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                yield step_from_json(json.loads(line))


Snapshot = dict[str, dict[str, list[tuple[int, str, str]]]]


@dataclasses.dataclass
class History:
    """Everything a run recorded, plus the superuser's read-back of every schema."""

    strategy: str
    route: str
    tenants: tuple[str, ...]
    schemas: tuple[str, ...]
    #: a list while recording; any re-iterable of steps for a check (a history file's steps)
    steps: list[StepRecord] = dataclasses.field(default_factory=list)
    probes: list[ProbeRecord] = dataclasses.field(default_factory=list)
    final_state: Snapshot | None = None
    seed_ids: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    gating_styles: tuple[str, ...] = ("orm", "raw_unqualified", "control")  # the interface's default raw_sql
    layout: str = "schema"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "History":
        step = step_from_json

        def probe(d: dict[str, Any]) -> ProbeRecord:
            return ProbeRecord(**{**d, "states": tuple(ConnectionState(**{**s, "settings": tuple(
                tuple(x) for x in s["settings"])}) for s in d["states"]), "server_pids": tuple(d["server_pids"])})

        final = data.get("final_state")
        return cls(strategy=data["strategy"], route=data["route"], tenants=tuple(data["tenants"]),
                   schemas=tuple(data["schemas"]), steps=[step(s) for s in data["steps"]],
                   probes=[probe(p) for p in data["probes"]],
                   final_state=None if final is None else {
                       s: {t: [tuple(r) for r in rows] for t, rows in tables.items()} for s, tables in final.items()},
                   seed_ids={k: tuple(v) for k, v in data.get("seed_ids", {}).items()},
                   gating_styles=tuple(data.get("gating_styles") or cls.gating_styles),
                   layout=data.get("layout", "schema"))
