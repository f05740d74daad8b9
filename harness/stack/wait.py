"""Deadline-bound waits that report what they last saw."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from harness.errors import StartupTimeout

T = TypeVar("T")


class ProcessExited(Exception):
    """The process being waited for is gone; waiting longer cannot help."""


def wait_until(
    probe: Callable[[], T],
    *,
    what: str,
    timeout: float,
    interval: float = 0.02,
    log_tail: Callable[[], str] | None = None,
    alive: Callable[[], bool] | None = None,
) -> T:
    """Call ``probe`` until it returns without raising, or the deadline passes.

    ``alive`` lets the wait stop early when the process died: there is no point
    in polling a server that exited. The error names the last exception seen and
    carries the tail of the process log.
    """
    deadline = time.monotonic() + timeout
    last: str = "no attempt finished"
    while True:
        try:
            return probe()
        except Exception as exc:  # noqa: BLE001 - every failure is an observation
            last = f"{type(exc).__name__}: {str(exc).strip()}"
        exited = alive is not None and not alive()
        if exited or time.monotonic() >= deadline:
            state = "exited before it became ready" if exited else f"was not ready after {timeout:.1f}s"
            checked = [f"last observation: {last}"]
            if log_tail is not None:
                tail = log_tail().rstrip()
                checked.append("log tail:\n" + ("\n".join("      " + l for l in tail.splitlines()) or "      (empty)"))
            raise StartupTimeout(
                f"{what} {state}.",
                checked=checked,
                fix=["read the log tail above; a port clash or a bad setting shows there",
                     "raise HARNESS_START_TIMEOUT if the machine is merely slow"],
            )
        time.sleep(interval)
