"""Sign-out on a shared workstation: the console's session and the issuer's.

The loopback issuer keeps a session for the browser, as Entra ID does (``remember_browser``):
once someone has typed credentials it signs that user in again without asking. Signing out
of the console alone left that session, and the next person's "sign in" was answered as
the previous user. Now sign-out goes on to the issuer's end_session_endpoint (OpenID Connect
RP-Initiated Logout) and the next sign-in from that browser asks ``prompt=login`` whatever
became of the issuer's session; a sign-out the issuer cannot hear of still ends the
console's session, and says so.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mimic_server.web.console.headers import CSP
from mimic_server.web.console.sessions import SESSION_COOKIE, SIGNED_OUT_COOKIE
from tests.console.harness import (
    BASE,
    CLIENT_ID,
    OPERATOR,
    authorize,
    client,
    console_context,
    sign_in,
    start_login,
)
from tests.oidc_double import OidcIssuerDouble

OURS = {"Origin": BASE}


@pytest.fixture(scope="module")
def shared_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcIssuerDouble]:
    double = OidcIssuerDouble(tmp_path_factory.mktemp("oidc")).start()
    yield double
    double.stop()


@pytest.fixture
def issuer(shared_issuer: OidcIssuerDouble) -> OidcIssuerDouble:
    """The issuer of one workstation's browser: no session yet, alice at the keyboard."""
    shared_issuer.remember_browser = True
    shared_issuer.browser_session = None
    shared_issuer.credentials_asked = 0
    shared_issuer.publish_end_session = True
    shared_issuer.authorize_requests.clear()
    shared_issuer.end_session_requests.clear()
    shared_issuer.sign_in_as("alice", roles=[OPERATOR])
    return shared_issuer


def _query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def _at_issuer(response: Any) -> str:
    """Where the sign-out's page sends the browser (its meta refresh and its link, which
    must agree): a page, not a redirect, as the console's CSP says form-action 'self'."""
    assert response.status_code == 200, response.status_code
    assert response.headers["content-type"].startswith("text/html")
    refresh = re.search(r'<meta http-equiv="refresh" content="0;url=([^"]*)">', response.text)
    link = re.search(r'<a href="([^"]*)">', response.text)
    assert refresh is not None and link is not None and refresh.group(1) == link.group(1)
    return html.unescape(refresh.group(1))


