"""Faults: generated programs whose requests may meet a fault mid-request (a terminated backend, PgBouncer
killed, paused, reloaded or restarted, a timeout, a connection cut between PgBouncer and PostgreSQL).

After a fault a request must go on with its own tenant or fail; a commit that raised is indeterminate; an
acknowledged one must be there. The verdicts of the built-ins are in the same expectation table.
"""

from __future__ import annotations

import dataclasses

import pytest

from harness.checks.verdict import Verdict
from harness.config import FAULTS_SCENARIO
from harness.report.explain import explain
from harness.pytest_plugin import provisioned
from harness.stack import start_stack


@pytest.fixture(scope="module")
def stack(harness_config):
    """A stack of this module's own, started for the faults scenario (on the native backend, with the fault
    proxy between the PgBouncers and PostgreSQL), when the session's stack was not."""
    config = harness_config if harness_config.runs_faults else dataclasses.replace(
        harness_config, scenarios=(FAULTS_SCENARIO,))
    with start_stack(config) as running:
        yield running


@pytest.fixture(scope="module")
def tenancy(stack, harness_config):
    with provisioned(stack, harness_config) as schemas:
        yield schemas


def test_faults(run_scenario, strategy, route):
    result = run_scenario(strategy, route, "faults")
    required = result.required
    assert result.as_required, (
        f"measured {result.verdict.value}, required {required.label} ({required.reason})\n" + explain(result))
    assert result.coverage.faults, "no fault was injected"
    if result.verdict is Verdict.FAIL:
        assert result.program is not None and result.findings
