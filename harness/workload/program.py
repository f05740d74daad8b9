"""Programs: clients, their requests and steps, and the interleaving they run in."""

from __future__ import annotations

import dataclasses
import itertools

from harness.errors import UsageError

# Steps a request can take. "open" and "end_request" frame every request.
DATA_STEPS = {
    # step: style
    "orm_select_all": "orm",
    "orm_select_pk": "orm",
    "orm_insert": "orm",
    "orm_update": "orm",
    "orm_delete": "orm",
    "job_read": "orm",
    "task_insert": "orm",
    "task_read": "orm",
    "raw_select_unqualified": "raw_unqualified",
    "raw_insert_unqualified": "raw_unqualified",
    "raw_select_qualified": "raw_qualified",
    "raw_insert_qualified": "raw_qualified",
}
CONTROL_STEPS = ("commit", "rollback", "fail_and_rollback", "savepoint", "rollback_to_savepoint",
                 "scheduler_pass")
FRAME_STEPS = ("open", "end_request")
STEP_STYLES = {**DATA_STEPS, **{s: "control" for s in CONTROL_STEPS + FRAME_STEPS}}


@dataclasses.dataclass(frozen=True)
class Request:
    """One request of a client: a tenant and the steps between open and end_request."""

    tenant: str
    steps: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in DATA_STEPS and s not in CONTROL_STEPS]
        if unknown:
            raise UsageError(f"Unknown step(s) {unknown}.",
                             fix=[f"use: {', '.join(sorted(DATA_STEPS) + list(CONTROL_STEPS))}"])

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
    def tenants(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for requests in self.clients:
            for request in requests:
                seen.setdefault(request.tenant)
        return tuple(seen)
