"""Generated programs: Hypothesis draws concurrent workloads for every strategy x route.

The same verdict rules as the named scenarios: a failure is shrunk to a
minimal program and printed step by step with the command that replays it;
a pass needs backends that served more than one tenant.
"""

from __future__ import annotations

from harness.checks.verdict import Verdict
from harness.report.explain import explain


def test_generated_programs(explore_programs, strategy, route):
    result = explore_programs(strategy, route)
    required = result.required
    assert result.as_required, (
        f"measured {result.verdict.value}, required {required.label} ({required.reason})\n" + explain(result))
    if result.verdict is Verdict.FAIL:
        assert result.program is not None and result.findings
