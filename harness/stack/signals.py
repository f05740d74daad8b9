"""Turn SIGTERM and SIGHUP into an exception so that teardown code runs.

Python's default for SIGTERM is to die on the spot, skipping every ``finally``
block; a CI runner cancelling a job would then leave servers behind.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the run receives SIGTERM or SIGHUP.

    A subclass of KeyboardInterrupt so that pytest and the CLI stop the run the
    way they stop it for Ctrl-C: unwinding, with teardown.
    """

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"received {signal.Signals(signum).name}")

    def __reduce__(self):
        # Rebuilt from the signal number when it crosses a process boundary (a --jobs worker's stop).
        return (Terminated, (self.signum,))


def _raise(signum: int, frame: object) -> None:
    raise Terminated(signum)


def install() -> dict[int, object]:
    """Install the handlers (main thread only); return the previous ones."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _raise) for sig in HANDLED}


def restore(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


@contextlib.contextmanager
def teardown_on_signals() -> Iterator[None]:
    previous = install()
    try:
        yield
    finally:
        restore(previous)
