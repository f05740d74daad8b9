"""The cost of testing the team's own app (`make bench`), one JSON line each.

On one stack, examples/shop's tenancy layer runs the same generated search
(transaction route, fixed seed, a sound program set) three ways:

- ``builtin``: the built-in tables only (no --models, no --actions);
- ``team``: with the shop's tables (canaries, the read observer's row-level
  security on every copy) and a sound action, ``shop.reports:customer_count``;

and reports generated examples per second of each and their ratio, plus the
time of one reset (reseeding every schema's canaries) with and without the team.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from baseline import ROOT, emit, progress, stop_on_sigterm

sys.path.insert(0, str(ROOT / "examples" / "shop"))

from harness.config import resolve_config  # noqa: E402
from harness.stack import start_stack  # noqa: E402
from harness.team import load_team  # noqa: E402
from harness.tenancy.provisioning import Tenancy  # noqa: E402
from harness.tenancy.strategy import load_strategy  # noqa: E402
from harness.tenancy.tenants import DEFAULT_TENANTS  # noqa: E402
from harness.workload.generated import Profile, explore  # noqa: E402

EXAMPLES = 60
RESETS = 30
SEED = 11


def measure(config, label: str, team) -> dict:
    progress(f"team bench: {label} ...")
    with start_stack(config) as stack:
        tenancy = Tenancy(stack, DEFAULT_TENANTS, team=team)
        tenancy.provision()
        try:
            spec = load_strategy("shop.tenancy:make_tenancy")
            profile = Profile("bench", max_examples=EXAMPLES, hammer_requests=1, hammer_seconds=1)
            started = time.monotonic()
            result, seen = explore(stack, tenancy, spec, "transaction", profile, seed=SEED)
            seconds = time.monotonic() - started
            reset_started = time.monotonic()
            for _ in range(RESETS):
                tenancy.reset(reconnect=False)
            reset_ms = (time.monotonic() - reset_started) / RESETS * 1000
        finally:
            tenancy.close()
    return {"verdict": result.verdict.value, "examples": seen.examples, "seconds": round(seconds, 2),
            "examples_per_second": round(seen.examples / seconds, 1), "reset_ms": round(reset_ms, 1)}


def main() -> None:
    stop_on_sigterm()
    config = resolve_config({}, env={})
    builtin = measure(config, "built-in tables only", None)
    team = load_team(dataclasses.replace(config, models="shop.models:Base",
                                         actions=("shop.reports:customer_count",)))
    with_team = measure(config, "with the shop's tables and action", team)
    emit(figure="team_examples_per_second", route="transaction", builtin=builtin, team=with_team,
         ratio=round(with_team["examples_per_second"] / builtin["examples_per_second"], 3))


if __name__ == "__main__":
    main()
