"""Every page the console serves: the strict Content-Security-Policy and its companions on
every response, no inline script or style anywhere (an HTML parser reads each page), no
form that would put a search into a URL."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pydicom
import pytest
from starlette.testclient import TestClient

from mimic_server.web.console.app import STATIC, build_console
from mimic_server.web.console.headers import CSP
from tests.console.harness import BASE, client, console_context, sign_in
from tests.oidc_double import OidcIssuerDouble

HTML = sorted(STATIC.glob("*.html"))


@pytest.fixture(scope="module")
def issuer(operator_issuer: OidcIssuerDouble) -> OidcIssuerDouble:
    return operator_issuer


class InlineFinder(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, handlers, styles."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.forms: list[dict[str, str | None]] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script":
            self._in_script = True
            if not named.get("src"):
                self.problems.append("script without src")
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "form":
            self.forms.append(named)
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"{name}= handler on <{tag}>")
            if name == "style":
                self.problems.append(f"style= on <{tag}>")
            if value and value.strip().lower().startswith("javascript:"):
                self.problems.append(f"javascript: URL on <{tag}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script text")


def _parse(text: str) -> InlineFinder:
    finder = InlineFinder()
    finder.feed(text)
    finder.close()
    return finder


def test_the_parser_finds_inline_code() -> None:
    bad = _parse('<script>alert(1)</script><p style="x" onclick="y"></p><style>p{}</style>')
    assert len(bad.problems) == 5


@pytest.mark.parametrize("page", HTML, ids=lambda p: p.name)
def test_no_inline_script_or_style(page: Path) -> None:
    parsed = _parse(page.read_text())
    assert parsed.problems == []
    for form in parsed.forms:  # a GET form would put its fields into the URL
        assert (form.get("method") or "get").lower() == "post" or form.get("action") is None, \
            form


def test_every_served_page_carries_the_policy(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    web = client(console_context(issuer, tmp_path))
    assert sign_in(web, issuer).status_code == 303
    paths = ["/", "/signed-out", "/console/api/me", "/auth/login"]
    paths += [f"/static/{p.name}" for p in sorted(STATIC.iterdir())]
    for path in paths:
        response = web.get(path)
        assert response.status_code in (200, 303), path
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "same-origin"
        if path.endswith(".html") or path in ("/", "/signed-out"):
            assert _parse(response.text).problems == [], path
    assert "default-src 'self'" in CSP and "'unsafe-inline'" not in CSP
    assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP


def test_scripts_build_no_markup_from_data() -> None:
    """The pages put data into the DOM as text: no innerHTML, no eval, no string timers."""
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function",
                       "document.write"):
            assert banned not in text, f"{script.name}: {banned}"


def test_searches_are_posted_not_put_in_urls() -> None:
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        assert "postJson('/console/api/studies'" in text or "/console/api/studies" not in text
        assert "postJson('/console/api/audit'" in text or "/console/api/audit" not in text


def test_images_the_console_shows_are_not_kept_by_the_browser(issuer: OidcIssuerDouble,
                                                               tmp_path: Path) -> None:
    """The console's thumbnails and images come from DICOMweb with the session cookie: those
    answers (a patient's pixels, QIDO's names) carry ``Cache-Control: no-store`` as the
    console's own do, or the browser keeps them in its disk cache on a shared reading-room
    workstation after sign-out."""
    import hashlib

    from mimic_server.query.finder import InstanceRef
    from mimic_server.security.audit import AuditLog
    from mimic_server.security.policy import Policy
    from mimic_server.security.policy_file import parse_policy
    from mimic_server.storage.keys import new_object_key
    from mimic_server.storage.memory import MemoryStore
    from mimic_server.web.console.auth import console_user_source
    from mimic_server.web.dicomweb.context import DicomWebContext
    from mimic_server.webapp import build_web_app
    from tests.data import ct_small
    from tests.dicomweb_doubles import InstanceFinder

    ds = pydicom.dcmread(ct_small())
    study, series, uid = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    data = ct_small().read_bytes()
    store = MemoryStore()
    key = new_object_key(study, series, uid)
    store.objects[key] = data
    ref = InstanceRef(ds.SOPClassUID, uid, ds.file_meta.TransferSyntaxUID, key,
                      hashlib.sha256(data).hexdigest())
    policy = Policy("MIMIC", rules=parse_policy(
        '[certificates.dicomweb]\nservices = ["find", "get"]\n'))
    dicomweb = DicomWebContext(finder=InstanceFinder(ref), store=store,  # type: ignore[arg-type]
                               policy=policy, audit=AuditLog(None), tokens=None)
    ctx = console_context(issuer, tmp_path)
    dicomweb.user_sources.append(console_user_source(ctx))
    web = TestClient(build_web_app(dicomweb, [], build_console(ctx)), base_url=BASE,
                     follow_redirects=False)
    assert sign_in(web, issuer).status_code == 303
    path = f"/dicomweb/studies/{study}/series/{series}/instances/{uid}"
    for image in (f"{path}/rendered", f"{path}/thumbnail"):
        answer = web.get(image, headers={"Accept": "image/png"})
        assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG")
        assert answer.headers["cache-control"] == "no-store", image
    refused = TestClient(web.app, base_url=BASE).get(f"{path}/rendered")  # no session: 401
    assert refused.status_code == 401 and refused.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(("base", "hsts"), [
    ("https://console.example", True), ("http://console.example", True),  # behind the ingress
    (BASE, False), ("http://localhost:8042", False), ("https://localhost:8042", False)])
def test_https_only_where_the_session_cookie_is_secure(issuer: OidcIssuerDouble, tmp_path: Path,
                                                       base: str, hsts: bool) -> None:
    """Strict-Transport-Security on every console answer reached by a public host name: the
    ingress's redirect from http:// left the first plain request to whoever sits on the
    network. Never on loopback (development), where it would hold every local server."""
    ctx = console_context(issuer, tmp_path, redirect_uri=f"{BASE}/auth/callback")
    web = TestClient(build_console(ctx), base_url=base, follow_redirects=False)
    for path in ("/", "/signed-out", "/auth/login", "/static/main.js", "/console/api/me"):
        response = web.get(path)
        assert response.headers.get("strict-transport-security") == (
            "max-age=31536000" if hsts else None), (base, path)
        if path == "/auth/login" and hsts:  # the login cookie is Secure there too
            assert "; secure" in response.headers["set-cookie"].lower()
