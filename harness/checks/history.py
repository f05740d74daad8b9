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
class StateSet:
    """Session state a statement of a step set on its server connection (``SET``, ``RESET``,
    ``set_config(..., false)``, ``DISCARD``), read right after it in the same transaction: a later step
    that inherits the state on that backend is traced to this step (:mod:`harness.checks.leftovers`)."""

    pid: int | None  # the backend the statement ran on (None: it could not be read)
    search_path: str  # the search_path right after it
    statement: str  # the statement, shortened


@dataclasses.dataclass(frozen=True)
class AppMessage:
    """A warning or log record the app's code (or a library it calls, SQLAlchemy's included) emitted while
    a step ran: the cell's evidence, counted once per distinct message."""

    kind: str  # "warning" | "log"
    source: str  # the warning's category, or the logger's name
    level: str  # the log record's level name; WARNING for a warning
    text: str  # the message's first line (shortened)
    where: str  # file:line that emitted it
    count: int  # how many times it was emitted in the cell
    first_step: int  # the seq of the step that emitted it first


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
    #: session state its statements set, on which backend (empty for almost every step)
    state_set: tuple[StateSet, ...] = ()


#: The kinds of session state the pool probe compares with a pristine connection: kind -> (label, what it is,
#: what clears it). Every pool_pollution leftover starts with or contains its label; the report shows this legend.
STATE_KINDS: dict[str, tuple[str, str, str]] = {
    "search_path": ("search_path", "the schema search path, if not the server's default",
                    "RESET / DISCARD ALL; not ROLLBACK after a committed SET"),
    "session_setting": ("session setting", "any setting whose source is the session (pg_settings source = "
                        "'session': statement_timeout, default_transaction_read_only, ...) and whose value differs "
                        "from a fresh connection's", "RESET ALL / DISCARD ALL"),
    "custom_setting": ("custom setting", "a placeholder setting such as app.tenant_id (hidden from pg_settings): "
                       "names come from the strategy's settings, SET/set_config in the run's statements, and "
                       "current_setting() in row-level security policies and functions",
                       "RESET ALL / DISCARD ALL (the name then stays, empty)"),
    "role": ("role", "SET ROLE: the current user differs from the session user", "RESET ROLE / RESET ALL"),
    "session_authorization": ("session authorization", "SET SESSION AUTHORIZATION (superuser logins only): the "
                              "session user differs from the login", "RESET SESSION AUTHORIZATION / DISCARD ALL; "
                              "not RESET ALL"),
    "prepared_statement": ("prepared statement", "a SQL-level PREPARE (pg_prepared_statements.from_sql); the "
                           "driver's protocol-level statements (psycopg's _pg3_*) are its own cache and not counted",
                           "DEALLOCATE ALL / DISCARD ALL"),
    "temp_table": ("temp table", "a temporary table of the session", "DROP / DISCARD ALL (or ON COMMIT DROP)"),
    "advisory_lock": ("advisory lock", "a session-level advisory lock held (pg_locks)",
                      "pg_advisory_unlock_all() / DISCARD ALL; not ROLLBACK"),
    "listen": ("LISTEN", "a LISTEN channel (pg_listening_channels())", "UNLISTEN * / DISCARD ALL"),
    "cursor": ("WITH HOLD cursor", "a cursor kept open past its transaction (pg_cursors)",
               "CLOSE ALL / DISCARD ALL"),
    "open_transaction": ("open transaction", "the connection was returned inside a transaction", "ROLLBACK"),
}


def _named(count: int, label: str, names: tuple[str, ...]) -> str:
    return f"{count} {label}(s)" + (f": {', '.join(names)}" if names else "")


