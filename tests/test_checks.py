"""The pure checks on hand-written histories: no server, no database.

Each history is built step by step with the small builder below, so a test
reads like the run it stands for.
"""

from __future__ import annotations

import json

import pytest

from harness.checks import check_history
from harness.checks.coverage import Coverage, coverage
from harness.checks.findings import Finding
from harness.checks.isolation import (check_context_lost, check_cross_tenant_reads, check_errors,
                                      check_unsafe_identifiers)
from harness.checks.pool import check_pool_pollution
from harness.checks.verdict import Verdict, verdict
from harness.checks.writes import WriteLedger, check_writes
from harness.checks.history import (DEFAULT_SEARCH_PATH, ConnectionState, ErrorSeen, History, ProbeRecord, RowSeen,
                                      StepRecord, Write)

TENANTS = ("acme", "Acme", "umbrella corp", "globex")
SEED_IDS = (1, 2, 3)


# -- builder -------------------------------------------------------------------------------------
class Run:
    """Builds a History one step at a time; every ``step`` returns the seq it recorded."""

    def __init__(self, tenants: tuple[str, ...] = TENANTS, *, seeded: bool = False):
        self.history = History(strategy="demo", route="transaction", tenants=tenants,
                               schemas=(*tenants, "public"))
        if seeded:
            self.history.seed_ids = {"product": SEED_IDS}
            self.history.final_state = {schema: {"product": [(i, schema, f"{schema} product {i}") for i in SEED_IDS]}
                                        for schema in (*tenants, "public")}
        self._seq = 0

    @property
    def final(self) -> dict:
        return self.history.final_state

    def step(self, tenant: str, step: str = "orm_select_pk", *, client: int = 0, request: int = 0,
             style: str = "orm", pid: int | None = None, search_path: str | None = None,
             rows: tuple[RowSeen, ...] = (), writes: tuple[Write, ...] = (),
             error: ErrorSeen | None = None) -> int:
        self._seq += 1
        self.history.steps.append(StepRecord(seq=self._seq, client=client, request=request, tenant=tenant, step=step,
                                             style=style, pid=pid, search_path=search_path, user="app",
                                             rows=rows, writes=writes, error=error))
        return self._seq

    def control(self, tenant: str, step: str, **kwargs) -> int:
        return self.step(tenant, step, style="control", **kwargs)

    def probe(self, after_step: int, *states: ConnectionState, error: str | None = None) -> None:
        self._seq += 1
        self.history.probes.append(ProbeRecord(seq=self._seq, after_step=after_step, target="pgbouncer:transaction",
                                               states=states, server_pids=tuple(s.pid for s in states), error=error))

    # final state edits
    def put(self, schema: str, row_id: int, owner: str, label: str, table: str = "product") -> None:
        rows = [r for r in self.final[schema][table] if r[0] != row_id]
        self.final[schema][table] = sorted([*rows, (row_id, owner, label)])

    def remove(self, schema: str, row_id: int, table: str = "product") -> None:
        self.final[schema][table] = [r for r in self.final[schema][table] if r[0] != row_id]


def rows_of(owner: str, *ids: int, table: str = "product") -> tuple[RowSeen, ...]:
    return tuple(RowSeen(table, i, owner) for i in ids)


def insert(owner: str, row_id: int, table: str = "product") -> Write:
    return Write("insert", table, row_id, owner, f"ins:{row_id}")


def update(owner: str, row_id: int, label: str) -> Write:
    return Write("update", "product", row_id, owner, label)


def delete(owner: str, row_id: int) -> Write:
    return Write("delete", "product", row_id, owner)


def error(sqlstate: str | None, message: str = "boom", type_: str = "ProgrammingError") -> ErrorSeen:
    return ErrorSeen(sqlstate, type_, message)


def clean_state(pid: int = 101, **changes) -> ConnectionState:
    values = dict(pid=pid, search_path=DEFAULT_SEARCH_PATH, current_user="app", session_user="app")
    values.update(changes)
    return ConnectionState(**values)


def summary(findings: list[Finding]) -> list[tuple[str, tuple[int, ...]]]:
    """(kind, steps) of every finding, sorted, so tests compare exact outcomes."""
    return sorted((f.kind, f.steps) for f in findings)


def seqs(pairs) -> list[int]:
    return [step.seq for _, step in pairs]


