"""The migration's validation plan, as named scenarios over strategy x route.

Each test runs one scenario for one strategy on one route against the real
stack, and asserts the measured verdict is the required one: the expectation
table's for a built-in (so a known leak that stops being found fails, and so
does a false alarm), ``pass`` for a user's strategy.
"""

from __future__ import annotations

from harness.checks.verdict import Verdict
from harness.report.explain import explain


def assert_as_required(result) -> None:
    required = result.required
    assert result.as_required, (
        f"measured {result.verdict.value}, required {required.label} ({required.reason})\n" + explain(result))


def test_1_fresh_session_uses_the_tenant_schema(run_scenario, strategy, route):
    assert_as_required(run_scenario(strategy, route, "fresh_session"))


def test_2_schema_survives_commit(run_scenario, strategy, route):
    assert_as_required(run_scenario(strategy, route, "after_commit"))


def test_3_schema_survives_rollback(run_scenario, strategy, route):
    assert_as_required(run_scenario(strategy, route, "after_rollback"))


def test_4_simultaneous_tenants_stay_isolated(run_scenario, strategy, route):
    assert_as_required(run_scenario(strategy, route, "simultaneous_tenants"))


def test_5_raw_text_uses_the_tenant_schema(run_scenario, strategy, route):
    result = run_scenario(strategy, route, "raw_text")
    assert_as_required(result)
    # Both styles are measured even when only the declared ones gate (the row-level security layout
    # has no `tenant` schema, so its programs hold no qualified step).
    styles = {step.style for step in result.history.steps}
    expected = {"raw_unqualified", "raw_qualified"} if result.history.layout == "schema" else {"raw_unqualified"}
    assert expected <= styles and ("raw_qualified" in styles) == (result.history.layout == "schema")


def test_6_pool_carries_no_state_into_the_next_request(run_scenario, strategy, route):
    result = run_scenario(strategy, route, "pool_state")
    assert_as_required(result)
    if result.verdict is Verdict.CANNOT_RUN:  # no connection was ever made: there is nothing to probe
        return
    probes = result.history.probes
    if route == "direct" and "keeps no connection (NullPool)" in result.reason:
        # nothing pools the route and the layer keeps no connection: no session outlives its request
        assert not any(p.states for p in probes) and result.verdict is Verdict.PASS
        return
    assert any(p.states for p in probes), "the pool probe read no connection"
    if route != "direct":
        assert any(p.target == f"pgbouncer:{route}" for p in probes), "PgBouncer's servers were not probed"


def test_7_scheduler_never_loses_the_tenant(run_scenario, strategy, route):
    assert_as_required(run_scenario(strategy, route, "scheduler"))


def test_hostile_tenant_names_reach_their_own_schema(run_scenario, strategy, route):
    assert_as_required(run_scenario(strategy, route, "hostile_names"))
