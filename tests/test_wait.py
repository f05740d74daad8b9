"""Waits have deadlines and report what they last saw."""

import time

import pytest

from harness.errors import StartupTimeout
from harness.stack.wait import wait_until


def test_returns_the_first_successful_probe():
    calls = []

    def probe():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "ready"

    assert wait_until(probe, what="thing", timeout=5, interval=0) == "ready"
    assert len(calls) == 3


def test_timeout_names_the_last_observation_and_the_log_tail():
    def probe():
        raise ConnectionError("connection refused on 5432")

    started = time.monotonic()
    with pytest.raises(StartupTimeout) as info:
        wait_until(probe, what="PostgreSQL on port 5432", timeout=0.2, interval=0.01,
                   log_tail=lambda: "FATAL:  could not bind IPv4 address")
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "PostgreSQL on port 5432 was not ready after 0.2s" in message
    assert "connection refused on 5432" in message
    assert "could not bind IPv4 address" in message


def test_a_dead_process_ends_the_wait_at_once():
    with pytest.raises(StartupTimeout, match="exited before it became ready"):
        wait_until(lambda: 1 / 0, what="pgbouncer", timeout=60, alive=lambda: False)
