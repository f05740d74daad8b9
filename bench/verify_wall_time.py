"""Wall time of `make verify` in the ci profile, as one JSON line (goal: <= 180 s on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    started = time.monotonic()
    log = ROOT / "reports" / "bench-verify.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as out:
        status = subprocess.run(["make", "--no-print-directory", "verify", "PYTEST_ARGS=-q -p no:cacheprovider"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "HARNESS_PROFILE": "ci"}).returncode
    print(json.dumps({"figure": "make_verify_wall_time", "profile": "ci",
                      "seconds": round(time.monotonic() - started, 1), "exit": status, "log": str(log)}), flush=True)


if __name__ == "__main__":
    main()
