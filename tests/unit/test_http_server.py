"""The HTTP listeners' sockets (``web/server.py``): accepted connections get TCP_NODELAY.

asyncio sets TCP_NODELAY on an accepted socket only when the socket says it is TCP (its
``proto``); a listening socket made with proto 0 gave connections without it, and Nagle's
algorithm then held each response body behind its headers until the client's delayed ACK:
40 ms per keep-alive request (``mimic web`` answered 22 requests/s to one connection).
"""

from __future__ import annotations

import asyncio
import socket

from mimic_server.web.server import HttpServer


async def _app(scope: object, receive: object, send: object) -> None:  # never called
    raise AssertionError


def test_accepted_connections_get_tcp_nodelay_from_asyncio() -> None:
    server = HttpServer(_app, "127.0.0.1", 0, name="test")
    listening = server._socket
    try:
        client = socket.create_connection(server.address, timeout=5)
        listening.setblocking(True)
        accepted, _ = listening.accept()
        with client, accepted:
            # What asyncio's selector transport does with every accepted socket.
            asyncio.base_events._set_nodelay(accepted)  # type: ignore[attr-defined]
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listening.close()
