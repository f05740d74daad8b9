"""`harness verify --jobs N`: N stacks at once, and nothing left running when the run is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.stack.native import RUN_DIR_PREFIX, run_root


def run_dirs() -> set[Path]:
    return set(run_root().glob(RUN_DIR_PREFIX + "*"))


def server_pids(folders: set[Path]) -> list[int]:
    """Processes whose command line names one of the run folders (postgres -D ..., pgbouncer <ini>)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(str(folder) in command for folder in folders):
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stopping_a_run_on_two_stacks_tears_both_down(tmp_path, signum):
    before = run_dirs()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "verify", "--jobs", "2", "--profile", "dev",
                             "--strategy", "translate_map_pinned", "--report-dir", str(tmp_path / "reports"),
                             "--example-db", str(tmp_path / "examples")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Stopped once a cell has finished (its progress line), so both workers are up and running cells.
        progress = ""
        while not progress.startswith("[  1/") and proc.poll() is None:
            progress = proc.stderr.readline()
        deadline = time.monotonic() + 10
        while len(ours := run_dirs() - before) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ours) == 2, "two stacks should be up"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (130, 128 + signal.SIGTERM), err
    assert "torn down" in err
    deadline = time.monotonic() + 10
    while (server_pids(ours) or run_dirs() & ours) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server_pids(ours), "servers of a worker's stack still run"
    assert not run_dirs() & ours, "a worker's run folder is left behind"


def test_a_worker_that_cannot_start_its_stack_stops_the_run_with_the_reason(tmp_path):
    env = {**os.environ, "HARNESS_START_TIMEOUT": "0.001"}
    done = subprocess.run([sys.executable, "-m", "harness", "verify", "--jobs", "2", "--profile", "dev",
                           "--strategy", "translate_map_pinned", "--report-dir", str(tmp_path / "reports")],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "not ready" in done.stderr


def test_a_run_whose_stacks_cannot_start_exits_with_hundreds_of_cells_still_queued(tmp_path):
    """Every built-in x route x scenario queued (more than a pipe holds), no stack starts: the run stops with
    the reason instead of waiting at exit to hand the queued cells to workers that are gone."""
    env = {**os.environ, "HARNESS_START_TIMEOUT": "0.001"}
    done = subprocess.run([sys.executable, "-m", "harness", "verify", "--jobs", "2", "--profile", "dev",
                           "--report-dir", str(tmp_path / "reports")],
                          capture_output=True, text=True, timeout=90, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "not ready" in done.stderr
