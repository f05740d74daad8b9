"""The replay command a failing cell prints reruns exactly that cell, on real servers."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

HARNESS = str(Path(sys.executable).parent / "harness")  # the console script a user runs


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, **(env or {})})


def results(report_dir: Path) -> dict:
    return json.loads((report_dir / "latest" / "results.json").read_text())


def replayed(command: str, report_dir: Path, cwd: Path) -> dict:
    """Run a printed replay command (its HARNESS_* variables first, then `harness ...`) into ``report_dir``."""
    words = shlex.split(command)
    env = {}
    while re.fullmatch(r"HARNESS_\w+=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[0] == "harness", command
    done = run([HARNESS, *words[1:], "--report-dir", str(report_dir)], cwd, env)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return results(report_dir)


def failing_kinds(cell: dict) -> set[str]:
    return {f["kind"] for f in cell["findings"] if f["gating"]}


def test_the_replay_of_a_failing_cell_reruns_exactly_that_cell(tmp_path):
    # search_path_set fails `generated` (and after_commit) on transaction: expectations.toml.
    done = run([HARNESS, "verify", "--strategy", "search_path_set", "--routes", "direct,transaction",
                "--scenarios", "after_commit,generated", "--profile", "dev", "--seed", "1", "--tenants", "3",
                "--report-dir", str(tmp_path / "reports"), "--example-db", str(tmp_path / "examples")], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    cells = {(c["route"], c["scenario"]): c for c in results(tmp_path / "reports")["cells"]}
    assert len(cells) == 4
    for key in (("transaction", "generated"), ("transaction", "after_commit")):
        original = cells[key]
        assert original["verdict"] == "fail" and original["replay"], original
        assert "--tenants 3" in original["replay"] and f"--scenarios {key[1]}" in original["replay"]
        again = replayed(original["replay"], tmp_path / f"replay-{key[1]}", tmp_path)
        assert len(again["cells"]) == 1, [(c["strategy"], c["route"], c["scenario"]) for c in again["cells"]]
        (cell,) = again["cells"]
        assert (cell["strategy"], cell["route"], cell["scenario"]) == (original["strategy"], *key)
        assert cell["verdict"] == "fail"
        assert failing_kinds(cell) & failing_kinds(original), (failing_kinds(cell), failing_kinds(original))

    # The counterexample's size is said in the unit its timeline shows, and in the program's own.
    generated = cells[("transaction", "generated")]
    recorded, program = map(int, re.search(r"shrunk to (\d+) recorded steps? \((\d+) program steps?\)",
                                           generated["verdict_reason"]).groups())
    assert recorded == len(generated["evidence"]) or recorded > 80
    lines = [line for line in generated["counterexample"]["program"] if line.startswith("client ")]
    assert program == sum(len(line.split(": ", 1)[1].split(", ")) - 2 for line in lines)
