"""A loopback managed-identity endpoint, as Container Apps / App Service expose it.

``DefaultAzureCredential`` finds it through ``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER`` and asks
``GET ?resource=...&api-version=2019-08-01`` with header ``X-IDENTITY-HEADER``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

HOST = "127.0.0.1"


class IdentityDouble:
    """Hands out ``token`` to callers that present ``header``; records the resources asked."""

    def __init__(self, token: str = "double-access-token", header: str = "double-header") -> None:
        self.token = token
        self.header = header
        self.resources: list[str] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                resource = query.get("resource", [""])[0]
                if self.headers.get("X-IDENTITY-HEADER") != double.header:
                    self._reply(401, {"statusCode": 401, "message": "bad identity header"})
                    return
                if query.get("api-version") != ["2019-08-01"] or not resource:
                    self._reply(400, {"statusCode": 400, "message": "bad request"})
                    return
                double.resources.append(resource)
                self._reply(200, {
                    "access_token": double.token,
                    "expires_on": str(int(time.time()) + 3600),
                    "resource": resource,
                    "token_type": "Bearer",
                })

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}/msi/token"

    def env(self) -> dict[str, str]:
        """The variables Container Apps sets for a managed identity."""
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.header}

    def start(self) -> IdentityDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
