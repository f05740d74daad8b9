"""The fault proxy's relay: the child process between the PgBouncers and PostgreSQL (see harness.stack.proxy).

It imports the standard library only: the harness runs this file as a script (``python -I relay.py``), so
the child starts without importing the harness (its drivers and SQLAlchemy).

A TCP fault proxy between the PgBouncers and PostgreSQL (native backend, faults scenario).

The relay runs in a process of its own, so that nothing the harness process
does (the GIL, a slow check) ever delays the traffic it relays. One thread, one
``selectors`` loop: it accepts on ``127.0.0.1:<port>``, opens one connection to
PostgreSQL per accepted one, and relays chunks of up to 64 KiB both ways.

The harness steers it through a Unix socket in the run folder (``proxy.sock``;
the folder is private to the run), one command per connection, one line each
way:

=========================  ===============  ==========================================
command                    reply            effect
=========================  ===============  ==========================================
``PING``                   ``OK pong``      readiness: it listens and relays
``CONNECTIONS``            ``OK <n>``       relayed connections open now
``CUT``                    ``OK <n>``       reset every relayed connection (both sides,
                                            RST through ``SO_LINGER`` 0); ``n`` cut
``DELAY <s> <duration>``   ``OK``           for ``duration`` seconds, hold every chunk
                                            ``s`` seconds before forwarding it
=========================  ===============  ==========================================

Anything else gets ``ERR <why>``. The child runs :func:`main` of this module
and nothing else of the harness; it writes one line per event (open, close,
reset, cut, delay) to its log file (``proxy.log``), which tests read like any
server's.

While no delay is on, a chunk is forwarded as soon as it is read; a chunk the
sink cannot take, or one held by a delay, waits in its direction's queue
(first in, first out, so a chunk read after the window ends still follows the
held ones), and the source is not read while its queue holds 1 MiB.
"""

from __future__ import annotations

import argparse
import collections
import os
import selectors
import socket
import struct
import sys
import time
from pathlib import Path
from collections.abc import Sequence

HOST = "127.0.0.1"
CHUNK = 64 * 1024
#: bytes held for one direction before the proxy stops reading its source (back-pressure)
HIGH_WATER = 1024 * 1024
CONTROL_TIMEOUT = 2.0
SOCKET_NAME = "proxy.sock"
WOULD_BLOCK = object()  # what Relay._attempt returns for a socket call that would block
DROPPED = object()  # ... and for one that failed
# ---------------------------------------------------------------------------
# The relay (runs in the child process)
# ---------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} proxy[{os.getpid()}] {message}", flush=True)


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN: the peer sees a connection reset, as after a network fault."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Direction:
    """One way of a relayed connection: chunks read from ``source``, due at a time, written to ``sink``."""

    def __init__(self, source: socket.socket, sink: socket.socket):
        self.source = source
        self.sink = sink
        self.queue: collections.deque[list] = collections.deque()  # [due, memoryview]
        self.held = 0
        self.eof = False  # source said EOF; sink gets a FIN once the queue is empty
        self.shut = False

    def due_at(self) -> float | None:
        return self.queue[0][0] if self.queue else None


class _Pair:
    """A relayed connection: the accepted client (a PgBouncer) and its connection to PostgreSQL."""

    def __init__(self, client: socket.socket, server: socket.socket, label: str):
        self.client = client
        self.server = server
        self.label = label
        self.up = _Direction(client, server)
        self.down = _Direction(server, client)
        self.closed = False


