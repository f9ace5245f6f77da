"""Signed, short cookies: the console's session and the sign-in's state between the two legs.

A cookie is ``base64url(JSON).base64url(HMAC-SHA256)`` under a key from settings
(``MIMIC_WEB_SESSION_KEY``) or, unset, random per process: then a restart signs everybody
out and replicas do not share sessions, which is the safe failure. Each payload carries its
purpose (a login-state cookie is never a session) and its expiry; a session also carries an
id, so that sign-out ends it at once (:class:`Signer.revoke`), not only when the browser
drops the cookie. Where a sign-out is kept:

- in this process's memory, and in a directory the worker processes of one ``mimic web``
  share (``revoked_dir``: one empty file per id, its name the id, its modification time the
  session's expiry): a fast answer for the ids already known signed out;
- in the index (``signed_out``, a :class:`SignedOutStore`: ``index/signed_out.py``), which
  the replicas of ``mimic web`` share with the key and nothing else. Without it a cookie
  copied before its owner signed out (a shared workstation, a stolen cookie) stayed valid
  on every other replica until it expired. A session not known signed out here is looked up
  there at each check (one row by its key; a console request is human-paced): remembering
  "not signed out" would hide another replica's sign-out for as long. A "signed out" answer
  is remembered until the session's expiry. When the store cannot answer, the check raises
  :class:`SessionsUnavailable`: the session is never taken unchecked.

Nothing secret and no patient data is in a cookie: the user's subject, readable name and
roles, which the browser may read anyway from the ID token's claims.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

SESSION_COOKIE = "mimic_session"
LOGIN_COOKIE = "mimic_login"
#: Set by sign-out, sent only to ``/auth/``: the browser's next sign-in asks the issuer for
#: ``prompt=login`` (its value means nothing and is not signed: a forged one costs its
#: browser one password prompt). Cleared by the sign-in that completes.
SIGNED_OUT_COOKIE = "mimic_signed_out"
_SID = re.compile(r"[A-Za-z0-9_-]{8,128}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SignedOutStore(Protocol):
    """Where every replica records and finds signed-out sessions (the index)."""

    def add(self, session_id: str, expires: int) -> bool:
        """Record a sign-out; True when this call recorded it (not already there)."""
        ...

    def holds(self, session_id: str) -> bool:
        """Whether the session was signed out, by any replica."""
        ...


class SessionsUnavailable(Exception):
    """The signed-out sessions could not be read (or a sign-out written): the session can
    be neither taken nor refused as signed out, so the request is refused (503)."""

    MESSAGE = ("the console cannot check sessions now: the index database does not answer; "
               "try again shortly")

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class Signer:
    """Signs and opens cookie payloads with one key; remembers revoked session ids."""

    def __init__(self, key: str | None, clock: Callable[[], float] = time.time, *,
                 revoked_dir: Path | None = None,
                 signed_out: SignedOutStore | None = None) -> None:
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
        self._revoked_dir = revoked_dir
        self._signed_out = signed_out

    def seal(self, purpose: str, payload: dict[str, Any], lifetime: float) -> str:
        body = {**payload, "p": purpose, "exp": int(self._clock() + lifetime)}
        data = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8"))
        return f"{data}.{self._mac(data)}"

    def open(self, purpose: str, cookie: str | None, *,
             check_revoked: bool = True) -> dict[str, Any] | None:
        """The payload, or None when absent, forged, for another purpose, expired or revoked
        (``check_revoked=False``: signed out or not, so that a sign-out can record again
        what an index that was down did not take). :class:`SessionsUnavailable` when whether
        it was signed out cannot be read."""
        if not cookie or not cookie.isascii() or cookie.count(".") != 1:
            return None  # ours are ASCII: another would fail the MAC's encoding, a 500
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
        if "sid" in body and check_revoked and self.revoked(str(body["sid"]), body["exp"]):
            return None
        return body

    def revoke(self, sid: str, until: float) -> bool:
        """End one session before its expiry (sign-out), here at once and then for every
        replica; forgotten once it would expire. True when this call signed it out (False:
        it was already); :class:`SessionsUnavailable` when the index could not record it
        (this process and its workers refuse it all the same)."""
        now = self._clock()
        with self._lock:
            self._revoked = {s: t for s, t in self._revoked.items() if t >= now}
            known = sid in self._revoked
            self._revoked[sid] = until
        shared = self._shared(sid)
        if shared is not None:
            known = known or shared.exists()
            shared.touch()
            os.utime(shared, (until, until))
            for other in self._revoked_dir.iterdir() if self._revoked_dir else ():
                with contextlib.suppress(OSError):
                    if other.stat().st_mtime < now:
                        other.unlink()  # expired: the cookie is refused anyway
        if self._signed_out is None:
            return not known
        try:
            return self._signed_out.add(sid, int(until))
        except Exception as exc:  # whatever the store raises: the caller says it failed
            raise SessionsUnavailable() from exc

    def revoked(self, sid: str, until: float | None = None) -> bool:
        """Whether ``sid`` is signed out: this process's memory, the workers' directory,
        then the index (a "yes" from it is remembered until ``until``, the session's
        expiry). :class:`SessionsUnavailable` when the index cannot answer."""
        with self._lock:
            if sid in self._revoked:
                return True
        shared = self._shared(sid)
        if shared is not None and shared.exists():
            return True
        if self._signed_out is None:
            return False
        try:
            held = self._signed_out.holds(sid)
        except Exception as exc:  # fail closed, whatever the store raises
            raise SessionsUnavailable() from exc
        if held and until is not None:
            now = self._clock()
            with self._lock:
                self._revoked = {s: t for s, t in self._revoked.items() if t >= now}
                self._revoked[sid] = until
        return held

    def _shared(self, sid: str) -> Path | None:
        """The file that marks ``sid`` signed out in every worker (ids are ours: URL-safe)."""
        if self._revoked_dir is None or not _SID.fullmatch(sid):
            return None
        return self._revoked_dir / sid

    def _mac(self, data: str) -> str:
        return _b64(hmac.new(self._key, data.encode("ascii"), hashlib.sha256).digest())


class UsedLogins:
    """The sign-ins whose callback came, by state, remembered until their login cookie
    expires: one login cookie is good for one callback. Without this, one ``/auth/login``'s
    cookie and state replayed with made-up codes made the console call the issuer's token
    endpoint once per request (an issuer that throttles the client id then locks the real
    operators out). At most ``limit`` are held (the oldest go first): filling it takes as
    many token requests, each its own sign-in. Per process: a replay may reach each worker
    of ``mimic web`` once."""

    def __init__(self, limit: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self._limit = limit
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, state: str, until: float) -> bool:
        """True the first time ``state`` is given (then it is remembered until ``until``)."""
        now = self._clock()
        with self._lock:
            until_of = self._until
            while until_of and (len(until_of) >= self._limit or
                                next(iter(until_of.values())) < now):
                until_of.popitem(last=False)
            if state in until_of:
                return False
            until_of[state] = until
            return True