def _me(web: TestClient) -> Any:
    response = web.get("/console/api/me")
    return response.json()["name"] if response.status_code == 200 else response.status_code


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_sign_out_ends_the_issuer_session_and_the_next_sign_in_asks(
        issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    ctx = console_context(issuer, tmp_path)
    web = client(ctx)
    assert "prompt" not in start_login(web)  # an ordinary first sign-in: no prompt forced
    assert sign_in(web, issuer).status_code == 303
    assert _me(web) == "alice@example.org" and issuer.credentials_asked == 1
    session = web.cookies.get(SESSION_COOKIE)

    out = web.post("/auth/logout", headers=OURS)
    location = _at_issuer(out)
    assert location.startswith(f"{issuer.issuer}/logout?")
    # client_id stands in for id_token_hint, which the session cookie does not carry.
    assert _query(location) == {"client_id": CLIENT_ID,
                                "post_logout_redirect_uri": f"{BASE}/signed-out"}
    data = session.split(".")[0]
    body = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    assert sorted(body) == ["exp", "name", "p", "roles", "sid", "sub"]
    replay = client(ctx)
    replay.cookies.set(SESSION_COOKIE, session)
    assert _me(replay) == 401  # the console's session ended before the issuer was visited
    assert _audit(tmp_path)[-1]["event_type"] == "logout"

    # The browser at the issuer: its session ends, and it is sent back to the console.
    status, back, _ = issuer.end_session(_query(location))
    assert status == 302 and back == f"{BASE}/signed-out"
    assert issuer.browser_session is None
    assert web.get("/signed-out").status_code == 200

    # Bob at the keyboard: the issuer asks him (prompt=login), and it is his session.
    issuer.sign_in_as("bob", roles=[OPERATOR])
    params = start_login(web)
    assert params["prompt"] == "login"
    done = web.get("/auth/callback", params=authorize(issuer, params))
    assert done.status_code == 303
    assert _me(web) == "bob@example.org" and issuer.credentials_asked == 2
    assert "mimic_signed_out=" in done.headers["set-cookie"]  # the marker is cleared
    assert SIGNED_OUT_COOKIE not in web.cookies
    assert "prompt" not in start_login(web)  # later sign-ins are ordinary again


def test_without_an_end_session_endpoint_the_next_sign_in_still_asks(
        issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    """An issuer that publishes no end_session_endpoint (or a user who closes the tab at the
    issuer's sign-out page): its session outlives the console's, and was the next person's
    sign-in, silently. prompt=login makes the issuer ask."""
    issuer.publish_end_session = False
    web = client(console_context(issuer, tmp_path))
    assert sign_in(web, issuer).status_code == 303
    out = web.post("/auth/logout", headers=OURS)
    assert out.status_code == 303 and out.headers["location"] == "/signed-out"
    assert issuer.browser_session is not None and issuer.end_session_requests == []
    issuer.sign_in_as("bob", roles=[OPERATOR])
    assert sign_in(web, issuer).status_code == 303
    assert issuer.authorize_requests[-1]["prompt"] == "login"
    assert _me(web) == "bob@example.org" and issuer.credentials_asked == 2


def test_a_refused_sign_in_after_sign_out_keeps_asking(issuer: OidcIssuerDouble,
                                                       tmp_path: Path) -> None:
    """Only a completed sign-in clears the marker: one the user abandoned or the issuer
    refused leaves the previous user's issuer session, which must not answer the next."""
    issuer.publish_end_session = False
    web = client(console_context(issuer, tmp_path))
    assert sign_in(web, issuer).status_code == 303
    assert web.post("/auth/logout", headers=OURS).status_code == 303
    issuer.sign_in_as("alice", roles=["NoConsoleRole"])
    assert sign_in(web, issuer).status_code == 403
    assert start_login(web)["prompt"] == "login"


def test_sign_out_while_the_issuer_is_down(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """A worker that has not read the issuer's discovery document yet (another process, a
    restart) when the issuer is down: the console's session ends all the same, the page says
    the issuer's may not have, a WARNING; no 500."""
    import time

    double = OidcIssuerDouble(tmp_path / "oidc").start()
    double.remember_browser = True
    double.sign_in_as("alice", roles=[OPERATOR])
    one = client(console_context(double, tmp_path, clock=time.time))
    assert sign_in(one, double).status_code == 303
    session = one.cookies.get(SESSION_COOKIE)
    double.stop()
    other = client(console_context(double, tmp_path, clock=time.time))  # the same key
    other.cookies.set(SESSION_COOKIE, session)
    assert _me(other) == "alice@example.org"
    with caplog.at_level(logging.WARNING, logger="mimic_server"):
        out = other.post("/auth/logout", headers=OURS)
    assert out.status_code == 303 and out.headers["location"] == "/signed-out?issuer=unreachable"
    page = other.get(out.headers["location"])
    assert page.status_code == 200 and "could not be reached" in page.text
    lines = [r for r in caplog.records
             if r.getMessage() == "console sign-out did not reach the issuer"]
    assert len(lines) == 1 and lines[0].levelname == "WARNING"
    assert "cannot be reached" in lines[0].reason and lines[0].user == "alice@example.org"
    other.cookies.set(SESSION_COOKIE, session)
    assert _me(other) == 401
    assert _audit(tmp_path)[-1]["event_type"] == "logout"
    assert other.cookies.get(SIGNED_OUT_COOKIE) == "1"  # the next sign-in asks, whatever


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "https://evil.example"},
])
def test_a_foreign_sign_out_does_not_reach_the_issuer(issuer: OidcIssuerDouble,
                                                      tmp_path: Path,
                                                      headers: dict[str, str]) -> None:
    """Ending the issuer's session signs the browser out of every application of that
    issuer: another site's form posted here must not do that. The console's own session
    ends, as before (a nuisance at most)."""
    web = client(console_context(issuer, tmp_path))
    assert sign_in(web, issuer).status_code == 303
    out = web.post("/auth/logout", headers=headers)
    assert out.status_code == 303 and out.headers["location"] == "/signed-out"
    assert _me(web) == 401


