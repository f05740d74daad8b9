"""misplaced_write and lost_write: committed writes against the superuser's read-back.

The committed writes are derived from the steps alone: a step's writes are
pending until its client commits; a rollback, a failed step, a rollback to a
savepoint (for writes after it) or the end of the request discards them.
"""

from __future__ import annotations

from typing import Iterable

from harness.checks.faults import check_indeterminate, is_fault_error
from harness.checks.findings import Finding
from harness.checks.history import History, StepRecord, Write
from harness.checks.steps import Effect, step_kind


class WriteLedger:
    """Follows the steps one at a time: which writes were committed, which attempted.

    Holds only pending writes per client plus the writes themselves, so a long
    history can be fed from disk without keeping its steps.
    """

    def __init__(self, *, faults: bool = False) -> None:
        self.pending: dict[int, list[tuple[Write, StepRecord]]] = {}
        self.marks: dict[int, list[int]] = {}
        self.committed: list[tuple[Write, StepRecord]] = []
        self.committed_at: dict[tuple[str, str, int], int] = {}  # the step whose commit was acknowledged
        self.attempted: dict[str, tuple[Write, StepRecord]] = {}
        # Pending when the request ended: a layer may commit on exit (a session_scope
        # helper), so such writes may or may not be there; lost_write ignores their rows.
        self.uncertain: set[tuple[str, str, int]] = set()
        # Commits that raised under a fault with writes pending: (step seq, writes, tenant); indeterminate.
        self.indeterminate: list[tuple[int, int, str]] = []
        self.faults = faults  # the history injects faults: a commit that broke is indeterminate

    @classmethod
    def of(cls, steps: Iterable[StepRecord]) -> "WriteLedger":
        """A ledger fed every step of a history."""
        ledger = cls()
        for step in steps:
            ledger.feed(step)
        return ledger

    def feed(self, step: StepRecord) -> None:
        mine = self.pending.setdefault(step.client, [])
        my_marks = self.marks.setdefault(step.client, [])
        for write in step.writes:
            if write.label:
                self.attempted[write.label] = (write, step)
        if step.error is None and step.step == "end_request":
            self.uncertain.update((w.owner, w.table, w.id) for w, _ in mine)
        effect = Effect(step.effect) if step.effect else step_kind(step.step).effect
        if (step.error is not None and mine and self.faults and is_fault_error(step.error)
                and (effect is Effect.COMMIT or step.step == "end_request")):  # a commit (or one on exit) broke
            self.uncertain.update((w.owner, w.table, w.id) for w, _ in mine)
            self.indeterminate.append((step.seq, len(mine), step.tenant))
        if step.error is not None or effect is Effect.DISCARD:
            mine.clear()
            my_marks.clear()
            return
        mine.extend((w, step) for w in step.writes)
        if effect is Effect.MARK:
            my_marks.append(len(mine))
        elif effect is Effect.TO_MARK and my_marks:
            del mine[my_marks.pop():]
        elif effect is Effect.COMMIT:
            self.committed.extend(mine)
            self.committed_at.update(((w.owner, w.table, w.id), step.seq) for w, _ in mine)
            mine.clear()
            my_marks.clear()


def check_writes(history: History, ledger: WriteLedger | None = None) -> list[Finding]:
    """Compare committed writes with the read-back; ``ledger`` when the steps were fed already."""
    if history.final_state is None:
        return []
    if ledger is None:
        ledger = WriteLedger(faults=bool(history.faults))
        for step in history.steps:
            ledger.feed(step)
    gating = set(history.gating_styles)
    committed = ledger.committed
    # The expected end state of each (table, id) in its owner's schema.
    expected: dict[tuple[str, str, int], tuple[str | None, StepRecord]] = {}
    labels: dict[str, tuple[Write, StepRecord]] = {}
    for write, step in committed:
        key = (write.owner, write.table, write.id)
        expected[key] = (None if write.op == "delete" else write.label, step)
        if write.label:
            labels[write.label] = (write, step)
    attempted_labels = ledger.attempted

    findings: list[Finding] = check_indeterminate(history, ledger.indeterminate)
    for schema, tables in history.final_state.items():
        for table, rows in tables.items():
            present = {row[0]: row for row in rows}
            for row_id, owner, label in rows:
                if owner != schema:
                    write, step = labels.get(label) or attempted_labels.get(label) or (None, None)
                    findings.append(Finding(
                        "misplaced_write",
                        f"{table} #{row_id} written for tenant {owner!r}"
                        f"{f' at step {step.seq}' if step else ''} is in schema {schema!r}.",
                        (step.seq,) if step else (), owner, step is None or step.style in gating))
                elif label in attempted_labels and attempted_labels[label][0].owner != schema:
                    write, step = attempted_labels[label]
                    findings.append(Finding(
                        "misplaced_write",
                        f"an update made for tenant {write.owner!r} at step {step.seq} changed "
                        f"{table} #{row_id} of schema {schema!r}.",
                        (step.seq,), write.owner, step.style in gating))
            if schema not in history.tenants:
                continue
            for (owner, w_table, row_id), (label, step) in expected.items():
                if owner != schema or w_table != table or (owner, w_table, row_id) in ledger.uncertain:
                    continue
                row = present.get(row_id)
                if label is None and row is not None:
                    problem = "is still there although its delete was committed"
                elif label is not None and row is None:
                    problem = "is missing although it was committed"
                elif label is not None and row is not None and row[2] != label:
                    problem = f"holds {row[2]!r} instead of the committed {label!r}"
                else:
                    continue
                at = ledger.committed_at.get((owner, w_table, row_id), step.seq)
                findings.append(Finding(
                    "lost_write",
                    f"{table} #{row_id} of tenant {owner!r} {problem} (step {step.seq}"
                    f"{f', commit acknowledged at step {at}' if at != step.seq else ''}).",
                    tuple(dict.fromkeys((step.seq, at))), owner, step.style in gating))
            seeded = history.seed_ids.get(table, ())
            deleted = {row_id for (owner, t, row_id), (label, _) in expected.items()
                       if owner == schema and t == table and label is None}
            for row_id in seeded:
                if row_id not in present and row_id not in deleted:
                    findings.append(Finding(
                        "misplaced_write",
                        f"seeded {table} #{row_id} of schema {schema!r} is gone, although tenant "
                        f"{schema!r} never deleted it: a delete for another tenant landed here.",
                        (), schema))
    return findings
