"""Verdicts that say what happened, on real servers: structural isolation, a layer that cannot run on a
route, tenant names refused before any SQL (layers in tests/verdict_strategies.py)."""

from __future__ import annotations

import pytest

from harness.report.explain import explain
from harness.tenancy.strategy import load_strategy
from harness.workload.cell import run_cell
from harness.workload.generated import PROFILES, explore
from harness.workload.named import NAMED_SCENARIOS
from harness.workload.program import Program, Request

PLAIN = ("acme", "globex")


def named(tenancy, scenario):
    return NAMED_SCENARIOS[scenario].program(tenancy.tenants, tenancy.hostile)


@pytest.mark.parametrize("scenario", ["fresh_session", "after_commit", "simultaneous_tenants", "scheduler"])
def test_a_pool_per_tenant_passes_on_direct_with_the_structural_reason(stack, tenancy, scenario):
    result = run_cell(stack, tenancy, load_strategy("verdict_strategies:PerTenantEngines"), "direct", scenario,
                      named(tenancy, scenario))
    assert result.verdict.value == "pass", explain(result)
    assert result.reason.startswith("structural isolation: no backend served two tenants"), result.reason
    assert result.coverage.separate_pools and result.coverage.shared_backends == 0


def test_a_pool_per_tenant_behind_pgbouncer_is_judged_on_shared_backends(stack, tenancy):
    result = run_cell(stack, tenancy, load_strategy("verdict_strategies:PerTenantEngines"), "transaction",
                      "fresh_session", named(tenancy, "fresh_session"))
    assert result.verdict.value == "pass", explain(result)
    assert result.coverage.shared_backends > 0 and not result.reason.startswith("structural")


def test_a_shared_pool_without_reuse_stays_inconclusive(stack, tenancy):
    result = run_cell(stack, tenancy, load_strategy("verdict_strategies:SharedNullPool"), "direct",
                      "fresh_session", named(tenancy, "fresh_session"))
    assert result.verdict.value == "inconclusive", explain(result)
    assert "pooling was not exercised" in result.reason
    assert not result.coverage.separate_pools


def options_program() -> Program:
    steps = ("orm_select_all", "orm_insert", "commit")
    return Program((tuple(Request(t, steps) for t in PLAIN * 2), tuple(Request(t, steps) for t in PLAIN[::-1] * 2)))


@pytest.mark.parametrize("route", ["session", "transaction"])
def test_a_layer_pgbouncer_refuses_cannot_run_and_says_why(stack, tenancy, route):
    if not stack.versions.get("pgbouncer", "").startswith("1.18"):
        pytest.fail(f"this test measures PgBouncer 1.18's answer to 'options'; the stack runs "
                    f"{stack.versions.get('pgbouncer')}")
    result = run_cell(stack, tenancy, load_strategy("verdict_strategies:StartupOptions"), route, "options",
                      options_program())
    assert result.verdict.value == "cannot_run", explain(result)
    assert "unsupported startup parameter: options" in result.reason, result.reason


def test_the_same_layer_runs_on_direct(stack, tenancy):
    result = run_cell(stack, tenancy, load_strategy("verdict_strategies:StartupOptions"), "direct", "options",
                      options_program())
    assert result.verdict.value == "pass", explain(result)
    assert not [f for f in result.findings if f.kind == "error"]


def test_a_layer_that_refuses_hostile_names_passes_hostile_names_showing_them_refused(stack, tenancy):
    result = run_cell(stack, tenancy, load_strategy("verdict_strategies:SlugsOnly"), "direct", "hostile_names",
                      named(tenancy, "hostile_names"))
    assert result.verdict.value == "pass", explain(result)
    refused = {f.tenant for f in result.findings if f.kind == "refused"}
    slugs = {t for t in tenancy.hostile if t in ("x", "tenant_x", "x_y")}
    assert refused == set(tenancy.hostile) - slugs, explain(result)
    assert {f.kind for f in result.findings} == {"refused"}
    assert "refused by the layer before any SQL reached the server" in result.reason
    assert result.coverage.shared_backends > 0  # the slugs it accepted shared its pooled connection


def test_a_layer_that_breaks_in_sql_on_a_hostile_name_fails_hostile_names(stack, tenancy):
    result = run_cell(stack, tenancy, load_strategy("verdict_strategies:QuotesNaively"), "direct", "hostile_names",
                      named(tenancy, "hostile_names"))
    assert result.verdict.value == "fail", explain(result)
    unsafe = [f for f in result.findings if f.kind == "unsafe_identifier"]
    assert unsafe and {f.tenant for f in unsafe} == {'quote"double'}, explain(result)
    assert not [f for f in result.findings if f.kind == "refused"]


def test_generated_programs_on_a_pool_per_tenant_pass_with_the_structural_reason(stack, tenancy):
    # this seed draws an example whose steps never reach a backend: it neither proves nor disproves
    result, seen = explore(stack, tenancy, load_strategy("verdict_strategies:PerTenantEngines"), "direct",
                           PROFILES["dev"], seed=767537595)
    assert result.verdict.value == "pass", explain(result)
    assert result.reason.startswith("structural isolation"), result.reason
    assert seen.structural > 0 and seen.not_structural == 0


def test_generated_programs_on_a_refused_route_cannot_run(stack, tenancy):
    result, _ = explore(stack, tenancy, load_strategy("verdict_strategies:StartupOptions"), "transaction",
                        PROFILES["dev"], seed=1)
    assert result.verdict.value == "cannot_run", explain(result)
    assert "unsupported startup parameter: options" in result.reason


@pytest.mark.parametrize("layer, kinds", [("PerTenantEngines", set()), ("StartupOptions", set()),
                                          ("PerTenantLeavesTimeout", {"pool_pollution"})])
def test_pool_state_probes_each_engine_of_a_pool_per_tenant(stack, tenancy, layer, kinds):
    """Without one engine to probe, the probe reads every engine the sessions drew from; a tenant's own binding
    on its own pool (StartupOptions' search_path) is not state carried to another tenant, anything else is."""
    program = NAMED_SCENARIOS["pool_state"].program(PLAIN, ())
    result = run_cell(stack, tenancy, load_strategy(f"verdict_strategies:{layer}"), "direct", "pool_state", program)
    assert {f.kind for f in result.findings if f.isolation} == kinds, explain(result)
    assert result.coverage.probed_connections > 0
    assert {p.target for p in result.history.probes} >= {"engine of 'acme'", "engine of 'globex'"}
    if not kinds:
        assert result.verdict.value == "pass" and result.reason.startswith("structural isolation"), result.reason
    else:
        assert "session setting statement_timeout" in next(f.explanation for f in result.findings
                                                           if f.kind == "pool_pollution")