@dataclasses.dataclass(frozen=True)
class ConnectionState:
    """What the pool probe read on one server connection, as differences from a pristine connection."""

    pid: int
    search_path: str
    current_user: str
    session_user: str
    settings: tuple[tuple[str, str], ...] = ()  # custom (placeholder) settings with a value
    temp_tables: int = 0
    advisory_locks: int = 0
    listen_channels: int = 0
    open_transaction: bool = False
    login_user: str = ""  # who logged in ("" : not read; then the session user is not compared)
    #: settings whose source is the session and whose value differs from a pristine connection's:
    #: (name, value, the pristine connection's value)
    session_settings: tuple[tuple[str, str, str], ...] = ()
    prepared_statements: tuple[str, ...] = ()  # SQL-level PREPAREd names
    cursors: tuple[str, ...] = ()  # open (WITH HOLD) cursors
    temp_table_names: tuple[str, ...] = ()
    advisory_lock_keys: tuple[str, ...] = ()
    channel_names: tuple[str, ...] = ()

    def differences(self) -> list[tuple[str, str]]:
        """(kind, description) of every piece of state a pristine connection would not have."""
        found = []
        if self.search_path != DEFAULT_SEARCH_PATH:
            found.append(("search_path", f"search_path = {self.search_path}"))
        found.extend(("session_setting", f"session setting {name} = {value!r} (a fresh connection has "
                                         f"{pristine!r})") for name, value, pristine in self.session_settings)
        found.extend(("custom_setting", f"custom setting {name} = {value!r}") for name, value in self.settings if value)
        if self.login_user and self.session_user != self.login_user:
            found.append(("session_authorization", f"session authorization {self.session_user} "
                                                   f"(logged in as {self.login_user})"))
        if self.current_user != self.session_user:
            found.append(("role", f"role {self.current_user} (logged in as {self.session_user})"))
        if self.open_transaction:
            found.append(("open_transaction", "an open transaction"))
        if self.prepared_statements:
            found.append(("prepared_statement", _named(len(self.prepared_statements), "SQL prepared statement",
                                                       self.prepared_statements)))
        if self.temp_tables or self.temp_table_names:
            found.append(("temp_table", _named(self.temp_tables or len(self.temp_table_names), "temp table",
                                               self.temp_table_names)))
        if self.advisory_locks or self.advisory_lock_keys:
            found.append(("advisory_lock", _named(self.advisory_locks or len(self.advisory_lock_keys),
                                                  "advisory lock", self.advisory_lock_keys)))
        if self.listen_channels or self.channel_names:
            count = self.listen_channels or len(self.channel_names)
            found.append(("listen", f"LISTEN on {count} channel(s)"
                                    + (f": {', '.join(self.channel_names)}" if self.channel_names else "")))
        if self.cursors:
            found.append(("cursor", _named(len(self.cursors), "WITH HOLD cursor", self.cursors)))
        return found

    def leftovers_for(self, owner: str | None) -> list[str]:
        """What :meth:`leftovers` says, less the binding of ``owner`` on a pool only ``owner`` uses."""
        if owner is None:
            return self.leftovers()
        own = owner.replace('"', '""')
        kept = [(kind, text) for kind, text in self.differences()
                if not (kind == "search_path" and self.search_path.split(",")[0].strip() in (owner, f'"{own}"'))
                and not (kind == "custom_setting" and text.endswith(f"= {owner!r}"))]
        return [text for _, text in kept]

    def kinds(self) -> set[str]:
        return {kind for kind, _ in self.differences()}

    def leftovers(self) -> list[str]:
        return [text for _, text in self.differences()]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ConnectionState":
        """From ``dataclasses.asdict`` output: JSON lists back to (nested) tuples."""
        def tupled(value: Any) -> Any:
            return tuple(tupled(v) for v in value) if isinstance(value, list) else value
        return cls(**{k: tupled(v) for k, v in d.items()})


@dataclasses.dataclass(frozen=True)
class ProbeRecord:
    """One pool probe, taken after a request ended."""

    seq: int
    after_step: int
    target: str  # "<pooler kind>:<route>" (pgbouncer:session), "engine", or "engine of 'acme'" (one engine per tenant)
    states: tuple[ConnectionState, ...]
    server_pids: tuple[int, ...] = ()  # SHOW SERVERS remote_pid, for coverage of the probe
    error: str | None = None
    #: the one tenant whose sessions use the probed pool (an engine per tenant): its own binding left on its
    #: own pool (its search_path, a custom setting naming it) is no state carried to another tenant's request
    owner: str | None = None

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
            "effect": step.effect, "waited": None if step.waited is None else dataclasses.asdict(step.waited),
            "state_set": [{"pid": c.pid, "search_path": c.search_path, "statement": c.statement}
                          for c in step.state_set]}


def step_from_json(d: dict[str, Any]) -> StepRecord:
    """A StepRecord from ``dataclasses.asdict`` output (a history file's line)."""
    return StepRecord(**{**d, "rows": tuple(RowSeen(**r) for r in d["rows"]),
                         "writes": tuple(Write(**w) for w in d["writes"]),
                         "wrote": tuple(RowSeen(**r) for r in d.get("wrote", ())),
                         "error": ErrorSeen(**d["error"]) if d["error"] else None,
                         "waited": _wait_from_json(d.get("waited")),
                         "state_set": tuple(StateSet(**c) for c in d.get("state_set", ()))})


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
    #: per tenant, the connection pools its sessions' connections came from (the runner reads
    #: ``session.get_bind()``); empty when not recorded
    pools: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    #: the faults the cell could inject (the faults scenario); errors of a broken connection are then expected
    faults: tuple[str, ...] = ()
    #: the app's warnings and log records while steps ran, the first distinct ones with their counts
    messages: tuple[AppMessage, ...] = ()
    #: how many more were emitted, of messages past the ones kept
    messages_not_kept: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "History":
        step = step_from_json

        def probe(d: dict[str, Any]) -> ProbeRecord:
            return ProbeRecord(**{**d, "states": tuple(ConnectionState.from_json(s) for s in d["states"]),
                                  "server_pids": tuple(d["server_pids"])})

        final = data.get("final_state")
        return cls(strategy=data["strategy"], route=data["route"], tenants=tuple(data["tenants"]),
                   schemas=tuple(data["schemas"]), steps=[step(s) for s in data["steps"]],
                   probes=[probe(p) for p in data["probes"]],
                   final_state=None if final is None else {
                       s: {t: [tuple(r) for r in rows] for t, rows in tables.items()} for s, tables in final.items()},
                   seed_ids={k: tuple(v) for k, v in data.get("seed_ids", {}).items()},
                   gating_styles=tuple(data.get("gating_styles") or cls.gating_styles),
                   layout=data.get("layout", "schema"),
                   pools={k: tuple(v) for k, v in data.get("pools", {}).items()},
                   faults=tuple(data.get("faults", ())),
                   messages=tuple(AppMessage(**m) for m in data.get("messages", ())),
                   messages_not_kept=data.get("messages_not_kept", 0))
