"""Security headers on every console response (a pure ASGI middleware: no buffering).

The Content-Security-Policy allows only this origin's own scripts, styles and images: the
console has no inline script or style (tests/unit/test_console_pages.py parses every page),
so an injected ``<script>`` or ``style=`` would not run. Frames are refused (clickjacking),
nothing the console serves is cached, and no referrer leaves this origin. (``same-origin``,
not ``no-referrer``: with the latter a browser sends ``Origin: null`` on a form POST, and
the sign-out form's same-origin check would refuse it.)

Reached by a host name other than ``localhost`` (HTTPS, or behind the TLS-terminating
ingress, where the session cookie is Secure too), ``Strict-Transport-Security`` tells the
browser to use nothing but HTTPS for this host for a year: the ingress only redirects
``http://`` to ``https://``, and that first plain request (an operator typing the host
name) was open to anyone on the hospital's network, who could keep the browser on a page
of their own. Never for a loopback host: a browser would then refuse plain HTTP to every
development server on ``localhost``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from mimic_server.web.console.auth import loopback_host

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode("ascii")),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
#: A year (the value preload lists ask for); not includeSubDomains: the console cannot know
#: whether the hospital's other hosts under its domain all speak HTTPS.
HSTS = (b"strict-transport-security", b"max-age=31536000")


class HeadersIfAbsent:
    """Add ``headers(scope)`` to every HTTP answer of the wrapped app, each unless the answer
    sets that header itself (a pure ASGI middleware: nothing buffered, one look per
    response)."""

    def __init__(self, app: Any, headers: Callable[[Any], list[tuple[bytes, bytes]]]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers = self.headers(scope)

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (n, v) for n, v in headers if n not in names
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def SecurityHeaders(app: Any) -> HeadersIfAbsent:
    """The console's headers (module doc); HSTS unless reached by a loopback host."""
    return HeadersIfAbsent(
        app, lambda scope: HEADERS if loopback_host(Request(scope)) else [*HEADERS, HSTS])


NO_STORE = (b"cache-control", b"no-store")


def NoStore(app: Any) -> HeadersIfAbsent:
    """``Cache-Control: no-store`` on every answer of the wrapped app that sets none.
    ``mimic web`` wraps DICOMweb in it: the console's thumbnails and images are DICOMweb
    rendered answers fetched with the session cookie, and without it a browser kept a
    patient's pixels (and QIDO's names) in its disk cache on a shared workstation after
    sign-out, while the console's own pages say no-store. Every DICOMweb answer carries
    patient data or a refusal; none is meant to be kept (a cache may not tell one user's
    answer from another's: the policy narrows them)."""
    return HeadersIfAbsent(app, lambda scope: [NO_STORE])
