"""The fault proxy and the PgBouncer restart: what the faults scenario breaks under the layer.

First the relay alone, in front of an echo server (no PostgreSQL); then one
native stack that runs the faults scenario: its PgBouncers reach PostgreSQL
through the proxy, which cuts and delays their server connections on demand.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import psycopg
import pytest

from harness.config import HarnessConfig
from harness.stack import Stack, start_native_stack
from harness.stack.ports import lease_port
from harness.stack.process import pid_alive
from harness.stack.proxy import FaultProxy, ProxyError
from harness.stack.stack import conninfo

T = TypeVar("T")


def eventually(probe: Callable[[], T], accept: Callable[[T], bool], timeout: float = 5.0) -> T:
    """Poll ``probe`` until ``accept`` takes its value or the deadline passes; the last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if accept(value) or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


# --- the relay alone, in front of an echo server ------------------------------------------------


@pytest.fixture
def echo_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultProxy]:
    """A fault proxy in front of a threaded echo server that stands in for PostgreSQL."""
    server = socket.create_server(("127.0.0.1", 0))
    threads: list[threading.Thread] = []

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            thread = threading.Thread(target=echo, args=(conn,), daemon=True)
            thread.start()
            threads.append(thread)

    threading.Thread(target=serve, daemon=True).start()
    lease = lease_port()
    proxy = FaultProxy(tmp_path_factory.mktemp("px"), lease.port, server.getsockname()[1])
    try:
        proxy.start(timeout=10)
        yield proxy
    finally:
        proxy.stop()
        lease.release()
        server.close()


def test_a_large_transfer_goes_through_whole_and_in_order(echo_proxy):
    payload = os.urandom(4 * 1024 * 1024)  # far above the socket buffers: partial sends and back-pressure
    received = bytearray()
    with socket.create_connection(("127.0.0.1", echo_proxy.port), timeout=10) as conn:
        writer = threading.Thread(target=conn.sendall, args=(payload,))
        writer.start()
        while len(received) < len(payload):
            chunk = conn.recv(65536)
            assert chunk, f"the proxy closed after {len(received)} bytes"
            received += chunk
        writer.join()
        assert echo_proxy.connections() == 1
    assert bytes(received) == payload
    assert eventually(echo_proxy.connections, lambda n: n == 0) == 0


def test_the_control_socket_refuses_what_it_does_not_know(echo_proxy):
    with pytest.raises(ProxyError, match="unknown command"):
        echo_proxy._ask("EXPLODE")
    with pytest.raises(ProxyError, match="not numbers"):
        echo_proxy._ask("DELAY soon forever")
    assert echo_proxy.cut() == 0 and echo_proxy.alive()


# --- a native stack that runs the faults scenario -----------------------------------------------


@pytest.fixture(scope="module")
def faults_stack(harness_config: HarnessConfig) -> Iterator[Stack]:
    """One native stack for the module, started as a run of the faults scenario starts it."""
    config = dataclasses.replace(harness_config, scenarios=("faults",))
    assert config.runs_faults
    with start_native_stack(config) as running:
        yield running


def connect(stack: Stack, route: str) -> psycopg.Connection:
    return psycopg.connect(**conninfo(stack.url(route)), autocommit=True, connect_timeout=5)


def timed_query(conn: psycopg.Connection) -> float:
    started = time.monotonic()
    assert conn.execute("SELECT 1").fetchone() == (1,)
    return time.monotonic() - started


def server_connections(stack: Stack) -> int:
    """The server connections both PgBouncers hold, as they report them."""
    return sum(len(stack.admin(route, "SHOW SERVERS")) for route in stack.bouncers)


@pytest.mark.server
def test_the_bouncers_reach_postgres_through_the_proxy(faults_stack):
    proxy = faults_stack.proxy
    assert proxy is not None and proxy.alive() and proxy in faults_stack.processes
    for route in ("session", "transaction"):
        assert faults_stack.bouncers[route].server_port == proxy.port
        with connect(faults_stack, route) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)
        assert {row["port"] for row in faults_stack.admin(route, "SHOW SERVERS")} == {proxy.port}
    # Every server connection PgBouncer opened is one the proxy relays.
    assert eventually(lambda: (proxy.connections(), server_connections(faults_stack)),
                      lambda counts: counts[0] == counts[1]) == (server_connections(faults_stack),) * 2
    assert proxy.connections() >= 2


@pytest.mark.server
def test_a_cut_breaks_a_session_client_and_a_new_connection_works(faults_stack):
    with connect(faults_stack, "session") as held:
        assert held.execute("SELECT 1").fetchone() == (1,)
        assert faults_stack.proxy.cut() >= 1
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1").fetchone()
    assert "cut" in faults_stack.proxy.log_tail()
    with connect(faults_stack, "session") as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.server
def test_a_delay_slows_every_round_trip_for_its_duration_only(faults_stack):
    with connect(faults_stack, "session") as conn:
        timed_query(conn)  # the server connection is open before the window starts
        faults_stack.proxy.delay(0.3, 1.0)
        assert timed_query(conn) >= 0.25
        # Polled with a deadline: fast again once the window (1 s, plus chunks held in it) is over.
        assert eventually(lambda: timed_query(conn), lambda took: took < 0.1, timeout=5.0) < 0.1


@pytest.mark.server
def test_a_restarted_pgbouncer_answers_on_the_same_port_and_drops_its_clients(faults_stack):
    bouncer = faults_stack.bouncers["session"]
    port, pid = bouncer.port, bouncer.pid
    with connect(faults_stack, "session") as before:
        assert before.execute("SELECT 1").fetchone() == (1,)
        bouncer.restart()
        assert bouncer.port == port and bouncer.pid != pid and bouncer.alive() and not pid_alive(pid)
        with pytest.raises(psycopg.OperationalError):
            before.execute("SELECT 1").fetchone()
    with connect(faults_stack, "session") as after:
        assert after.execute("SELECT 1").fetchone() == (1,)
    assert faults_stack.admin("session", "SHOW VERSION")  # the admin console logged in again
    assert faults_stack.url("session").port == port


def test_without_the_faults_scenario_there_is_no_proxy(stack, harness_config):
    if harness_config.runs_faults and stack.backend == "native":
        assert stack.proxy is not None  # this run asked for faults (HARNESS_PROFILE=nightly, say)
        return
    assert stack.proxy is None
    assert all(part.name != "proxy" for part in stack.processes)


@pytest.mark.server
def test_closing_the_stack_stops_the_proxy(faults_stack):
    """Last in the module: it closes the module's stack (closing it again at teardown is harmless)."""
    proxy = faults_stack.proxy
    pid = proxy.pid
    assert pid is not None and pid_alive(pid)
    faults_stack.close()
    assert not pid_alive(pid) and not proxy.alive()
    assert not any(pid_alive(p) for p in faults_stack.pids)