def cov(steps: int = 4, shared: int = 1) -> Coverage:
    return Coverage(steps=steps, backends=2, shared_backends=shared, tenants=2, probed_connections=0)


# -- cross_tenant_read ---------------------------------------------------------------------------
def test_a_row_of_another_tenant_is_a_cross_tenant_read_at_that_step():
    run = Run()
    run.step("acme", rows=rows_of("acme", 1, 2), pid=7)
    leak = run.step("acme", rows=rows_of("acme", 1) + rows_of("Acme", 2), pid=7)
    run.step("Acme", rows=rows_of("Acme", 1, 2), pid=7)

    findings = check_cross_tenant_reads(run.history)

    assert summary(findings) == [("cross_tenant_read", (leak,))]
    (finding,) = findings
    assert finding.tenant == "acme"
    assert "'acme'" in finding.explanation and "'Acme'" in finding.explanation
    assert "product #2" in finding.explanation
    assert "decoy" not in finding.explanation
    assert finding.gating is True


def test_decoy_rows_from_public_are_named_as_a_fallback_to_public():
    run = Run()
    leak = run.step("globex", rows=rows_of("public", 1, 2, 3, 4))

    (finding,) = check_cross_tenant_reads(run.history)

    assert finding.kind == "cross_tenant_read" and finding.steps == (leak,)
    assert "decoy rows from public" in finding.explanation
    assert "4 row(s)" in finding.explanation and "1 more" in finding.explanation


def test_a_clean_history_has_no_finding_at_all():
    run = Run(seeded=True)
    for client, tenant in enumerate(TENANTS):
        run.control(tenant, "open", client=client)
        run.step(tenant, rows=rows_of(tenant, 1, 2, 3), client=client, pid=50 + client % 2,
                 search_path=f'"{tenant}", public')
        run.step(tenant, "orm_insert", writes=(insert(tenant, 10 + client),), client=client)
        run.control(tenant, "commit", client=client)
        run.control(tenant, "end_request", client=client)
        run.put(tenant, 10 + client, tenant, f"ins:{10 + client}")
    run.probe(run._seq, clean_state(50), clean_state(51))

    assert check_cross_tenant_reads(run.history) == []
    assert check_history(run.history) == []


# -- context_lost / error --------------------------------------------------------------------------
def test_undefined_table_is_context_lost_and_not_an_error():
    run = Run()
    run.step("acme")
    lost = run.step("globex", error=error("42P01", 'relation "product" does not exist'))

    assert summary(check_context_lost(run.history)) == [("context_lost", (lost,))]
    assert check_errors(run.history) == []
    assert summary(check_history(run.history)) == [("context_lost", (lost,))]
    assert 'relation "product" does not exist' in check_context_lost(run.history)[0].explanation


def test_any_other_failure_is_an_error_finding():
    run = Run()
    failed = run.step("acme", error=error("57014", "canceling statement due to statement timeout",
                                          "OperationalError"))

    assert summary(check_history(run.history)) == [("error", (failed,))]
    (finding,) = check_errors(run.history)
    assert "OperationalError" in finding.explanation and not finding.isolation


# -- unsafe_identifier -----------------------------------------------------------------------------
def test_a_bare_name_that_needs_quoting_in_search_path_is_unsafe():
    run = Run()
    bare = run.step("Acme", search_path="Acme", rows=rows_of("Acme", 1))

    findings = check_unsafe_identifiers(run.history)

    assert summary(findings) == [("unsafe_identifier", (bare,))]
    assert "'acme' (another tenant)" in findings[0].explanation


def test_the_bare_name_among_other_path_elements_is_unsafe_too():
    run = Run()
    bare = run.step("umbrella corp", search_path="umbrella corp, public")

    assert summary(check_unsafe_identifiers(run.history)) == [("unsafe_identifier", (bare,))]


@pytest.mark.parametrize("path", ['"Acme", public', '"Acme"', DEFAULT_SEARCH_PATH])
def test_a_quoted_name_in_search_path_is_safe(path):
    run = Run()
    run.step("Acme", search_path=path, rows=rows_of("Acme", 1))

    assert check_unsafe_identifiers(run.history) == []


