"""Stack start and teardown figures, one JSON line each (`make bench`).

Native backend: cold is without an initdb template (a fresh cache folder),
warm with the template reused. Goal (foundation issue): warm start of
PostgreSQL + two PgBouncers <= 1.5 s.

Docker backend (when an engine answers; `make bench` builds or reuses the
images of scripts/build-images first): cold is the first stack of this process
(engine client, image checks, first containers from the images), warm the
median of the next ones. Every docker start initialises a fresh data directory
inside its container, as the official image does.
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


def emit(figure: str, seconds: list[float], **extra: str) -> None:
    print(json.dumps({"figure": figure, "runs": len(seconds), "median_s": round(statistics.median(seconds), 3),
                      "max_s": round(max(seconds), 3), **extra}), flush=True)


def measure(backend: str, config) -> None:
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
    emit(f"{backend}_stack_start_cold", [cold])
    emit(f"{backend}_stack_start_warm", warm)
    emit(f"{backend}_stack_teardown", teardowns)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="harness-bench-cache-") as cache:
        measure("native", resolve_config({"backend": "native", "cache_dir": Path(cache)}))
    from harness.stack.containers import engine_answers

    if engine_answers():
        config = resolve_config({"backend": "docker"})
        print(json.dumps({"figure": "docker_images", "postgres": config.postgres_image,
                          "pgbouncer": config.pgbouncer_image}), flush=True)
        measure("docker", config)
    else:
        print(json.dumps({"figure": "docker_stack_start", "skipped": "no Docker engine answers"}), flush=True)


if __name__ == "__main__":
    main()
