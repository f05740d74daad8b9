"""`harness verify` end to end on real servers: exit status, report, gating a user strategy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# dev profile, one route, a fixed seed: quick and repeatable.
QUICK = ["--profile", "dev", "--seed", "1", "--hammer-requests", "200", "--hammer-seconds", "5",
         "--routes", "transaction"]


def harness_verify(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run([sys.executable, "-m", "harness", "verify", "--report-dir", str(tmp_path / "reports"),
                           "--example-db", str(tmp_path / "examples"), *QUICK, *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)


def results(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "reports" / "latest" / "results.json").read_text())


def test_a_sound_user_strategy_passes_the_gate(tmp_path):
    done = harness_verify(tmp_path, "--strategy", "harness.tenancy.strategies.builtin:translate_map_pinned")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "harness verify: PASS" in done.stdout
    assert (tmp_path / "reports" / "latest" / "index.html").exists()
    data = results(tmp_path)
    assert data["verdict"] == "pass" and not data["builtin_self_check"] and data["complete"] is True
    assert {c["scenario"] for c in data["cells"]} >= {"fresh_session", "pool_state", "generated", "hammer"}
    assert all(c["required"] == "pass" for c in data["cells"])
    # Progress lines name the cell, the count and the time left.
    assert "[  1/10]" in done.stderr and "left" in done.stderr


def test_a_leaky_user_strategy_fails_the_gate_and_names_the_cells(tmp_path):
    done = harness_verify(tmp_path, "--strategy", "harness.tenancy.strategies.builtin:translate_map")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "harness verify: FAIL" in done.stdout
    assert "translate_map x transaction x raw_text measured fail, required pass" in done.stdout
    assert "Report: " in done.stdout
    failing = {c["scenario"] for c in results(tmp_path)["cells"] if not c["as_required"]}
    assert "raw_text" in failing
    # The dev profile draws only a few programs; the searching scenarios need not both hit it.
    assert failing & {"generated", "hammer"}


def test_a_bad_strategy_is_a_usage_error_before_anything_starts(tmp_path):
    done = harness_verify(tmp_path, "--strategy", "no_such_module_anywhere:factory")
    assert done.returncode == 2
    assert "no_such_module_anywhere" in done.stderr and "To fix this" in done.stderr
    assert not (tmp_path / "reports").exists()


def test_scan_findings_fail_the_run(tmp_path):
    legacy = tmp_path / "app"
    legacy.mkdir()
    (legacy / "db.py").write_text('def bind(session, schema):\n    session.execute(f"SET search_path TO {schema}")\n')
    done = harness_verify(tmp_path, "--strategy", "harness.tenancy.strategies.builtin:translate_map_pinned",
                          "--scan", str(legacy))
    assert done.returncode == 1
    assert "static scan found 1 finding(s), 1 gating" in done.stdout
    assert results(tmp_path)["scan"]["findings"][0]["line"] == 2


def test_a_report_folder_that_is_a_file_is_refused_before_anything_starts(tmp_path):
    (tmp_path / "reports").write_text("not a folder")
    done = harness_verify(tmp_path, "--strategy", "harness.tenancy.strategies.builtin:translate_map_pinned")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--report-dir" in done.stderr and "To fix this" in done.stderr
    assert "[  1/" not in done.stderr  # no cell ran


def test_results_are_written_as_cells_finish_and_kept_when_the_run_stops_early(tmp_path):
    import signal
    import time

    reports = tmp_path / "reports"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "verify", "--jobs", "1", "--profile", "dev",
                             "--strategy", "translate_map_pinned", "--routes", "direct", "--report-dir", str(reports),
                             "--example-db", str(tmp_path / "examples"), "--seed", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        progress = ""
        while not progress.startswith("[  2/") and proc.poll() is None:
            progress = proc.stderr.readline()
        deadline = time.monotonic() + 10  # the first cells are in results.json while the run goes on
        while not list(reports.glob("*/results.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        (during,) = reports.glob("*/results.json")
        partial = json.loads(during.read_text())
        assert partial["complete"] is False and partial["verdict"] == "fail" and partial["cells"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "cell(s) that finished are in" in err, err
    kept = json.loads((reports / "latest" / "results.json").read_text())
    # (the signal may land between cell 2's progress line and its results: at least cell 1 is kept)
    assert kept["complete"] is False and kept["verdict"] == "fail" and 1 <= len(kept["cells"]) < 10
    assert "INCOMPLETE" in (reports / "latest" / "index.html").read_text()


def test_results_json_is_rewritten_at_most_a_tenth_of_the_time(monkeypatch, tmp_path):
    """A run of a thousand cells has a results.json of megabytes: the parent must not spend its time
    rewriting it after every cell while its workers' results wait."""
    import time as clock

    from harness import cli
    from harness.report import results, writer

    writes = []
    monkeypatch.setattr(results, "results_json", lambda run: {"run": run})
    monkeypatch.setattr(writer, "write_partial_results", lambda data, folder: (clock.sleep(0.2), writes.append(data)))
    partial = cli.PartialResults(tmp_path)
    partial.INTERVAL = 0.01
    started = clock.monotonic()
    while clock.monotonic() - started < 1.5:
        partial.update(object())
    # each write takes 0.2 s: the next waits 2 s, so 1.5 s of updates write once
    assert len(writes) == 1 and partial.interval >= 2.0
