"""The console's JSON endpoints over a real (SQLite) index, development PKI and audit file:
study search through the C-FIND engine, study contents, modalities with policy, activity,
expiry and revocation, the audit trail's filters, and `mimic serve`'s status."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from starlette.testclient import TestClient

from mimic_server.certs import devpki
from mimic_server.certs.directory import DirectorySource
from mimic_server.config import Settings
from mimic_server.index import schema
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.engine import create_index_engine
from mimic_server.index.repository import SqlIndex
from mimic_server.query.finder import Finder
from mimic_server.security import audit
from mimic_server.security.audit import AuditLog
from mimic_server.security.policy import Policy
from mimic_server.security.policy_file import parse_policy
from mimic_server.web.activity import Activity
from mimic_server.web.console import modalities
from mimic_server.web.console.modalities import TrustView
from mimic_server.web.console.studies import StudyBrowser
from mimic_server.web.metrics import ArchiveMetrics
from mimic_server.web.ops import OpsState, build_app
from tests.console.harness import OPERATOR, VIEWER, client, console_context, sign_in
from tests.data import ct_small
from tests.oidc_double import OidcIssuerDouble

STUDY_A, STUDY_B = "1.2.826.0.1.3680043.8.498.1001", "1.2.826.0.1.3680043.8.498.1002"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcIssuerDouble]:
    double = OidcIssuerDouble(tmp_path_factory.mktemp("oidc")).start()
    yield double
    double.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict]:
    """An index (SQLite, then PostgreSQL) with two studies, a development PKI and a trail."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
        else:
            from tests import database

            url = stack.enter_context(database.fresh_database(
                request.getfixturevalue("postgres_server")))
        yield from _archive(url, tmp_path)


def _archive(url: str, tmp_path: Path) -> Iterator[dict]:
    engine = create_index_engine(url)
    schema.upgrade(engine)
    index = SqlIndex(engine)
    pki = devpki.init(tmp_path / "certs")
    assert pki.first_client is not None
    fingerprint = DirectorySource(tmp_path / "certs").load().trusted[0].fingerprint
    label = f"modality1 ({fingerprint[:16]})"
    studies = [(STUDY_A, "Doe^Jane", "P-1", "20240102", "ACC1", "CT", 3),
               (STUDY_B, "Roe^Richard", "P-2", "20240315", "ACC2", "MR", 1)]
    for study, name, pid, date, accession, modality, count in studies:
        for n in range(count):
            ds = pydicom.dcmread(ct_small())
            ds.StudyInstanceUID, ds.PatientName, ds.PatientID = study, name, pid
            ds.StudyDate, ds.AccessionNumber, ds.Modality = date, accession, modality
            ds.SeriesInstanceUID = f"{study}.1"
            ds.SOPInstanceUID = f"{study}.1.{n + 1}"
            ds.InstanceNumber = 3 - n  # stored in reverse order
            ds.WindowCenter, ds.WindowWidth = 40, 400
            index.upsert_instance(
                InstanceAttributes.from_header(ds), transfer_syntax_uid="1.2.840.10008.1.2.1",
                object_key=f"{ds.SOPInstanceUID}.dcm", sha256="0" * 64, size=1000,
                received_from=label,
            )
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record(audit.USER_AUTHENTICATION, audit.SUCCESS, peer="127.0.0.1",
               identity=label, trust_name="modality1", calling_ae="MOD1", event_type="login")
    log.record(audit.INSTANCES_TRANSFERRED, audit.SUCCESS, identity=label,
               trust_name="modality1", calling_ae="MOD1", studies=[STUDY_A])
    log.record(audit.QUERY, audit.SUCCESS, identity="other (0123)", trust_name="other",
               calling_ae="WS1")
    finder = Finder(engine, retrieve_ae_title="MIMIC", max_results=1000)
    policy = Policy("MIMIC", rules=parse_policy(
        '[certificates.modality1]\nservices = ["echo", "store", "find"]\n'))
    source = DirectorySource(tmp_path / "certs")
    yield {"engine": engine, "finder": finder, "policy": policy, "source": source,
           "audit": log, "label": label, "path": tmp_path}
    log.close()
    engine.dispose()


