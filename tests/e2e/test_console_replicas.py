"""Console sign-out across replicas: two ``mimic web`` processes (two Container Apps
replicas) on one PostgreSQL index with one ``MIMIC_WEB_SESSION_KEY``, and nothing else in
common. A cookie copied before its owner signed out through one replica (a shared
workstation, a stolen cookie) is refused by both, not only by the replica that took the
sign-out: the signed-out session's id is in the index, which every replica reads."""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from tests.database import PrivateCluster, fresh_database, migrated_database
from tests.oidc_double import OidcIssuerDouble
from tests.support import HOST
from tests.web_support import WebProcess

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

CLIENT_ID = "mimic-console"
SESSION_KEY = "replicas-share-this-session-key-0123456789"
POLICY = """
[certificates.dicomweb]
services = ["find", "get"]
roles = { MimicOperator = ["find", "get"] }
"""


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcIssuerDouble]:
    double = OidcIssuerDouble(tmp_path_factory.mktemp("oidc")).start()
    double.register_client(CLIENT_ID)
    double.sign_in_as("operator-1", roles=["MimicOperator"])
    yield double
    double.stop()


def console(root: Path, issuer: OidcIssuerDouble, **settings: str) -> WebProcess:
    """One replica: its own data directory (nothing shared on disk), the console on."""
    return WebProcess(root, issuer, policy=POLICY, web_oidc_client_id=CLIENT_ID,
                      web_session_key=SESSION_KEY, **settings)


def base(web: WebProcess) -> str:
    return f"http://{HOST}:{web.port}"


def sign_in(web: WebProcess, issuer: OidcIssuerDouble) -> str:
    """A browser's sign-in through ``web`` (the issuer's redirect followed by hand); the
    session cookie's value."""
    browser = requests.Session()
    login = browser.get(f"{base(web)}/auth/login", allow_redirects=False, timeout=30)
    assert login.status_code == 303, login.text
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(login.headers["location"]).query))
    status, location, body = issuer.authorize(query)
    assert status == 302 and location is not None, body
    back = browser.get(location, allow_redirects=False, timeout=30)
    assert back.status_code == 303, back.text
    return browser.cookies["mimic_session"]


def me(web: WebProcess, cookie: str) -> int:
    return requests.get(f"{base(web)}/console/api/me", cookies={"mimic_session": cookie},
                        timeout=30).status_code


def sign_out(web: WebProcess, cookie: str) -> requests.Response:
    return requests.post(f"{base(web)}/auth/logout", cookies={"mimic_session": cookie},
                         headers={"Origin": base(web)}, allow_redirects=False, timeout=30)


def signed_out_rows(url: str) -> list[tuple[str, int]]:
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return conn.execute("SELECT session_id, expires FROM signed_out_sessions").fetchall()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return [tuple(r) for r in
                conn.execute("SELECT session_id, expires FROM signed_out_sessions").fetchall()]


@contextlib.contextmanager
def replicas(root: Path, issuer: OidcIssuerDouble, backend: str,
             postgres_server: str) -> Iterator[tuple[WebProcess, WebProcess, str]]:
    """Two ``mimic web`` on one index: PostgreSQL, each with its own data directory (two
    containers), or the embedded SQLite file of one data directory (two processes, each
    with its own workers' directory of signed-out ids)."""
    with contextlib.ExitStack() as stack:
        if backend == "postgresql":
            url = stack.enter_context(migrated_database(postgres_server))
            dirs, settings = (root / "one", root / "other"), {"database_url": url}
        else:
            url = f"sqlite:///{root / 'data' / 'index.sqlite3'}"
            dirs, settings = (root / "data", root / "data"), {}
        started: list[WebProcess] = []
        try:
            for directory in dirs:
                started.append(console(directory, issuer, **settings).start())
            yield started[0], started[1], url
        finally:
            for web in started:
                assert web.stop() == 0, web.log()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_sign_out_through_one_replica_ends_the_session_on_the_other(
        tmp_path: Path, postgres_server: str, issuer: OidcIssuerDouble, backend: str) -> None:
    with replicas(tmp_path, issuer, backend, postgres_server) as (one, other, url):
        cookie = sign_in(one, issuer)
        kept = sign_in(other, issuer)  # another browser's session, not signed out
        assert me(one, cookie) == me(other, cookie) == 200  # one key: both accept it
        assert sign_out(one, cookie).status_code == 200  # on to the issuer's sign-out
        assert me(other, cookie) == 401
        assert me(one, cookie) == 401
        page = requests.get(f"{base(other)}/", cookies={"mimic_session": cookie},
                            allow_redirects=False, timeout=30)
        assert page.status_code == 303 and page.headers["location"] == "/auth/login"
        assert me(other, kept) == me(one, kept) == 200
        assert [sid for sid, _ in signed_out_rows(url)] == [session_id(cookie)]
        assert sign_out(other, cookie).status_code == 200  # again, through the other
        assert logouts(url, tmp_path) == 1  # one sign-out recorded, not two
        logs = one.log() + other.log()
    assert session_id(cookie) not in logs and session_id(kept) not in logs


