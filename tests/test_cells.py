"""Whole cells on real servers: reset is total, decoys switch the finding kind, errors stay apart."""

from __future__ import annotations

import pytest

from harness.report.explain import explain
from harness.stack import start_stack
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import load_strategy
from harness.tenancy.tenants import DEFAULT_TENANTS
from harness.workload.cell import run_cell
from harness.workload.named import NAMED_SCENARIOS
from harness.workload.program import Program, Request


@pytest.fixture(scope="module")
def bare_tenancy(harness_config):
    """A separate stack whose public schema has no decoys."""
    with start_stack(harness_config) as own_stack:
        schemas = Tenancy(own_stack, DEFAULT_TENANTS, decoys=False)
        schemas.provision()
        yield own_stack, schemas
        schemas.close()


def test_without_decoys_a_fallback_shows_as_context_lost(bare_tenancy):
    own_stack, schemas = bare_tenancy
    program = NAMED_SCENARIOS["after_commit"].build(DEFAULT_TENANTS)
    result = run_cell(own_stack, schemas, load_strategy("search_path_local"), "direct", "after_commit", program)
    kinds = {f.kind for f in result.findings}
    assert result.verdict.value == "fail"
    assert "context_lost" in kinds and "cross_tenant_read" not in kinds, explain(result)
    assert "public" not in result.history.final_state


def test_with_decoys_the_same_fallback_reads_public_rows(stack, tenancy):
    program = NAMED_SCENARIOS["after_commit"].build(DEFAULT_TENANTS)
    result = run_cell(stack, tenancy, load_strategy("search_path_local"), "direct", "after_commit", program)
    leaks = [f for f in result.findings if f.kind == "cross_tenant_read"]
    assert leaks and all("public" in f.explanation for f in leaks), explain(result)


def test_the_same_program_replays_the_same_way(stack, tenancy):
    """Reset is total and the runner deterministic: two runs record the same steps and findings."""
    program = NAMED_SCENARIOS["simultaneous_tenants"].build(DEFAULT_TENANTS)
    spec = load_strategy("search_path_set")
    first = run_cell(stack, tenancy, spec, "transaction", "replay", program)
    second = run_cell(stack, tenancy, spec, "transaction", "replay", program)

    def shape(result):
        return [(s.client, s.tenant, s.step, s.rows, s.writes, s.error) for s in result.history.steps]

    assert shape(first) == shape(second)
    assert [f.explanation.split(" on backend")[0] for f in first.findings] == \
        [f.explanation.split(" on backend")[0] for f in second.findings]


def test_a_failing_statement_is_not_an_error_finding(stack, tenancy):
    program = Program(((Request("acme", ("fail_and_rollback", "orm_select_all")),
                        Request("globex", ("orm_select_all",))),))
    result = run_cell(stack, tenancy, load_strategy("translate_map"), "direct", "intended-failure", program)
    assert not result.findings, explain(result)
    assert result.verdict.value == "pass"


def test_a_strategy_that_breaks_gives_error_findings_and_no_pass(stack, tenancy):
    """A step error that is not about isolation is kept apart, never a pass; a layer whose every
    connection is refused (it cannot log in) cannot run, and the verdict says what the server answered."""
    program = Program(((Request("acme", ("orm_select_all",)), Request("globex", ("orm_select_all",))),))
    result = run_cell(stack, tenancy, load_strategy("cell_strategies:WrongPassword"), "direct", "broken", program)
    assert {f.kind for f in result.findings} == {"error"}, explain(result)
    assert result.verdict.value == "cannot_run"
    assert "password authentication failed" in result.reason, result.reason