def test_a_plain_name_in_search_path_needs_no_quotes():
    run = Run()
    run.step("acme", search_path="acme, public", rows=rows_of("acme", 1))

    assert check_unsafe_identifiers(run.history) == []


@pytest.mark.parametrize("sqlstate", ["22023", "42601", "3F000", "42602"])
def test_an_identifier_error_for_a_name_that_needs_quoting_is_unsafe_identifier_only(sqlstate):
    run = Run()
    broken = run.step("umbrella corp", error=error(sqlstate, "invalid value for parameter \"search_path\""))

    assert summary(check_history(run.history)) == [("unsafe_identifier", (broken,))]
    assert check_errors(run.history) == []


def test_the_same_sqlstate_for_a_plain_name_is_an_error():
    run = Run()
    broken = run.step("acme", error=error("22023", "invalid value for parameter"))

    assert check_unsafe_identifiers(run.history) == []
    assert summary(check_history(run.history)) == [("error", (broken,))]


# -- writes ------------------------------------------------------------------------------------------
def test_a_committed_insert_in_its_own_schema_is_fine():
    run = Run(seeded=True)
    wrote = run.step("acme", "orm_insert", writes=(insert("acme", 10),))
    run.control("acme", "commit")
    run.put("acme", 10, "acme", "ins:10")

    assert seqs(WriteLedger.of(run.history.steps).committed) == [wrote]
    assert check_writes(run.history) == []


def test_a_committed_insert_in_another_schema_is_misplaced_and_lost():
    run = Run(seeded=True)
    wrote = run.step("acme", "orm_insert", writes=(insert("acme", 10),))
    run.control("acme", "commit")
    run.put("Acme", 10, "acme", "ins:10")

    findings = check_writes(run.history)

    assert summary(findings) == [("lost_write", (wrote, wrote + 1)), ("misplaced_write", (wrote,))]
    assert all(f.tenant == "acme" and f.gating for f in findings)
    misplaced = next(f for f in findings if f.kind == "misplaced_write")
    assert "schema 'Acme'" in misplaced.explanation


def test_an_insert_into_public_is_misplaced():
    run = Run(seeded=True)
    wrote = run.step("globex", "raw_insert_unqualified", style="raw_unqualified", writes=(insert("globex", 10),))
    run.control("globex", "commit")
    run.put("public", 10, "globex", "ins:10")

    assert summary(check_writes(run.history)) == [("lost_write", (wrote, wrote + 1)), ("misplaced_write", (wrote,))]


def test_a_rolled_back_insert_is_expected_nowhere():
    run = Run(seeded=True)
    run.step("acme", "orm_insert", writes=(insert("acme", 10),))
    run.control("acme", "rollback")
    run.control("acme", "commit")

    assert WriteLedger.of(run.history.steps).committed == []
    assert check_writes(run.history) == []


def test_rollback_to_savepoint_drops_only_the_writes_after_it():
    run = Run(seeded=True)
    before = run.step("acme", "orm_insert", writes=(insert("acme", 10),))
    run.control("acme", "savepoint")
    run.step("acme", "orm_insert", writes=(insert("acme", 11),))
    run.control("acme", "rollback_to_savepoint")
    run.control("acme", "commit")
    run.put("acme", 10, "acme", "ins:10")

    assert [(w.id, s.seq) for w, s in WriteLedger.of(run.history.steps).committed] == [(10, before)]
    assert check_writes(run.history) == []

    run.remove("acme", 10)
    assert summary(check_writes(run.history)) == [("lost_write", (before, before + 4))]


def test_a_failed_step_discards_the_pending_writes():
    run = Run(seeded=True)
    run.step("acme", "orm_insert", writes=(insert("acme", 10),))
    run.step("acme", "orm_select_pk", error=error("57014", "canceled"))
    run.control("acme", "commit")

    assert WriteLedger.of(run.history.steps).committed == []
    assert check_writes(run.history) == []


def test_ending_the_request_without_commit_discards_the_writes():
    run = Run(seeded=True)
    run.control("acme", "open")
    run.step("acme", "orm_insert", writes=(insert("acme", 10),))
    run.control("acme", "end_request")
    run.control("acme", "open", request=1)
    run.step("acme", request=1, rows=rows_of("acme", 1))
    run.control("acme", "commit", request=1)

    assert WriteLedger.of(run.history.steps).committed == []
    assert check_writes(run.history) == []


