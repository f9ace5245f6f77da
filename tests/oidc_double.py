"""A loopback OpenID Connect issuer over HTTPS with keys of its own, as Entra ID looks to MIMIC.

It serves ``/.well-known/openid-configuration`` and the JWKS it names, and mints tokens
(``mint``) signed with its RSA or EC key, or with a key it does not publish, or unsigned,
so that every refusal of the token validator can be tested against the real PyJWT path.

For the operator console it is also an authorization server (authorization code flow with
PKCE, RFC 7636): ``/authorize`` signs in the user set with :meth:`sign_in_as` without a
login form (a redirect back with a code), and ``/token`` exchanges the code only for the
client it was issued to, with the same redirect URI, the client secret of a confidential
client and the verifier whose S256 hash is the code challenge. It mints an ID token for the
client (audience: the client id, with the nonce) and an access token for ``api://mimic``.

With :attr:`remember_browser` it keeps an issuer session for the one browser a test drives,
as Entra ID's own cookie does: once a user has typed credentials, ``/authorize`` signs that
user in again without asking (:attr:`credentials_asked` does not grow), unless the request
says ``prompt=login`` or the session was ended at ``/logout`` (the ``end_session_endpoint``
of OpenID Connect RP-Initiated Logout, published unless :attr:`publish_end_session` is off).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
import urllib.parse
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
        #: client id -> client secret (None: a public client) of the registered clients.
        self.clients: dict[str, str | None] = {}
        #: Whom /authorize signs in (see sign_in_as); None: it answers access_denied.
        self.user: dict[str, Any] | None = None
        #: Claims to put into (or, with None values, take out of) the next ID tokens.
        self.id_token_overrides: dict[str, Any] = {}
        self._codes: dict[str, dict[str, Any]] = {}
        #: Each token request's outcome ("issued" or the OAuth error), for the tests.
        self.token_requests: list[str] = []
        #: Keep the browser's issuer session (see the module's docstring); off: every
        #: /authorize signs in :attr:`user` without a session, as before.
        self.remember_browser = False
        #: The user of the browser's issuer session (remember_browser), None: none.
        self.browser_session: dict[str, Any] | None = None
        #: How many times /authorize asked for credentials (remember_browser).
        self.credentials_asked = 0
        #: The query of each /authorize and each /logout request, in order.
        self.authorize_requests: list[dict[str, str]] = []
        self.end_session_requests: list[dict[str, str]] = []
        #: Whether the discovery document names an ``end_session_endpoint``.
        self.publish_end_session = True
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != "/tenant/v2.0/token":
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode("ascii")))
                status, body = double.token(form)
                self._reply(body, status)

            def do_GET(self) -> None:
                if self.path.startswith("/tenant/v2.0/authorize?"):
                    self._redirect_or_reply(*double.authorize(self._query()))
                elif self.path.split("?")[0] == "/tenant/v2.0/logout":
                    self._redirect_or_reply(*double.end_session(self._query()))
                elif self.path == "/tenant/v2.0/.well-known/openid-configuration":
                    self._reply(double.discovery())
                elif self.path == "/tenant/discovery/keys":
                    double.jwks_requests += 1
                    self._reply(double.jwks())
                else:
                    self.send_error(404)

            def _query(self) -> dict[str, str]:
                return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))

            def _redirect_or_reply(self, status: int, location: str | None,
                                   body: dict[str, Any]) -> None:
                """A browser endpoint's answer: a redirect, or an error body."""
                if location is None:
                    self._reply(body, status)
                    return
                self.send_response(status)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _reply(self, body: dict[str, Any], status: int = 200) -> None:
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

    def discovery(self) -> dict[str, Any]:
        document = {"issuer": self.issuer, "jwks_uri": self.jwks_uri,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token"}
        if self.publish_end_session:
            document["end_session_endpoint"] = f"{self.issuer}/logout"
        return document

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

    # -- the authorization server of the console's sign-in --------------------------------------

    def register_client(self, client_id: str, secret: str | None = None) -> None:
        self.clients[client_id] = secret

    def sign_in_as(self, subject: str = "operator-1", roles: list[str] | None = None,
                   **claims: Any) -> None:
        """The user /authorize signs in from now on (no login form)."""
        self.user = {"subject": subject, "roles": roles or [], **claims}

    def authorize(self, query: dict[str, str]) -> tuple[int, str | None, dict[str, Any]]:
        """(status, redirect location or None, JSON body when not redirecting)."""
        client_id, redirect_uri = query.get("client_id", ""), query.get("redirect_uri", "")
        if client_id not in self.clients or not redirect_uri:
            return 400, None, {"error": "invalid_client"}  # never redirect to an unknown URI

        def back(**params: str) -> tuple[int, str, dict[str, Any]]:
            if "state" in query:
                params["state"] = query["state"]
            separator = "&" if "?" in redirect_uri else "?"
            return 302, f"{redirect_uri}{separator}{urllib.parse.urlencode(params)}", {}

        if query.get("response_type") != "code":
            return back(error="unsupported_response_type")
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return back(error="invalid_request")
        self.authorize_requests.append(dict(query))
        user = self.user
        if self.remember_browser:
            if self.browser_session is not None and query.get("prompt") != "login":
                user = self.browser_session  # Entra ID's silent sign-in: nobody asked
            else:
                self.credentials_asked += 1  # the login form: whoever is at the keyboard
                self.browser_session = dict(self.user) if self.user is not None else None
        if user is None:
            return back(error="access_denied")
        code = secrets.token_urlsafe(24)
        self._codes[code] = {
            "client_id": client_id, "redirect_uri": redirect_uri,
            "challenge": query["code_challenge"], "nonce": query.get("nonce"),
            "user": dict(user), "expires": time.time() + 60,
        }
        return back(code=code)

    def end_session(self, query: dict[str, str]) -> tuple[int, str | None, dict[str, Any]]:
        """RP-Initiated Logout: the browser's issuer session ends; back to the
        ``post_logout_redirect_uri`` when one is given with a known ``client_id``, else a
        page of the issuer's own (None, JSON)."""
        self.end_session_requests.append(dict(query))
        self.browser_session = None
        back = query.get("post_logout_redirect_uri")
        if back and query.get("client_id") in self.clients:
            return 302, back, {}
        return 200, None, {"signed_out": True}

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        def refuse(error: str) -> tuple[int, dict[str, Any]]:
            self.token_requests.append(error)
            return 400, {"error": error, "error_description": "refused by the test issuer"}

        if form.get("grant_type") != "authorization_code":
            return refuse("unsupported_grant_type")
        client_id = form.get("client_id", "")
        if client_id not in self.clients:
            return refuse("invalid_client")
        secret = self.clients[client_id]
        if secret is not None and form.get("client_secret") != secret:
            return refuse("invalid_client")
        grant = self._codes.pop(form.get("code", ""), None)  # a code is used once
        if grant is None or grant["expires"] < time.time() or grant["client_id"] != client_id:
            return refuse("invalid_grant")
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return refuse("invalid_grant")
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if not verifier or digest.rstrip(b"=").decode() != grant["challenge"]:
            return refuse("invalid_grant")  # PKCE: not the verifier of this challenge
        user = dict(grant["user"])
        subject, roles = user.pop("subject"), user.pop("roles")
        claims = {"nonce": grant["nonce"], **user, **self.id_token_overrides}
        claims = {k: v for k, v in claims.items() if v is not None}
        self.token_requests.append("issued")
        return 200, {
            "token_type": "Bearer", "expires_in": 600,
            "id_token": self.mint(audience=client_id, subject=subject, roles=roles, **claims),
            "access_token": self.mint(subject=subject, roles=roles),
        }

    def start(self) -> OidcIssuerDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
