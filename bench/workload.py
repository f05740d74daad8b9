"""Workload figures, one JSON line each (`make bench`), before (this issue's starting commit,
bench/baseline.py) and after (this tree), measured back to back in the same run.

- ``generated_examples_per_second`` per route: a sound cell, so every example runs;
- ``hammer_requests_per_second``: the hammer through the transaction route next to a bare
  loop running the same request shapes (same generator, seeds and threads, same strategy)
  with no history, pids or bookkeeping, alternating in rounds in one process (goal:
  hammer/bare loop >= 0.9 in this tree);
- ``first_failure`` for each failing built-in cell (seconds and examples to the first
  failure, first seed) and their ``first_failure_median`` (goal: median < 2 s);
- ``quality_detection_rate``: for each built-in cell whose required verdict for
  ``generated`` is ``fail``, over K seeds (env BENCH_QUALITY_SEEDS, default 3), the share
  of runs that found the failure with a counterexample of at most 6 steps (goal: 1.0, as
  tests/quality/test_detection_power.py requires of every run); before: the starting
  commit's rate over its first BENCH_QUALITY_BEFORE_SEEDS seeds (default 1).

Each side runs bench/workload_worker.py in a child process with PYTHONPATH set to its tree;
``ratio`` is after/before unless ``ratio_of`` says otherwise.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from baseline import BASELINE, ROOT, baseline_tree, emit, progress, ratio, run_bounded, stop_on_sigterm

WORKER = Path(__file__).resolve().with_name("workload_worker.py")
QUALITY_SEEDS = int(os.environ.get("BENCH_QUALITY_SEEDS", "3"))
# The starting commit's rate is a reference, not the goal: its first seed only (its first-failure figures),
# which keeps `make bench` within its time budget.
QUALITY_BEFORE_SEEDS = int(os.environ.get("BENCH_QUALITY_BEFORE_SEEDS", "1"))
FIRST_SEED = 11  # the first-failure figures have used seed 11 from the start
HAMMER_ROUNDS = int(os.environ.get("BENCH_HAMMER_ROUNDS", "5"))
EXAMPLES = 60


def side(tree: Path | None, label: str, what: str, *args: str, timeout: float) -> list[dict]:
    """Run one worker measurement with ``tree``'s harness; its JSON lines (none when skipped or failed)."""
    if tree is None:
        return []
    progress(f"workload {what} {label} ...")
    with tempfile.TemporaryFile("w+") as out:
        status, seconds = run_bounded([sys.executable, str(WORKER), what, *args], tree=tree, timeout=timeout,
                                      stdout=out)
        out.seek(0)
        lines = [json.loads(line) for line in out if line.startswith("{")]
    progress(f"workload {what} {label}: {'timed out' if status is None else f'exit {status}'} in {seconds:.0f}s")
    if status != 0:
        emit(figure="bench_error", step=f"workload {what} {label}", exit=status, seconds=round(seconds, 1))
    return lines


def examples_figures(before_tree: Path | None) -> None:
    runs = {label: {r["route"]: r for r in side(tree, label, "examples", "--examples", str(EXAMPLES), timeout=900)}
            for label, tree in (("before", before_tree), ("after", ROOT))}
    for route in runs["after"] or runs["before"]:
        per = {label: (round(r[route]["examples"] / r[route]["seconds"], 2) if route in r else None)
               for label, r in runs.items()}
        emit(figure="generated_examples_per_second", route=route, strategy="translate_map_pinned",
             examples=runs["after"].get(route, {}).get("examples"), before=per["before"], after=per["after"],
             ratio=ratio(per["after"], per["before"]), ratio_of="after/before", goal=None)


