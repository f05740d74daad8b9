"""Free loopback ports that two stacks on one machine never both take.

A port is chosen by the kernel (bind to port 0) and then leased with an
exclusive ``flock`` on a file named after it, held until the stack is torn
down. Other harness processes (pytest-xdist workers, parallel CI jobs) skip
leased ports; anything else that grabs the port in between is caught when the
server fails to bind, and the caller retries with a fresh lease.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from pathlib import Path

LOCK_DIR = Path(tempfile.gettempdir()) / "tenant-harness-ports"
HOST = "127.0.0.1"


class PortLease:
    """One leased port; ``release()`` gives it back."""

    def __init__(self, port: int, handle: int):
        self.port = port
        self._handle: int | None = handle

    def release(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    def __repr__(self) -> str:
        return f"PortLease({self.port})"


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def lease_port(attempts: int = 50) -> PortLease:
    LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
    for _ in range(attempts):
        port = _kernel_port()
        handle = os.open(LOCK_DIR / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            continue
        return PortLease(port, handle)
    raise RuntimeError(f"no free loopback port after {attempts} attempts")


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


def claim_port(port: int) -> None:
    """Raise OSError while ``port`` cannot be bound on loopback the way PgBouncer binds it (SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
