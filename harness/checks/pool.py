"""pool_pollution: state a request left on a connection that the next request will get."""

from __future__ import annotations

from harness.checks.findings import Finding
from harness.checks.history import History


def check_pool_pollution(history: History) -> list[Finding]:
    findings = []
    for probe in history.probes:
        if probe.error:
            findings.append(Finding("error", f"probe {probe.seq} of {probe.target} after step "
                                             f"{probe.after_step} failed: {probe.error}", (probe.after_step,)))
            continue
        seen: set[int] = set()
        for state in probe.states:
            leftovers = state.leftovers()
            if leftovers and state.pid not in seen:
                seen.add(state.pid)
                findings.append(Finding(
                    "pool_pollution",
                    f"after step {probe.after_step} ended a request, {probe.target} connection on backend "
                    f"{state.pid} still carried {'; '.join(leftovers)}.",
                    (probe.after_step,)))
    return findings
