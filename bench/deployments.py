"""Per deployment (bookworm, trixie, sid, bookworm-pgpool, trixie-pgagroal): build, warm stack start and verify wall time, one JSON line each.

- build: `scripts/build-deployment SUITE --images` cold (``--rebuild``: debootstrap, native binaries and
  images from nothing) and reused (everything there already);
- warm stack start: the median of five native starts after a first one (initdb template reused), and
  the same on docker when an engine answers;
- verify wall time: `harness verify --deployment SUITE --strategy translate_map_prepared` (every
  default scenario, ci profile, seed 1234), the strategy whose verdict depends on the deployment.

Set BENCH_DEPLOYMENTS_COLD=0 to skip the cold builds (each takes a minute or two).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.config import resolve_config, without_deployment_settings
from harness.deployments import DEPLOYMENTS
from harness.stack import start_stack
from harness.stack.deployment_builds import host_offers

ROOT = Path(__file__).resolve().parents[1]
WARM_RUNS = 5


def emit(figure: str, deployment: str, **values) -> None:
    print(json.dumps({"figure": figure, "deployment": deployment, **values}), flush=True)


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode not in (0, 1):  # verify exits 1 when a cell is not as required: still a wall time
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return round(time.monotonic() - started, 2)


def warm_start(name: str, backend: str, cache: Path) -> list[float]:
    config = resolve_config({"deployment": name, "backend": backend, "cache_dir": cache}, env={})
    start_stack(config).close()
    starts = []
    for _ in range(WARM_RUNS):
        started = time.monotonic()
        stack = start_stack(config)
        starts.append(time.monotonic() - started)
        stack.close()
    return starts


def main() -> None:
    from harness.stack.containers import engine_answers

    env = without_deployment_settings(os.environ)
    docker = engine_answers()
    build = [str(ROOT / "scripts" / "build-deployment")]
    for name, deployment in DEPLOYMENTS.items():
        # the host's own packages serve a deployment of their versions (bookworm on bookworm): images only
        native = ["--no-native"] if host_offers(deployment) else []
        images = ["--images"] if docker else []
        if images or not native:  # else there is nothing to build: the host's packages, no Docker engine
            what = {"images": bool(images), "native": not native}
            arguments = deployment.build_arguments
            if os.environ.get("BENCH_DEPLOYMENTS_COLD", "1") != "0":
                emit("deployment_build_cold", name,
                     seconds=timed([*build, *arguments, "--rebuild", *images, *native], env), **what)
            emit("deployment_build_reused", name, seconds=timed([*build, *arguments, *images, *native], env),
                 **what)
        with tempfile.TemporaryDirectory(prefix="harness-bench-cache-") as cache:
            for backend in ("native", "docker") if docker else ("native",):
                starts = warm_start(name, backend, Path(cache))
                emit("deployment_stack_start_warm", name, backend=backend, pooler=deployment.pooler, runs=len(starts),
                     median_s=round(statistics.median(starts), 3), max_s=round(max(starts), 3))
        with tempfile.TemporaryDirectory(prefix="harness-bench-report-") as reports:
            seconds = timed([sys.executable, "-m", "harness", "verify", "--deployment", name, "--backend", "native",
                             "--strategy", "translate_map_prepared", "--seed", "1234", "--report-dir", reports], env)
        emit("deployment_verify_wall_time", name, strategy="translate_map_prepared", seconds=seconds)


if __name__ == "__main__":
    main()