def logouts(url: str, root: Path) -> int:
    """The sign-outs in the audit trail (the table on PostgreSQL, else the file)."""
    if url.startswith("sqlite:///"):
        lines = (root / "data" / "audit.jsonl").read_text().splitlines()
        return sum(json.loads(line).get("event_type") == "logout" for line in lines)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM audit_events WHERE event_type = 'logout'").fetchone()
    return int(row[0]) if row else 0


def session_id(cookie: str) -> str:
    data = cookie.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))["sid"])


def test_while_the_index_is_down_no_session_is_served(
        tmp_path: Path, issuer: OidcIssuerDouble) -> None:
    """The signed-out sessions cannot be read: the console's pages and API, and DICOMweb
    through the console's cookie, answer 503, not what a session perhaps signed out through
    another replica may see; a sign-out is refused 503 too (a page that says to try again),
    and taken once the index is back."""
    cluster = PrivateCluster()
    cluster.start()
    try:
        with fresh_database(cluster.url) as url:
            upgraded = subprocess.run(
                [sys.executable, "-m", "mimic_server", "db", "upgrade", "--database-url", url],
                capture_output=True, text=True, timeout=120)
            assert upgraded.returncode == 0, upgraded.stderr
            web = console(tmp_path / "data", issuer, database_url=url).start()
            try:
                cookie = sign_in(web, issuer)
                assert me(web, cookie) == 200
                cluster.stop()
                answer = requests.get(f"{base(web)}/console/api/me",
                                      cookies={"mimic_session": cookie}, timeout=60)
                assert answer.status_code == 503
                assert "cannot check sessions" in answer.json()["error"]
                assert "operator-1" not in answer.text
                page = requests.get(f"{base(web)}/", cookies={"mimic_session": cookie},
                                    allow_redirects=False, timeout=60)
                # A page that says so (a navigation showed JSON as raw text), not the console.
                assert page.status_code == 503 and "cannot check your session" in page.text
                assert page.headers["content-type"].startswith("text/html")
                assert page.headers["retry-after"] and "main.js" not in page.text
                assert "script-src 'self'" in page.headers["content-security-policy"]
                assert session_id(cookie) not in page.text and "operator-1" not in page.text
                studies = requests.get(f"{web.url}/studies", cookies={"mimic_session": cookie},
                                       headers={"Accept": "application/dicom+json"}, timeout=60)
                assert studies.status_code == 503
                out = sign_out(web, cookie)
                # A page (the sign-out is a form POST, a navigation), not JSON as raw text.
                assert out.status_code == 503 and "could not be completed" in out.text
                assert out.headers["content-type"].startswith("text/html")
                assert "form-action 'self'" in out.headers["content-security-policy"]
                assert session_id(cookie) not in out.text and "operator-1" not in out.text
                assert "mimic_session" not in out.headers.get("set-cookie", "")
                cluster.start()
                # This process refuses the session at once; the index learns of the
                # sign-out only from the sign-out made again.
                assert me(web, cookie) == 401
                assert signed_out_rows(url) == []
                assert sign_out(web, cookie).status_code == 200
                assert [sid for sid, _ in signed_out_rows(url)] == [session_id(cookie)]
            finally:
                assert web.stop() == 0, web.log()
            entries = web.log_entries()
            assert any(e.get("message") == "console session cannot be checked"
                       and e["level"] == "WARNING" for e in entries)
            assert any(e.get("message") == "console sign-out not recorded in the index"
                       and e["level"] == "ERROR" and e.get("user") for e in entries)
            assert session_id(cookie) not in web.log()
    finally:
        cluster.remove()
