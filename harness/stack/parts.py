"""The parts of a stack, as every backend provides them: one PostgreSQL server and its PgBouncers.

The native backend's processes, the docker backend's containers and the
external backend's servers (run by someone else) look alike to
:class:`~harness.stack.stack.Stack`, so that it tears them down, reads their
logs and waits for them in one way whatever started them.
"""

from __future__ import annotations

from typing import Any, Protocol


class ServerPart(Protocol):
    """One server of a stack (PostgreSQL or a PgBouncer), whoever runs it.

    A part the harness cannot look into (an external server) has no pid and an
    empty log, and its ``stop()`` leaves the server running: it is not the
    harness's to stop.
    """

    #: the name its log lines are shown under ("postgres", "pgbouncer-session", ...)
    name: str

    @property
    def port(self) -> int:
        """The port clients connect to (on a docker stack, the port Docker mapped)."""
        ...

    @property
    def pid(self) -> int | None:
        """The server's process id on this machine or the engine's host, if the harness can see it."""
        ...

    def alive(self) -> bool:
        """False once the server is gone, so that a wait for it stops at once."""
        ...

    def log_size(self) -> int:
        """An offset into the log: what :meth:`log_since` reads from."""
        ...

    def log_since(self, offset: int) -> str:
        """The log written since ``offset`` (from :meth:`log_size`)."""
        ...

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log, for an error that says what the server said."""
        ...

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (or, when the harness does not own it, let go of it); safe to call twice."""
        ...


class PoolerPart(ServerPart, Protocol):
    """A pooler of a stack (PgBouncer, Pgpool-II, pgagroal): the server part behind a pooled route.

    What the harness asks of every pooler; a PgBouncer is also a :class:`BouncerPart` (its admin console).
    A part that can be restarted in place (native) also has ``restart(timeout: float = 10.0) -> None``.
    """

    #: ``session`` or ``transaction``: the route it serves
    pool_mode: str
    #: which pooler it is: ``pgbouncer``, ``pgpool`` or ``pgagroal`` (harness.deployments.POOLERS)
    kind: str
    #: whether it opens server connections before any client asks (pgagroal's prefill): after a drop, new
    #: backends of the login role are its fresh ones, not leftovers
    prefills: bool

    def settings(self) -> dict[str, str]:
        """Setting -> the value it runs with, read back from the running pooler: the team's carried-over
        settings and those of the harness's that decide what clients see."""
        ...

    def idle_servers(self, user: str, database: str) -> int:
        """How many clients of ``user`` on ``database`` the state probe opens at once (each in a transaction)
        so that together they land on every server connection the pooler keeps idle for them: the idle
        ones it lists (PgBouncer), or every child process that may hold one (Pgpool-II)."""
        ...

    def drop_server_connections(self, databases: list[str], timeout: float = 10.0) -> None:
        """Close every server connection it keeps to ``databases`` (and the clients on them) now, so that no
        session state on them reaches the next example; it accepts new clients at once after."""
        ...


class BouncerPart(PoolerPart, Protocol):
    """A PgBouncer of a stack: the server part behind a pooled route.

    A native PgBouncer also has ``restart(timeout: float = 10.0) -> None``: an
    immediate shutdown, then the same configuration on the same port, ready
    when its admin console answers; clients connected before it get an error
    on their next statement. Docker and external PgBouncers do not have it:
    check ``hasattr(part, "restart")``.
    """

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run one admin console command (``SHOW POOLS``, ``RECONNECT``...) and return its rows."""
        ...


class ProxyPart(ServerPart, Protocol):
    """A fault proxy between the PgBouncers and PostgreSQL (native backend, when the faults scenario runs)."""

    def cut(self) -> int:
        """Reset every relayed connection now, both sides; return how many were cut."""
        ...

    def delay(self, seconds: float, duration: float) -> None:
        """For the next ``duration`` seconds, hold every chunk (both ways) ``seconds`` before forwarding it."""
        ...

    def connections(self) -> int:
        """How many relayed connections (PgBouncer to PostgreSQL) are open."""
        ...
