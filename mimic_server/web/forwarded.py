"""The client's address behind a known number of proxies (``MIMIC_WEB_PROXY_HOPS``).

Behind Container Apps' HTTP ingress every connection comes from the ingress, so every
browser had one address: the console's refusal counts and its limit on token exchanges
(``console/exchanges.py``) were shared by everyone, and a stranger's 30 callbacks a minute
locked every operator out of sign-in. The ingress appends the address it saw to
``X-Forwarded-For`` and vouches for that entry only; the ones to its left are whatever the
client sent. So with ``hops`` proxies in front, the client is the ``hops``-th entry from the
right, and nothing to its left is ever believed (uvicorn's own rule, trusting whole headers
from listed addresses, would take the leftmost with ``*``: a stranger would name a fresh
address for each request). A request that carries fewer entries than that did not come
through the proxies (a probe from inside the environment): its connection's address stays,
and so does one whose entry is no IP address.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

_HEADER = b"x-forwarded-for"


class ForwardedClient:
    """ASGI middleware: ``scope["client"]`` becomes the address the nearest of ``hops``
    trusted proxies saw (port 0: the client's own port is not forwarded)."""

    def __init__(self, app: ASGIApp, hops: int) -> None:
        self.app = app
        self.hops = hops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hops > 0 and scope["type"] in ("http", "websocket"):
            client = forwarded_client(scope.get("headers", ()), self.hops)
            if client is not None:
                scope = dict(scope, client=(client, 0))
        await self.app(scope, receive, send)


def forwarded_client(headers: object, hops: int) -> str | None:
    """The ``hops``-th address from the right of every ``X-Forwarded-For`` header taken
    together (in order), or None where there are fewer, or it is no IP address."""
    entries: list[str] = []
    for name, value in headers:  # type: ignore[attr-defined]
        if name.lower() == _HEADER:
            entries.extend(part.strip() for part in value.decode("latin-1").split(","))
    if len(entries) < hops:
        return None
    try:
        return str(ipaddress.ip_address(_without_port(entries[-hops])))
    except ValueError:
        return None


def _without_port(entry: str) -> str:
    """``203.0.113.7:51234`` and ``[2001:db8::1]:51234`` as some proxies write them (Azure
    Application Gateway): dropped as no address, they left every browser the proxy's."""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        return host if bracket and (not rest or (rest[0] == ":" and rest[1:].isdigit())) \
            else entry
    host, colon, port = entry.partition(":")
    return host if colon and ":" not in port and port.isdigit() else entry
