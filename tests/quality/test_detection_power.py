"""Quality: does the generated-programs search find the bugs it claims to find?

For every built-in cell the expectation table marks as failing under generated
programs, the `ci` profile finds a failure in each of 10 runs with different
seeds (``HARNESS_QUALITY_SEEDS``: CI runs fewer, `make quality` keeps 10; the
bench reports the rate), and the shrunk counterexample has at most 6 steps. For
every cell marked passing, 3 runs find nothing.
"""

from __future__ import annotations

import os

import pytest

from harness.checks.verdict import Verdict
from harness.report.explain import explain
from harness.stack import ROUTES, start_stack
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import BUILTINS, load_strategy
from harness.tenancy.tenants import DEFAULT_TENANTS
from harness.workload.expectations import required_verdict
from harness.workload.generated import PROFILES, explore
from harness.workload.program import step_count

SEEDS = range(1, 1 + max(1, int(os.environ.get("HARNESS_QUALITY_SEEDS") or 10)))  # never an empty group
SOUND_SEEDS = range(1, 4)
MAX_COUNTEREXAMPLE_STEPS = 6
# Cells whose table entry allows more than one verdict (an outcome the draw decides) are in neither list.
FAILING = [(s, r) for s in BUILTINS for r in ROUTES
           if required_verdict(s, "generated", r).verdict is Verdict.FAIL and not required_verdict(s, "generated", r).also]
PASSING = [(s, r) for s in BUILTINS for r in ROUTES
           if required_verdict(s, "generated", r).verdict is Verdict.PASS and not required_verdict(s, "generated", r).also]

pytestmark = pytest.mark.quality


@pytest.fixture(scope="module")
def quality_cell(harness_config):
    """A stack of its own with only the default tenant set: smaller resets, faster examples."""
    with start_stack(harness_config) as own:
        schemas = Tenancy(own, DEFAULT_TENANTS)
        schemas.provision()
        yield own, schemas
        schemas.close()


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("strategy_name,route", FAILING, ids=[f"{s}-{r}" for s, r in FAILING])
def test_ci_profile_finds_every_expected_failure(quality_cell, strategy_name, route, seed):
    result, seen = explore(*quality_cell, load_strategy(strategy_name), route, PROFILES["ci"], seed=seed)
    assert result.verdict is Verdict.FAIL, explain(result)
    steps = step_count(result.program)
    assert steps <= MAX_COUNTEREXAMPLE_STEPS, f"counterexample has {steps} steps\n" + explain(result)
    assert seen.examples_to_first_failure is not None


@pytest.mark.parametrize("seed", SOUND_SEEDS, ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("strategy_name,route", PASSING, ids=[f"{s}-{r}" for s, r in PASSING])
def test_ci_profile_raises_no_false_alarm(quality_cell, strategy_name, route, seed):
    result, _ = explore(*quality_cell, load_strategy(strategy_name), route, PROFILES["ci"], seed=seed)
    assert result.verdict is Verdict.PASS, explain(result)
    assert not [f for f in result.findings if f.isolation and f.gating]
