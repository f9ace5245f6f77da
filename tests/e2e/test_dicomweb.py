"""DICOMweb through ``mimic web`` with dicomweb-client as the peer: QIDO-RS with the C-FIND
matching rules (the same engine: answers compared with C-FIND's), includefield, limit and
offset; WADO-RS bytes identical to what was stored over DIMSE (pynetdicom to ``mimic serve``
on the same data directory), metadata with bulk data; the refusals (no token, bad token,
role without the service, Accept, CORS) and the audit records."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore

from tests.data import Storable, ct_small, storable_files
from tests.oidc_double import OidcIssuerDouble
from tests.support import HOST, MimicProcess, associate, client_context
from tests.web_support import AUDIENCE, ORIGIN, WebProcess

FIND = StudyRootQueryRetrieveInformationModelFind


class Setup:
    def __init__(self, server: MimicProcess, web: WebProcess, issuer: OidcIssuerDouble,
                 database_url: str) -> None:
        self.server, self.web, self.issuer = server, web, issuer
        self.database_url = database_url

    def token(self, roles: list[str] | None = None, **claims: Any) -> str:
        return self.issuer.mint(audience=AUDIENCE, roles=["Radiologist"] if roles is None
                                else roles, **claims)

    def client(self, token: str | None = None) -> DICOMwebClient:
        return DICOMwebClient(self.web.url, headers={
            "Authorization": f"Bearer {token or self.token()}"})

    def get(self, path: str, token: str | None = "", **headers: str) -> requests.Response:
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self.token()}"
        return requests.get(self.web.url + path, headers=headers, timeout=30)

    def c_find(self, identifier: Dataset) -> list[Dataset]:
        s = self.server
        ae = AE(ae_title="MODALITY1")
        ae.add_requested_context(FIND)
        assoc = ae.associate(HOST, s.port, ae_title="MIMIC", tls_args=(
            client_context(s.client_cert, s.client_key, s.ca_cert), "localhost"))
        assert assoc.is_established
        answers = [ds for status, ds in assoc.send_c_find(identifier, FIND)
                   if status.Status in (0xFF00, 0xFF01)]
        assoc.release()
        return answers

    def audit(self, event: str) -> list[dict[str, Any]]:
        result = subprocess.run(
            [sys.executable, "-m", "mimic_server", "audit", "--json", "--event", event,
             "--data-dir", str(self.server.data_dir), "--database-url", self.database_url],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line]


def _store_all(server: MimicProcess, files: tuple[Storable, ...]) -> None:
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    by_syntax: dict[str, list[Storable]] = {}
    for item in files:
        by_syntax.setdefault(item.transfer_syntax_uid, []).append(item)
    for syntax, items in by_syntax.items():
        classes = sorted({i.sop_class_uid for i in items})
        assoc = associate(server.port, ctx, contexts=classes, transfer_syntaxes=[syntax])
        for item in items:
            assert assoc.send_c_store(item.path).Status == 0
        assoc.release()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("dicomweb")
    issuer = OidcIssuerDouble(root).start()
    server = MimicProcess(root / "data", database_url=database_url).start()
    web = WebProcess(root / "data", issuer, database_url=database_url,
                     max_find_results="40")
    try:
        web.start()
        _store_all(server, storable_files())
        yield Setup(server, web, issuer, database_url)
    finally:
        assert web.stop() == 0, web.log()
        assert server.stop() == 0, server.log()
        issuer.stop()


def _values(answers: list[dict[str, Any]], keyword: str) -> set[str]:
    tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
    found = set()
    for answer in answers:
        values = answer.get(tag, {}).get("Value") or [""]
        value = values[0]
        found.add(value["Alphabetic"] if isinstance(value, dict) else str(value))
    return found


def _studies(setup: Setup, **filters: str) -> list[dict[str, Any]]:
    return setup.client().search_for_studies(search_filters=filters)


# -- QIDO-RS: the matching rules of C-FIND ---------------------------------------------------


def test_single_value_and_case(setup: Setup) -> None:
    assert len(_studies(setup, PatientID="11RG3")) == 1
    assert _studies(setup, PatientID="11rg3") == []  # LO: exact
    answers = _studies(setup, PatientName="compressedsamples^rg3")  # PN: any case
    assert _values(answers, "PatientID") == {"11RG3"}


def test_list_of_uids(setup: Setup) -> None:
    uids = [pydicom.dcmread(f.path, stop_before_pixels=True).StudyInstanceUID
            for f in storable_files() if f.path.name in ("CT_small.dcm", "MR_small.dcm")]
    answers = _studies(setup, StudyInstanceUID=",".join(uids))
    assert _values(answers, "StudyInstanceUID") == set(uids)
    answers = _studies(setup, **{"0020000D": "\\".join(uids)})  # by tag, DICOM separator
    assert _values(answers, "StudyInstanceUID") == set(uids)


def test_wildcards_and_sql_specials(setup: Setup) -> None:
    assert {"11RG3", "1CT1", "4MR1", "9RG1"} <= _values(
        _studies(setup, PatientName="Compressed*"), "PatientID")
    assert _values(_studies(setup, PatientID="?CT?"), "PatientID") == {"1CT1"}
    assert _studies(setup, PatientID="%") == []
    assert _studies(setup, PatientID="1_T1") == []


def test_date_and_time_ranges(setup: Setup) -> None:
    def dates(value: str) -> set[str]:
        return _values(_studies(setup, StudyDate=value), "StudyDate")

    assert dates("20040101-20041231") == {"20040119", "20040826"}
    assert all(d >= "20170101" for d in dates("20170101-"))
    assert all(d and d <= "19971231" for d in dates("-19971231"))
    assert "" not in dates("-99991231")
    assert len(_studies(setup, StudyDate="20040119", StudyTime="0700-0800")) == 1
    assert _studies(setup, StudyDate="20040119", StudyTime="0800-") == []


def test_empty_value_matching(setup: Setup) -> None:
    assert _studies(setup, PatientID="11RG3", AccessionNumber='""') == []
    assert len(_studies(setup, PatientID="4MR1", AccessionNumber='""')) == 1


def test_sequence_matching(setup: Setup) -> None:
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    client = setup.client()
    found = client.search_for_instances(
        ct.StudyInstanceUID, ct.SeriesInstanceUID,
        search_filters={"AnatomicRegionSequence.CodeValue": "nonexistent-code"})
    assert found == []
    found = client.search_for_instances(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert _values(found, "SOPInstanceUID") == {ct.SOPInstanceUID}


@pytest.mark.parametrize(
    ("pattern", "patient_ids"),
    [("山田*", {"H31EXAMPLE", "H32EXAMPLE"}), ("Διον*", {"SCSGREEK"}),
     ("buc^jérôme", {"SCSFREN"}), ("Люк*", {"SCSRUSS"}), ("김희중", {"2008-3"})],
)
def test_names_in_other_character_sets(setup: Setup, pattern: str,
                                       patient_ids: set[str]) -> None:
    assert patient_ids <= _values(_studies(setup, PatientName=pattern), "PatientID")


@pytest.mark.parametrize("keys", [
    {"PatientName": "Compressed*"}, {"StudyDate": "20040101-20041231"},
    {"PatientID": "?CT?"}, {"ModalitiesInStudy": "MR"},
])
def test_same_answers_as_c_find(setup: Setup, keys: dict[str, str]) -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword in ("StudyInstanceUID", "PatientID", "StudyDate", "ModalitiesInStudy",
                    "NumberOfStudyRelatedInstances"):
        setattr(identifier, keyword, "")
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    dimse = {(str(a.StudyInstanceUID), str(a.PatientID), str(a.StudyDate),
              str(a.NumberOfStudyRelatedInstances)) for a in setup.c_find(identifier)}
    web = {(_one(a, "0020000D"), _one(a, "00100020"), _one(a, "00080020"),
            _one(a, "00201208")) for a in _studies(setup, **keys)}
    assert dimse and web == dimse


def _one(answer: dict[str, Any], tag: str) -> str:
    values = answer.get(tag, {}).get("Value") or [""]
    return str(values[0])


def test_series_and_instances_under_a_study(setup: Setup) -> None:
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    client = setup.client()
    series = client.search_for_series(ct.StudyInstanceUID)
    assert _values(series, "SeriesInstanceUID") == {ct.SeriesInstanceUID}
    assert _values(series, "Modality") == {"CT"}
    assert series[0]["00081190"]["Value"][0].endswith(
        f"/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}")
    everywhere = client.search_for_series(search_filters={"Modality": "CT"})
    assert ct.SeriesInstanceUID in _values(everywhere, "SeriesInstanceUID")
    instances = client.search_for_instances(ct.StudyInstanceUID)
    assert _values(instances, "SOPInstanceUID") == {ct.SOPInstanceUID}
    assert int(instances[0]["00280010"]["Value"][0]) == ct.Rows  # a default attribute


# -- QIDO-RS: includefield, limit, offset, fuzzymatching --------------------------------------


def test_includefield(setup: Setup) -> None:
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    client = setup.client()
    plain = client.search_for_studies(search_filters={"StudyInstanceUID": ct.StudyInstanceUID})
    assert "00080080" not in plain[0]  # InstitutionName: not a default
    assert "00100010" in plain[0] and "00201208" in plain[0]  # defaults
    more = client.search_for_studies(
        search_filters={"StudyInstanceUID": ct.StudyInstanceUID},
        fields=["InstitutionName", "00081030"])
    assert more[0]["00080080"]["Value"] == [ct.InstitutionName]
    assert "00081030" in more[0]
    everything = client.search_for_studies(
        search_filters={"StudyInstanceUID": ct.StudyInstanceUID}, fields=["all"])
    assert "00080062" in everything[0]  # SOPClassesInStudy
    assert setup.get("/studies?includefield=NoSuchKeyword").status_code == 400


def test_limit_and_offset(setup: Setup) -> None:
    client = setup.client()
    everything = client.search_for_studies(search_filters={"PatientName": "*"}, fields=[])
    uids = [_one(a, "0020000D") for a in everything]
    assert len(uids) >= 4
    first = client.search_for_studies(search_filters={"PatientName": "*"}, limit=2)
    second = client.search_for_studies(search_filters={"PatientName": "*"}, limit=2, offset=2)
    assert [_one(a, "0020000D") for a in first] == uids[:2]
    assert [_one(a, "0020000D") for a in second] == uids[2:4]
    response = setup.get("/studies?limit=1")
    assert response.status_code == 200 and len(response.json()) == 1
    assert "additional results" in response.headers["Warning"]
    assert setup.get("/studies?limit=-1").status_code == 400
    assert setup.get("/studies?offset=x").status_code == 400


def test_result_limit_answers_a_page_with_a_warning(setup: Setup) -> None:
    response = setup.get("/instances")  # more than MIMIC_MAX_FIND_RESULTS=40 instances
    assert response.status_code == 200
    assert len(response.json()) == 40
    assert "additional results" in response.headers["Warning"]


def test_fuzzymatching(setup: Setup) -> None:
    response = setup.get("/studies?fuzzymatching=false&PatientID=11RG3")
    assert response.status_code == 200 and "Warning" not in response.headers
    response = setup.get("/studies?fuzzymatching=true&PatientID=11RG3")
    assert response.status_code == 200 and len(response.json()) == 1
    assert "fuzzymatching parameter is not supported" in response.headers["Warning"]
    assert setup.get("/studies?fuzzymatching=maybe").status_code == 400


def test_bad_queries_are_refused(setup: Setup) -> None:
    for query in ("NoSuchKeyword=1", "StudyDate=2004-01-01-", "PatientID=1&PatientID=2",
                  "PixelData=1", "StudyInstanceUID=1.2.%2A.3x"):
        response = setup.get(f"/studies?{query}")
        assert response.status_code == 400, (query, response.text)
        assert response.headers["content-type"] == "application/json"


def test_query_is_audited(setup: Setup) -> None:
    setup.client().search_for_studies(search_filters={"PatientID": "1CT1"})
    records = setup.audit("Query")
    web = [r for r in records if r.get("identity") == "DICOMweb"]
    assert web and web[-1]["user"] == "user-1@example.org"


# -- WADO-RS ------------------------------------------------------------------------------------


def _parts(setup: Setup, response: requests.Response) -> list[bytes]:
    return list(setup.client()._decode_multipart_message(response, stream=False))


def test_instance_bytes_are_those_stored(setup: Setup) -> None:
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    path = (f"/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
            f"/instances/{ct.SOPInstanceUID}")
    response = setup.get(path, Accept='multipart/related; type="application/dicom"')
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("multipart/related")
    parts = _parts(setup, response)
    stored = setup.server.object_for(ct.SOPInstanceUID).read_bytes()
    assert parts == [stored]
    original = next(f for f in storable_files() if f.sop_instance_uid == ct.SOPInstanceUID)
    dataset = pydicom.dcmread(ct_small(), stop_before_pixels=False)
    received = pydicom.dcmread(__import__("io").BytesIO(parts[0]))
    assert received.SOPInstanceUID == dataset.SOPInstanceUID
    assert stored.endswith(original.dataset_bytes())  # the data set as sent over DIMSE
    # dicomweb-client's own parse of the same answer
    ds = setup.client().retrieve_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID,
                                          ct.SOPInstanceUID)
    assert ds.PixelData == dataset.PixelData


def test_study_retrieve_is_every_instance_as_stored(setup: Setup) -> None:
    mr2 = [f for f in storable_files() if f.path.name.startswith("MR2_")]
    study = pydicom.dcmread(mr2[0].path, stop_before_pixels=True).StudyInstanceUID
    response = setup.get(f"/studies/{study}",
                         Accept='multipart/related; type="application/dicom"; transfer-syntax=*')
    assert response.status_code == 200
    parts = _parts(setup, response)
    assert len(parts) == len(mr2)
    for item in mr2:
        assert setup.server.object_for(item.sop_instance_uid).read_bytes() in parts
    begun = [r for r in setup.audit("110102") if r.get("identity") == "DICOMweb"]
    done = [r for r in setup.audit("110104") if r.get("identity") == "DICOMweb"]
    assert begun and done and study in (done[-1].get("studies") or [])


def test_metadata_with_bulk_data(setup: Setup) -> None:
    ct = pydicom.dcmread(ct_small())
    client = setup.client()
    metadata = client.retrieve_instance_metadata(
        ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert metadata["00080018"]["Value"] == [ct.SOPInstanceUID]
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri.startswith(setup.web.url + "/studies/"), uri
    assert "Value" not in metadata["7FE00010"]
    assert client.retrieve_bulkdata(uri) == [ct.PixelData]
    series = client.retrieve_series_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert len(series) == 1


def test_a_deflated_instance_through_its_inflated_copy(setup: Setup) -> None:
    """A Deflated object is read through a copy inflated piece by piece (pydicom inflates
    it whole): its metadata, Pixel Data and frame as pydicom reads the file, and the
    instance itself sent as stored, still deflated."""
    item = next(f for f in storable_files() if f.path.name == "image_dfl.dcm")
    ds = pydicom.dcmread(item.path)
    client = setup.client()
    metadata = client.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert metadata["00080018"]["Value"] == [ds.SOPInstanceUID]
    assert metadata["00280010"]["Value"] == [ds.Rows]
    assert client.retrieve_bulkdata(metadata["7FE00010"]["BulkDataURI"]) == [ds.PixelData]
    frames = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1],
        media_types=("application/octet-stream",))
    assert frames == [ds.PixelData]
    response = setup.get(_ct_path(ds), Accept='multipart/related; type="application/dicom"; '
                         'transfer-syntax=*')
    assert _parts(setup, response) == [setup.server.object_for(ds.SOPInstanceUID).read_bytes()]


def test_not_found_and_not_acceptable(setup: Setup) -> None:
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    assert setup.get("/studies/1.2.3.4.5").status_code == 404
    assert setup.get("/studies/not-a-uid").status_code == 400
    response = setup.get(f"/studies/{ct.StudyInstanceUID}", Accept="application/dicom+xml")
    assert response.status_code == 406
    response = setup.get(f"/studies/{ct.StudyInstanceUID}", Accept=(
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'))
    assert response.status_code == 406  # stored otherwise: MIMIC does not transcode
    assert setup.get("/studies", Accept="application/dicom+xml").status_code == 406


# -- refusals: tokens, roles, CORS ----------------------------------------------------------------


def test_no_token_is_401_with_a_challenge(setup: Setup) -> None:
    response = setup.get("/studies", token=None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="DICOMweb"')
    response = requests.get(setup.web.url + "/studies", headers={"Authorization": "Basic eDp5"},
                            timeout=10)
    assert response.status_code == 401


@pytest.mark.parametrize("kind", ["unpublished-key", "expired", "audience", "unsigned"])
def test_bad_tokens_are_401(setup: Setup, kind: str) -> None:
    issuer = setup.issuer
    token = {
        "unpublished-key": lambda: issuer.mint(audience=AUDIENCE, key=issuer.unpublished_key),
        "expired": lambda: issuer.mint(audience=AUDIENCE, issued=0, lifetime=60),
        "audience": lambda: issuer.mint(audience="api://other"),
        "unsigned": lambda: issuer.mint(audience=AUDIENCE, algorithm="none"),
    }[kind]()
    response = setup.get("/studies", token=token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert token not in setup.web.log()


def test_role_without_the_service_is_403(setup: Setup) -> None:
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    clerk = setup.token(["Clerk"])
    assert setup.get("/studies?PatientID=1CT1", token=clerk).status_code == 200
    response = setup.get(f"/studies/{ct.StudyInstanceUID}", token=clerk)
    assert response.status_code == 403  # WADO-RS is C-GET: not a Clerk's
    assert b"DICM" not in response.content
    assert setup.get("/studies", token=setup.token([])).status_code == 403
    assert setup.get("/studies", token=setup.token(["Stranger"])).status_code == 403
    alerts = [r for r in setup.audit("110113") if r.get("identity") == "DICOMweb"]
    assert alerts


def test_cors_preflight(setup: Setup) -> None:
    allowed = requests.options(setup.web.url + "/studies", timeout=10, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    other = requests.options(setup.web.url + "/studies", timeout=10, headers={
        "Origin": "https://elsewhere.example.org", "Access-Control-Request-Method": "GET"})
    assert other.status_code == 400
    assert "Access-Control-Allow-Origin" not in other.headers
    response = setup.get("/studies?PatientID=1CT1", Origin=ORIGIN)
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_no_patient_data_in_the_log(setup: Setup) -> None:
    setup.client().search_for_studies(search_filters={"PatientName": "Compressed*"})
    log = setup.web.log()
    assert "Compressed" not in log and "11RG3" not in log


def test_auth_none_is_refused_off_loopback(tmp_path: Path) -> None:
    web = WebProcess(tmp_path / "data", None, web_auth="none", web_host="0.0.0.0")
    result = web.run()
    assert result.returncode == 2
    assert "MIMIC_WEB_AUTH=none" in result.stderr and "loopback" in result.stderr


def test_auth_none_on_loopback_says_so_loudly(tmp_path: Path) -> None:
    web = WebProcess(tmp_path / "data", None, web_auth="none").start()
    try:
        assert requests.get(web.url + "/studies", timeout=10).status_code == 200
        warnings = [e for e in web.log_entries() if e.get("level") == "WARNING"
                    and "AUTHENTICATION IS OFF" in e.get("message", "")]
        assert warnings
    finally:
        assert web.stop() == 0


def test_oidc_auth_needs_an_issuer(tmp_path: Path) -> None:
    result = WebProcess(tmp_path / "data", None).run()
    assert result.returncode == 2 and "MIMIC_OIDC_ISSUER" in result.stderr


# -- WADO-RS: frames, rendered images, thumbnails (render/) -----------------------------------


def _ct_path(ct: Dataset) -> str:
    return (f"/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
            f"/instances/{ct.SOPInstanceUID}")


def test_frames_are_the_stored_pixels(setup: Setup) -> None:
    ct = pydicom.dcmread(ct_small())
    frames = setup.client().retrieve_instance_frames(
        ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, frame_numbers=[1],
        media_types=("application/octet-stream",))
    assert frames == [ct.PixelData]
    assert setup.get(_ct_path(ct) + "/frames/2").status_code == 404
    assert setup.get(_ct_path(ct) + "/frames/0").status_code == 400
    response = setup.get(_ct_path(ct) + "/frames/1", Accept='multipart/related; type="image/jpeg"')
    assert response.status_code == 406  # native pixels are not transcoded to JPEG


def test_rendered_frame_is_pydicoms_pixels_windowed(setup: Setup) -> None:
    import io

    import numpy as np
    from PIL import Image

    ct = pydicom.dcmread(ct_small())
    values = ct.pixel_array.astype(np.float64) * float(ct.get("RescaleSlope", 1)) + float(
        ct.get("RescaleIntercept", 0))
    center, width = 40.0, 400.0
    response = setup.get(_ct_path(ct) + f"/rendered?window={center:g},{width:g}",
                         Accept="image/png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(response.content)).convert("L"), dtype=np.float64)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    expected = np.clip(((values - (center - 0.5)) / (width - 1) + 0.5) * 255, 0, 255)
    expected[values <= low], expected[values > high] = 0, 255
    assert picture.shape == values.shape
    assert np.mean(np.abs(picture - expected) <= 1) > 0.99
    jpeg = setup.client().retrieve_instance_rendered(
        ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID,
        media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_thumbnails(setup: Setup) -> None:
    import io

    from PIL import Image

    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    for path in (_ct_path(ct), f"/studies/{ct.StudyInstanceUID}"):
        response = setup.get(path + "/thumbnail?viewport=64,64", Accept="image/jpeg")
        assert response.status_code == 200, response.text
        assert max(Image.open(io.BytesIO(response.content)).size) <= 64
    assert setup.get(_ct_path(ct) + "/thumbnail", Accept="image/gif").status_code == 406
    assert setup.get(_ct_path(ct) + "/rendered?window=1",
                     Accept="image/png").status_code == 400


def test_roles_from_the_web_roles_setting(tmp_path: Path) -> None:
    """Without a policy file table (Azure): MIMIC_WEB_ROLES is the front door's rule."""
    issuer = OidcIssuerDouble(tmp_path).start()
    web = WebProcess(tmp_path / "data", issuer, policy=None,
                     web_roles='{"Radiologist": ["find", "get"], "Clerk": ["find"]}').start()
    try:
        def status(path: str, roles: list[str]) -> int:
            token = issuer.mint(audience=AUDIENCE, roles=roles)
            return requests.get(web.url + path, timeout=10,
                                headers={"Authorization": f"Bearer {token}"}).status_code

        assert status("/studies", ["Clerk"]) == 200
        assert status("/studies/1.2.3", ["Clerk"]) == 403
        assert status("/studies/1.2.3", ["Radiologist"]) == 404  # granted; nothing stored
        assert status("/studies", ["Stranger"]) == 403
    finally:
        assert web.stop() == 0, web.log()
        issuer.stop()


def test_no_rule_grants_nothing(tmp_path: Path) -> None:
    issuer = OidcIssuerDouble(tmp_path).start()
    web = WebProcess(tmp_path / "data", issuer, policy=None).start()
    try:
        token = issuer.mint(audience=AUDIENCE, roles=["Radiologist"])
        response = requests.get(web.url + "/studies", timeout=10,
                                headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 403
    finally:
        assert web.stop() == 0, web.log()
        issuer.stop()
