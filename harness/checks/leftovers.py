"""Leftover state: name the step whose session state a later step inherited.

A layer (or the team's code) that leaves ``SET search_path`` on a pooled
connection does no harm in the step that sets it. The harm shows later, in a
request that gets the same server connection: its raw query reads another
tenant's rows, its raw insert lands in another tenant's schema, and a third
request then reads that row through its own, correct, binding. The checks that
see the misread name the step that misread. This pass adds the step that left
the state, from the runner's record of every statement that set session state
(:attr:`~harness.checks.history.StepRecord.state_set`: the backend it ran on and
the search_path right after it).

A generated program shrinks to the steps that cause its failure, so its
counterexample shows that step; the hammer cannot shrink, so its findings must
say it.

The rule, for a misread at step M on backend P: the culprit is the *last* step
before M that set state on P, and only when the search_path it left there
explains the misread (it starts with the schema M read foreign rows from; with
a schema other than M's tenant's for a misplaced or lost write or a lost
context). A later step that set P's search_path again (the layer binding its
own tenant) clears the earlier one. A foreign row M read that the harness wrote
(its id traces to the step W that wrote it) is traced through W: the culprit is
the last step before W that set state on W's backend, leaving a search_path
that does not start with W's tenant.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from harness.checks.findings import Finding
from harness.checks.history import History, StateSet, StepRecord

#: the kinds of finding a step's inherited search_path can cause
INHERITED_KINDS = ("cross_tenant_read", "misplaced_write", "lost_write", "context_lost")


def path_head(search_path: str) -> str:
    """The first schema of a search_path, unquoted (``"Acme", public`` -> ``Acme``)."""
    first = search_path.split(",")[0].strip()
    if len(first) >= 2 and first[0] == first[-1] == '"':
        first = first[1:-1].replace('""', '"')
    return first


def who(step: StepRecord) -> str:
    """A step as a finding names it: its seq, client, request, tenant and step name."""
    return f"step {step.seq} (client {step.client}'s request {step.request} for {step.tenant!r}, {step.step})"


@dataclasses.dataclass(frozen=True)
class Inherited:
    """Why a misread happened: ``setter`` left ``state`` on the backend; ``writer`` (when the misread step
    read a row the harness wrote) wrote that row on it."""

    setter: StepRecord
    state: StateSet
    writer: StepRecord | None = None

    def sentence(self, misread: StepRecord) -> str:
        left = (f"{who(self.setter)} left search_path = {self.state.search_path} on backend {self.state.pid} "
                f"({self.state.statement})")
        if self.writer is None:
            return f"It inherited that state: {left}, and step {misread.seq} ran on that backend after it."
        return (f"The row was misplaced before: {who(self.writer)} wrote it on backend {self.state.pid} after "
                f"{left}.")


class SetterIndex:
    """Every step that set session state, by backend: a handful in a whole run, so held in memory."""

    def __init__(self) -> None:
        self.by_pid: dict[int, list[tuple[int, StepRecord, StateSet]]] = {}

    def feed(self, step: StepRecord) -> None:
        for state in step.state_set:
            if state.pid is not None:
                self.by_pid.setdefault(state.pid, []).append((step.seq, step, state))

    def __bool__(self) -> bool:
        return bool(self.by_pid)

    def last_before(self, pid: int | None, seq: float) -> tuple[StepRecord, StateSet] | None:
        """The last state set on ``pid`` by a step before ``seq`` (the last statement of that step)."""
        if pid is None:
            return None
        earlier = [(s, step, state) for s, step, state in self.by_pid.get(pid, ()) if s < seq]
        if not earlier:
            return None
        best = max(s for s, _, _ in earlier)
        _, step, state = [entry for entry in earlier if entry[0] == best][-1]
        return step, state


def _inherited(setters: SetterIndex, step: StepRecord, explains: Callable[[str], bool],
               writer: StepRecord | None = None) -> Inherited | None:
    found = setters.last_before(step.pid, step.seq)
    if found is None or not explains(path_head(found[1].search_path)):
        return None
    return Inherited(found[0], found[1], writer)


def _cause(setters: SetterIndex, kind: str, step: StepRecord,
           writers: dict[tuple[str, Any, str], StepRecord]) -> Inherited | None:
    """What ``step``'s misread of ``kind`` inherited, if the history shows it."""
    if kind == "cross_tenant_read":
        foreign = [row for row in step.rows if row.owner != step.tenant]
        direct = _inherited(setters, step, lambda head: head in {row.owner for row in foreign})
        if direct is not None:
            return direct
        for row in foreign:  # a row the harness wrote into this tenant's schema, for another tenant
            writer = writers.get((row.table, row.id, row.owner))
            if writer is not None:
                via = _inherited(setters, writer, lambda head, owner=writer.tenant: head != owner, writer)
                if via is not None:
                    return via
        return None
    return _inherited(setters, step, lambda head: head != step.tenant)


def blame_leftovers(history: History, findings: list[Finding]) -> tuple[list[Finding], dict[int, StepRecord]]:
    """``findings`` with each misread that inherited a step's leftover search_path naming that step (in its
    explanation, its steps and :attr:`Finding.left_by`), and the steps they now name, by seq (for the
    evidence of a streamed history, which keeps only flagged steps). Reads the steps at most twice."""
    targets = {seq for f in findings if f.kind in INHERITED_KINDS for seq in f.steps}
    if not targets:
        return findings, {}
    setters = SetterIndex()
    misread: dict[int, StepRecord] = {}
    for step in history.steps:
        setters.feed(step)
        if step.seq in targets:
            misread[step.seq] = step
    if not setters:
        return findings, {}
    wanted = {(row.table, row.id, row.owner) for step in misread.values() for row in step.rows
              if row.owner != step.tenant}
    writers: dict[tuple[str, Any, str], StepRecord] = {}
    if wanted:
        for step in history.steps:
            for write in step.writes:
                key = (write.table, write.id, write.owner)
                if key in wanted and write.op == "insert":
                    writers.setdefault(key, step)
    named: dict[int, StepRecord] = {}
    out = []
    for finding in findings:
        cause = None
        if finding.kind in INHERITED_KINDS:
            for seq in finding.steps:
                step = misread.get(seq)
                cause = step and _cause(setters, finding.kind, step, writers)
                if cause:
                    break
        if not cause:
            out.append(finding)
            continue
        added = tuple(s.seq for s in (cause.writer, cause.setter) if s is not None and s.seq not in finding.steps)
        named.update({s.seq: s for s in (step, cause.writer, cause.setter) if s is not None})
        out.append(dataclasses.replace(finding, explanation=f"{finding.explanation} {cause.sentence(step)}",
                                       steps=finding.steps + added, left_by=cause.setter.seq))
    return out, named
