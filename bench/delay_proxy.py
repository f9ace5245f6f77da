"""A loopback TCP proxy that delays every chunk by a fixed one-way time, in both directions.

Stands in for ``tc netem`` (not available in this VM's kernel: "Specified qdisc kind is
unknown") to give MIMIC's PostgreSQL and Blob Storage connections the round trip they have in
a cloud region. Each chunk read from one side is forwarded to the other side ``delay`` seconds
after it was read, in order; reading goes on meanwhile, so the delay adds latency without
capping bandwidth (as a longer cable would, not a slower one).

    .venv/bin/python -m bench.delay_proxy --target 127.0.0.1:5432 --delay-ms 1 [--port 0]

Prints ``listening <port>`` once ready and runs until SIGTERM. A separate process from the
benchmark driver, so its event loop does not share a GIL with anything measured.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
import socket
import sys

HOST = "127.0.0.1"
CHUNK = 256 * 1024


class _Direction:
    """Chunks read from one side, each written to the other ``delay`` after it was read.

    One deque and at most one pending timer per direction (not a task, a queue and a sleep
    per chunk): the proxy's own CPU and scheduling delay are part of every round trip it
    measures, so it does as little per chunk as it can. Reading pauses while the receiving
    side's write buffer is over its high-water mark (flow control end to end)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.pending: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.out: asyncio.Transport | None = None
        self.out_side: _Side | None = None

    def push(self, data: bytes | None) -> None:
        """``data`` just read (None: the side closed), due ``delay`` from now."""
        due = self.loop.time() + self.delay
        self.pending.append((due, data))
        if self.timer is None and self.out is not None:
            self.timer = self.loop.call_at(due, self.flush)

    def start(self, out: asyncio.Transport, side: _Side) -> None:
        self.out, self.out_side = out, side
        if self.pending and self.timer is None:
            self.timer = self.loop.call_at(self.pending[0][0], self.flush)

    def flush(self) -> None:
        """Write every chunk that is due, in order; wait for the next one."""
        self.timer = None
        out = self.out
        assert out is not None
        now = self.loop.time()
        while self.pending and self.pending[0][0] <= now:
            _, data = self.pending.popleft()
            if out.is_closing():
                self.pending.clear()
                return
            if data is None:  # the other side closed: pass the EOF on
                assert self.out_side is not None
                self.out_side.eof_sent = True
                if self.out_side.eof or not out.can_write_eof():
                    out.close()  # both directions done
                else:
                    with contextlib.suppress(OSError):
                        out.write_eof()
                continue
            out.write(data)
        if self.pending:
            self.timer = self.loop.call_at(self.pending[0][0], self.flush)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending.clear()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; what it reads goes to its peer through ``sending``.

    A chunk is forwarded as soon as it is due, whatever arrives meanwhile (a longer cable,
    not a slower one)."""

    def __init__(self, sending: _Direction, receiving: _Direction) -> None:
        self.sending = sending
        self.receiving = receiving
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof = False  # this side sent us its EOF
        self.eof_sent = False  # we passed the other side's EOF on to this side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=4 * CHUNK)
        self.receiving.start(transport, self)

    def data_received(self, data: bytes) -> None:
        self.sending.push(data)

    def eof_received(self) -> bool:
        self.eof = True
        self.sending.push(None)
        # Keep the other half open while the peer may still answer; close once both are done.
        return not self.eof_sent

    def connection_lost(self, exc: Exception | None) -> None:
        self.receiving.close()
        if not self.eof:
            self.sending.push(None)
        if self.peer is not None and self.peer.transport is not None and exc is not None:
            self.peer.transport.abort()

    # Flow control: this side's write buffer is full -> stop reading from the peer.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def _serve_connection(client: socket.socket, target: tuple[str, int],
                            delay: float) -> None:
    loop = asyncio.get_running_loop()
    upstream_bound = _Direction(loop, delay)
    client_bound = _Direction(loop, delay)
    client_side = _Side(sending=upstream_bound, receiving=client_bound)
    try:
        client_transport, _ = await loop.connect_accepted_socket(lambda: client_side, client)
    except OSError:
        client.close()
        return
    try:
        _, upstream_side = await loop.create_connection(
            lambda: _Side(sending=client_bound, receiving=upstream_bound), *target)
    except OSError:
        client_transport.close()
        return
    client_side.peer, upstream_side.peer = upstream_side, client_side


async def serve(target: tuple[str, int], delay: float, port: int) -> None:
    loop = asyncio.get_running_loop()
    listener = socket.create_server((HOST, port), backlog=128)
    listener.setblocking(False)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    connections: set[asyncio.Task[None]] = set()

    async def accept() -> None:
        while True:
            client, _ = await loop.sock_accept(listener)
            task = asyncio.create_task(_serve_connection(client, target, delay))
            connections.add(task)
            task.add_done_callback(connections.discard)

    accepting = asyncio.create_task(accept())
    try:
        await stop.wait()
    finally:
        accepting.cancel()
        listener.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay, ms")
    parser.add_argument("--port", type=int, default=0, help="listening port (0 = any free)")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    asyncio.run(serve((host, int(port)), args.delay_ms / 1000.0, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