def _console(issuer: OidcIssuerDouble, archive: dict, roles: list[str],
             **extra: object) -> TestClient:
    from mimic_server.security.audit import read_file_newest

    source = archive["source"]
    ctx = console_context(
        issuer, archive["path"], studies=StudyBrowser(archive["finder"], archive["engine"]),
        engine=archive["engine"], policy=archive["policy"],
        trust=lambda: TrustView(source.load().trusted, source.revoked()),
        audit_records=lambda selection, limit: read_file_newest(archive["path"] / "audit.jsonl",
                                                             selection, limit),
        audit_log=archive["audit"], **extra,
    )
    issuer.sign_in_as("user-1", roles=roles)
    web = client(ctx)
    assert sign_in(web, issuer).status_code == 303
    return web


def test_study_search_matches_as_c_find(issuer: OidcIssuerDouble, archive: dict) -> None:
    web = _console(issuer, archive, [VIEWER])

    def found(**form: str) -> list[str]:
        response = web.post("/console/api/studies", json=form)
        assert response.status_code == 200, response.text
        return [s["study"] for s in response.json()["studies"]]

    assert found() == [STUDY_A, STUDY_B]
    assert found(patient_name="Doe") == [STUDY_A]  # a prefix, as operators type it
    assert found(patient_name="*Richard") == [STUDY_B]
    assert found(patient_id="P-2") == [STUDY_B]
    assert found(accession="ACC1") == [STUDY_A]
    assert found(modality="MR") == [STUDY_B]
    assert found(date_from="2024-03-01") == [STUDY_B]
    assert found(date_to="2024-01-31") == [STUDY_A]
    assert found(date_from="2024-01-02", date_to="2024-01-02") == [STUDY_A]
    first = web.post("/console/api/studies", json={"patient_id": "P-1"}).json()["studies"][0]
    assert first["PatientName"] == "Doe^Jane" and first["NumberOfStudyRelatedInstances"] == 3
    assert first["thumbnail"] == {"series": f"{STUDY_A}.1", "instance": f"{STUDY_A}.1.1"}
    limited = web.post("/console/api/studies", json={"limit": 1}).json()
    assert len(limited["studies"]) == 1 and limited["more"] is True


def test_study_search_refusals(issuer: OidcIssuerDouble, archive: dict) -> None:
    web = _console(issuer, archive, [VIEWER])
    assert web.post("/console/api/studies", json={"date_from": "yesterday"}).status_code == 400
    assert web.post("/console/api/studies", json={"patient_id": "x" * 65}).status_code == 400
    assert web.post("/console/api/studies", json={"patient_id": ["P-1"]}).status_code == 400
    assert web.post("/console/api/study", json={"study": "1.2.3.4"}).status_code == 404
    assert web.post("/console/api/study", json={"study": "1.2' OR 1=1"}).status_code == 400
    assert web.get("/console/api/studies").status_code == 405  # never a GET with a query


