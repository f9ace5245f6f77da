"""The console's sign-in (authorization code + PKCE against the loopback issuer) and every
refusal: state, PKCE verifier, nonce, roles, expired / forged / signed-out sessions,
cross-origin posts; each refused sign-in leaves no session and an audit record."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest
from starlette.testclient import TestClient

from mimic_server.security.audit_message import validate
from mimic_server.web.console.access import RoleMap
from mimic_server.web.console.app import build_console
from mimic_server.web.console.auth import TOO_MANY_EXCHANGES
from mimic_server.web.console.context import ISSUER_CALLS, ConsoleContext
from mimic_server.web.console.exchanges import TokenExchanges
from mimic_server.web.console.oidc import Pending
from mimic_server.web.console.sessions import LOGIN_COOKIE, SESSION_COOKIE, Signer
from tests.console.harness import (
    BASE,
    OPERATOR,
    VIEWER,
    authorize,
    client,
    console_context,
    sign_in,
    start_login,
)
from tests.oidc_double import OidcIssuerDouble


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcIssuerDouble]:
    double = OidcIssuerDouble(tmp_path_factory.mktemp("oidc")).start()
    yield double
    double.stop()


@pytest.fixture(autouse=True)
def _operator(issuer: OidcIssuerDouble) -> None:
    issuer.sign_in_as("operator-1", roles=[OPERATOR])
    issuer.id_token_overrides = {}


def _audit(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_sign_in_with_pkce_gives_an_operator_session(issuer: OidcIssuerDouble,
                                                     tmp_path: Path) -> None:
    web = client(console_context(issuer, tmp_path))
    params = start_login(web)
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["response_type"] == "code" and params["client_id"] == "mimic-console"
    assert params["redirect_uri"] == "http://127.0.0.1:8042/auth/callback"
    login_cookie = next(c for c in web.cookies.jar if c.name == LOGIN_COOKIE)
    assert login_cookie.path == "/auth/" and params["state"] not in login_cookie.value
    back = authorize(issuer, params)
    response = web.get("/auth/callback", params=back)
    assert response.status_code == 303 and response.headers["location"] == "/"
    header = response.headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=lax" in header
    assert "secure" not in header  # plain HTTP on loopback: a Secure cookie would be lost
    assert web.get("/console/api/me").json()["operator"] is True
    page = web.get("/")
    assert page.status_code == 200 and "<title>MIMIC console</title>" in page.text
    records = [r for r in _audit(tmp_path) if r.get("event_type") == "login"]
    assert records[-1]["outcome"] == 0 and records[-1]["user"] == "operator-1@example.org"


def test_confidential_client_sends_its_secret(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    web = client(console_context(issuer, tmp_path, secret="s3cret-of-the-console"))
    assert sign_in(web, issuer).status_code == 303
    issuer.register_client("mimic-console", "another-secret")  # the secret was rotated
    refused = client(console_context(issuer, tmp_path, secret="s3cret-of-the-console"))
    issuer.register_client("mimic-console", "another-secret")
    response = sign_in(refused, issuer)
    assert response.status_code == 400 and "invalid_client" in response.json()["error"]
    assert issuer.token_requests[-1] == "invalid_client"


def test_session_cookie_is_secure_off_loopback(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    ctx = console_context(issuer, tmp_path, redirect_uri="http://127.0.0.1:8042/auth/callback")
    web = TestClient(build_console(ctx), base_url="http://console.example", follow_redirects=False)
    response = web.get("/auth/login")
    assert "secure" in response.headers["set-cookie"].lower()


@pytest.mark.parametrize("state", ["made-up", "\u00e9t\u00e9"])  # not ASCII: was a 500
def test_wrong_state_is_refused(issuer: OidcIssuerDouble, tmp_path: Path, state: str) -> None:
    web = client(console_context(issuer, tmp_path))
    back = authorize(issuer, start_login(web))
    back["state"] = Pending.new().state if state == "made-up" else state
    before = len(issuer.token_requests)
    response = web.get("/auth/callback", params=back)
    assert response.status_code == 400 and "state" in response.json()["error"]
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    assert web.get("/console/api/me").status_code == 401
    assert len(issuer.token_requests) == before  # refused before the code was exchanged
    assert _audit(tmp_path)[-1]["outcome"] == 4


def test_callback_without_a_login_in_progress_is_refused(issuer: OidcIssuerDouble,
                                                         tmp_path: Path) -> None:
    attacker = client(console_context(issuer, tmp_path))
    back = authorize(issuer, start_login(attacker))
    victim = client(console_context(issuer, tmp_path))  # login CSRF: no login cookie here
    response = victim.get("/auth/callback", params=back)
    assert response.status_code == 400 and "no sign-in in progress" in response.json()["error"]
    assert victim.get("/console/api/me").status_code == 401


def test_a_code_for_another_pkce_challenge_is_refused(issuer: OidcIssuerDouble,
                                                      tmp_path: Path) -> None:
    """Code injection: a code issued for someone else's challenge, sent back with our state,
    fails at the token endpoint because our verifier does not hash to that challenge."""
    web = client(console_context(issuer, tmp_path))
    ours = start_login(web)
    theirs = dict(ours, code_challenge=Pending.new().challenge)
    back = authorize(issuer, theirs)
    before = len(issuer.token_requests)
    response = web.get("/auth/callback", params=back)
    assert response.status_code == 400 and "invalid_grant" in response.json()["error"]
    assert issuer.token_requests[before:] == ["invalid_grant"]
    assert web.get("/console/api/me").status_code == 401


def test_a_code_is_used_once(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    web = client(console_context(issuer, tmp_path))
    params = start_login(web)
    back = authorize(issuer, params)
    assert web.get("/auth/callback", params=back).status_code == 303
    again = client(console_context(issuer, tmp_path))
    again.cookies = web.cookies
    assert again.get("/auth/callback", params=back).status_code == 400


def test_wrong_nonce_is_refused(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    issuer.id_token_overrides = {"nonce": Pending.new().nonce}
    web = client(console_context(issuer, tmp_path))
    response = sign_in(web, issuer)
    assert response.status_code == 400 and "nonce" in response.json()["error"]
    assert web.get("/console/api/me").status_code == 401
    issuer.id_token_overrides = {"nonce": None}  # no nonce at all
    response = sign_in(client(console_context(issuer, tmp_path)), issuer)
    assert response.status_code == 400 and "nonce" in response.json()["error"]


def test_an_id_token_for_another_audience_is_refused(issuer: OidcIssuerDouble,
                                                     tmp_path: Path) -> None:
    issuer.id_token_overrides = {"aud": "another-app"}
    response = sign_in(client(console_context(issuer, tmp_path)), issuer)
    assert response.status_code == 400 and "audience" in response.json()["error"]


def test_issuer_error_is_refused(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    issuer.user = None  # the user cancelled, or is not assigned to the app
    web = client(console_context(issuer, tmp_path))
    response = sign_in(web, issuer)
    assert response.status_code == 400 and "access_denied" in response.json()["error"]


def test_issuer_error_is_quoted_as_printable_ascii(issuer: OidcIssuerDouble, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Anyone can send a browser to the callback with an ``error`` of their choosing: the
    refusal quotes only the characters an RFC 6749 error code may hold, in the response, the
    WARNING line and the audit record, which is written."""
    web = client(console_context(issuer, tmp_path))
    chosen = 'access_denied\x01\n"forged" line\\ \u00e9\u202e'
    with caplog.at_level("WARNING", logger="mimic_server.web.console.auth"):
        response = web.get("/auth/callback", params={"error": chosen, "state": "x"})
    quoted = "another error code"  # not one RFC 6749 or OIDC defines: not quoted at all
    assert response.status_code == 400
    assert response.json()["error"] == f"sign-in refused: the issuer ended the sign-in ({quoted})"
    warnings = [r for r in caplog.records if r.getMessage() == "console sign-in refused"]
    assert [r.levelname for r in warnings] == ["WARNING"]
    assert warnings[0].reason == f"the issuer ended the sign-in ({quoted})"
    record = _audit(tmp_path)[-1]
    assert record["event_type"] == "login" and record["outcome"] == 4
    assert record["reason"] == f"the issuer ended the sign-in ({quoted})"
    assert f"the issuer ended the sign-in ({quoted})" in record["xml"]


