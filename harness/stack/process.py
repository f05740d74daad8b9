"""One server process of a stack: started, logged, and always stopped.

Every process of the native backend goes through :class:`ServerProcess`:
- it runs as the unprivileged server account when the harness is root;
- it gets its own process group, so teardown can kill stragglers;
- on Linux it asks the kernel to signal it when the harness dies
  (``PR_SET_PDEATHSIG``), so even a SIGKILLed harness leaves no server behind;
- its stdout and stderr go to a log file whose new lines each test can read.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Sequence

from harness.stack.account import Account

PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int):
    """A preexec hook asking the kernel to send ``sig`` when the harness dies.

    The kernel sends it when the *thread* that forked the child exits, not the
    process; a stack started from a short-lived thread would lose its servers
    with the thread. So the hook is used only for spawns from the main thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return preexec


def run_as(account: Account, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a short command (initdb) as the server account; raise with its output on failure."""
    extra = {} if account.is_current else {"user": account.uid, "group": account.gid, "extra_groups": []}
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False,
                          preexec_fn=_die_with_parent(signal.SIGKILL), **extra, **kwargs)


class ServerProcess:
    """A long-running server (postgres or pgbouncer) owned by one stack."""

    #: signal asking the server to stop quickly; subclasses choose theirs.
    stop_signal: int = signal.SIGTERM
    #: signal the kernel sends when the harness dies.
    death_signal: int = signal.SIGTERM

    def __init__(self, name: str, account: Account, log_path: Path):
        self.name = name
        self.account = account
        self.log_path = log_path
        self.popen: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def spawn(self, argv: Sequence[str], cwd: Path) -> None:
        extra = {} if self.account.is_current else {
            "user": self.account.uid, "group": self.account.gid, "extra_groups": []}
        with open(self.log_path, "ab") as log:
            if self.account.uid != os.geteuid():
                os.chown(self.log_path, self.account.uid, self.account.gid)
            self.popen = subprocess.Popen(
                [str(a) for a in argv], cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent(self.death_signal), **extra)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_since(max(0, self.log_size() - 64 * 1024))
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server and everything in its process group; idempotent."""
        if self.popen is None:
            return
        pgid = self.popen.pid
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(self.stop_signal)
                self.popen.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        # Whatever is left in the group (backends, a hung server) is killed.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.popen.poll() is None:
            self.popen.wait(timeout)


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a running process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")


def run_owner() -> str:
    """``<hostname>:<pid>`` of this harness process, as container labels and schema comments record it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_gone(host: str, pid: str | int) -> bool:
    """True when a recorded owner is a process of this host that is gone: its run was abandoned.

    The owner of another host cannot be checked from here, nor can a pid that is
    not a number: both count as alive.
    """
    return host == socket.gethostname() and str(pid).isdigit() and not pid_alive(int(pid))
