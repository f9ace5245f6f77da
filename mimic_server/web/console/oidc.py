"""The console's side of the OpenID Connect authorization code flow with PKCE (RFC 7636, S256).

The browser is sent to the issuer's authorization endpoint with a fresh ``state``, ``nonce``
and code challenge; the three secrets stay on the server side of a signed, short-lived
cookie (:mod:`.sessions`). The issuer sends the browser back with a code, which the console
exchanges at the token endpoint together with the verifier (and the client secret, when it
is a confidential client). The ID token is checked by the same
:class:`~mimic_server.security.tokens.TokenValidator` as User Identity Negotiation's JWTs
(issuer, signature from the issuer's JWKS, expiry), with the client id as audience, and
must carry the nonce of this sign-in. Microsoft Entra ID puts the app roles assigned to the
user in the ID token's ``roles`` claim.

Sign-out follows OpenID Connect RP-Initiated Logout 1.0: when the discovery document names
an ``end_session_endpoint``, :meth:`OidcClient.end_session_url` is where the browser is sent
to end its session at the issuer too (with ``client_id`` and ``post_logout_redirect_uri``;
no ``id_token_hint``, which the console does not keep: the ID token would take some 1.5 KB
of the 4096-byte session cookie that also carries the roles). A sign-in after a sign-out asks
for ``prompt=login`` (:meth:`OidcClient.authorization_url`): the issuer must ask for
credentials again even when its own session outlived the console's.

Messages of :class:`SignInRefused` are safe to log and to show: no code, token or claim.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from mimic_server.security.tokens import InvalidToken, TokenUser, TokenValidator


class SignInRefused(Exception):
    """A sign-in that does not complete; the message is log-safe."""


@dataclass(frozen=True, slots=True)
class Pending:
    """What one sign-in keeps between the redirect out and the callback."""

    state: str
    nonce: str
    verifier: str

    @classmethod
    def new(cls) -> Pending:
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                   secrets.token_urlsafe(64))

    def matches(self, state: str) -> bool:
        """Whether the callback's ``state`` is this sign-in's (compared in constant time)."""
        return bool(state) and _same(state, self.state)

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OidcClient:
    """One client registration at one issuer."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        validator: TokenValidator,
        *,
        client_secret: str | None = None,
        scopes: str = "openid profile",
        ssl_context: ssl.SSLContext | None = None,
        timeout_seconds: float = 10,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.validator = validator
        self._secret = client_secret
        scope_list = scopes.split()
        self.scopes = " ".join(scope_list if "openid" in scope_list else ["openid", *scope_list])
        self._ssl = ssl_context
        self._timeout = timeout_seconds
        #: (authorization, token, end session or None) from the discovery document.
        self._endpoints: tuple[str, str, str | None] | None = None
        self._lock = threading.Lock()

    def endpoints(self) -> tuple[str, str]:
        """(authorization endpoint, token endpoint) from the issuer's discovery document."""
        authorize, token, _ = self._discovered()
        return authorize, token

    def end_session_endpoint(self) -> str | None:
        """The issuer's ``end_session_endpoint`` (RP-Initiated Logout), None when its
        discovery document names none. Raises :class:`SignInRefused` when the document
        cannot be read (it is read once per process, at the first sign-in or sign-out)."""
        return self._discovered()[2]

    def _discovered(self) -> tuple[str, str, str | None]:
        with self._lock:
            if self._endpoints is None:
                document = self._call(
                    urllib.request.Request(
                        f"{self.issuer}/.well-known/openid-configuration",
                        headers={"Accept": "application/json"},
                    )
                )
                if str(document.get("issuer", "")).rstrip("/") != self.issuer:
                    raise SignInRefused("the issuer's discovery document names another issuer")
                try:
                    authorize = str(document["authorization_endpoint"])
                    token = str(document["token_endpoint"])
                except KeyError as exc:
                    raise SignInRefused("the issuer publishes no authorization code flow") \
                        from exc
                end_session = document.get("end_session_endpoint")
                end = str(end_session) if end_session else None
                for url in (authorize, token, end or "https://"):
                    if not url.startswith("https://"):
                        raise SignInRefused("the issuer's endpoints must be HTTPS")
                self._endpoints = authorize, token, end
            return self._endpoints

    def authorization_url(self, pending: Pending, redirect_uri: str, *,
                          ask_credentials: bool = False) -> str:
        """The authorization request; ``ask_credentials`` adds ``prompt=login`` (OIDC Core
        3.1.2.1): the issuer asks for credentials even if its own session would have
        signed the browser in silently (the first sign-in after a sign-out)."""
        authorize, _ = self.endpoints()
        params = {
            "client_id": self.client_id, "response_type": "code", "redirect_uri": redirect_uri,
            "scope": self.scopes, "state": pending.state, "nonce": pending.nonce,
            "code_challenge": pending.challenge, "code_challenge_method": "S256",
            "response_mode": "query",
        }
        if ask_credentials:
            params["prompt"] = "login"
        return f"{authorize}{'&' if '?' in authorize else '?'}{urllib.parse.urlencode(params)}"

    def end_session_url(self, post_logout_redirect_uri: str) -> str | None:
        """Where the browser ends its session at the issuer (RP-Initiated Logout 1.0,
        section 2), then comes back to ``post_logout_redirect_uri``; None when the issuer
        publishes no ``end_session_endpoint``. ``client_id`` stands in for the
        ``id_token_hint`` the console does not keep (section 2 allows it: the issuer may
        then ask the user which session to end). Raises :class:`SignInRefused` when the
        discovery document cannot be read."""
        end = self.end_session_endpoint()
        if end is None:
            return None
        query = urllib.parse.urlencode({"client_id": self.client_id,
                                        "post_logout_redirect_uri": post_logout_redirect_uri})
        return f"{end}{'&' if '?' in end else '?'}{query}"

    @staticmethod
    def check(pending: Pending, state: str, code: str) -> None:
        """What is refused without asking the issuer: another state, no code. The callback
        asks this before it counts a token exchange (``exchanges.py``): only a call to the
        token endpoint is counted. Raises :class:`SignInRefused`."""
        if not state or not _same(state, pending.state):
            raise SignInRefused("the sign-in state does not match")
        if not code:
            raise SignInRefused("the issuer sent no authorization code")

    def complete(self, pending: Pending, state: str, code: str, redirect_uri: str) -> TokenUser:
        """The signed-in user: state compared, code exchanged with the verifier, ID token
        validated, nonce compared. Raises :class:`SignInRefused`."""
        self.check(pending, state, code)
        _, token_url = self.endpoints()
        form = {
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "client_id": self.client_id, "code_verifier": pending.verifier,
        }
        if self._secret:
            form["client_secret"] = self._secret
        tokens = self._call(urllib.request.Request(
            token_url, data=urllib.parse.urlencode(form).encode("ascii"), method="POST",
            headers={"Accept": "application/json",
                     "Content-Type": "application/x-www-form-urlencoded"},
        ))
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise SignInRefused("the token endpoint returned no ID token")
        try:
            user = self.validator.validate(id_token)
        except InvalidToken as exc:
            raise SignInRefused(f"ID token refused: {exc}") from exc
        nonce = user.claims.get("nonce")
        if not isinstance(nonce, str) or not _same(nonce, pending.nonce):
            raise SignInRefused("the ID token's nonce is not this sign-in's")
        return user

    def _call(self, request: urllib.request.Request) -> dict[str, Any]:
        if not request.full_url.startswith("https://"):
            raise SignInRefused("the issuer must be reached over HTTPS")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout,
                                        context=self._ssl) as response:
                document = json.load(response)
        except urllib.error.HTTPError as exc:
            # The issuer's error code (invalid_grant, ...) is safe; its description may not be.
            try:
                error = str(json.load(exc).get("error", ""))[:64]
            except Exception:
                error = ""
            raise SignInRefused(
                f"the issuer refused the request (HTTP {exc.code}{', ' + error if error else ''})"
            ) from exc
        except (OSError, ValueError) as exc:
            raise SignInRefused(f"the issuer cannot be reached ({type(exc).__name__})") from exc
        if not isinstance(document, dict):
            raise SignInRefused("the issuer answered something other than a JSON object")
        return document


def _same(given: str, expected: str) -> bool:
    """A constant-time comparison of what the browser or the token says with what this
    sign-in made; ``hmac.compare_digest`` raises TypeError for a str that is not ASCII,
    which made a 500 of a hostile ``state`` and left its refusal unaudited."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))