def test_no_console_role_is_forbidden(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    issuer.sign_in_as("nurse-1", roles=["Radiologist"])
    web = client(console_context(issuer, tmp_path))
    response = sign_in(web, issuer)
    assert response.status_code == 403
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    record = _audit(tmp_path)[-1]
    assert record["outcome"] == 4 and record["user"] == "nurse-1@example.org"


def test_roles_too_many_for_a_cookie_are_refused_not_looped(issuer: OidcIssuerDouble,
                                                            tmp_path: Path) -> None:
    """A roles claim of 120 group ids made a session cookie past the 4096 bytes a browser
    keeps: Chromium dropped it, / sent it to sign in again, and round it went until
    ERR_TOO_MANY_REDIRECTS, each lap a token exchange and a sign-in record. Now: a 403 that
    says why, no session cookie, a refused sign-in on the record."""
    import uuid

    groups = [str(uuid.UUID(int=n)) for n in range(120)]
    issuer.sign_in_as("operator-2", roles=[OPERATOR, *groups])
    web = client(console_context(issuer, tmp_path))
    response = sign_in(web, issuer)
    assert response.status_code == 403
    assert "roles claim (121 names) is too long" in response.json()["error"]
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    record = _audit(tmp_path)[-1]
    assert record["outcome"] == 4 and record["user"] == "operator-2@example.org"
    issuer.sign_in_as("operator-2", roles=[OPERATOR, *groups[:40]])  # still fits
    fits = sign_in(client(console_context(issuer, tmp_path)), issuer)
    assert fits.status_code == 303
    assert len(fits.cookies[SESSION_COOKIE]) + len(SESSION_COOKIE) + 1 <= 4096


def test_viewer_sees_studies_but_not_operator_pages(issuer: OidcIssuerDouble,
                                                    tmp_path: Path) -> None:
    issuer.sign_in_as("viewer-1", roles=[VIEWER])
    web = client(console_context(issuer, tmp_path))
    assert sign_in(web, issuer).status_code == 303
    assert web.get("/console/api/me").json()["operator"] is False
    assert web.get("/").status_code == 200
    assert web.get("/console/api/modalities").status_code == 403
    assert web.get("/console/api/now").status_code == 403
    assert web.post("/console/api/audit", json={}).status_code == 403


def test_refused_routes_and_reading_the_trail_are_audited(issuer: OidcIssuerDouble,
                                                           tmp_path: Path) -> None:
    """A viewer refused an operator route is a Security Alert (Use of Restricted Function,
    the user, the route), as the access policy's refusals are; an operator reading the
    trail is an Audit Log Used record (PS3.15 A.5.3.2) with the selection."""
    ctx = console_context(issuer, tmp_path, audit_records=lambda selection, limit: [],
                          trust=lambda: None, serve_status=lambda: {})
    issuer.sign_in_as("viewer-1", roles=[VIEWER])
    viewer = client(ctx)
    assert sign_in(viewer, issuer).status_code == 303
    before = len(_audit(tmp_path))
    assert viewer.get("/console/api/modalities").status_code == 403
    assert viewer.post("/console/api/audit", json={}).status_code == 403
    alerts = _audit(tmp_path)[before:]
    assert [(r["event_name"], r["event_type"], r["outcome"], r["user"]) for r in alerts] == [
        ("Security Alert", "use-of-restricted-function", 4, "viewer-1@example.org")] * 2
    assert "route=GET /console/api/modalities" in alerts[0]["xml"]
    assert "route=POST /console/api/audit" in alerts[1]["xml"]
    for record in alerts:
        validate(record["xml"])

    issuer.sign_in_as("operator-1", roles=[OPERATOR])
    operator = client(ctx)
    assert sign_in(operator, issuer).status_code == 303
    before = len(_audit(tmp_path))
    response = operator.post("/console/api/audit", json={"event": "login",
                                                         "identity": "CT1"})
    assert response.status_code == 200
    used = _audit(tmp_path)[before:]
    assert [(r["event"], r["event_name"], r["outcome"], r["user"]) for r in used] == [
        ("110101", "Audit Log Used", 0, "operator-1@example.org")]
    validate(used[0]["xml"])
    assert "filter: event=login identity=CT1" in used[0]["xml"]
    assert 'EventActionCode="R"' in used[0]["xml"] and "Security Audit Log" in used[0]["xml"]


def test_expired_session_is_refused(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    now = [1_900_000_000.0]
    ctx = console_context(issuer, tmp_path, clock=lambda: now[0], session_seconds=3600)
    web = client(ctx)
    assert sign_in(web, issuer).status_code == 303
    assert web.get("/console/api/me").status_code == 200
    now[0] += 3601
    assert web.get("/console/api/me").status_code == 401
    page = web.get("/")
    assert page.status_code == 303 and page.headers["location"] == "/auth/login"


def test_signed_out_session_is_refused_even_with_the_old_cookie(issuer: OidcIssuerDouble,
                                                                tmp_path: Path) -> None:
    web = client(console_context(issuer, tmp_path))
    assert sign_in(web, issuer).status_code == 303
    cookie = web.cookies.get(SESSION_COOKIE)
    response = web.post("/auth/logout", headers={"Origin": "http://127.0.0.1:8042"})
    # On to the issuer's end_session_endpoint (tests/console/test_console_sign_out.py).
    assert response.status_code == 200 and f"{issuer.issuer}/logout?" in response.text
    web.cookies.set(SESSION_COOKIE, cookie)
    assert web.get("/console/api/me").status_code == 401


def test_forged_and_foreign_cookies_are_refused(issuer: OidcIssuerDouble,
                                                tmp_path: Path) -> None:
    ctx = console_context(issuer, tmp_path)
    web = client(ctx)
    assert sign_in(web, issuer).status_code == 303
    good = web.cookies.get(SESSION_COOKIE)
    data, mac = good.split(".")
    forged = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    forged["roles"] = [OPERATOR, "Admin"]
    tampered = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    web.cookies.set(SESSION_COOKIE, f"{tampered}.{mac}")
    assert web.get("/console/api/me").status_code == 401
    other = Signer(None)  # another process's key (a restart without MIMIC_WEB_SESSION_KEY)
    web.cookies.set(SESSION_COOKIE, other.seal("session", {"sub": "x", "roles": [OPERATOR],
                                                           "sid": "s"}, 3600))
    assert web.get("/console/api/me").status_code == 401
    login_state = ctx.signer.seal("login", {"state": "a", "nonce": "b", "verifier": "c"}, 60)
    web.cookies.set(SESSION_COOKIE, login_state)  # a login-state cookie is not a session
    assert web.get("/console/api/me").status_code == 401


def test_cross_origin_post_is_refused(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    web = client(console_context(issuer, tmp_path))
    assert sign_in(web, issuer).status_code == 303
    response = web.post("/console/api/audit", json={},
                        headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    form = web.post("/console/api/audit", content=b"event=x",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 403


def _session(ctx: ConsoleContext) -> str:
    """An operator's session cookie as a sign-in through the public URL would set it."""
    return ctx.signer.seal("session", {"sub": "op", "name": "operator-1", "roles": [OPERATOR],
                                       "sid": secrets.token_urlsafe(16)}, 3600)


@pytest.mark.parametrize("configured", [
    {"redirect_uri": "https://archive.example/auth/callback"},
    {"base_url": "HTTPS://Archive.example:443/"},
])
def test_behind_a_tls_ingress_the_public_origin_is_ours(issuer: OidcIssuerDouble,
                                                        tmp_path: Path,
                                                        configured: dict[str, str]) -> None:
    """Container Apps' ingress ends TLS and forwards plain HTTP from an address uvicorn does
    not trust for X-Forwarded-Proto: the request's URL is http://, the browser's Origin the
    configured https:// one, which is the console's own."""
    ctx = console_context(issuer, tmp_path, audit_records=lambda f, limit: [], **configured)
    web = client(ctx)
    web.cookies.set(SESSION_COOKIE, _session(ctx))
    ours = {"Origin": "https://archive.example"}
    assert web.post("/console/api/audit", json={}, headers=ours).status_code == 200
    for foreign in ("https://evil.example", "http://archive.example",
                    "https://archive.example:8443"):
        refused = web.post("/console/api/audit", json={}, headers={"Origin": foreign})
        assert refused.status_code == 403, foreign
    assert web.post("/auth/logout", headers=ours).status_code == 200  # on to the issuer
    assert web.get("/console/api/me").status_code == 401


def test_a_browser_saying_same_origin_is_ours(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    """Without a configured URL, the browser's Sec-Fetch-Site (no page script can set it)."""
    ctx = console_context(issuer, tmp_path, audit_records=lambda f, limit: [])
    web = client(ctx)
    web.cookies.set(SESSION_COOKIE, _session(ctx))
    same = {"Origin": "https://archive.example", "Sec-Fetch-Site": "same-origin"}
    assert web.post("/console/api/audit", json={}, headers=same).status_code == 200
    cross = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert web.post("/console/api/audit", json={}, headers=cross).status_code == 403


def test_sign_out_revokes_whatever_the_origin(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    """Ending a session harms nobody: a sign-out from an origin the console cannot place (an
    ingress it was not told of) still ends it, and is still a POST only."""
    ctx = console_context(issuer, tmp_path)
    web = client(ctx)
    cookie = _session(ctx)
    web.cookies.set(SESSION_COOKIE, cookie)
    assert web.get("/auth/logout").status_code == 405
    assert web.get("/console/api/me").status_code == 200
    response = web.post("/auth/logout", headers={"Origin": "https://elsewhere.example"})
    assert response.status_code == 303 and response.headers["location"] == "/signed-out"
    web.cookies.set(SESSION_COOKIE, cookie)
    assert web.get("/console/api/me").status_code == 401
    assert _audit(tmp_path)[-1]["event_type"] == "logout"


def test_strangers_refused_sign_ins_are_counted(issuer: OidcIssuerDouble, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Anyone may call the callback: the first refusal of a peer and reason in an interval
    is a WARNING and an audit record at once, the repeats one of each with their count at
    the interval's end (as refused DICOM connections): no line and no record per request."""
    ctx = console_context(issuer, tmp_path)
    web = client(ctx)
    with caplog.at_level("WARNING", logger="mimic_server"):
        statuses = {web.get("/auth/callback", params={"error": "access_denied"}).status_code
                    for _ in range(30)}
        # Codes of the stranger's own making are one reason: each was a first refusal.
        statuses |= {web.get("/auth/callback", params={"error": f"e{n}"}).status_code
                     for n in range(30)}
        assert statuses == {400}
        assert len(_audit(tmp_path)) == 2  # the first of each reason
        assert ctx.sign_in_refusals is not None
        ctx.sign_in_refusals.flush()
    lines = [r for r in caplog.records if r.getMessage() == "console sign-in refused"]
    assert sorted((r.levelname, r.count) for r in lines) == [
        ("WARNING", 1), ("WARNING", 1), ("WARNING", 29), ("WARNING", 29)]
    records = _audit(tmp_path)
    assert len(records) == 4
    first, repeats = (r for r in records if "access_denied" in r["reason"])
    for record in (first, repeats):
        assert record["event_name"] == "User Authentication" and record["outcome"] == 4
        assert record["event_type"] == "login" and record["identity"] == "web console"
        assert record["reason"] == "the issuer ended the sign-in (access_denied)"
        validate(record["xml"])
    assert "count" not in first and repeats["count"] == 29
    assert "count=29" in repeats["xml"]


def test_each_tab_of_a_browser_signs_in(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    """Two tabs whose session ended go to /auth/login one after the other: the login cookie
    held one sign-in, so the first tab's callback was refused "the sign-in state does not
    match", and that refusal deleted the cookie, so the second was refused too ("no
    sign-in in progress"), both on the record as refused sign-ins. Each is its own now,
    a made-up callback ends neither, and at most four are held."""
    web = client(console_context(issuer, tmp_path))  # one browser: one cookie jar
    first, second = start_login(web), start_login(web)
    back_first, back_second = authorize(issuer, first), authorize(issuer, second)
    forged = web.get("/auth/callback", params={"state": Pending.new().state, "code": "x"})
    assert forged.status_code == 400 and "state does not match" in forged.json()["error"]
    for back in (back_first, back_second):
        response = web.get("/auth/callback", params=back)
        assert response.status_code == 303, response.text
        assert SESSION_COOKIE in response.headers["set-cookie"]
    assert web.get("/console/api/me").json()["operator"] is True
    assert not any(r["outcome"] for r in _audit(tmp_path)[-2:])  # two sign-ins, no refusal
    assert web.get("/auth/callback", params=back_second).status_code == 400  # used

    from mimic_server.web.console.auth import MAX_PENDING

    tabs = [start_login(web) for _ in range(MAX_PENDING + 1)]
    oldest = web.get("/auth/callback", params=authorize(issuer, tabs[0]))
    assert oldest.status_code == 400  # the fifth pushed the first out
    newest = web.get("/auth/callback", params=authorize(issuer, tabs[-1]))
    assert newest.status_code == 303


def test_a_login_state_is_good_for_one_callback(issuer: OidcIssuerDouble,
                                                tmp_path: Path) -> None:
    """One /auth/login's cookie and state replayed with made-up codes: the issuer's token
    endpoint is called for the first callback only (an issuer throttling the client id
    would lock the operators out), and a real sign-in still works."""
    ctx = console_context(issuer, tmp_path)
    web = client(ctx)
    params = start_login(web)
    login_cookie = web.cookies.get(LOGIN_COOKIE)
    before = len(issuer.token_requests)
    for attempt in range(5):
        web.cookies.set(LOGIN_COOKIE, login_cookie, path="/auth/")
        response = web.get("/auth/callback", params={"state": params["state"],
                                                     "code": f"made-up-{attempt}"})
        assert response.status_code == 400
    assert len(issuer.token_requests) - before == 1
    assert "already completed or refused" in response.json()["error"]
    assert sign_in(client(ctx), issuer).status_code == 303


def test_token_exchanges_wait_for_their_own_threads(issuer: OidcIssuerDouble,
                                                    tmp_path: Path) -> None:
    """Callbacks whose token exchange hangs hold the console's few issuer threads, never the
    default thread pool that DICOMweb's sync routes run in; the rest wait their turn."""
    ctx = console_context(issuer, tmp_path)
    app = build_console(ctx)
    cookies = []
    for _ in range(ISSUER_CALLS + 2):
        web = client(ctx)
        params = start_login(web)
        cookies.append((params["state"], web.cookies.get(LOGIN_COOKIE)))
    entered, release = [], threading.Event()
    real_token = issuer.token

    def hanging_token(form: dict[str, str]) -> tuple[int, dict]:
        entered.append(form["code"])
        release.wait(30)
        return real_token(form)

    issuer.token = hanging_token  # type: ignore[method-assign]

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as browser:
            async def callback(state: str, cookie: str) -> int:
                response = await browser.get(
                    "/auth/callback", params={"state": state, "code": "x"},
                    headers={"Cookie": f"{LOGIN_COOKIE}={cookie}"})
                return response.status_code

            async with anyio.create_task_group() as group:
                results: list[int] = []

                async def run(state: str, cookie: str) -> None:
                    results.append(await callback(state, cookie))

                for state, cookie in cookies:
                    group.start_soon(run, state, cookie)
                with anyio.fail_after(20):
                    while ctx.issuer_calls.statistics().tasks_waiting < 2 or \
                            len(entered) < ISSUER_CALLS:
                        await anyio.sleep(0.01)
                default = anyio.to_thread.current_default_thread_limiter()
                assert default.borrowed_tokens == 0
                assert ctx.issuer_calls.borrowed_tokens == ISSUER_CALLS
                assert len(entered) == ISSUER_CALLS
                release.set()
            return results

    try:
        assert anyio.run(main) == [400] * (ISSUER_CALLS + 2)
    finally:
        release.set()
        issuer.token = real_token  # type: ignore[method-assign]
    assert len(entered) == ISSUER_CALLS + 2


def test_unconfigured_console_answers_503(tmp_path: Path) -> None:
    ctx = ConsoleContext(oidc=None, signer=Signer(None), roles=RoleMap.parse(OPERATOR, VIEWER))
    web = client(ctx)
    assert web.get("/").status_code == 503
    assert web.get("/auth/login").status_code == 503
    assert web.get("/console/api/me").status_code == 503


def test_short_session_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32"):
        Signer("short")


def test_sign_out_in_one_worker_ends_the_session_in_the_others(tmp_path: Path) -> None:
    """The workers of one ``mimic web`` share a key and a directory of signed-out ids."""
    shared = tmp_path / "revoked"
    shared.mkdir()
    one, other = (Signer("k" * 40, revoked_dir=shared) for _ in range(2))
    cookie = one.seal("session", {"sub": "operator-1", "sid": "abcdefgh12345678"}, 600)
    assert other.open("session", cookie) is not None
    one.revoke("abcdefgh12345678", time.time() + 600)
    assert other.open("session", cookie) is None
    assert one.open("session", cookie) is None
    # An expired mark is swept by the next sign-out.
    one.revoke("expired-session-1", time.time() - 1)
    one.revoke("another-session-2", time.time() + 600)
    assert sorted(p.name for p in shared.iterdir()) == ["abcdefgh12345678",
                                                         "another-session-2"]


def test_token_exchanges_are_limited_per_peer(issuer: OidcIssuerDouble, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A stranger taking a fresh /auth/login before each made-up callback had the archive
    call the issuer's token endpoint once per pair of requests. Past the limit of a peer in
    a window the callback is 429 with Retry-After and the issuer is not called; a sign-in
    that succeeded counted too; the refusals are one WARNING and one record at once, the
    repeats counted; another peer signs in; the next window admits the peer again."""
    now = [1000.0]
    ctx = console_context(issuer, tmp_path,
                          token_exchanges=TokenExchanges(3, 60, clock=lambda: now[0]))
    stranger = client(ctx, "192.0.2.7")
    before = len(issuer.token_requests)
    assert sign_in(stranger, issuer).status_code == 303
    answers = []
    with caplog.at_level("WARNING", logger="mimic_server"):
        for attempt in range(2 + 4):
            params = start_login(stranger)
            answers.append(stranger.get("/auth/callback", params={
                "state": params["state"], "code": f"made-up-{attempt}"}))
        assert [a.status_code for a in answers] == [400, 400, 429, 429, 429, 429]
        assert issuer.token_requests[before:] == ["issued", "invalid_grant", "invalid_grant"]
        assert answers[2].headers["retry-after"] == "60"
        assert answers[2].json()["error"] == (
            "sign-in refused: too many sign-ins from this address; try again in 60 s")
        now[0] += 45
        late = start_login(stranger)
        answer = stranger.get("/auth/callback", params={"state": late["state"], "code": "x"})
        assert answer.status_code == 429 and answer.headers["retry-after"] == "15"
        too_many = [r for r in _audit(tmp_path) if r.get("reason") == TOO_MANY_EXCHANGES]
        assert len(too_many) == 1 and too_many[0]["peer"] == "192.0.2.7"
        assert too_many[0]["event_name"] == "User Authentication" and \
            too_many[0]["outcome"] == 4
        # Another address is counted apart.
        assert sign_in(client(ctx, "198.51.100.9"), issuer).status_code == 303
        assert len(issuer.token_requests) - before == 4
        assert ctx.sign_in_refusals is not None
        ctx.sign_in_refusals.flush()
    lines = [(r.levelname, r.count) for r in caplog.records
             if r.getMessage() == "console sign-in refused" and r.reason == TOO_MANY_EXCHANGES]
    assert lines == [("WARNING", 1), ("WARNING", 4)]
    # The next window: the stranger's address may exchange again.
    now[0] += 15
    assert sign_in(stranger, issuer).status_code == 303
    assert issuer.token_requests[-1] == "issued"


def test_token_exchange_counts_are_bounded() -> None:
    """Past the peers held, the others share one count: a stranger with many addresses
    cannot grow the counts, and a flood of them is still limited."""
    now = [0.0]
    exchanges = TokenExchanges(1, 60, clock=lambda: now[0], max_peers=2)
    assert exchanges.admit("192.0.2.1") is None and exchanges.admit("192.0.2.2") is None
    assert exchanges.admit("192.0.2.3") is None  # the shared count's one
    assert exchanges.admit("192.0.2.4") == 60
    assert exchanges.admit("192.0.2.1") == 60
    now[0] = 60
    assert exchanges.admit("192.0.2.4") is None


def test_token_exchanges_of_one_ipv6_network_count_as_one_peer() -> None:
    """One host is given a whole /64: one key per IPv6 address let one stranger fill every
    key of the window, and the shared count then refused every operator not yet counted."""
    exchanges = TokenExchanges(2, 60, clock=lambda: 0.0, max_peers=4)
    assert exchanges.admit("2001:db8:1:2::1") is None
    assert exchanges.admit("2001:db8:1:2::ffff") is None
    assert exchanges.admit("2001:db8:1:2:abcd::9") == 60  # the same /64
    assert exchanges.admit("2001:db8:1:3::1") is None  # another network
    assert exchanges.admit("192.0.2.7") is None and exchanges.admit("192.0.2.8") is None
