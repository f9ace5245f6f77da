"""The console behind an ingress that appends the client's address to X-Forwarded-For
(``MIMIC_WEB_PROXY_HOPS``, ``web/forwarded.py``): each browser is counted by its own
address, never by one it wrote into the header itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mimic_server.web.console.app import build_console
from mimic_server.web.console.auth import TOO_MANY_EXCHANGES
from mimic_server.web.console.context import ConsoleContext
from mimic_server.web.console.exchanges import TokenExchanges
from mimic_server.web.forwarded import ForwardedClient, forwarded_client
from tests.console.harness import BASE, console_context, sign_in, start_login
from tests.oidc_double import OidcIssuerDouble

INGRESS = "100.100.0.7"


@pytest.fixture(scope="module")
def issuer(operator_issuer: OidcIssuerDouble) -> OidcIssuerDouble:
    return operator_issuer


def _through_ingress(ctx: ConsoleContext, forwarded: str, hops: int) -> TestClient:
    """A browser whose requests the ingress passes on with ``forwarded`` (what the browser
    sent, if anything, then the address the ingress saw)."""
    return TestClient(ForwardedClient(build_console(ctx), hops=hops), base_url=BASE,
                      follow_redirects=False, client=(INGRESS, 50000),
                      headers={"X-Forwarded-For": forwarded})


def _made_up_callbacks(web: TestClient, count: int) -> list[int]:
    answers = []
    for attempt in range(count):
        params = start_login(web)
        answers.append(web.get("/auth/callback", params={
            "state": params["state"], "code": f"made-up-{attempt}"}).status_code)
    return answers


@pytest.mark.parametrize("hops", [1, 0])
def test_each_browser_behind_the_ingress_has_its_own_limit(
        issuer: OidcIssuerDouble, tmp_path: Path, hops: int) -> None:
    """Without the setting every browser had the ingress's address: a stranger's flood of
    made-up callbacks used up the limit of every operator behind it."""
    ctx = console_context(issuer, tmp_path, token_exchanges=TokenExchanges(2, 60))
    # The stranger names another's address first; the ingress appends the real one.
    stranger = _through_ingress(ctx, "198.51.100.9, 192.0.2.7", hops)
    assert _made_up_callbacks(stranger, 4) == [400, 400, 429, 429]
    operator = _through_ingress(ctx, "198.51.100.9", hops)
    answer = sign_in(operator, issuer)
    if hops == 0:  # the connection's address, shared: what the setting is for
        assert answer.status_code == 429
        return
    assert answer.status_code == 303
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    refused = [r for r in records if r.get("reason") == TOO_MANY_EXCHANGES]
    assert [r["peer"] for r in refused] == ["192.0.2.7"]
    assert [r["peer"] for r in records if r.get("outcome") == 0] == ["198.51.100.9"]


@pytest.mark.parametrize(("headers", "hops", "client"), [
    ([(b"x-forwarded-for", b"203.0.113.5")], 1, "203.0.113.5"),
    ([(b"x-forwarded-for", b"10.1.1.1, 203.0.113.5")], 1, "203.0.113.5"),
    ([(b"x-forwarded-for", b"10.1.1.1, 203.0.113.5")], 2, "10.1.1.1"),
    # Several headers are one list, in order (RFC 9110 5.3).
    ([(b"X-Forwarded-For", b"10.1.1.1"), (b"x-forwarded-for", b"203.0.113.5")], 1,
     "203.0.113.5"),
    ([(b"x-forwarded-for", b" 2001:db8::1 ")], 1, "2001:db8::1"),
    # Fewer entries than proxies: not through them; the connection's address stays.
    ([(b"x-forwarded-for", b"203.0.113.5")], 2, None),
    ([], 1, None),
    # Not an address (a name, a port, garbage): the connection's address stays.
    ([(b"x-forwarded-for", b"10.1.1.1, unknown")], 1, None),
    ([(b"x-forwarded-for", b"203.0.113.5:4711")], 1, "203.0.113.5"),
    ([(b"x-forwarded-for", b"[2001:db8::1]:4711")], 1, "2001:db8::1"),
    ([(b"x-forwarded-for", b"[2001:db8::1]")], 1, "2001:db8::1"),
    ([(b"x-forwarded-for", b"203.0.113.5:port")], 1, None),
    ([(b"x-forwarded-for", b"[2001:db8::1]x")], 1, None),
    ([(b"x-forwarded-for", b"10.1.1.1,")], 1, None),
])
def test_the_client_is_the_entry_the_nearest_proxy_wrote(
        headers: list[tuple[bytes, bytes]], hops: int, client: str | None) -> None:
    assert forwarded_client(headers, hops) == client


@pytest.mark.parametrize(("hops", "seen"), [(1, "192.0.2.44"), (0, INGRESS)])
def test_mimic_webs_app_takes_the_setting(hops: int, seen: str) -> None:
    """``MIMIC_WEB_PROXY_HOPS`` reaches every route of ``mimic web``'s app, the console's
    included (``webapp.build_web_app``)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from mimic_server.security.audit import AuditLog
    from mimic_server.security.policy import Policy
    from mimic_server.storage.memory import MemoryStore
    from mimic_server.web.dicomweb.context import DicomWebContext
    from mimic_server.webapp import build_web_app

    def peer(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.client.host if request.client else "")

    ctx = DicomWebContext(finder=None, store=MemoryStore(), policy=Policy("MIMIC"),  # type: ignore[arg-type]
                          audit=AuditLog(None), tokens=None)
    app = build_web_app(ctx, [], console=Starlette(routes=[Route("/peer", peer)]),
                        proxy_hops=hops)
    web = TestClient(app, base_url=BASE, client=(INGRESS, 50000))
    assert web.get("/peer", headers={"X-Forwarded-For": "10.9.9.9, 192.0.2.44"}).text == seen