def hammer_figure(before_tree: Path | None) -> None:
    figures = {}
    for label, tree in (("before", before_tree), ("after", ROOT)):
        rounds = side(tree, label, "hammer", "--rounds", str(HAMMER_ROUNDS), timeout=900)
        if not rounds:
            figures[label] = None
            continue
        hammer = sum(r["hammer_requests"] for r in rounds) / sum(r["hammer_seconds"] for r in rounds)
        bare = sum(r["bare_requests"] for r in rounds) / sum(r["bare_seconds"] for r in rounds)
        figures[label] = {"hammer": round(hammer, 1), "bare_loop": round(bare, 1), "ratio": round(hammer / bare, 3),
                          "requests": sum(r["hammer_requests"] for r in rounds),
                          "verdicts": sorted({r["verdict"] for r in rounds})}
    before, after = figures["before"], figures["after"]
    emit(figure="hammer_requests_per_second", route="transaction", threads=8, rounds=HAMMER_ROUNDS,
         before=before and before["ratio"], after=after and after["ratio"], ratio=after and after["ratio"],
         ratio_of="hammer/bare_loop requests per second, this tree", goal=">= 0.9",
         hammer_before=before and before["hammer"], bare_loop_before=before and before["bare_loop"],
         hammer_after=after and after["hammer"], bare_loop_after=after and after["bare_loop"],
         requests_after=after and after["requests"], hammer_verdicts_after=after and after["verdicts"])


def detection_figures(before_tree: Path | None) -> None:
    seeds = {label: ",".join(str(FIRST_SEED + i) for i in range(max(1, count)))
             for label, count in (("before", QUALITY_BEFORE_SEEDS), ("after", QUALITY_SEEDS))}
    runs = {label: side(tree, label, "detection", "--seeds", seeds[label],
                        timeout=400 * (seeds[label].count(",") + 1))
            for label, tree in (("before", before_tree), ("after", ROOT))}
    firsts = {label: {(r["strategy"], r["route"]): r for r in found if r["seed"] == FIRST_SEED}
              for label, found in runs.items()}
    for key, r in firsts["after"].items():
        b = firsts["before"].get(key)
        emit(figure="first_failure", strategy=key[0], route=key[1], seed=FIRST_SEED,
             seconds=round(r["seconds_to_first_failure"] or -1, 3), examples=r["examples_to_first_failure"],
             before_seconds=b and round(b["seconds_to_first_failure"] or -1, 3),
             before_examples=b and b["examples_to_first_failure"])
    medians = {}
    for label, cells in firsts.items():
        times = [r["seconds_to_first_failure"] if r["seconds_to_first_failure"] is not None else float("inf")
                 for r in cells.values()]
        medians[label] = round(statistics.median(times), 3) if times else None
    emit(figure="first_failure_median", cells=len(firsts["after"]), seed=FIRST_SEED, before=medians["before"],
         after=medians["after"], ratio=ratio(medians["after"], medians["before"]), ratio_of="after/before",
         goal="after < 2 s")
    rates = {}
    for label, found in runs.items():
        rates[label] = round(sum(r["small"] for r in found) / len(found), 3) if found else None
    after = runs["after"]
    missed = [{"strategy": r["strategy"], "route": r["route"], "seed": r["seed"], "verdict": r["verdict"],
               "steps": r["steps"]} for r in after if not r["small"]]
    emit(figure="quality_detection_rate", profile="ci", seeds=seeds["after"], seeds_before=seeds["before"],
         max_steps=6, cells=len({(r["strategy"], r["route"]) for r in after}), runs=len(after),
         found=sum(r["found"] for r in after), found_small=sum(r["small"] for r in after),
         before=rates["before"], after=rates["after"], ratio=ratio(rates["after"], rates["before"]),
         ratio_of="after/before", goal="after = 1.0", missed=missed[:20])


def main() -> None:
    stop_on_sigterm()
    with baseline_tree() as before_tree:
        if before_tree is not None:
            progress(f"workload: before = {BASELINE} (exported to {before_tree}), after = {ROOT}")
        examples_figures(before_tree)
        hammer_figure(before_tree)
        detection_figures(before_tree)


if __name__ == "__main__":
    main()