def test_bodies_that_are_not_plain_json_are_refused(issuer: OidcIssuerDouble, archive: dict,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """NaN and Infinity (Python's parser takes them), a number past a float (1e999), a
    nesting past the interpreter's recursion limit and an oversized body: 400 or 413, each
    a refusal of the request, none an error of the console's (500, logged at ERROR)."""
    web = _console(issuer, archive, [OPERATOR])
    json_type = {"Content-Type": "application/json"}
    with caplog.at_level("WARNING"):
        for body in (b'{"limit": Infinity}', b'{"limit": -Infinity}', b'{"limit": NaN}',
                     b'{"limit": 1e999}', b"[" * 60_000, b"[1, 2]"):
            for path in ("/console/api/studies", "/console/api/study", "/console/api/audit"):
                response = web.post(path, content=body, headers=json_type)
                assert response.status_code == 400, (path, body[:20], response.text)
        for large in (json.dumps({"patient_name": "x" * (70 * 1024)}).encode(),
                      b"[" * 100_000):
            response = web.post("/console/api/studies", content=large, headers=json_type)
            assert response.status_code == 413
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert web.post("/console/api/studies", content=b"", headers=json_type).status_code == 200


def test_study_contents_in_instance_order(issuer: OidcIssuerDouble, archive: dict) -> None:
    web = _console(issuer, archive, [VIEWER])
    contents = web.post("/console/api/study", json={"study": STUDY_A}).json()
    (series,) = contents["series"]
    assert series["modality"] == "CT"
    assert [i["number"] for i in series["instances"]] == [1, 2, 3]
    assert series["instances"][0]["instance"] == f"{STUDY_A}.1.3"
    assert series["instances"][0]["window_center"] == 40.0
    assert series["instances"][0]["window_width"] == 400.0


def test_a_study_cut_short_by_a_limit_says_so(issuer: OidcIssuerDouble, archive: dict) -> None:
    """A study with more images than the query may return (the policy entry's
    ``max_find_results``, or the console's 5,000) was shown with some of its images, and
    nothing said that any were missing: a radiologist read it as the whole study."""
    whole = _console(issuer, archive, [VIEWER]).post("/console/api/study",
                                                     json={"study": STUDY_A}).json()
    assert whole["more"] is False and len(whole["series"][0]["instances"]) == 3
    capped = _gated(issuer, archive, [OPERATOR], '[certificates.dicomweb]\n'
                    'services = ["find", "get"]\nmax_find_results = 2\n')
    cut = capped.post("/console/api/study", json={"study": STUDY_A}).json()
    assert len(cut["series"][0]["instances"]) == 2
    assert cut["more"] is True


def test_modalities_with_services_activity_expiry_and_revocation(
    issuer: OidcIssuerDouble, archive: dict
) -> None:
    certs = archive["path"] / "certs"
    devpki.issue_client(certs, "scanner2", ["SCAN2"])
    devpki.issue_client(certs, "oldpacs", ["OLDPACS"])
    devpki.revoke(certs, "oldpacs")
    web = _console(issuer, archive, [OPERATOR])
    rows = {m["name"]: m for m in web.get("/console/api/modalities").json()["modalities"]}
    assert set(rows) == {"modality1", "scanner2", "oldpacs"}
    first = rows["modality1"]
    assert first["services"] == ["C-ECHO", "C-STORE", "C-FIND"]  # the policy file's rule
    assert first["objects_stored"] == 4 and first["last_stored"]
    assert first["last_association"] and first["revoked"] is False
    assert rows["scanner2"]["services"] == ["C-ECHO", "C-STORE"]  # no rule: a modality
    assert rows["scanner2"]["ae_titles"] == ["SCAN2"] and rows["scanner2"]["objects_stored"] == 0
    assert rows["scanner2"]["last_association"] is None
    assert rows["oldpacs"]["revoked"] is True and rows["oldpacs"]["services"] == []
    assert not first["expires_soon"] and not first["expired"]


def test_expiry_warning_before_the_certificate_expires(archive: dict) -> None:
    view = TrustView(archive["source"].load().trusted)
    expires = view.trusted[0].certificate.not_valid_after_utc
    soon = modalities.describe(view, None, {}, {}, now=expires - timedelta(days=10))
    later = modalities.describe(view, None, {}, {}, now=expires - timedelta(days=40))
    gone = modalities.describe(view, None, {}, {}, now=expires + timedelta(days=1))
    assert soon[0]["expires_soon"] and not later[0]["expires_soon"]
    assert gone[0]["expired"] and not gone[0]["expires_soon"]


def test_audit_trail_filters(issuer: OidcIssuerDouble, archive: dict) -> None:
    web = _console(issuer, archive, [OPERATOR])

    def events(**form: str) -> list[str]:
        response = web.post("/console/api/audit", json=form)
        assert response.status_code == 200, response.text
        return [r["event_name"] for r in response.json()["records"]]

    everything = events()
    assert everything[0] == "User Authentication"  # newest first: the console sign-in
    assert {"DICOM Instances Transferred", "Query"} <= set(everything)
    assert events(event="Query") == ["Query"]
    assert events(event="110104") == ["DICOM Instances Transferred"]
    assert set(events(identity="MOD1")) == {"User Authentication",
                                            "DICOM Instances Transferred"}
    assert events(study=STUDY_A) == ["DICOM Instances Transferred"]
    assert events(since=(datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []
    assert events(until=(datetime.now(UTC) - timedelta(hours=1)).isoformat()) == []
    record = web.post("/console/api/audit", json={"event": "Query"}).json()["records"][0]
    assert "xml" not in record and record["calling_ae"] == "WS1"
    assert web.post("/console/api/audit", json={"since": "soon"}).status_code == 400
    # Any case, as the CLI; a mistyped event was an empty page, as if none were recorded.
    assert events(event="query") == ["Query"]
    mistyped = web.post("/console/api/audit", json={"event": "Qurey"})
    assert mistyped.status_code == 400 and "no event MIMIC records" in mistyped.json()["error"]


def test_now_shows_serve_status(issuer: OidcIssuerDouble, archive: dict) -> None:
    status = {"associations": [{"peer": "127.0.0.1:5000", "calling_ae": "MOD1"}],
              "minutes": []}
    web = _console(issuer, archive, [OPERATOR], serve_status=lambda: status)
    assert web.get("/console/api/now").json() == status

    def down() -> dict:
        raise ConnectionRefusedError

    broken = _console(issuer, archive, [OPERATOR], serve_status=down)
    response = broken.get("/console/api/now")
    assert response.status_code == 502 and "ConnectionRefusedError" in response.json()["error"]


def test_a_source_that_is_down_is_a_503_not_a_500(issuer: OidcIssuerDouble, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Key Vault unreachable, PostgreSQL down: each page says which source failed (503), and
    the log has a WARNING, not the ERROR of a bug (both were a 500 "Internal Server Error")."""
    from mimic_server.errors import ConfigurationError
    from mimic_server.index.engine import create_index_engine
    from mimic_server.security.audit import read_file_newest
    from mimic_server.web.console.app import build_console
    from mimic_server.webapp import _audit_reader

    def vault_down() -> TrustView:  # as KeyVaultSource reports an SDK failure
        raise ConfigurationError("Key Vault https://kv.example: HTTP 403: Forbidden")

    nowhere = create_index_engine("postgresql+psycopg://postgres@127.0.0.1:1/mimic")
    devpki.init(tmp_path / "certs")
    source = DirectorySource(tmp_path / "certs")
    trail = tmp_path / "trail.jsonl"
    cases = [
        ({"trust": vault_down}, "the certificate source cannot be read now "
                                "(Key Vault https://kv.example: HTTP 403: Forbidden)"),
        ({"trust": lambda: TrustView(source.load().trusted), "engine": nowhere,
          "audit_records": lambda selection, limit: read_file_newest(trail, selection, limit)},
         "the index or the audit trail cannot be read now (OperationalError)"),
    ]
    issuer.sign_in_as("user-1", roles=[OPERATOR])
    for extra, message in cases:
        ctx = console_context(issuer, tmp_path, **extra)
        web = TestClient(build_console(ctx), base_url="http://127.0.0.1:8042",
                         follow_redirects=False)
        assert sign_in(web, issuer).status_code == 303
        response = web.get("/console/api/modalities")
        assert (response.status_code, response.json()["error"]) == (503, message)
    trail.mkdir()  # the audit file unreadable (a directory: the tests may run as root)
    for reader, reason in ((_audit_reader(Settings(audit_path=trail), nowhere),
                            "OperationalError"),
                           (lambda selection, limit: read_file_newest(trail, selection, limit),
                            "IsADirectoryError")):
        ctx = console_context(issuer, tmp_path, audit_records=reader)
        web = TestClient(build_console(ctx), base_url="http://127.0.0.1:8042",
                         follow_redirects=False)
        assert sign_in(web, issuer).status_code == 303
        response = web.post("/console/api/audit", json={})
        assert response.status_code == 503
        assert response.json()["error"] == f"the audit trail cannot be read now ({reason})"
    nowhere.dispose()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.source for r in caplog.records if r.getMessage() == "console source unavailable"
            ] == ["the certificate source", "the index or the audit trail",
                  "the audit trail", "the audit trail"]


def test_last_associations_from_the_audit_file_hold_no_trail_in_memory(
        issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    """Embedded mode: the modalities page's last association per entry comes from the audit
    file, which grows by a record per association and is never cut. Each page view held
    every login record of it in memory at once (a list of all; 100,000 associations, a
    119 MiB file, were 75 MiB), where one latest time per trust name is all it keeps."""
    import tracemalloc

    from mimic_server.index.engine import create_index_engine
    from mimic_server.webapp import open_console

    trail = tmp_path / "audit.jsonl"
    log = AuditLog(trail)
    for name in ("modality1", "modality2"):
        log.record(audit.USER_AUTHENTICATION, audit.SUCCESS, peer="10.0.0.5",
                   identity=f"{name} (0123456789abcdef)", trust_name=name, calling_ae="MOD",
                   event_type="login")
    log.close()
    lines = trail.read_bytes().splitlines(keepends=True)
    with trail.open("wb") as out:  # 20,000 associations of modality1, then modality2's
        out.writelines([lines[0]] * 20_000 + [lines[1]])
    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    schema.upgrade(engine)
    devpki.init(tmp_path / "certs")
    devpki.issue_client(tmp_path / "certs", "modality2", ["MOD2"])
    source = DirectorySource(tmp_path / "certs")
    # The sources as `mimic web` composes them on SQLite, behind the test issuer's sign-in.
    composed = open_console(Settings(data_dir=tmp_path, audit_path=trail), engine,
                            None, Policy("MIMIC"), AuditLog(None))  # type: ignore[arg-type]
    ctx = console_context(issuer, tmp_path, engine=engine,
                          trust=lambda: TrustView(source.load().trusted),
                          audit_records=composed.audit_records,
                          last_logins=composed.last_logins)
    issuer.sign_in_as("user-1", roles=[OPERATOR])
    web = client(ctx)
    assert sign_in(web, issuer).status_code == 303
    assert web.get("/console/api/modalities").status_code == 200  # warm: imports, pools
    tracemalloc.start()
    try:
        response = web.get("/console/api/modalities")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    engine.dispose()
    rows = {m["name"]: m["last_association"] for m in response.json()["modalities"]}
    assert rows["modality1"] and rows["modality2"]
    assert peak < 3 * 2**20, peak  # was ~15 MiB for these 20,000 records


def test_last_associations_read_only_what_the_audit_file_gained(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each view of the modalities page parsed the whole audit file again (embedded mode;
    100,000 associations: 2 to 3 s a view). The file only grows: a view reads what was
    appended since the last one; a rotated (another file) or truncated trail is read anew,
    and a line still being written waits for the next view."""
    from mimic_server.index.engine import create_index_engine
    from mimic_server.webapp import open_console

    trail = tmp_path / "audit.jsonl"
    log = AuditLog(trail)
    for name in ("modality1", "modality2", "modality3"):
        log.record(audit.USER_AUTHENTICATION, audit.SUCCESS, peer="10.0.0.5",
                   identity=f"{name} (0123456789abcdef)", trust_name=name, calling_ae="MOD",
                   event_type="login")
    log.close()
    first, second, third = trail.read_bytes().splitlines(keepends=True)
    trail.write_bytes(first * 5_000)
    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    last_logins = open_console(Settings(data_dir=tmp_path, audit_path=trail), engine, None,
                               Policy("MIMIC"), AuditLog(None)).last_logins  # type: ignore[arg-type]
    engine.dispose()
    assert last_logins is not None and set(last_logins()) == {"modality1"}

    parsed = []
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text, *a, **k: parsed.append(1) or loads(
        text, *a, **k))
    with trail.open("ab") as out:
        out.write(second + third[:40])  # the third record half written
    assert set(last_logins()) == {"modality1", "modality2"}
    assert len(parsed) == 1  # the line appended, not the 5,001 before it
    with trail.open("ab") as out:
        out.write(third[40:])
    assert set(last_logins()) == {"modality1", "modality2", "modality3"}
    rotated = tmp_path / "audit.jsonl.new"
    rotated.write_bytes(third)
    rotated.replace(trail)  # rotated: another file at the path
    assert set(last_logins()) == {"modality3"}
    trail.write_bytes(b"")  # truncated
    assert last_logins() == {}


def test_last_associations_after_the_audit_file_was_cut_in_place_and_grew_again(
        tmp_path: Path) -> None:
    """An audit file cut in place (logrotate's copytruncate: the same inode) that grew past
    the offset read before the next view was read on from that offset: the logins written
    since the cut were never seen (modality2 shown as never associated, until a restart).
    A file whose first bytes are no longer those read is read anew."""
    from mimic_server.web.console.modalities import LastLoginsInFile

    trail = tmp_path / "audit.jsonl"

    def logins(*names: str) -> bytes:
        log = AuditLog(tmp_path / "records.jsonl")
        for name in names:
            log.record(audit.USER_AUTHENTICATION, audit.SUCCESS, peer="10.0.0.5",
                       identity=f"{name} (0123456789abcdef)", trust_name=name,
                       calling_ae="MOD", event_type="login")
        log.close()
        data = (tmp_path / "records.jsonl").read_bytes()
        (tmp_path / "records.jsonl").unlink()
        return data

    trail.write_bytes(logins("modality1"))
    last_logins = LastLoginsInFile(trail)
    assert set(last_logins()) == {"modality1"}
    with trail.open("r+b") as out:  # copytruncate: the same file, cut
        out.truncate(0)
    with trail.open("ab") as out:  # and the archive goes on appending
        out.write(logins("modality2", "modality3"))
    assert set(last_logins()) == {"modality2", "modality3"}


def test_activity_counts_per_minute() -> None:
    now = [600_000.0]
    activity = Activity(minutes=3, clock=lambda: now[0])
    activity.request_answered("C-STORE", "success", 0.01)
    activity.request_answered("C-STORE", "failure", 0.01)
    activity.request_answered("C-FIND", "success", 0.01)
    activity.stored(1234)
    now[0] += 60
    activity.request_answered("C-STORE", "warning", 0.01)
    minutes = activity.minutes()
    assert [m["stores"] for m in minutes] == [0, 1, 1]
    assert [m["failures"] for m in minutes] == [0, 1, 0]
    assert [m["queries"] for m in minutes] == [0, 1, 0]
    assert minutes[1]["bytes_stored"] == 1234
    now[0] += 600  # an hour's worth later nothing old is kept
    activity.association("accepted")
    assert sum(m["stores"] for m in activity.minutes()) == 0


def test_ops_status_endpoint() -> None:
    state = OpsState(alive=lambda: True, draining=lambda: False, checks={},
                     metrics=ArchiveMetrics(),
                     status=lambda: {"associations": [], "minutes": []})
    web = TestClient(build_app(state))
    response = web.get("/status/associations")
    assert response.status_code == 200 and response.json() == {"associations": [],
                                                                "minutes": []}
    without = TestClient(build_app(OpsState(alive=lambda: True, draining=lambda: False,
                                            checks={}, metrics=ArchiveMetrics())))
    assert without.get("/status/associations").status_code == 404


def test_no_patient_data_in_audit_of_sign_in(issuer: OidcIssuerDouble, archive: dict) -> None:
    _console(issuer, archive, [OPERATOR])
    line = (archive["path"] / "audit.jsonl").read_text().splitlines()[-1]
    assert json.loads(line)["identity"] == "web console"


def _gated(issuer: OidcIssuerDouble, archive: dict, roles: list[str], policy_text: str
           ) -> TestClient:
    """The console with its study queries under the DICOMweb policy entry, as `mimic web`
    composes it."""
    from mimic_server.web.console.auth import console_user_source
    from mimic_server.web.console.gate import dicomweb_gate
    from mimic_server.web.dicomweb.context import DicomWebContext

    policy = Policy("MIMIC", rules=parse_policy(policy_text))
    policy.audit_log = archive["audit"]
    ctx = console_context(issuer, archive["path"],
                          studies=StudyBrowser(archive["finder"], archive["engine"]),
                          engine=archive["engine"], policy=policy, audit_log=archive["audit"])
    dicomweb = DicomWebContext(finder=archive["finder"], store=None,  # type: ignore[arg-type]
                               policy=policy, audit=archive["audit"], tokens=None)
    dicomweb.user_sources.append(console_user_source(ctx))
    ctx.query_gate = dicomweb_gate(dicomweb)
    issuer.sign_in_as("user-1", roles=roles)
    web = client(ctx)
    assert sign_in(web, issuer).status_code == 303
    return web


def test_study_queries_answer_to_the_dicomweb_policy(issuer: OidcIssuerDouble,
                                                     archive: dict) -> None:
    roles_table = ('[certificates.dicomweb]\nservices = ["find", "get"]\n'
                   '[certificates.dicomweb.roles]\nMimicOperator = ["find", "get"]\n')
    viewer = _gated(issuer, archive, [VIEWER], roles_table)
    refused = viewer.post("/console/api/studies", json={})
    assert refused.status_code == 403 and "C-FIND" in refused.json()["error"]
    assert viewer.post("/console/api/study", json={"study": STUDY_A}).status_code == 403
    operator = _gated(issuer, archive, [OPERATOR], roles_table)
    assert len(operator.post("/console/api/studies", json={}).json()["studies"]) == 2
    query = [json.loads(line) for line in
             (archive["path"] / "audit.jsonl").read_text().splitlines()][-1]
    assert query["EventID"]["meaning"] == "Query" and query["user"] == "user-1@example.org"
    assert query["service"] == "console"

    narrow = _gated(issuer, archive, [OPERATOR], '[certificates.dicomweb]\n'
                    'services = ["find"]\nfind_requires = ["PatientID"]\nmax_find_results = 1\n')
    assert narrow.post("/console/api/studies", json={}).status_code == 403
    listed = narrow.post("/console/api/studies", json={"patient_id": "*\\NOSUCH"})
    assert listed.status_code == 403  # list matching is an OR: "*" among the values
    one = narrow.post("/console/api/studies", json={"patient_id": "P-*"}).json()
    assert len(one["studies"]) == 1 and one["more"] is True

    nothing = _gated(issuer, archive, [OPERATOR], '[default]\nservices = ["echo"]\n')
    assert nothing.post("/console/api/studies", json={}).status_code == 403  # deny by default


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_last_associations_from_the_audit_table(backend: str, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    """On PostgreSQL the trail is the audit_events table: one grouped query per page."""
    from mimic_server.index.audit_table import AuditTable
    from tests import database

    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
        else:
            url = stack.enter_context(database.fresh_database(
                request.getfixturevalue("postgres_server")))
        engine = create_index_engine(url)
        stack.callback(engine.dispose)
        schema.upgrade(engine)
        log = AuditLog(None, sinks=[AuditTable(engine)])
        for outcome in (audit.SUCCESS, audit.MINOR_FAILURE):
            log.record(audit.USER_AUTHENTICATION, outcome, identity="m (00)", trust_name="m1",
                       calling_ae="M1", event_type="login")
        log.record(audit.USER_AUTHENTICATION, audit.SUCCESS, identity="m (00)",
                   trust_name="m1", event_type="logout")
        log.record(audit.QUERY, audit.SUCCESS, identity="x", trust_name="other")
        found = modalities.last_logins_in_table(engine)
        assert set(found) == {"m1"}
        assert datetime.fromisoformat(found["m1"]) <= datetime.now(UTC) + timedelta(seconds=5)


@pytest.mark.parametrize("backend", ["file", "sqlite", "postgresql"])
def test_the_audit_page_reads_the_newest_records_only(backend: str, tmp_path: Path,
                                                      issuer: OidcIssuerDouble,
                                                      request: pytest.FixtureRequest) -> None:
    """The page shows the newest 500 matching records, newest first, and says there are
    more, without holding the trail: its memory does not grow with the trail's records and
    their messages (each read whole into one list before, per click)."""
    from mimic_server.index.audit_table import AuditTable, read_table_newest
    from mimic_server.security.audit import AuditFilter, read_file_newest
    from tests import database
    from tests.memory import peak_allocated

    records, message = 1500, "x" * 8000  # 12 MB of messages
    with contextlib.ExitStack() as stack:
        if backend == "file":
            log = AuditLog(tmp_path / "trail.jsonl")
            reader = functools.partial(read_file_newest, tmp_path / "trail.jsonl")
        else:
            url = (f"sqlite:///{tmp_path / 'index.sqlite3'}" if backend == "sqlite" else
                   stack.enter_context(database.fresh_database(
                       request.getfixturevalue("postgres_server"))))
            engine = create_index_engine(url)
            stack.callback(engine.dispose)
            schema.upgrade(engine)
            log = AuditLog(None, sinks=[AuditTable(engine)])

            def reader(selection: AuditFilter, limit: int | None) -> list[dict]:
                return read_table_newest(engine, selection.matches, limit, selection.since,
                                         selection.study)
        for n in range(records):
            log.record(audit.SECURITY_ALERT, audit.MINOR_FAILURE, peer="192.0.2.1",
                       reason=f"{n} {message}")
        log.record(audit.QUERY, audit.SUCCESS, identity="WS1", calling_ae="WS1")
        (tmp_path / "oidc-console").mkdir()
        ctx = console_context(issuer, tmp_path / "oidc-console", audit_records=reader)
        issuer.sign_in_as("operator-1", roles=[OPERATOR])
        web = client(ctx)
        assert sign_in(web, issuer).status_code == 303
        with peak_allocated() as peak:
            page = web.post("/console/api/audit", json={}).json()
        assert page["more"] is True and len(page["records"]) == 500
        assert page["records"][0]["event_name"] == "Query"
        assert [r["event_name"] for r in page["records"][1:]] == ["Security Alert"] * 499
        assert all("xml" not in r for r in page["records"])
        assert peak[0] < 6_000_000, peak[0]  # the trail's messages: 12 MB
        queried = web.post("/console/api/audit", json={"identity": "WS1"}).json()
        assert queried["more"] is False and len(queried["records"]) == 1
