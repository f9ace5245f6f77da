"""A console app over a loopback OIDC issuer and an SQLite index, driven by Starlette's
TestClient, and the sign-in as a browser does it (following the issuer's redirect)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from mimic_server.security.audit import USER_AUTHENTICATION, AuditLog
from mimic_server.security.refusals import RefusalAudit
from mimic_server.security.tokens import TokenValidator
from mimic_server.web.console.access import RoleMap
from mimic_server.web.console.app import build_console
from mimic_server.web.console.context import ConsoleContext
from mimic_server.web.console.oidc import OidcClient
from mimic_server.web.console.sessions import Signer
from tests.oidc_double import OidcIssuerDouble

CLIENT_ID = "mimic-console"
BASE = "http://127.0.0.1:8042"
OPERATOR, VIEWER = "MimicOperator", "MimicViewer"


def console_context(issuer: OidcIssuerDouble, tmp: Path, *, secret: str | None = None,
                    clock: Callable[[], float] | None = None, **extra: Any) -> ConsoleContext:
    issuer.register_client(CLIENT_ID, secret)
    validator = TokenValidator(issuer.issuer, CLIENT_ID, ssl_context=issuer.client_context())
    oidc = OidcClient(issuer.issuer, CLIENT_ID, validator, client_secret=secret,
                      ssl_context=issuer.client_context())
    signer = Signer("k" * 40, clock) if clock is not None else Signer(None)
    audit_log = extra.pop("audit_log", AuditLog(tmp / "audit.jsonl"))
    # As `mimic web` counts refused sign-ins, but without its thread: a test flushes.
    refusals = extra.pop("sign_in_refusals", RefusalAudit(
        audit_log, 3600, event=USER_AUTHENTICATION, message="console sign-in refused",
        details={"identity": "web console", "event_type": "login"}, first_recorded=True))
    return ConsoleContext(
        oidc=oidc, signer=signer, roles=RoleMap.parse(OPERATOR, VIEWER),
        audit_log=audit_log, sign_in_refusals=refusals, **extra,
    )


def client(ctx: ConsoleContext, peer: str = "testclient") -> TestClient:
    """A browser at ``peer`` (the address the console counts refusals and exchanges by)."""
    return TestClient(build_console(ctx), base_url=BASE, follow_redirects=False,
                      client=(peer, 50000))


def start_login(web: TestClient) -> dict[str, str]:
    """GET /auth/login: the authorization request's parameters (the login cookie is kept)."""
    response = web.get("/auth/login")
    assert response.status_code == 303, response.text
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(response.headers["location"]).query))


def authorize(issuer: OidcIssuerDouble, params: dict[str, str]) -> dict[str, str]:
    """The issuer's answer to the browser: the callback's query parameters."""
    status, location, body = issuer.authorize(params)
    assert status == 302 and location is not None, body
    assert location.startswith(f"{BASE}/auth/callback?")
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def sign_in(web: TestClient, issuer: OidcIssuerDouble) -> Any:
    back = authorize(issuer, start_login(web))
    return web.get("/auth/callback", params=back)
