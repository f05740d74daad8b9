"""Stack start and teardown figures, one JSON line each (`make bench`).

cold: no initdb template (a fresh cache folder); warm: the template reused.
Goal (foundation issue): warm start of PostgreSQL + two PgBouncers <= 1.5 s.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from harness.config import resolve_config
from harness.stack import start_stack

WARM_RUNS = 5


def emit(figure: str, seconds: list[float]) -> None:
    print(json.dumps({"figure": figure, "runs": len(seconds), "median_s": round(statistics.median(seconds), 3),
                      "max_s": round(max(seconds), 3)}), flush=True)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="harness-bench-cache-") as cache:
        config = resolve_config({"cache_dir": Path(cache)})
        started = time.monotonic()
        stack = start_stack(config)
        cold = time.monotonic() - started
        stack.close()
        teardowns = [stack.timings["teardown"]]
        warm: list[float] = []
        for _ in range(WARM_RUNS):
            started = time.monotonic()
            stack = start_stack(config)
            warm.append(time.monotonic() - started)
            stack.close()
            teardowns.append(stack.timings["teardown"])
    emit("stack_start_cold", [cold])
    emit("stack_start_warm", warm)
    emit("stack_teardown", teardowns)


if __name__ == "__main__":
    main()
