"""The team's own tables and code paths: canaries, the read observer, team steps and actions."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import (JSON, Boolean, Column, Date, DateTime, Enum, ForeignKey, Integer, MetaData, Numeric,
                        SmallInteger, String, Table, Uuid, text)
from sqlalchemy.types import UserDefinedType

from harness.errors import UsageError
from harness.report.explain import explain
from harness.stack import start_stack
from harness.team import load_action, load_team
from harness.team.models import CANARY_ROWS, CanaryError, TeamModels, canary_value, team_models, tenant_tag
from harness.team.steps import step_names, woven
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import load_strategy
from harness.tenancy.tenants import DEFAULT_TENANTS, HOSTILE_TENANTS
from harness.workload.cell import run_cell
from harness.workload.hammer import hammer
from harness.workload.named import NAMED_SCENARIOS
from harness.workload.program import Program, Request

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop"
if str(SHOP) not in sys.path:
    sys.path.insert(0, str(SHOP))

ACTIONS = tuple(f"team_app:{name}" for name in ("leaky_total", "safe_total", "neighbour_count",
                                                 "neighbour_insert", "signup"))
A, B = "acme", "globex"  # team_app.OTHER: the tenant its wrong paths reach


# -- canaries, without a server ------------------------------------------------------------
def _table() -> Table:
    metadata = MetaData()
    Table("parent", metadata, Column("id", Integer, primary_key=True), schema="tenant")
    return Table("sample", metadata, Column("id", Integer, primary_key=True),
                 Column("parent_id", ForeignKey("tenant.parent.id"), nullable=False),
                 Column("code", String(6), unique=True, nullable=False), Column("note", String),
                 Column("small", SmallInteger), Column("amount", Numeric(4, 2)), Column("flag", Boolean),
                 Column("day", Date), Column("at", DateTime(timezone=True)), Column("doc", JSON),
                 Column("ref", Uuid), Column("state", Enum("new", "done", name="state")), schema="tenant")


def test_canaries_differ_per_tenant_keep_keys_and_fit_their_columns():
    table = _table()
    models = TeamModels("test", table.metadata, {})
    first, second = models.canaries(table, A), models.canaries(table, B)
    assert [r["id"] for r in first] == [r["id"] for r in second] == list(range(1, CANARY_ROWS + 1))
    for row in first:
        assert len(row["code"]) <= 6 and tenant_tag(A)[:4] in row["code"]
        assert tenant_tag(A) in row["note"] and row["doc"]["canary"] == tenant_tag(A)
        assert -32768 <= row["small"] <= 32767 and abs(row["amount"]) < 100
        assert isinstance(row["amount"], decimal.Decimal) and isinstance(row["day"], datetime.date)
        assert row["at"].tzinfo is not None and isinstance(row["ref"], uuid.UUID) and row["state"] in ("new", "done")
        assert row["parent_id"] in range(1, CANARY_ROWS + 1)  # points at a canary of the parent table
    assert len({r["code"] for r in first}) == CANARY_ROWS  # the unique column stays unique
    for a, b in zip(first, second):
        assert a["note"] != b["note"] and a["ref"] != b["ref"] and a["day"] != b["day"]


def test_a_column_no_canary_can_fill_is_refused_before_anything_starts():
    class Opaque(UserDefinedType):
        cache_ok = True

        def get_col_spec(self, **kw):
            return "opaque"

    metadata = MetaData()
    Table("odd", metadata, Column("id", Integer, primary_key=True), Column("blob", Opaque, nullable=False),
          schema="tenant")
    with pytest.raises(CanaryError, match="odd.blob"):
        team_models("test:odd", metadata, metadata)
    assert canary_value(Column("maybe", Opaque, nullable=True), A, 1, key=False) is None


def test_team_steps_name_each_table_and_action(harness_config):
    team = load_team(dataclasses.replace(harness_config, models="shop.models:Base", actions=ACTIONS[:1]))
    names = step_names(team)
    assert "team_read:invoice" in names and "team_insert:invoice_line" in names
    assert "team_update:customer" in names and "team_delete:customer" in names
    assert names[-1] == "action:leaky_total"


@pytest.mark.parametrize("actions, message", [
    (("team_app:nowhere",), "could not be loaded"),
    (("team_app:OTHER",), "not a callable"),
    (("team_app:leaky_total", "team_app:leaky_total"), "share the name"),
])
def test_a_broken_action_is_refused_clearly(harness_config, actions, message):
    with pytest.raises(UsageError, match=message):
        load_team(dataclasses.replace(harness_config, actions=actions))


# -- on a real stack -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop(harness_config):
    team = load_team(dataclasses.replace(harness_config, models="shop.models:Base", actions=ACTIONS))
    with start_stack(harness_config) as own_stack:
        schemas = Tenancy(own_stack, DEFAULT_TENANTS, team=team)
        schemas.provision()
        schemas.provision(HOSTILE_TENANTS)  # quotes, '%', backslashes, long names: in policies and canaries
        yield own_stack, schemas
        schemas.close()


def _run(shop, steps, route="direct", strategy="shop.tenancy:make_tenancy", tenant=A):
    own_stack, schemas = shop
    program = Program(((Request(tenant, tuple(steps)),),))
    return run_cell(own_stack, schemas, load_strategy(strategy), route, "team", program)


def _step(result, name):
    return next(s for s in result.history.steps if s.step == name)


def test_every_schema_holds_its_own_canaries(shop):
    _, schemas = shop
    with schemas.engine.connect() as conn:
        for owner in (A, B, "public"):
            emails = conn.execute(text(f'SELECT email FROM "{owner}".customer ORDER BY id')).scalars().all()
            assert len(emails) == CANARY_ROWS and all(tenant_tag(owner) in e for e in emails), (owner, emails)
            assert conn.execute(text(f'SELECT count(*) FROM "{owner}".invoice_line')).scalar() == CANARY_ROWS


def test_an_unqualified_raw_query_in_an_action_is_a_cross_tenant_read_naming_it(shop):
    result = _run(shop, ["action:leaky_total"])
    leaks = [f for f in result.findings if f.kind == "cross_tenant_read"]
    assert result.verdict.value == "fail" and leaks, explain(result)
    assert "action:leaky_total" in leaks[0].explanation and "'public'" in leaks[0].explanation
    assert leaks[0].gating  # the team's own code always gates
    assert {r.owner for r in _step(result, "action:leaky_total").rows} == {"public"}


def test_the_same_report_through_the_mapped_class_is_attributed_to_its_tenant_and_passes(shop):
    result = _run(shop, ["action:safe_total"], route="transaction")
    step = _step(result, "action:safe_total")
    assert step.error is None and step.rows, explain(result)
    assert {r.owner for r in step.rows} == {A} and {r.table for r in step.rows} == {"invoice"}
    assert not [f for f in result.findings if f.kind == "cross_tenant_read"], explain(result)


def test_an_aggregate_over_another_tenants_schema_names_that_tenant(shop):
    result = _run(shop, ["action:neighbour_count"], route="session")
    leaks = [f for f in result.findings if f.kind == "cross_tenant_read"]
    assert leaks and repr(B) in leaks[0].explanation and "action:neighbour_count" in leaks[0].explanation


def test_a_write_into_another_tenants_table_is_a_misplaced_write(shop):
    result = _run(shop, ["action:neighbour_insert", "commit"])
    wrong = [f for f in result.findings if f.kind == "misplaced_write"]
    assert wrong and "customer" in wrong[0].explanation and repr(B) in wrong[0].explanation, explain(result)


def test_an_action_that_commits_is_recorded_as_committing(shop):
    # the insert before the action is committed by it: the rollback after must not make it "lost"
    result = _run(shop, ["orm_insert", "action:signup", "rollback"])
    assert _step(result, "action:signup").effect == "commit", explain(result)
    inserted = _step(result, "orm_insert").writes[0]
    assert [r for r in result.history.final_state[A]["product"] if r[0] == inserted.id], explain(result)
    assert not [f for f in result.findings if f.kind in ("lost_write", "misplaced_write")], explain(result)


# search_path_restore: unqualified models, the SET re-issued in every transaction (it leaves the SET on
# the connection at the end, a pool_pollution finding this test does not look at)
@pytest.mark.parametrize("strategy", ["shop.tenancy:make_tenancy", "search_path_restore"])
def test_team_steps_read_and_write_through_the_teams_tables(shop, strategy):
    steps = ["team_read:invoice", "team_insert:invoice_line", "team_update:customer", "team_delete:invoice_line",
             "team_insert:customer", "commit", "team_read:customer"]
    result = _run(shop, steps, strategy=strategy)
    assert all(s.error is None for s in result.history.steps), explain(result)
    read = _step(result, "team_read:invoice")
    assert {r.owner for r in read.rows} == {A} and len(read.rows) == CANARY_ROWS
    assert {r.owner for r in _step(result, "team_insert:customer").wrote} == {A}
    assert len(result.history.steps[-2].rows) == CANARY_ROWS + 1, explain(result)  # the committed insert is there
    assert not [f for f in result.findings if f.kind != "pool_pollution"], explain(result)


def test_a_reset_puts_the_canaries_back(shop):
    _run(shop, ["team_insert:customer", "commit"])
    own_stack, schemas = shop
    with schemas.engine.connect() as conn:
        assert conn.execute(text(f'SELECT count(*) FROM "{A}".customer')).scalar() == CANARY_ROWS + 1
    schemas.reset()
    with schemas.engine.connect() as conn:
        assert conn.execute(text(f'SELECT count(*) FROM "{A}".customer')).scalar() == CANARY_ROWS


def test_two_clients_of_one_tenant_updating_the_same_table_do_not_wait_on_each_other(shop):
    """The runner runs one step at a time: if both updated one row, the second would wait for ever."""
    own_stack, schemas = shop
    both = (Request(A, ("team_update:customer", "team_update:invoice")),)
    program = Program((both, both), schedule=(0, 1, 0, 1, 0, 1, 0, 1))
    result = run_cell(own_stack, schemas, load_strategy("shop.tenancy:make_tenancy"), "direct", "team", program)
    updates = [s for s in result.history.steps if s.step.startswith("team_update")]
    assert len(updates) == 4 and all(s.error is None and "updated 1 row" in s.note for s in updates), explain(result)


def test_an_async_action_gets_the_async_session_of_an_async_layer(shop):
    own_stack, schemas = shop
    team = dataclasses.replace(schemas.team, actions=(load_action("team_app:async_total"),))
    original, schemas.team = schemas.team, team
    try:
        result = _run(shop, ["action:async_total"], strategy="translate_map_pinned_async", route="transaction")
    finally:
        schemas.team = original
    step = _step(result, "action:async_total")
    assert step.error is None and step.note == f"returned {CANARY_ROWS}", explain(result)
    assert {r.owner for r in step.rows} == {A} and len(step.rows) == CANARY_ROWS


@pytest.mark.parametrize("action, verdict", [("action:safe_total", "pass"), ("action:leaky_total", "fail")])
def test_named_scenarios_read_the_teams_tables_and_run_its_code_wherever_they_read(shop, action, verdict):
    own_stack, schemas = shop
    program = woven(NAMED_SCENARIOS["after_commit"].program(schemas.tenants), ("team_read:invoice", action))
    result = run_cell(own_stack, schemas, load_strategy("shop.tenancy:make_tenancy"), "transaction",
                      "after_commit", program)
    for client in {s.client for s in result.history.steps}:
        names = [s.step for s in result.history.steps if s.client == client]
        reads = [i for i, name in enumerate(names) if name == "orm_select_all"]
        assert reads and all(names[i + 1:i + 3] == ["team_read:invoice", action] for i in reads), names
    team_rows = [r for s in result.history.steps if s.step == "team_read:invoice" for r in s.rows]
    assert team_rows and all(r.table == "invoice" for r in team_rows)
    assert result.verdict.value == verdict, explain(result)


@pytest.mark.parametrize("action", ["savepoint_undone", "savepoint_kept"])
def test_a_savepoint_inside_an_action_leaves_the_requests_writes_pending(shop, action):
    own_stack, schemas = shop
    team = dataclasses.replace(schemas.team, actions=(load_action(f"team_app:{action}"),))
    original, schemas.team = schemas.team, team
    try:
        # the insert before the action is rolled back with the request: it must not be expected to be there
        result = _run(shop, ["orm_insert", f"action:{action}", "rollback", "orm_select_all"])
    finally:
        schemas.team = original
    assert _step(result, f"action:{action}").effect is None, explain(result)
    assert not [f for f in result.findings if f.kind in ("lost_write", "misplaced_write")], explain(result)


def test_tables_of_every_common_kind_are_seeded_observed_and_stepped_through(harness_config):
    team = load_team(dataclasses.replace(harness_config, models="team_rich_models:Base"))
    names = step_names(team)
    # an association table's new rows would repeat a canary, an always-generated key cannot be given
    assert "team_read:account_label" in names and "team_insert:account_label" not in names
    assert "team_insert:label" not in names and "team_insert:account" in names
    # the column in a unique constraint is left alone (two clients' updates would wait on each other)
    assert team.models.updatable_column(team.models.table("account")).name == "holder"
    with start_stack(harness_config) as own_stack:
        schemas = Tenancy(own_stack, DEFAULT_TENANTS[:2], team=team)
        schemas.provision()
        try:
            program = Program(((Request(A, tuple(n for n in names if not n.startswith("team_delete"))
                                        + ("commit",) + tuple(n for n in names if n.startswith("team_read"))),),))
            result = run_cell(own_stack, schemas, load_strategy("translate_map"), "transaction", "team", program)
            assert all(s.error is None for s in result.history.steps), explain(result)
            reads = [s for s in result.history.steps if s.step.startswith("team_read")]
            assert all(s.rows and {r.owner for r in s.rows} == {A} for s in reads), explain(result)
            with schemas.engine.connect() as conn:  # the smallserial continues below its maximum
                sequence = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": f'"{A}".account'})
                assert conn.execute(text("SELECT nextval(:s)"), {"s": sequence.scalar()}).scalar() > CANARY_ROWS
        finally:
            schemas.close()


@pytest.mark.parametrize("tenant", HOSTILE_TENANTS)
def test_hostile_tenant_names_get_their_own_canaries_and_attribution(shop, tenant):
    result = _run(shop, ["team_read:invoice", "team_insert:customer", "action:safe_total", "commit"], tenant=tenant,
                  route="transaction")
    assert all(s.error is None for s in result.history.steps), explain(result)
    rows = [r for s in result.history.steps for r in s.rows]
    assert rows and {r.owner for r in rows} == {tenant}, explain(result)
    assert {r.owner for s in result.history.steps for r in s.wrote} == {tenant}


def test_the_hammers_threads_attribute_team_reads_to_their_own_requests(shop, tmp_path):
    """Real threads, one sink each: a sound layer's team steps show only its own tenant's rows."""
    own_stack, schemas = shop
    team = dataclasses.replace(schemas.team, actions=(load_action("team_app:safe_total"),))
    original, schemas.team = schemas.team, team
    try:
        result, _ = hammer(own_stack, schemas, load_strategy("shop.tenancy:make_tenancy"), "transaction",
                           threads=4, max_requests=120, max_seconds=20, seed=3, history_path=tmp_path / "h.jsonl")
    finally:
        schemas.team = original
    steps = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    team_steps = [s for s in steps if s["step"].startswith(("team_read", "action:"))]
    assert len({s["client"] for s in team_steps}) > 1 and all(s["rows"] for s in team_steps if not s["error"])
    assert all(r["owner"] == s["tenant"] for s in team_steps for r in s["rows"])
    assert not [f for f in result.findings if f.gating and f.kind in ("cross_tenant_read", "misplaced_write")], \
        explain(result)