def test_a_sign_out_without_origin_reaches_the_issuer_with_a_session_only(
        issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    """No Origin (a browser that sends none): a live session cookie (SameSite=Lax, so not
    from another site's form) is what says the user asked; without one, local only."""
    web = client(console_context(issuer, tmp_path))
    assert web.post("/auth/logout").headers["location"] == "/signed-out"
    assert sign_in(web, issuer).status_code == 303
    assert _at_issuer(web.post("/auth/logout")).startswith(f"{issuer.issuer}/logout?")


@pytest.mark.parametrize("configured", [
    {"base_url": "https://archive.example"},
    {"redirect_uri": "https://archive.example/auth/callback"},
    {"redirect_uri": "https://archive.example/auth/callback",
     "base_url": "https://archive.example/"},
])
def test_behind_a_tls_ingress_the_issuer_sends_the_browser_to_the_public_url(
        issuer: OidcIssuerDouble, tmp_path: Path, configured: dict[str, str]) -> None:
    """Behind the ingress the request is plain HTTP: the post_logout_redirect_uri is the
    public one, from MIMIC_WEB_BASE_URL or the registered redirect URI."""
    ctx = console_context(issuer, tmp_path, **configured)
    web = client(ctx)
    web.cookies.set(SESSION_COOKIE, ctx.signer.seal("session", {
        "sub": "alice", "name": "alice", "roles": [OPERATOR], "sid": "s" * 16}, 3600))
    out = web.post("/auth/logout", headers={"Origin": "https://archive.example"})
    assert _query(_at_issuer(out))["post_logout_redirect_uri"] == \
        "https://archive.example/signed-out"


class _IndexGoingDown:
    """Signed-out sessions in an index that answers until ``down`` is set."""

    def __init__(self) -> None:
        self.down = False
        self.rows: dict[str, int] = {}

    def add(self, session_id: str, expires: int) -> bool:
        if self.down:
            raise ConnectionRefusedError("the index does not answer")
        known = session_id in self.rows
        self.rows[session_id] = expires
        return not known

    def holds(self, session_id: str) -> bool:
        if self.down:
            raise ConnectionRefusedError("the index does not answer")
        return session_id in self.rows


def test_a_sign_out_the_index_cannot_take_answers_a_page_that_says_to_try_again(
        issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    """The sign-out is a form POST, a browser navigation: its refusal while the index is
    down is a page in the console's style (503, the console's CSP, Retry-After), not JSON
    that the browser showed as raw text. It names no session and no user, keeps the cookie,
    and offers the sign-out again, which the index takes once it is back."""
    import time

    from mimic_server.web.console.sessions import Signer

    index = _IndexGoingDown()
    ctx = console_context(issuer, tmp_path, clock=time.time)
    ctx.signer = Signer("k" * 40, signed_out=index)
    web = client(ctx)
    assert sign_in(web, issuer).status_code == 303
    session = web.cookies.get(SESSION_COOKIE)
    assert session is not None
    sid = json.loads(base64.urlsafe_b64decode(session.split(".")[0] + "==="))["sid"]
    index.down = True

    out = web.post("/auth/logout", headers={**OURS, "Accept": "text/html"})

    assert out.status_code == 503
    assert out.headers["content-type"].startswith("text/html")
    assert out.headers["content-security-policy"] == CSP
    assert out.headers["retry-after"].isdigit()
    text = " ".join(out.text.split())
    assert "could not be completed" in text and "try again" in text.lower()
    assert '<form method="post" action="/auth/logout">' in out.text  # to sign out again
    assert sid not in out.text and session not in out.text and "alice" not in out.text
    assert "set-cookie" not in out.headers  # the browser keeps its cookie to sign out again
    assert index.rows == {}

    index.down = False
    web.cookies.set(SESSION_COOKIE, session)
    assert _at_issuer(web.post("/auth/logout", headers=OURS))
    assert list(index.rows) == [sid]
