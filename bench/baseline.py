"""What the bench scripts share: the starting commit's tree, bounded child runs, JSON lines.

The speed goals of the bench are ratios against a *baseline* commit measured in
the same bench run (timings drift between runs on a shared machine; ratios in
one run do not). The baseline is exported with ``git archive`` into a temporary
folder (nothing in this repository's index or work tree changes) and run from
the same virtualenv with ``PYTHONPATH=<that folder>``, so its ``harness``
package is imported instead of this tree's. The current tree runs the same way
with ``PYTHONPATH=<this tree>``.

Every child runs in a session of its own and is bounded: on its timeout it gets
SIGTERM (the harness tears its stack down on it), then, after a grace period,
its whole process group is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
BASELINE = os.environ.get("BENCH_BASELINE", "328396d")  # this starting commit
STOP_GRACE = 60.0  # seconds a timed-out child has to tear its stack down before it is killed


def emit(**figure) -> None:
    """One figure, one JSON line on stdout."""
    print(json.dumps(figure), flush=True)


def progress(message: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def stop_on_sigterm() -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so a running child is stopped (and its stack torn down) first."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def ratio(after: float | None, before: float | None, digits: int = 3) -> float | None:
    if after is None or before is None or not before:
        return None
    return round(after / before, digits)


@contextlib.contextmanager
def baseline_tree() -> Iterator[Path | None]:
    """The baseline commit's files in a temporary folder (removed on exit); None when the
    repository does not hold that commit (a shallow clone): the before figures are then skipped."""
    folder = Path(tempfile.mkdtemp(prefix="harness-bench-baseline-"))
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{BASELINE}^{{commit}}"],
                                capture_output=True, text=True, timeout=30)
        if commit.returncode != 0:
            progress(f"baseline {BASELINE} is not in this repository's history: before figures are skipped")
            yield None
            return
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", commit.stdout.strip()],
                                   stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "-C", str(folder)], stdin=archive.stdout, timeout=120)
        archive.stdout.close()
        if archive.wait(timeout=120) != 0 or untar.returncode != 0:
            raise RuntimeError(f"could not export {BASELINE} with git archive")
        # Byte-compile it now, so the first timed run does not pay for it (this tree's is compiled already).
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(folder / "harness")],
                       stdout=subprocess.DEVNULL, timeout=300, check=False)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def child_env(tree: Path, **extra: str) -> dict[str, str]:
    """The environment of a child running ``tree``'s harness: no HARNESS_* from the caller
    (every run gets the same settings, from its command line), PYTHONPATH first to ``tree``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    env["PYTHONPATH"] = str(tree)
    env.update(extra)
    return env


def run_bounded(cmd: Sequence[str], *, tree: Path, timeout: float, stdout: IO | int | None = None,
                stderr: IO | int | None = None, env: dict[str, str] | None = None) -> tuple[int | None, float]:
    """Run ``cmd`` with ``tree``'s harness, in ``tree``; return (exit status or None on timeout, seconds)."""
    started = time.monotonic()
    child = subprocess.Popen(list(cmd), cwd=tree, env=env or child_env(tree), stdout=stdout, stderr=stderr,
                             start_new_session=True)
    try:
        status: int | None = child.wait(timeout=timeout)
        seconds = time.monotonic() - started
    except BaseException as exc:
        # Timed out, or the bench itself is stopped: let the child tear its stack down, then kill what is left.
        status, seconds = None, time.monotonic() - started
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(child.pid)
        child.wait()
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        progress(f"timed out after {timeout:.0f}s and stopped: {' '.join(cmd)}")
    else:
        # multiprocessing's resource tracker outlives its parent by a moment: give the group a few seconds.
        deadline = time.monotonic() + 5.0
        while _group_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.25)
        if _group_alive(child.pid):
            progress(f"left processes running after it exited (killed now): {' '.join(cmd)}")
            _kill_group(child.pid)
    return status, seconds


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
