"""A loopback HTTP proxy in front of Azurite that fails, delays or cuts chosen requests.

The archive is given the proxy's connection string; every Blob Storage request passes through
it and a test's rule decides, per request, what the service seems to do: answer as usual, take
its time, answer an error status, or drop the connection without an answer. Requests are
recorded (method, path and query) so that a test can tell how far an upload went.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.azurite import ACCOUNT, ACCOUNT_KEY
from tests.support import HOST

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te",
               "trailer", "upgrade"}


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it."""

    method: str
    path: str
    query: str

    @property
    def stages_a_block(self) -> bool:
        return self.method == "PUT" and "comp=block&" in self.query + "&" and \
            "comp=blocklist" not in self.query

    @property
    def commits_blocks(self) -> bool:
        return self.method == "PUT" and "comp=blocklist" in self.query


#: What a rule answers: None (forward), ("delay", seconds), ("status", code), ("drop",)
#: (the connection closed, the request not forwarded), ("lose answer",) (forwarded, done by
#: the service, then the connection closed without its answer).
Action = tuple[str, float] | tuple[str] | None
Rule = Callable[[Seen], Action]


class BlobFaults:
    """The proxy; ``rule`` may be replaced at any time (it is read per request)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rule: Rule = lambda seen: None
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _proxy(self) -> None:
                parts = urlsplit(self.path)
                seen = Seen(self.command, parts.path, parts.query)
                with proxy._lock:
                    proxy.seen.append(seen)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action = proxy.rule(seen)
                if action is not None and action[0] == "delay":
                    time.sleep(float(action[1]))  # type: ignore[misc]
                    action = None
                if action is not None and action[0] == "drop":
                    self._drop()
                    return
                if action is not None and action[0] == "status":
                    code = int(action[1])  # type: ignore[misc]
                    payload = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>'
                               b"InternalError</Code><Message>injected</Message></Error>")
                    self.send_response(code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("x-ms-error-code", "InternalError")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(HOST, proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in _HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                if action is not None and action[0] == "lose answer":
                    self._drop()  # done by the service, its answer lost on the way
                    return
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() in _HOP_BY_HOP or name.lower() == "content-length":
                        continue
                    self.send_header(name, value)
                if self.command == "HEAD":
                    self.send_header("Content-Length",
                                     answer.getheader("Content-Length") or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_PUT = do_DELETE = do_HEAD = do_POST = _proxy

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://{HOST}:{self.port}/{ACCOUNT};"
        )

    def start(self) -> BlobFaults:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def forget(self) -> None:
        with self._lock:
            self.seen.clear()
