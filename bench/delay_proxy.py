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
import contextlib
import signal
import socket
import sys
import time

HOST = "127.0.0.1"
CHUNK = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward one direction: a reader task stamps chunks, this loop writes each when due."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read_side() -> None:
        while True:
            data = await reader.read(CHUNK)
            queue.put_nowait((time.monotonic() + delay, data))
            if not data:
                return

    reading = asyncio.create_task(read_side())
    try:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        return
    finally:
        reading.cancel()
        with contextlib.suppress(BaseException):
            await reading


async def _serve_connection(
    client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
    target: tuple[str, int], delay: float,
) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    for w in (client_writer, upstream_writer):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.gather(
            _pump(client_reader, upstream_writer, delay),
            _pump(upstream_reader, client_writer, delay),
        )
    finally:
        for w in (client_writer, upstream_writer):
            w.close()


async def serve(target: tuple[str, int], delay: float, port: int) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(r, w, target, delay), HOST, port
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"listening {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


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
