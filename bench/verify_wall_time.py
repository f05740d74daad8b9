"""Wall time of `harness verify` (what `make verify` runs after its setup), one JSON line per figure.

Each figure is measured back to back in this run: before (this issue's starting commit,
bench/baseline.py, which has no --jobs), after (this tree, default --jobs: the number of
cores), after with --jobs 1. Every run: the ci profile, the same fixed seed (env
BENCH_SEED), a cold example database (a fresh empty folder) and a temporary report folder.

- ``make_verify_wall_time``: the 13 built-ins (goal: after/before <= 0.55);
- ``verify_one_strategy_wall_time``: one strategy, 30 cells, for ``translate_map_pinned``
  (sound: every generated example runs) and ``search_path_set`` (leaky) (goal: <= 0.5);
  medians of BENCH_VERIFY_ONE_REPEATS (default 3) interleaved rounds;
- ``verify_verdicts`` after each: the verdicts of the runs' results.json compared cell by
  cell (strategy, route, scenario): after vs after --jobs 1, and after vs before.

The harness's own output of each run goes to reports/bench-logs/ (ignored by git).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from baseline import BASELINE, ROOT, baseline_tree, emit, progress, ratio, run_bounded, stop_on_sigterm

SEED = int(os.environ.get("BENCH_SEED", "20240611"))
FULL_TIMEOUT = float(os.environ.get("BENCH_VERIFY_TIMEOUT", "1200"))
ONE_TIMEOUT = float(os.environ.get("BENCH_VERIFY_ONE_TIMEOUT", "480"))
LOGS = ROOT / "reports" / "bench-logs"
# A one-strategy run takes 10-30 s: short enough for noise to matter, so it is repeated.
ONE_REPEATS = int(os.environ.get("BENCH_VERIFY_ONE_REPEATS", "3"))
ONE_STRATEGY = ("translate_map_pinned", "search_path_set")


def verify(tree: Path | None, label: str, name: str, extra: list[str], timeout: float) -> dict | None:
    """One `harness verify` with ``tree``'s harness; its wall time, exit status and verdicts."""
    if tree is None:
        return None
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"verify-{name}-{label}.log"
    progress(f"verify {name} {label} ... (log {log})")
    with tempfile.TemporaryDirectory(prefix="harness-bench-verify-") as scratch:
        examples, reports = Path(scratch) / "examples", Path(scratch) / "reports"
        examples.mkdir()
        cmd = [sys.executable, "-m", "harness.cli", "verify", "--profile", "ci", "--seed", str(SEED),
               "--example-db", str(examples), "--report-dir", str(reports), *extra]
        with log.open("w") as out:
            out.write(f"$ PYTHONPATH={tree} {' '.join(cmd)}\n")
            out.flush()
            status, seconds = run_bounded(cmd, tree=tree, timeout=timeout, stdout=out, stderr=subprocess.STDOUT)
        found = sorted(p for p in reports.glob("*/results.json") if not p.parent.is_symlink())
        results = json.loads(found[-1].read_text()) if found else None
    verdicts = None
    if results is not None:
        verdicts = {f"{c['strategy']} x {c['route']} x {c['scenario']}": c["verdict"] for c in results["cells"]}
    progress(f"verify {name} {label}: {'timed out' if status is None else f'exit {status}'} in {seconds:.0f}s, "
             f"{len(verdicts) if verdicts is not None else 'no'} cells")
    return {"seconds": round(seconds, 1), "exit": status, "verdicts": verdicts, "log": str(log),
            "jobs": ((results or {}).get("environment") or {}).get("jobs")}


def differences(a: dict | None, b: dict | None) -> list[str] | None:
    if a is None or b is None or a["verdicts"] is None or b["verdicts"] is None:
        return None
    va, vb = a["verdicts"], b["verdicts"]
    return [f"{key}: {va.get(key, 'missing')} vs {vb.get(key, 'missing')}"
            for key in sorted(set(va) | set(vb)) if va.get(key) != vb.get(key)]


def measure(before_tree: Path | None, figure: str, name: str, extra: list[str], goal: str, timeout: float,
            repeats: int = 1, **fields) -> None:
    """before, after, after --jobs 1, back to back (``repeats`` times, interleaved: medians are reported)."""
    sides = {"before": (before_tree, "before", extra), "after": (ROOT, "after", extra),
             "after_jobs1": (ROOT, "after-jobs1", [*extra, "--jobs", "1"])}
    runs: dict[str, list[dict | None]] = {label: [] for label in sides}
    for repeat in range(repeats):
        for label, (tree, tag, args) in sides.items():
            runs[label].append(verify(tree, tag if repeats == 1 else f"{tag}-{repeat + 1}", name, args, timeout))

    def seconds(label: str) -> float | None:
        # 0: every cell as required, 1: some not (a leaky strategy gated); 2 or a timeout: the run itself failed.
        done = [run["seconds"] for run in runs[label] if run is not None and run["exit"] in (0, 1)]
        return round(statistics.median(done), 1) if done and len(done) == len(runs[label]) else None

    every = {f"{label}_runs": [run and run["seconds"] for run in runs[label]] for label in runs} if repeats > 1 else {}
    first_after = runs["after"][0]
    emit(figure=figure, **fields, profile="ci", seed=SEED, before=seconds("before"), after=seconds("after"),
         ratio=ratio(seconds("after"), seconds("before")), ratio_of="after/before" + (
             f", medians of {repeats} interleaved runs" if repeats > 1 else ""), goal=goal,
         after_jobs1=seconds("after_jobs1"), ratio_jobs1=ratio(seconds("after_jobs1"), seconds("before")),
         jobs_after=first_after and first_after["jobs"], **every,
         exits={label: sorted({run and run["exit"] for run in runs[label]}, key=str) for label in runs},
         baseline=BASELINE)
    jobs = [differences(a, b) for a, b in zip(runs["after"], runs["after_jobs1"])]
    versus = [differences(b, a) for b, a in zip(runs["before"], runs["after"])]
    cells = first_after["verdicts"] if first_after else None
    emit(figure="verify_verdicts", scope=name, cells=len(cells) if cells is not None else None,
         compared_runs=repeats,
         differences_jobs1_vs_default=None if None in jobs else sum(len(d) for d in jobs),
         differences_before_vs_after=None if None in versus else sum(len(d) for d in versus),
         jobs1_vs_default=[d for found in jobs for d in found or []][:20],
         before_vs_after=[d for found in versus for d in found or []][:20])


def main() -> None:
    stop_on_sigterm()
    with baseline_tree() as before_tree:
        measure(before_tree, "make_verify_wall_time", "builtins", [], "<= 0.55", FULL_TIMEOUT, strategies="built-ins")
        for strategy in ONE_STRATEGY:
            measure(before_tree, "verify_one_strategy_wall_time", strategy, ["--strategy", strategy], "<= 0.5",
                    ONE_TIMEOUT, repeats=ONE_REPEATS, strategy=strategy)


if __name__ == "__main__":
    main()
