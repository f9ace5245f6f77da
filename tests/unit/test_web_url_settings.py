"""The URLs and origins ``mimic web`` is configured with are checked at start
(``config.Settings``): each was taken as given, and a wrong one failed only later, on every
request it touched, with no word at start."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from mimic_server.config import Settings
from mimic_server.web.dicomweb.app import build_dicomweb


@pytest.mark.parametrize(("field", "value", "said"), [
    # Bulk data URIs relative to the viewer's own page.
    ("web_base_url", "viewer.example.org", "absolute URL"),
    ("web_base_url", "ftp://viewer.example.org", "absolute URL"),
    ("web_base_url", "https://pacs.example.org/?x=1", "query"),
    ("web_base_url", "https://pacs.example.org:99999", "port"),
    ("web_base_url", "https://admin:secret@pacs.example.org", "user name"),
    # The console's live page failed on every load: "unknown url type".
    ("web_serve_status_url", "127.0.0.1:8080", "absolute URL"),
    ("web_serve_status_url", "", "absolute URL"),
    # A redirect URI the issuer refuses: sign-in failed at the issuer.
    ("web_oidc_redirect_uri", "/auth/callback", "absolute URL"),
    ("web_oidc_redirect_uri", "https://pacs.example.org/auth/callback#x", "fragment"),
    # An entry no browser's Origin header ever equals: every viewer's call refused.
    ("web_cors_origins", "https://viewer.example.org/ohif", "not an origin"),
    ("web_cors_origins", "viewer.example.org", "not an origin"),
    ("web_cors_origins", "https://viewer.example.org?x", "not an origin"),
    ("web_cors_origins", "https://viewer.example.org:http", "not an origin"),
    ("web_cors_origins", "https://*.example.org", "pattern"),
    ("web_cors_origins", "https://viewer.example.org, http://localhost:*", "pattern"),
])
def test_a_url_that_cannot_work_is_refused_with_its_name(
    field: str, value: str, said: str,
) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**{field: value})
    assert field in str(refused.value) and said in str(refused.value)


def test_urls_that_work_are_kept() -> None:
    settings = Settings(web_base_url=" https://pacs.example.org/mimic/ ",
                        web_serve_status_url="http://[::1]:8080",
                        web_oidc_redirect_uri="https://pacs.example.org/auth/callback?x=1")
    assert settings.web_base_url == "https://pacs.example.org/mimic/"
    assert settings.web_serve_status_url == "http://[::1]:8080"
    assert settings.web_oidc_redirect_uri == "https://pacs.example.org/auth/callback?x=1"
    assert Settings(web_base_url="").web_base_url is None
    assert Settings().web_serve_status_url == "http://127.0.0.1:8080"


def test_origins_are_written_as_a_browser_sends_them() -> None:
    """A final ``/``, upper case, a default port: the preflight of the viewer at that
    origin was answered 400 "Disallowed CORS origin"; now it is allowed."""
    settings = Settings(web_cors_origins="https://Viewer.Example.org/, http://localhost:80, "
                                         "https://[::1]:8443")
    assert settings.web_cors_origin_list == ["https://viewer.example.org", "http://localhost",
                                             "https://[::1]:8443"]
    app = build_dicomweb(SimpleNamespace(), settings.web_cors_origin_list)  # type: ignore[arg-type]
    preflight = TestClient(app).options("/studies", headers={
        "Origin": "https://viewer.example.org", "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://viewer.example.org"
    assert Settings(web_cors_origins="").web_cors_origin_list == []
    assert Settings(web_cors_origins="*").web_cors_origin_list == ["*"]



def test_an_apps_own_scheme_is_an_origin_too() -> None:
    """An app's web view (Capacitor, Tauri) or a browser extension sends its own scheme in
    ``Origin``, and the CORS middleware allowed it as written: refused at start, the
    server that served such a viewer no longer started (exit 2)."""
    settings = Settings(web_cors_origins="capacitor://localhost, tauri://localhost/, "
                                         "chrome-extension://abcdefghijklmnop")
    assert settings.web_cors_origin_list == ["capacitor://localhost", "tauri://localhost",
                                             "chrome-extension://abcdefghijklmnop"]
    app = build_dicomweb(SimpleNamespace(), settings.web_cors_origin_list)  # type: ignore[arg-type]
    preflight = TestClient(app).options("/studies", headers={
        "Origin": "capacitor://localhost", "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "capacitor://localhost"
    for entry in ("localhost:3000", "capacitor://localhost/app", "capacitor:///x"):
        with pytest.raises(ValidationError, match="not an origin"):
            Settings(web_cors_origins=entry)