def test_pending_writes_are_per_client():
    run = Run(seeded=True)
    a = run.step("acme", "orm_insert", client=0, writes=(insert("acme", 10),))
    run.step("globex", "orm_insert", client=1, writes=(insert("globex", 11),))
    run.control("globex", "rollback", client=1)
    run.control("acme", "commit", client=0)

    assert [(w.id, s.seq) for w, s in WriteLedger.of(run.history.steps).committed] == [(10, a)]


def test_a_committed_update_that_landed_in_another_schema_is_misplaced():
    run = Run(seeded=True)
    upd = run.step("acme", "orm_update", writes=(update("acme", 1, "upd:20"),))
    run.control("acme", "commit")
    run.put("globex", 1, "globex", "upd:20")

    findings = check_writes(run.history)

    # Acme's own row kept its old name (lost), globex's row got acme's label (misplaced).
    assert summary(findings) == [("lost_write", (upd, upd + 1)), ("misplaced_write", (upd,))]
    misplaced = next(f for f in findings if f.kind == "misplaced_write")
    assert misplaced.tenant == "acme" and "schema 'globex'" in misplaced.explanation


def test_a_committed_update_that_was_not_applied_is_lost():
    run = Run(seeded=True)
    upd = run.step("acme", "orm_update", writes=(update("acme", 2, "upd:21"),))
    run.control("acme", "commit")

    findings = check_writes(run.history)

    assert summary(findings) == [("lost_write", (upd, upd + 1))]
    assert "'acme product 2'" in findings[0].explanation and "'upd:21'" in findings[0].explanation


def test_a_committed_delete_whose_row_is_still_there_is_lost():
    run = Run(seeded=True)
    run.step("acme", "orm_insert", writes=(insert("acme", 10),))
    run.control("acme", "commit")
    gone = run.step("acme", "orm_delete", writes=(delete("acme", 10),))
    run.control("acme", "commit")
    run.put("acme", 10, "acme", "ins:10")

    findings = check_writes(run.history)

    assert summary(findings) == [("lost_write", (gone, gone + 1))]
    assert "still there" in findings[0].explanation


def test_a_committed_delete_that_removed_its_row_is_fine():
    run = Run(seeded=True)
    run.step("acme", "orm_insert", writes=(insert("acme", 10),))
    run.step("acme", "orm_delete", writes=(delete("acme", 10),))
    run.control("acme", "commit")

    assert check_writes(run.history) == []


def test_a_seeded_row_missing_from_a_schema_that_never_deleted_it_is_misplaced():
    run = Run(seeded=True)
    run.remove("globex", 2)

    findings = check_writes(run.history)

    assert summary(findings) == [("misplaced_write", ())]
    assert findings[0].tenant == "globex" and "seeded product #2" in findings[0].explanation


def test_a_committed_delete_of_a_seeded_row_is_not_misplaced():
    run = Run(seeded=True)
    run.step("globex", "orm_delete", writes=(delete("globex", 2),))
    run.control("globex", "commit")
    run.remove("globex", 2)

    assert check_writes(run.history) == []


def test_without_a_final_state_there_is_no_write_finding():
    run = Run()
    run.step("acme", "orm_insert", writes=(insert("acme", 10),))
    run.control("acme", "commit")

    assert run.history.final_state is None
    assert check_writes(run.history) == []


def test_a_finding_from_a_style_the_strategy_does_not_rely_on_does_not_gate():
    run = Run(seeded=True)
    run.history.gating_styles = ("orm", "raw_unqualified", "control")
    raw = run.step("acme", "raw_insert_qualified", style="raw_qualified", writes=(insert("acme", 10),))
    run.control("acme", "commit")
    run.put("public", 10, "acme", "ins:10")
    read = run.step("globex", "raw_select_qualified", style="raw_qualified", rows=rows_of("public", 1))
    orm = run.step("globex", rows=rows_of("acme", 1))

    findings = check_history(run.history)

    assert sorted((f.kind, f.steps, f.gating) for f in findings) == [
        ("cross_tenant_read", (read,), False),
        ("cross_tenant_read", (orm,), True),
        ("lost_write", (raw, raw + 1), False),
        ("misplaced_write", (raw,), False),
    ]