class Relay:
    """The proxy's event loop: relayed connections, the control socket, the delay window."""

    def __init__(self, port: int, server_port: int, control_path: Path):
        self.server_port = server_port
        self.control_path = control_path
        self.selector = selectors.DefaultSelector()
        self.pairs: set[_Pair] = set()
        self.interest: dict[socket.socket, int] = {}
        self.delay_seconds = 0.0
        self.delay_until = 0.0
        self.accepted = 0
        # Listen first: a port clash then ends the process before the control socket answers.
        self.listener = socket.create_server((HOST, port), backlog=128)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        if control_path.exists():
            control_path.unlink()
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control.bind(str(control_path))
        self.control.listen(16)
        self.control.setblocking(False)
        self.selector.register(self.control, selectors.EVENT_READ, self._accept_control)
        _log(f"listening on {HOST}:{port}, relaying to {HOST}:{server_port}; control at {control_path}")

    # -- the loop ----------------------------------------------------------

    def run(self) -> None:
        while True:
            timeout = self._next_due()
            for key, events in self.selector.select(timeout):
                key.data(key.fileobj, events)
            if any(pair.up.queue or pair.down.queue for pair in self.pairs):
                for pair in list(self.pairs):
                    self._flush(pair)

    def _next_due(self) -> float | None:
        """Seconds until the next held chunk is due (None: nothing held, block until an event).

        A due chunk whose sink is full is left to the selector (it waits for the
        sink to be writable), or the loop would spin.
        """
        held = [d for pair in self.pairs for d in (pair.up, pair.down) if d.queue]
        if not held:
            return None
        waiting = {sock for sock, mask in self.interest.items() if mask & selectors.EVENT_WRITE}
        dues = [d.queue[0][0] for d in held if d.sink not in waiting]
        if not dues:
            return None
        return max(0.0, min(dues) - time.monotonic())

    # -- relayed connections ----------------------------------------------

    def _accept(self, listener: socket.socket, events: int) -> None:
        try:
            client, address = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            server = socket.create_connection((HOST, self.server_port), timeout=CONTROL_TIMEOUT)
        except OSError as exc:
            _log(f"connection from {address[0]}:{address[1]} dropped: PostgreSQL did not answer ({exc})")
            _reset(client)
            return
        self.accepted += 1
        for sock in (client, server):
            sock.setblocking(False)
            # PgBouncer and PostgreSQL turn Nagle off; a relay that leaves it on adds its own latency.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, server, f"#{self.accepted} {address[0]}:{address[1]}")
        self.pairs.add(pair)
        self._update(pair)
        _log(f"open {pair.label} ({len(self.pairs)} open)")

    def _attempt(self, pair: _Pair, call, *args):
        """``call(*args)``, a socket's recv or send: WOULD_BLOCK when it would, DROPPED when it failed (the
        pair is then dropped)."""
        try:
            return call(*args)
        except (BlockingIOError, InterruptedError):
            return WOULD_BLOCK
        except OSError as exc:
            self._drop(pair, f"{exc.strerror or exc}")
            return DROPPED

    def _readable(self, pair: _Pair, direction: _Direction) -> None:
        data = self._attempt(pair, direction.source.recv, CHUNK)
        if data is WOULD_BLOCK or data is DROPPED:
            return
        if not data:
            direction.eof = True
            self._flush(pair)
            return
        now = time.monotonic()
        hold = self.delay_seconds if now < self.delay_until else 0.0
        chunk = memoryview(data)
        if not hold and not direction.queue:
            # The usual case: nothing held, nothing delayed; forward it now and leave the interest as it is.
            sent = self._attempt(pair, direction.sink.send, chunk)
            if sent is DROPPED:
                return
            sent = 0 if sent is WOULD_BLOCK else sent
            if sent == len(chunk):
                return
            chunk = chunk[sent:]
        direction.queue.append([now + hold, chunk])
        direction.held += len(chunk)
        self._flush(pair)

    def _flush(self, pair: _Pair) -> None:
        """Write every due chunk; what the sink cannot take now waits for it to be writable."""
        if pair.closed:
            return
        now = time.monotonic()
        for direction in (pair.up, pair.down):
            while direction.queue and direction.queue[0][0] <= now:
                chunk = direction.queue[0][1]
                sent = self._attempt(pair, direction.sink.send, chunk)
                if sent is WOULD_BLOCK:
                    break
                if sent is DROPPED:
                    return
                direction.held -= sent
                if sent < len(chunk):
                    direction.queue[0][1] = chunk[sent:]
                    break
                direction.queue.popleft()
            if direction.eof and not direction.queue and not direction.shut:
                direction.shut = True
                try:
                    direction.sink.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        if pair.up.shut and pair.down.shut:
            self._close(pair, "closed")
            return
        self._update(pair)

    def _update(self, pair: _Pair) -> None:
        """Read a source while its direction holds little; wait for a sink to drain when a due chunk is stuck."""
        now = time.monotonic()
        masks = {pair.client: 0, pair.server: 0}
        for direction in (pair.up, pair.down):
            if not direction.eof and direction.held < HIGH_WATER:
                masks[direction.source] |= selectors.EVENT_READ
            due = direction.due_at()
            if due is not None and due <= now:
                masks[direction.sink] |= selectors.EVENT_WRITE
        for sock, mask in masks.items():
            self._interest(sock, mask, pair)

    def _interest(self, sock: socket.socket, mask: int, pair: _Pair) -> None:
        current = self.interest.get(sock, 0)
        if mask == current:
            return
        if current == 0:
            self.selector.register(sock, mask, lambda s, e, pair=pair: self._event(pair, s, e))
        elif mask == 0:
            self.selector.unregister(sock)
        else:
            self.selector.modify(sock, mask, lambda s, e, pair=pair: self._event(pair, s, e))
        if mask:
            self.interest[sock] = mask
        else:
            self.interest.pop(sock, None)

    def _event(self, pair: _Pair, sock: socket.socket, events: int) -> None:
        if pair.closed:
            return
        if events & selectors.EVENT_READ:
            self._readable(pair, pair.up if sock is pair.client else pair.down)
        if events & selectors.EVENT_WRITE and not pair.closed:
            self._flush(pair)

    def _forget(self, pair: _Pair) -> None:
        pair.closed = True
        self.pairs.discard(pair)
        for sock in (pair.client, pair.server):
            if self.interest.pop(sock, 0):
                self.selector.unregister(sock)

    def _close(self, pair: _Pair, why: str) -> None:
        self._forget(pair)
        pair.client.close()
        pair.server.close()
        _log(f"{why} {pair.label} ({len(self.pairs)} open)")

    def _drop(self, pair: _Pair, why: str) -> None:
        """A socket error on one side: reset both, as the network would have."""
        self._forget(pair)
        _reset(pair.client)
        _reset(pair.server)
        _log(f"reset {pair.label} after an error: {why} ({len(self.pairs)} open)")

    # -- control -----------------------------------------------------------

    def _accept_control(self, control: socket.socket, events: int) -> None:
        try:
            conn, _ = control.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        buffer = bytearray()
        self.selector.register(conn, selectors.EVENT_READ,
                               lambda s, e, buffer=buffer: self._control_line(s, buffer))

    def _control_line(self, conn: socket.socket, buffer: bytearray) -> None:
        try:
            data = conn.recv(1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        buffer += data
        if data and b"\n" not in buffer and len(buffer) < 1024:
            return
        self.selector.unregister(conn)
        if data:
            reply = self.command(bytes(buffer).split(b"\n", 1)[0].decode("utf-8", "replace").strip())
            try:
                conn.setblocking(True)  # a one-line reply to our own harness: it fits in the socket buffer
                conn.settimeout(CONTROL_TIMEOUT)
                conn.sendall(reply.encode() + b"\n")
            except OSError:
                pass
        conn.close()

    def command(self, line: str) -> str:
        """Run one control command; the reply line."""
        words = line.split()
        verb = words[0].upper() if words else ""
        if verb == "PING" and len(words) == 1:
            return "OK pong"
        if verb == "CONNECTIONS" and len(words) == 1:
            return f"OK {len(self.pairs)}"
        if verb == "CUT" and len(words) == 1:
            pairs = list(self.pairs)
            for pair in pairs:
                self._forget(pair)
                _reset(pair.client)
                _reset(pair.server)
            _log(f"cut {len(pairs)} connections")
            return f"OK {len(pairs)}"
        if verb == "DELAY" and len(words) == 3:
            try:
                seconds, duration = float(words[1]), float(words[2])
            except ValueError:
                return f"ERR not numbers: {line}"
            if seconds < 0 or duration < 0:
                return f"ERR negative: {line}"
            self.delay_seconds = seconds
            self.delay_until = time.monotonic() + duration
            _log(f"delay every chunk {seconds:.3f}s for {duration:.3f}s")
            return "OK"
        return f"ERR unknown command: {line!r} (PING, CONNECTIONS, CUT, DELAY <seconds> <duration>)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay.py", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="loopback port the PgBouncers connect to")
    parser.add_argument("--server-port", type=int, required=True, help="PostgreSQL's loopback port")
    parser.add_argument("--control", type=Path, required=True, help="Unix socket the harness steers it through")
    args = parser.parse_args(argv)
    try:
        relay = Relay(args.port, args.server_port, args.control)
    except OSError as exc:
        # "Address already in use" is what the native backend's port retry looks for.
        _log(f"could not listen on {HOST}:{args.port}: {exc.strerror or exc}")
        return 1
    relay.run()
    return 0



if __name__ == "__main__":
    sys.exit(main())
