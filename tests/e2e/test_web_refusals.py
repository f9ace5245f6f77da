"""``mimic web`` refusing malformed or unproven requests as 4xx, never a 500, and never a
value of the request in its log: frames only after the caller is proven, a non-number in
an IS / DS query key, a session cookie that is not ASCII, a token whose header is hostile;
and the last catch of an unexpected error (logged by type and frames, answered 500)."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from starlette.testclient import TestClient

from mimic_server import logs
from mimic_server.config import Settings
from mimic_server.web.dicomweb import qido
from mimic_server.webapp import WebArchive
from tests.data import ct_small
from tests.oidc_double import OidcIssuerDouble
from tests.web_support import AUDIENCE, POLICY

CT = pydicom.dcmread(ct_small(), stop_before_pixels=True)
INSTANCE = (f"/dicomweb/studies/{CT.StudyInstanceUID}/series/{CT.SeriesInstanceUID}"
            f"/instances/{CT.SOPInstanceUID}")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, TestClient, dict]]:
    tmp = tmp_path_factory.mktemp("web")
    issuer = OidcIssuerDouble(tmp).start()
    (tmp / "policy.toml").write_text(POLICY)
    archive = WebArchive(Settings(
        data_dir=tmp / "data", tls=False, policy_file=tmp / "policy.toml",
        oidc_issuer=issuer.issuer, oidc_audience=AUDIENCE, oidc_ca_file=issuer.ca_file,
        web_host="127.0.0.1"))
    client = TestClient(archive.open(), raise_server_exceptions=False)
    auth = {"Authorization": "Bearer " + issuer.mint(audience=AUDIENCE, roles=["Radiologist"])}
    body = (b"--B\r\nContent-Type: application/dicom\r\n\r\n" + ct_small().read_bytes()
            + b"\r\n--B--\r\n")
    stored = client.post("/dicomweb/studies", content=body, headers={
        **auth, "Content-Type": 'multipart/related; type="application/dicom"; boundary=B'})
    assert stored.status_code == 200
    yield archive, client, auth
    archive.stop()
    issuer.stop()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log record at INFO and above, as the server's JSON lines, the libraries
    silenced as the server silences them (``logs.configure``)."""
    quiet = {name: logging.getLogger(name).level for name in ("pydicom", "pynetdicom")}
    logs.silence_libraries()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(("path", "accept"), [
    (INSTANCE, "*/*"),
    ("/dicomweb/studies/1.2.3/series/4.5/instances/6.7", "*/*"),
    (INSTANCE, 'multipart/related; type="image/jpeg"'),
], ids=["stored", "not-stored", "unacceptable"])
def test_frames_answer_a_stranger_401_whatever_is_stored(web: Any, path: str, accept: str) -> None:
    """Frames looked the instance up and negotiated before asking who calls: 401 for a
    stored instance, 404 for another, 406 naming the stored syntax's media type."""
    _, client, _ = web
    answer = client.get(path + "/frames/1", headers={"Accept": accept})
    assert answer.status_code == 401


@pytest.mark.parametrize("query", ["InstanceNumber=*", "PatientWeight=72,5",
                                   "SeriesNumber=1-2", "PatientSize=SECRET-181"])
def test_a_non_number_in_an_is_or_ds_key_is_400_and_not_logged(
    web: Any, captured: io.StringIO, query: str
) -> None:
    _, client, auth = web
    answer = client.get("/dicomweb/instances?" + query, headers=auth)
    assert answer.status_code == 400, answer.text
    assert query.split("=")[1] not in answer.text
    assert "SECRET" not in captured.getvalue()


def test_a_session_cookie_not_in_ascii_is_no_session(web: Any) -> None:
    _, client, _ = web
    for path in (INSTANCE + "/metadata", "/dicomweb/studies"):
        answer = client.get(path, headers={
            "Cookie": "mimic_session=\u00e9.\u00e9".encode("latin-1")})  # type: ignore[dict-item]
        assert answer.status_code == 401, (path, answer.status_code)


@pytest.mark.parametrize("algorithm", ["\u4e2d", 'x", error="none', "x\\y"])
def test_a_tokens_hostile_header_is_refused_in_a_well_formed_challenge(
    web: Any, algorithm: str
) -> None:
    _, client, _ = web

    def b64(document: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()

    token = b64({"alg": algorithm}) + "." + b64({"sub": "x"}) + ".c2ln"
    answer = client.get("/dicomweb/studies", headers={"Authorization": "Bearer " + token})
    assert answer.status_code == 401
    challenge = answer.headers["www-authenticate"]
    assert challenge.count('"') == 6  # realm, error, error_description: nothing broke out
    assert algorithm not in challenge


@pytest.mark.parametrize(("algorithm", "kid"), [("ES256", "rsa-1"), ("RS256", "ec-1"),
                                               ("PS256", "ec-1"), ("ES384", "ec-1")])
def test_a_token_whose_algorithm_does_not_fit_its_key_is_401(
    web: Any, captured: io.StringIO, algorithm: str, kid: str
) -> None:
    """No key is needed to forge one: any published key id, a garbage signature. PyJWT
    raised TypeError for it (a 500 logged at ERROR, the refusal unaudited)."""
    archive, client, _ = web

    def b64(document: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()

    claims = {"sub": "x", "iss": archive.settings.oidc_issuer, "aud": AUDIENCE,
              "exp": 9999999999}
    token = b64({"alg": algorithm, "kid": kid}) + "." + b64(claims) + ".c2ln"
    answer = client.get("/dicomweb/studies", headers={"Authorization": "Bearer " + token})
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert not [e for e in lines if e["level"] == "ERROR"]
    refused = [json.loads(line) for line in
               (archive.settings.data_dir / "audit.jsonl").read_text().splitlines()][-1]
    assert refused["EventID"]["meaning"] == "User Authentication"
    assert refused["outcome"] != 0


def test_an_unexpected_error_is_logged_by_its_frames_and_answered_500(
    web: Any, captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a route: logged at ERROR by type and frames, without its message (which
    may quote a request's values), answered 500; uvicorn is not left to log it."""
    _, client, auth = web

    def fails(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("PatientName=SECRET^PATIENT")

    monkeypatch.setattr(qido, "_put", fails)
    answer = client.get("/dicomweb/studies?PatientName=X", headers=auth)
    assert answer.status_code == 500
    assert "SECRET" not in answer.text
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    errors = [e for e in lines if e["level"] == "ERROR"]
    assert [e["message"] for e in errors] == ["unexpected error answering a request"]
    assert errors[0]["error"] == "RuntimeError"
    assert any("qido" in frame for frame in errors[0]["where"])
    assert "SECRET" not in captured.getvalue()
