"""Programs: clients, their requests and steps, and the interleaving they run in."""

from __future__ import annotations

import dataclasses
import itertools

from harness.checks.steps import REQUEST_STEPS, is_fault, is_request_step
from harness.errors import UsageError

@dataclasses.dataclass(frozen=True)
class Request:
    """One request of a client: a tenant and the steps between open and end_request."""

    tenant: str
    steps: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if not is_request_step(s)]
        if unknown:
            raise UsageError(f"Unknown step(s) {unknown}.", fix=[f"use: {', '.join(REQUEST_STEPS)}, or a team step "
                                                                        "(team_read:<table>, action:<func>, ...)"])

    def actions(self) -> tuple[str, ...]:
        return ("open", *self.steps, "end_request")


@dataclasses.dataclass(frozen=True)
class Program:
    """Clients (each a sequence of requests) and a schedule: the client index of each action.

    Without a schedule, clients take turns one action at a time (round robin),
    which is the interleaving most likely to mix their connections.

    ``probe``: when the pool probe runs: ``"request"`` after every request ends,
    ``"end"`` once after the last action (every request has ended then), or
    ``""`` never.
    """

    clients: tuple[tuple[Request, ...], ...]
    schedule: tuple[int, ...] | None = None
    probe: str = ""

    def __post_init__(self) -> None:
        if self.probe not in ("", "request", "end"):
            raise UsageError(f"probe={self.probe!r}: use 'request', 'end' or ''.")

    def client_actions(self) -> list[list[tuple[int, Request, str]]]:
        """Per client: (request index, request, action) in order."""
        return [[(r, req, action) for r, req in enumerate(requests) for action in req.actions()]
                for requests in self.clients]

    def order(self) -> list[int]:
        """The full interleaving: which client acts at each point."""
        lengths = [len(actions) for actions in self.client_actions()]
        if self.schedule is not None:
            counts = [self.schedule.count(c) for c in range(len(lengths))]
            if counts != lengths:
                raise UsageError(f"Schedule gives clients {counts} actions; their requests need {lengths}.")
            return list(self.schedule)
        order: list[int] = []
        remaining = list(lengths)
        for client in itertools.cycle(range(len(lengths))):
            if not any(remaining):
                break
            if remaining[client]:
                order.append(client)
                remaining[client] -= 1
        return order

    @property
    def faults(self) -> tuple[str, ...]:
        """The fault steps the program takes, each once, in order."""
        return tuple(dict.fromkeys(step for requests in self.clients for request in requests
                                   for step in request.steps if is_fault(step)))

    @property
    def tenants(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for requests in self.clients:
            for request in requests:
                seen.setdefault(request.tenant)
        return tuple(seen)


def step_count(program: Program) -> int:
    """Steps of a program, not counting the open/end_request that frame every request."""
    return sum(len(r.steps) for requests in program.clients for r in requests)


def describe_program(program: Program) -> str:
    """The program as a person reads it: requests per client, then the interleaving."""
    lines = []
    for c, requests in enumerate(program.clients):
        for r, request in enumerate(requests):
            lines.append(f"client {c} request {r} for {request.tenant!r}: "
                         + ", ".join(("open",) + request.steps + ("end_request",)))
    lines.append(f"interleaving (client per action): {list(program.order())}")
    return "\n".join(lines)
