"""Signed, short cookies: the console's session and the sign-in's state between the two legs.

A cookie is ``base64url(JSON).base64url(HMAC-SHA256)`` under a key from settings
(``MIMIC_WEB_SESSION_KEY``) or, unset, random per process: then a restart signs everybody
out and replicas do not share sessions, which is the safe failure. Each payload carries its
purpose (a login-state cookie is never a session) and its expiry; a session also carries an
id, so that sign-out ends it at once in this process (:class:`Signer.revoke`), not only
when the browser drops the cookie.

Nothing secret and no patient data is in a cookie: the user's subject, readable name and
roles, which the browser may read anyway from the ID token's claims.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

SESSION_COOKIE = "mimic_session"
LOGIN_COOKIE = "mimic_login"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs and opens cookie payloads with one key; remembers revoked session ids."""

    def __init__(self, key: str | None, clock: Callable[[], float] = time.time) -> None:
        if key is not None and len(key) < 32:
            raise ValueError("MIMIC_WEB_SESSION_KEY needs at least 32 characters")
        #: True when the key was generated here (documented: sessions end on restart).
        self.ephemeral = key is None
        self._key = hashlib.sha256(
            key.encode("utf-8") if key is not None else secrets.token_bytes(32)
        ).digest()
        self._clock = clock
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def seal(self, purpose: str, payload: dict[str, Any], lifetime: float) -> str:
        body = {**payload, "p": purpose, "exp": int(self._clock() + lifetime)}
        data = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8"))
        return f"{data}.{self._mac(data)}"

    def open(self, purpose: str, cookie: str | None) -> dict[str, Any] | None:
        """The payload, or None when absent, forged, for another purpose, expired or revoked."""
        if not cookie or cookie.count(".") != 1:
            return None
        data, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac(data)):
            return None
        try:
            body = json.loads(_unb64(data))
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("p") != purpose:
            return None
        if not isinstance(body.get("exp"), int) or body["exp"] < self._clock():
            return None
        if "sid" in body and self.revoked(str(body["sid"])):
            return None
        return body

    def revoke(self, sid: str, until: float) -> None:
        """End one session before its expiry (sign-out); forgotten once it would expire."""
        now = self._clock()
        with self._lock:
            self._revoked = {s: t for s, t in self._revoked.items() if t >= now}
            self._revoked[sid] = until

    def revoked(self, sid: str) -> bool:
        with self._lock:
            return sid in self._revoked

    def _mac(self, data: str) -> str:
        return _b64(hmac.new(self._key, data.encode("ascii"), hashlib.sha256).digest())
