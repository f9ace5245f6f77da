"""Every page the console serves: the strict Content-Security-Policy and its companions on
every response, no inline script or style anywhere (an HTML parser reads each page), no
form that would put a search into a URL."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from mimic_server.web.console.app import STATIC
from mimic_server.web.console.headers import CSP
from tests.console.harness import client, console_context, sign_in
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