# -- pool_pollution ------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, leftover", [
    ({"search_path": '"acme", public'}, 'search_path = "acme", public'),
    ({"settings": (("app.tenant", "acme"),)}, "app.tenant = 'acme'"),
    ({"current_user": "acme_role"}, "role acme_role (logged in as app)"),
    ({"temp_tables": 2}, "2 temp table(s)"),
    ({"advisory_locks": 1}, "1 advisory lock(s)"),
    ({"listen_channels": 3}, "LISTEN on 3 channel(s)"),
    ({"open_transaction": True}, "an open transaction"),
], ids=["search_path", "setting", "role", "temp", "advisory", "listen", "transaction"])
def test_state_left_on_a_pooled_connection_is_pool_pollution(changes, leftover):
    run = Run()
    end = run.control("acme", "end_request", pid=7)
    run.probe(end, clean_state(7, **changes), clean_state(8))

    findings = check_pool_pollution(run.history)

    assert summary(findings) == [("pool_pollution", (end,))]
    assert leftover in findings[0].explanation
    assert "backend 7" in findings[0].explanation


def test_a_default_connection_state_is_clean():
    run = Run()
    end = run.control("acme", "end_request")
    run.probe(end, clean_state(7), clean_state(8, settings=(("app.tenant", ""),)))

    assert check_pool_pollution(run.history) == []


def test_one_polluted_backend_seen_twice_in_a_probe_is_one_finding():
    run = Run()
    end = run.control("acme", "end_request")
    dirty = clean_state(7, search_path="acme")
    run.probe(end, dirty, dirty)

    assert summary(check_pool_pollution(run.history)) == [("pool_pollution", (end,))]


def test_a_failed_probe_is_an_error_finding():
    run = Run()
    end = run.control("acme", "end_request")
    run.probe(end, error="OperationalError: connection refused")

    findings = check_pool_pollution(run.history)

    assert summary(findings) == [("error", (end,))]
    assert "connection refused" in findings[0].explanation


# -- coverage ----------------------------------------------------------------------------------------
def test_a_backend_is_shared_only_when_it_served_two_tenants():
    run = Run()
    run.step("acme", pid=1)
    run.step("acme", pid=1)
    run.step("globex", pid=2)
    run.step("globex", pid=2)
    run.step("Acme", pid=None)
    assert coverage(run.history) == Coverage(steps=5, backends=2, shared_backends=0, tenants=3, probed_connections=0)

    run.step("Acme", pid=2)
    run.probe(6, clean_state(1), clean_state(2))
    result = coverage(run.history)
    assert (result.backends, result.shared_backends, result.probed_connections) == (2, 1, 2)
    assert result.exercised


# -- verdict -----------------------------------------------------------------------------------------
def finding(kind: str, gating: bool = True) -> Finding:
    return Finding(kind, "x", (1,), "acme", gating)


def test_a_gating_isolation_finding_fails():
    result = verdict([finding("error"), finding("cross_tenant_read"), finding("lost_write", gating=False)], cov())
    assert result.verdict == Verdict.FAIL
    assert result.reason == "1 isolation finding(s): cross_tenant_read"


@pytest.mark.parametrize("shared, expected", [(1, Verdict.PASS), (0, Verdict.INCONCLUSIVE)])
def test_non_gating_findings_leave_the_verdict_to_coverage(shared, expected):
    findings = [finding("cross_tenant_read", gating=False), finding("error", gating=False)]
    assert verdict(findings, cov(shared=shared)).verdict == expected


def test_errors_alone_are_inconclusive():
    result = verdict([finding("error"), finding("error")], cov())
    assert (result.verdict, result.reason) == (Verdict.INCONCLUSIVE, "2 error(s) stopped part of the run")


def test_no_steps_is_inconclusive():
    result = verdict([], coverage(Run().history))
    assert (result.verdict, result.reason) == (Verdict.INCONCLUSIVE, "nothing was exercised")


def test_no_shared_backend_is_inconclusive():
    result = verdict([], cov(shared=0))
    assert result.verdict == Verdict.INCONCLUSIVE and "pooling was not exercised" in result.reason


def test_a_clean_run_with_sharing_passes():
    run = Run()
    run.step("acme", pid=1, rows=rows_of("acme", 1))
    run.step("globex", pid=1, rows=rows_of("globex", 1))
    result = verdict(check_history(run.history), coverage(run.history))
    assert result.verdict == Verdict.PASS
    assert "1 backend(s) served more than one tenant" in result.reason


