"""A loopback OpenID Connect issuer over HTTPS with keys of its own, as Entra ID looks to MIMIC.

It serves ``/.well-known/openid-configuration`` and the JWKS it names, and mints tokens
(``mint``) signed with its RSA or EC key, or with a key it does not publish, or unsigned,
so that every refusal of the token validator can be tested against the real PyJWT path.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support import HOST, write_cert


class OidcIssuerDouble:
    """An issuer at ``https://127.0.0.1:<port>/tenant/v2.0``; ``requests`` counts JWKS reads."""

    def __init__(self, directory: Path) -> None:
        cert, key, self.ca_certificate, _ = write_cert(directory, "oidc-issuer", server=True)
        self.ca_file = cert  # self-signed: the certificate is its own anchor
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.unpublished_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks_requests = 0
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/tenant/v2.0/.well-known/openid-configuration":
                    self._reply({"issuer": double.issuer, "jwks_uri": double.jwks_uri,
                                 "authorization_endpoint": f"{double.issuer}/authorize",
                                 "token_endpoint": f"{double.issuer}/token"})
                elif self.path == "/tenant/discovery/keys":
                    double.jwks_requests += 1
                    self._reply(double.jwks())
                else:
                    self.send_error(404)

            def _reply(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def issuer(self) -> str:
        return f"https://{HOST}:{self._server.server_address[1]}/tenant/v2.0"

    @property
    def jwks_uri(self) -> str:
        return f"https://{HOST}:{self._server.server_address[1]}/tenant/discovery/keys"

    def client_context(self) -> ssl.SSLContext:
        """What MIMIC trusts the issuer with (in Azure: the system's public roots)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in (("rsa-1", self.rsa_key), ("ec-1", self.ec_key)):
            algorithm = jwt.algorithms.RSAAlgorithm if kid.startswith("rsa") else \
                jwt.algorithms.ECAlgorithm
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            jwk.update(kid=kid, use="sig")
            keys.append(jwk)
        return {"keys": keys}

    def mint(
        self,
        *,
        audience: str = "api://mimic",
        subject: str = "user-1",
        lifetime: float = 600,
        issued: float | None = None,
        not_before: float | None = None,
        issuer: str | None = None,
        roles: list[str] | None = None,
        kid: str = "rsa-1",
        algorithm: str = "RS256",
        key: Any = None,
        **claims: Any,
    ) -> str:
        now = time.time() if issued is None else issued
        payload: dict[str, Any] = {
            "iss": issuer or self.issuer, "aud": audience, "sub": subject,
            "iat": int(now), "exp": int(now + lifetime),
            "preferred_username": f"{subject}@example.org", **claims,
        }
        if not_before is not None:
            payload["nbf"] = int(not_before)
        if roles is not None:
            payload["roles"] = roles
        if algorithm == "none":
            return jwt.encode(payload, None, algorithm="none", headers={"kid": kid})
        if key is None:
            key = self.ec_key if algorithm.startswith("ES") else self.rsa_key
        return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid})

    def start(self) -> OidcIssuerDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
