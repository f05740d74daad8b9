"""Hammer: real threads serving random requests for random tenants, checked by the same checks.

Bounded by the profile's request count and duration (nightly: many more). The
history is on disk as JSON lines under reports/hammer/.
"""

from __future__ import annotations

from pathlib import Path

from harness.report.explain import explain


def test_hammer(run_hammer, strategy, route):
    result = run_hammer(strategy, route)
    required, figures = result.required, result.figures
    print(f"{strategy.name} x {route}: {figures['requests']} requests in {figures['seconds']:.1f}s "
          f"({figures['requests_per_second']:.0f}/s), {figures['pool_checkouts']} pool checkouts, "
          f"{result.coverage.shared_backends} backends shared across tenants")
    assert figures["requests"] > 0 and Path(figures["history"]).exists()
    assert result.as_required, (
        f"measured {result.verdict.value}, required {required.label} ({required.reason})\n" + explain(result))
