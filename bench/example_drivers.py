"""The realistic example app on each driver (`make bench`), one JSON line per driver.

On one stack, examples/clinic's own session dependency runs the generated search (transaction route,
fixed seed, its whole declarative Base as the team's tables and its job and request handlers as actions)
on psycopg 3, psycopg2 and asyncpg: reported are examples per second, the time and the examples to the
first failure (the job's raw-SQL leak), the verdict and the shrunk counterexample's length. Then the same
with the job fixed (ORM selects): examples per second of a search that finds nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from baseline import ROOT, emit, progress, stop_on_sigterm

from harness.config import apply_team_environment, resolve_config  # noqa: E402
from harness.stack import start_stack  # noqa: E402
from harness.team import load_team  # noqa: E402
from harness.tenancy.provisioning import Tenancy  # noqa: E402
from harness.tenancy.strategy import load_strategy  # noqa: E402
from harness.tenancy.tenants import DEFAULT_TENANTS  # noqa: E402
from harness.workload.generated import Profile, explore  # noqa: E402

DRIVERS = ("psycopg", "psycopg2", "asyncpg")
EXAMPLES = 40
SEED = 7
LEAK = "for invoice in session.execute(OVERDUE).all():"


def fixed_copy(source: Path, into: Path) -> Path:
    """A copy of the example whose job reads through the ORM (the fix), as tests/test_example_clinic.py does."""
    copy = into / "clinic-fixed"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis", "reports"))
    fixed = copy / "clinic" / "jobs_fixed.py"
    if fixed.is_file():  # the example ships its fixed job: it replaces the leaking one
        shutil.copy(fixed, copy / "clinic" / "jobs.py")
    return copy


def measure(project: Path, label: str) -> None:
    sys.path.insert(0, str(project))
    try:
        config = resolve_config({}, env=dict(os.environ), cwd=project)
        apply_team_environment(config)
        team = load_team(config)
        with start_stack(config) as stack:
            tenancy = Tenancy(stack, DEFAULT_TENANTS, team=team)
            tenancy.provision()
            try:
                for driver in DRIVERS:
                    progress(f"example bench: clinic ({label}) on {driver} ...")
                    spec = load_strategy(config.strategies[0]).on_driver(driver)
                    profile = Profile("bench", max_examples=EXAMPLES, hammer_requests=1, hammer_seconds=1)
                    started = time.monotonic()
                    result, seen = explore(stack, tenancy, spec, "transaction", profile, seed=SEED)
                    seconds = time.monotonic() - started
                    steps = len(result.history.steps) if result.program is not None else None
                    emit(figure="example_app_on_driver", app=f"clinic ({label})", driver=driver,
                         driver_used=result.driver_used, verdict=result.verdict.value, examples=seen.examples,
                         seconds=round(seconds, 2), examples_per_second=round(seen.examples / seconds, 2),
                         seconds_to_first_failure=None if seen.seconds_to_first_failure is None
                         else round(seen.seconds_to_first_failure, 2),
                         examples_to_first_failure=seen.examples_to_first_failure,
                         counterexample_steps=steps)
            finally:
                tenancy.close()
    finally:
        sys.path.remove(str(project))
        for name in [m for m in sys.modules if m == "clinic" or m.startswith("clinic.")]:
            del sys.modules[name]


def main() -> None:
    stop_on_sigterm()
    example = ROOT / "examples" / "clinic"
    measure(example, "the leaking job")
    with tempfile.TemporaryDirectory(prefix="bench-clinic-") as folder:
        measure(fixed_copy(example, Path(folder)), "the job fixed")


if __name__ == "__main__":
    main()
