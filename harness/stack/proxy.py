"""The fault proxy of a native stack (faults scenario): the relay process between the PgBouncers and
PostgreSQL (:mod:`harness.stack.relay`, its protocol), and the control client that steers it.
"""

from __future__ import annotations

import os
import pwd
import socket
import sys
from pathlib import Path

from harness.stack.relay import CONTROL_TIMEOUT, SOCKET_NAME
from harness.stack.account import Account
from harness.stack.process import ServerProcess
from harness.stack.wait import wait_until

#: the child: the relay's file run as a script in isolated mode (-I: no site, no harness on sys.path)
RELAY_SCRIPT = Path(__file__).resolve().with_name("relay.py")


# ---------------------------------------------------------------------------
# The harness side
# ---------------------------------------------------------------------------


class ProxyError(Exception):
    """The proxy refused a control command, or did not answer it."""


class FaultProxy(ServerProcess):
    """The fault proxy process of a native stack, and the control client that steers it.

    It runs as the harness's own user, not the server account: it is a Python
    process, and the interpreter running the harness (a virtualenv under a
    private home folder, say) need not be readable by that account. It needs no
    privilege and keeps the rest of :class:`ServerProcess`: its own process
    group, death with the harness, a log file.
    """

    def __init__(self, run_dir: Path, port: int, server_port: int, account: Account | None = None):
        super().__init__("proxy", account or _current_account(), run_dir / "proxy.log")
        self.run_dir = run_dir
        self.port = port
        self.server_port = server_port
        self.control_path = run_dir / SOCKET_NAME

    def start(self, timeout: float) -> None:
        """Start the relay and wait until its control socket answers (it listens by then)."""
        self.spawn([sys.executable, "-I", RELAY_SCRIPT, "--port", self.port, "--server-port", self.server_port,
                    "--control", self.control_path], cwd=self.run_dir)
        wait_until(self.ping, what=f"{self.name} on port {self.port}", timeout=timeout,
                   log_tail=self.log_tail, alive=self.alive)

    def ping(self) -> None:
        self._ask("PING")

    def connections(self) -> int:
        """How many relayed connections (PgBouncer to PostgreSQL) are open."""
        return int(self._ask("CONNECTIONS"))

    def cut(self) -> int:
        """Reset every relayed connection now, both sides; how many were cut."""
        return int(self._ask("CUT"))

    def delay(self, seconds: float, duration: float) -> None:
        """For the next ``duration`` seconds, hold every chunk (both ways) ``seconds`` before forwarding it."""
        self._ask(f"DELAY {seconds!r} {duration!r}")

    def _ask(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(CONTROL_TIMEOUT)
            conn.connect(str(self.control_path))
            conn.sendall(command.encode() + b"\n")
            reply = bytearray()
            while b"\n" not in reply:
                data = conn.recv(1024)
                if not data:
                    break
                reply += data
        line = reply.decode("utf-8", "replace").strip()
        if not line.startswith("OK"):
            raise ProxyError(f"{self.name} answered {command!r} with {line or 'nothing'!r}")
        return line[2:].strip()


def _current_account() -> Account:
    entry = pwd.getpwuid(os.geteuid())
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)