def test_check_history_orders_findings_by_step():
    run = Run()
    a = run.step("acme", rows=rows_of("globex", 1))
    b = run.step("globex", error=error("42P01", "relation does not exist"))
    c = run.step("globex", error=error("XX000", "internal"))
    run.probe(a, clean_state(3, search_path="globex"))

    assert [(f.kind, f.steps) for f in check_history(run.history)] == [
        ("cross_tenant_read", (a,)), ("pool_pollution", (a,)), ("context_lost", (b,)), ("error", (c,))]


# -- serialisation -------------------------------------------------------------------------------------
def test_a_history_survives_a_json_round_trip():
    run = Run(seeded=True)
    run.history.gating_styles = ("orm", "control")
    run.control("Acme", "open", pid=4, search_path='"Acme", public')
    run.step("Acme", rows=rows_of("Acme", 1, 2) + rows_of("public", 3), pid=4)
    run.step("Acme", "orm_update", writes=(update("Acme", 1, "upd:9"), insert("Acme", 10)))
    run.step("Acme", "raw_select_qualified", style="raw_qualified", error=error("42P01", 'relation "x"'))
    end = run.control("Acme", "end_request")
    run.probe(end, clean_state(4, settings=(("app.tenant", "Acme"),), temp_tables=1, open_transaction=True))
    run.probe(end, error="boom")
    run.put("acme", 10, "Acme", "ins:10")

    data = json.loads(json.dumps(run.history.to_json()))
    back = History.from_json(data)

    assert back == run.history
    assert isinstance(back.steps[1].rows[0], RowSeen)
    assert isinstance(back.probes[0].states[0].settings[0], tuple)
    assert back.final_state["acme"]["product"][-1] == (10, "Acme", "ins:10")
    assert check_history(back) == check_history(run.history)


def test_a_history_file_without_gating_styles_uses_the_default_and_still_fails():
    import json

    from harness.checks import check_history, coverage, verdict
    from harness.checks.history import History, RowSeen, StepRecord

    history = History(strategy="s", route="direct", tenants=("acme", "Acme"), schemas=("acme", "Acme"),
                      steps=[StepRecord(1, 0, 0, "acme", "orm_select_all", pid=7, rows=(RowSeen("product", 1, "Acme"),)),
                             StepRecord(2, 0, 1, "Acme", "orm_select_pk", pid=7)])
    data = json.loads(json.dumps(history.to_json()))
    del data["gating_styles"]
    loaded = History.from_json(data)
    findings = check_history(loaded)
    assert [f.gating for f in findings] == [True]
    assert verdict(findings, coverage(loaded)).verdict is Verdict.FAIL


def test_an_empty_full_read_and_a_refused_own_write_are_context_lost():
    run = Run()
    empty = run.step("acme", "orm_select_all", pid=5)
    refused = run.step("acme", "orm_insert", error=error(
        "42501", 'new row violates row-level security policy for table "product"'))
    run.step("acme", "orm_select_all", pid=5, rows=(RowSeen("product", 1, "acme"),))
    run.step("acme", "orm_select_pk", pid=5)  # a read by key may find nothing: no finding
    assert summary(check_context_lost(run.history)) == [("context_lost", (empty,)), ("context_lost", (refused,))]
    assert check_errors(run.history) == []
    assert "row-level security" in check_context_lost(run.history)[1].explanation


def test_step_to_json_writes_what_asdict_writes_and_reads_back():
    import dataclasses
    import json

    from harness.checks.history import ErrorSeen, RowSeen, StepRecord, Write, step_from_json, step_to_json

    step = StepRecord(3, 1, 0, "Acme", "orm_insert", pid=9, search_path='"Acme", public', user="app",
                      rows=(RowSeen("product", 1, "acme"),), writes=(Write("insert", "product", 1000, "Acme", "ins:1000"),),
                      error=ErrorSeen("42P01", "UndefinedTable", "relation does not exist"), note="n")
    assert json.dumps(step_to_json(step)) == json.dumps(dataclasses.asdict(step))
    assert step_from_json(json.loads(json.dumps(step_to_json(step)))) == step
