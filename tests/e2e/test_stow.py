"""STOW-RS (PS3.18 10.5) end to end: ``dicomweb-client`` stores through the real ``mimic web``
app (uvicorn on loopback, bearer tokens of the OIDC issuer double, the policy file), and the
``mimic serve`` process beside it, on the same index and object store, finds the instances
with C-FIND and returns them with C-GET, data set bytes identical to those sent. Every
refusal is answered as PS3.18 says, with nothing stored: no token (401), a token without
the role (403), another media type (415), a body that is not multipart (400), a damaged
part, a part of another study, a part over the size limit, a transfer syntax the archive
does not keep (FailedSOPSequence with the Failure Reason). One good and one bad part: 202.
A large part sent chunked is spooled as it arrives and stored byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import select
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from mimic_server.certs import devpki
from mimic_server.codec.file_meta import encode_file_meta, read_file_meta
from mimic_server.config import Settings
from mimic_server.web.dicomweb.multipart import MAX_PARTS
from mimic_server.webapp import WebArchive
from tests.data import ct_small
from tests.large_objects import write_large
from tests.oidc_double import OidcIssuerDouble
from tests.support import HOST, MimicProcess, client_context, wait_for
from tests.web_support import WebProcess

AUDIENCE = "api://mimic"
POLICY = """
[certificates.reader]
services = ["all"]

[certificates.dicomweb]
services = ["find", "get", "store"]
roles = { Uploader = ["find", "get", "store"], Viewer = ["find", "get"] }
"""
BOUNDARY = "stow-test-boundary"
DICOM_MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
#: (0008,1190) Retrieve URL, (0008,1197) Failure Reason, (0008,1198) Failed SOP Sequence,
#: (0008,1199) Referenced SOP Sequence, (0008,1155) Referenced SOP Instance UID.
RETRIEVE_URL, FAILURE_REASON, FAILED, REFERENCED, REFERENCED_SOP = (
    "00081190", "00081197", "00081198", "00081199", "00081155")


class Setup:
    def __init__(self, root: Path, server: MimicProcess, web: WebArchive,
                 issuer: OidcIssuerDouble) -> None:
        self.root, self.server, self.web, self.issuer = root, server, web, issuer
        host, port = web.address
        self.url = f"http://{host}:{port}/dicomweb"

    def token(self, roles: list[str] | None = None) -> str:
        return self.issuer.mint(roles=["Uploader"] if roles is None else roles,
                                subject="uploader")

    def client(self, roles: list[str] | None = None, url: str | None = None) -> DICOMwebClient:
        return DICOMwebClient(url or self.url,
                              headers={"Authorization": f"Bearer {self.token(roles)}"})

    def post(self, body: bytes, path: str = "/studies", content_type: str = DICOM_MULTIPART,
             token: str | None = None, url: str | None = None) -> requests.Response:
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        headers["Authorization"] = f"Bearer {token or self.token()}"
        return requests.post((url or self.url) + path, data=body, headers=headers, timeout=60)

    def associate(self, contexts: list[str], roles: list[Any] | None = None,
                  handlers: list[Any] | None = None) -> Any:
        certs = self.server.certs
        ctx = client_context(certs / "clients" / "reader" / "client.pem",
                             certs / "clients" / "reader" / "client.key", certs / "ca" / "ca.pem")
        ae = AE(ae_title="READER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        for uid in contexts:
            ae.add_requested_context(uid)
        assoc = ae.associate(HOST, self.server.port, ae_title="MIMIC",
                             tls_args=(ctx, "localhost"), ext_neg=roles, evt_handlers=handlers)
        assert assoc.is_established
        return assoc

    def find(self, ds: Dataset) -> list[str]:
        """The SOP Instance UIDs C-FIND answers in ``ds``'s series."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = ds.StudyInstanceUID
        identifier.SeriesInstanceUID = ds.SeriesInstanceUID
        identifier.SOPInstanceUID = ""
        assoc = self.associate([StudyRootQueryRetrieveInformationModelFind])
        responses = list(assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind))
        assoc.release()
        assert responses[-1][0].Status == 0, responses[-1][0]
        return sorted(str(a.SOPInstanceUID) for s, a in responses if s.Status == 0xFF00)

    def get(self, sop_instance_uid: str, study: str, series: str) -> bytes:
        """The C-GET's data set bytes, as the archive sent them."""
        received: list[bytes] = []

        def on_store(event: Any) -> int:
            received.append(event.request.DataSet.getvalue())
            return 0

        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID, identifier.SeriesInstanceUID = study, series
        identifier.SOPInstanceUID = sop_instance_uid
        assoc = self.associate(
            [StudyRootQueryRetrieveInformationModelGet, CTImageStorage],
            roles=[build_role(CTImageStorage, scp_role=True)],
            handlers=[(evt.EVT_C_STORE, on_store)],
        )
        statuses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
        assoc.release()
        assert statuses[-1][0].Status == 0, statuses[-1][0]
        [data] = received
        return data

    def instance_count(self) -> int:
        return self.server.instance_count()

    def audit(self) -> list[dict[str, Any]]:
        path = self.server.data_dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line]


def start_web(root: Path, issuer: OidcIssuerDouble, **settings: Any) -> WebArchive:
    web = WebArchive(Settings(
        data_dir=root / "data", policy_file=root / "policy.toml", oidc_issuer=issuer.issuer,
        oidc_audience=AUDIENCE, oidc_ca_file=issuer.ca_file, web_host=HOST, web_port=0,
        ops_port=0, **settings,
    ))
    web.start()
    return web


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("stow")
    issuer = OidcIssuerDouble(root / "oidc").start()
    certs = root / "data" / "certs"
    devpki.init(certs)
    devpki.issue_client(certs, "reader")
    (root / "policy.toml").write_text(POLICY)
    server = MimicProcess(root / "data", policy_file=str(root / "policy.toml")).start()
    web = start_web(root, issuer)
    yield Setup(root, server, web, issuer)
    web.stop()
    assert server.stop() == 0, server.log()
    issuer.stop()


def new_ct(study: str | None = None) -> Dataset:
    """CT_small as an instance the archive has not seen (its own study and series)."""
    ds = pydicom.dcmread(ct_small())
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    return ds


def part10(ds: Dataset) -> bytes:
    """What dicomweb-client sends for ``ds`` (``store_instances``: ``pydicom.dcmwrite``)."""
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds)
    return out.getvalue()


def dataset_bytes(data: bytes) -> bytes:
    read = read_file_meta(data)
    assert read is not None
    return data[read.dataset_offset:]


def multipart(*parts: bytes, boundary: str = BOUNDARY) -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def stored_uids(answer: dict[str, Any]) -> list[str]:
    return [item[REFERENCED_SOP]["Value"][0] for item in answer.get(REFERENCED, {"Value": []})
            ["Value"]]


def failures(answer: dict[str, Any]) -> list[tuple[str | None, int]]:
    return [(item.get(REFERENCED_SOP, {"Value": [None]})["Value"][0],
             item[FAILURE_REASON]["Value"][0])
            for item in answer.get(FAILED, {"Value": []})["Value"]]


# -- stored, then found and retrieved over DIMSE --------------------------------------------


def test_stow_then_c_find_and_c_get_give_the_bytes_sent(setup: Setup) -> None:
    first, second = new_ct(), new_ct()
    second.StudyInstanceUID = first.StudyInstanceUID
    second.SeriesInstanceUID = first.SeriesInstanceUID
    answer = setup.client().store_instances([first, second])
    referenced = answer.ReferencedSOPSequence
    assert [str(i.ReferencedSOPInstanceUID) for i in referenced] == [
        first.SOPInstanceUID, second.SOPInstanceUID]
    assert "FailedSOPSequence" not in answer
    for item, ds in zip(referenced, (first, second), strict=True):
        assert item.ReferencedSOPClassUID == CTImageStorage
        assert item.RetrieveURL == (f"{setup.url}/studies/{ds.StudyInstanceUID}/series/"
                                    f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
    assert answer.RetrieveURL == f"{setup.url}/studies/{first.StudyInstanceUID}"

    assert setup.find(first) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])
    for ds in (first, second):
        sent = dataset_bytes(part10(ds))
        assert setup.get(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID) == sent
        stored = setup.server.object_for(ds.SOPInstanceUID).read_bytes()
        assert stored.endswith(sent)  # our File Meta, then the data set as received
        assert pydicom.dcmread(io.BytesIO(stored)).file_meta.ImplementationVersionName == (
            "MIMIC_010")


def test_stow_to_the_study_and_duplicates_keep_the_newest(setup: Setup) -> None:
    ds = new_ct()
    client = setup.client()
    client.store_instances([ds], study_instance_uid=ds.StudyInstanceUID)
    before = setup.instance_count()
    ds.InstitutionName = "NEWER BYTES"
    answer = client.store_instances([ds], study_instance_uid=ds.StudyInstanceUID)
    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [
        ds.SOPInstanceUID]
    assert setup.instance_count() == before  # one instance, replaced
    got = setup.get(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert got == dataset_bytes(part10(ds)) and b"NEWER BYTES" in got
    objects = [p for p in setup.server.stored_objects()
               if ds.SOPInstanceUID.encode() in p.read_bytes()]
    assert len(objects) == 1  # the replaced object was removed


def test_each_stored_instance_is_audited(setup: Setup) -> None:
    ds = new_ct()
    setup.client().store_instances([ds])
    records = [r for r in setup.audit() if r.get("service") == "STOW-RS"
               and ds.StudyInstanceUID in (r.get("studies") or {})]
    assert len(records) == 1
    record = records[0]
    assert record["EventID"]["code"] == "110104" and record["EventOutcomeIndicator"] == 0
    assert record["user"] == "uploader@example.org"


# -- refusals: HTTP ----------------------------------------------------------------------------


def test_no_token_is_401(setup: Setup) -> None:
    before = setup.instance_count()
    response = requests.post(setup.url + "/studies", data=multipart(part10(new_ct())),
                             headers={"Content-Type": DICOM_MULTIPART}, timeout=30)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert setup.instance_count() == before


def test_token_without_the_store_role_is_403(setup: Setup) -> None:
    before = setup.instance_count()
    response = setup.post(multipart(part10(new_ct())), token=setup.token(["Viewer"]))
    assert response.status_code == 403
    assert setup.instance_count() == before


@pytest.mark.parametrize("content_type", [
    "application/dicom",
    f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
    f"multipart/form-data; boundary={BOUNDARY}",
    "",
])
def test_another_media_type_is_415(setup: Setup, content_type: str) -> None:
    before = setup.instance_count()
    response = setup.post(multipart(part10(new_ct())), content_type=content_type)
    assert response.status_code == 415
    assert setup.instance_count() == before


@pytest.mark.parametrize("body", [
    b"not multipart at all",
    b"--" + BOUNDARY.encode() + b"\r\n\r\n" + b"\x00" * 1000,  # never closed
    b"--" + BOUNDARY.encode() + b"--\r\n",  # no part
], ids=["no-delimiter", "unclosed", "no-part"])
def test_a_body_that_is_not_multipart_is_400(setup: Setup, body: bytes) -> None:
    before = setup.instance_count()
    response = setup.post(body)
    assert response.status_code == 400
    assert setup.instance_count() == before


def test_an_answer_the_client_cannot_take_is_406_and_a_bad_study_path_400(setup: Setup) -> None:
    before = setup.instance_count()
    response = requests.post(setup.url + "/studies", data=multipart(part10(new_ct())),
                             timeout=30, headers={
        "Content-Type": DICOM_MULTIPART, "Accept": "application/dicom+xml",
        "Authorization": f"Bearer {setup.token()}"})
    assert response.status_code == 406
    assert setup.post(multipart(part10(new_ct())), path="/studies/1.2.x").status_code == 400
    assert setup.instance_count() == before


def test_a_boundary_longer_than_rfc_2046_allows_is_400(setup: Setup) -> None:
    boundary = "b" * 71
    response = setup.post(multipart(part10(new_ct()), boundary=boundary),
                          content_type=f'multipart/related; type="application/dicom"; '
                                       f"boundary={boundary}")
    assert response.status_code == 400


def test_a_body_broken_after_a_stored_part_is_202(setup: Setup) -> None:
    """What was stored before the body broke stays stored (it is durable) and is named."""
    ds = new_ct()
    body = multipart(part10(ds)).removesuffix(f"--{BOUNDARY}--\r\n".encode())
    response = setup.post(body + f"--{BOUNDARY}\r\n\r\nunclosed".encode())
    assert response.status_code == 202
    assert stored_uids(response.json()) == [ds.SOPInstanceUID]
    assert setup.find(ds) == [ds.SOPInstanceUID]


def test_the_part_a_body_broke_in_is_named_failed(setup: Setup) -> None:
    """The 202's Failed SOP Sequence names the part the body ended in (its File Meta read):
    it was left out of the answer, which then named nothing failed, and a sender that reads
    the Failed SOP Sequence to know what to send again saw no failure at all."""
    ds, cut = new_ct(), new_ct()
    body = multipart(part10(ds)).removesuffix(f"--{BOUNDARY}--\r\n".encode())
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    response = setup.post(body + head + part10(cut)[:20000])  # ends in its Pixel Data
    assert response.status_code == 202
    assert stored_uids(response.json()) == [ds.SOPInstanceUID]
    assert failures(response.json()) == [(cut.SOPInstanceUID, 0xC000)]
    assert not setup.find(cut)


# -- refusals: per part (FailedSOPSequence) --------------------------------------------------


def test_a_damaged_part_is_refused_and_nothing_stored(setup: Setup) -> None:
    ds = new_ct()
    data = part10(ds)
    before = setup.instance_count()
    response = setup.post(multipart(data[:-100]))  # the data set ends inside Pixel Data
    assert response.status_code == 409
    assert response.headers["Content-Type"] == "application/dicom+json"
    assert failures(response.json()) == [(ds.SOPInstanceUID, 0xC000)]
    assert REFERENCED not in response.json()
    assert setup.instance_count() == before and not setup.find(ds)


def test_a_part_that_is_not_part10_fails_without_uids(setup: Setup) -> None:
    response = setup.post(multipart(b"\xff" * 500))
    assert response.status_code == 409
    assert failures(response.json()) == [(None, 0xC000)]


def test_another_study_than_the_target_is_refused(setup: Setup) -> None:
    ds = new_ct()
    other = "1.2.826.0.1.3680043.8.498.1"
    before = setup.instance_count()
    response = setup.post(multipart(part10(ds)), path=f"/studies/{other}")
    assert response.status_code == 409
    assert failures(response.json()) == [(ds.SOPInstanceUID, 0xC409)]
    assert response.json()[RETRIEVE_URL]["Value"] == [f"{setup.url}/studies/{other}"]
    assert setup.instance_count() == before


def _series_of(first: Dataset, reused: Dataset) -> None:
    reused.SeriesInstanceUID = first.SeriesInstanceUID


def _study_of_another_patient(first: Dataset, reused: Dataset) -> None:
    reused.StudyInstanceUID = first.StudyInstanceUID
    reused.PatientID = f"{first.PatientID}-other"


@pytest.mark.parametrize("conflict", [_series_of, _study_of_another_patient],
                         ids=["series-under-another-study", "study-under-another-patient-id"])
def test_an_instance_contradicting_what_is_filed_is_refused(
    setup: Setup, conflict: Callable[[Dataset, Dataset], None],
) -> None:
    """An instance naming a series the archive files under another study, or a study it
    files under another Patient ID, is refused with 0xC003 (STOW-RS 409 when nothing was
    stored), as a C-STORE of it is; the one kept beside it in the same request is stored."""
    first = new_ct()
    assert setup.post(multipart(part10(first))).status_code == 200
    reused, good = new_ct(), new_ct()
    conflict(first, reused)
    before, objects = setup.instance_count(), len(setup.server.stored_objects())
    response = setup.post(multipart(part10(reused)))
    assert response.status_code == 409
    assert failures(response.json()) == [(reused.SOPInstanceUID, 0xC003)]
    assert len(setup.server.stored_objects()) == objects, "the refused object was kept"
    response = setup.post(multipart(part10(good), part10(reused)))
    assert response.status_code == 202
    assert stored_uids(response.json()) == [good.SOPInstanceUID]
    assert failures(response.json()) == [(reused.SOPInstanceUID, 0xC003)]
    assert setup.instance_count() == before + 1 and not setup.find(reused)
    assert len(setup.server.stored_objects()) == objects + 1


def test_file_meta_uid_differing_from_the_data_set_is_refused(setup: Setup) -> None:
    ds = new_ct()
    data = part10(ds)
    read = read_file_meta(data)
    assert read is not None
    meta = encode_file_meta(read.sop_class_uid, generate_uid(), read.transfer_syntax_uid, "")
    response = setup.post(multipart(meta + data[read.dataset_offset:]))
    assert response.status_code == 409
    [(_uid, reason)] = failures(response.json())
    assert reason == 0xC001


def test_a_transfer_syntax_the_archive_does_not_keep_is_refused(setup: Setup) -> None:
    ds = new_ct()
    data = part10(ds)
    read = read_file_meta(data)
    assert read is not None
    meta = encode_file_meta(read.sop_class_uid, read.sop_instance_uid,
                            "1.2.840.10008.1.2.4.205", "")
    response = setup.post(multipart(meta + data[read.dataset_offset:]))
    assert response.status_code == 409
    assert failures(response.json()) == [(ds.SOPInstanceUID, 0xC122)]


def test_one_good_one_bad_is_202(setup: Setup) -> None:
    good, bad = new_ct(), new_ct()
    before = setup.instance_count()
    response = setup.post(multipart(part10(good), part10(bad)[:-100]))
    assert response.status_code == 202
    answer = response.json()
    assert stored_uids(answer) == [good.SOPInstanceUID]
    assert failures(answer) == [(bad.SOPInstanceUID, 0xC000)]
    assert setup.instance_count() == before + 1
    assert not setup.find(bad)


def test_dicomweb_client_sees_the_failure(setup: Setup) -> None:
    """dicomweb-client raises on 409: a client is never told a refused instance was kept."""
    other = "1.2.826.0.1.3680043.8.498.2"
    with pytest.raises(requests.HTTPError) as raised:
        setup.client().store_instances([new_ct()], study_instance_uid=other)
    assert raised.value.response.status_code == 409


def test_a_part_over_the_size_limit_is_refused(setup: Setup) -> None:
    small = start_web(setup.root, setup.issuer, max_object_bytes=20000)
    try:
        host, port = small.address
        url = f"http://{host}:{port}/dicomweb"
        ds = new_ct()  # a 39 KB data set
        before = setup.instance_count()
        response = setup.post(multipart(part10(ds)), url=url)
        # None stored, and none can be by sending again: 413, not 503's "retry later"
        # (a router retried it without end); the Failure Reason is C-STORE's 0xA700.
        assert response.status_code == 413
        assert failures(response.json()) == [(ds.SOPInstanceUID, 0xA700)]
        assert setup.instance_count() == before
        # a part under the limit in the same request is still stored
        tiny = new_ct()
        del tiny.PixelData
        response = setup.post(multipart(part10(ds), part10(tiny)), url=url)
        assert response.status_code == 202
        assert stored_uids(response.json()) == [tiny.SOPInstanceUID]
    finally:
        small.stop()
    assert not list((setup.root / "data" / "spool").glob("*"))  # anonymous spool files only


def test_a_large_part_is_streamed_to_the_store(setup: Setup, tmp_path: Path) -> None:
    """24 MiB sent chunked: spooled as it arrives (past 8 MiB), stored byte for byte."""
    path = tmp_path / "large.dcm"
    uid = write_large(path, 24 << 20)
    offset = read_file_meta(path.read_bytes()[:4096])
    assert offset is not None

    def body() -> Iterator[bytes]:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    response = requests.post(setup.url + "/studies", data=body(), timeout=120, headers={
        "Content-Type": DICOM_MULTIPART, "Authorization": f"Bearer {setup.token()}"})
    assert response.status_code == 200, response.text
    assert stored_uids(response.json()) == [uid]
    stored = setup.server.object_for(uid)
    sent = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset.dataset_offset)
        while chunk := fh.read(1 << 20):
            sent.update(chunk)
    kept = hashlib.sha256()
    with open(stored, "rb") as fh:
        fh.seek(read_file_meta(fh.read(4096)).dataset_offset)  # type: ignore[union-attr]
        while chunk := fh.read(1 << 20):
            kept.update(chunk)
    assert kept.hexdigest() == sent.hexdigest()
    assert not list((setup.root / "data" / "spool").glob("*"))
    # Its spool file was named into place (stow_part.py), with the mode of any file the
    # store creates, not the spool's 0600.
    umask = next(int(line.split()[1], 8) for line in
                 Path("/proc/self/status").read_text().splitlines() if line.startswith("Umask:"))
    assert stat.S_IMODE(stored.stat().st_mode) == 0o666 & ~umask
    assert stored.stat().st_nlink == 1


# -- bounds: parts, stalled bodies, gone clients ----------------------------------------------


def _stow_records(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "mimic_server.web.dicomweb.stow" and r.levelno >= level]


def test_more_parts_than_the_limit_is_a_malformed_body(
    setup: Setup, caplog: pytest.LogCaptureFixture,
) -> None:
    """Each part, even an empty one of 9 bytes, cost a trip through the ingest path, an item
    of the answer and a WARNING line: 300,000 of them in 2.7 MB held the server 40 s. Past
    MAX_PARTS the body is malformed (400; 202 naming what was stored before), and the
    refused parts are one line."""
    empties = f"--{BOUNDARY}\r\n\r\n\r\n".encode() * MAX_PARTS  # each part empty
    before = setup.instance_count()
    response = setup.post(empties + f"--{BOUNDARY}\r\n\r\n\r\n--{BOUNDARY}--\r\n".encode())
    assert response.status_code == 400
    assert "more than" in response.json()["message"]
    assert setup.instance_count() == before
    assert _stow_records(caplog) == ["STOW-RS body refused", "STOW-RS parts refused"]

    good = new_ct()
    response = setup.post(multipart(part10(good)).removesuffix(f"--{BOUNDARY}--\r\n".encode())
                          + empties + f"--{BOUNDARY}--\r\n".encode())
    assert response.status_code == 202
    assert stored_uids(response.json()) == [good.SOPInstanceUID]
    assert len(failures(response.json())) == MAX_PARTS - 1
    assert setup.instance_count() == before + 1


def _raw_post(address: tuple[str, int], token: str, body: bytes) -> socket.socket:
    """A STOW-RS request that announces far more body than it sends."""
    sock = socket.create_connection(address)
    sock.sendall(b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + token.encode() + b"\r\nContent-Type: " + DICOM_MULTIPART.encode()
                 + b"\r\nContent-Length: 100000000\r\n\r\n" + body)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    sock.settimeout(30)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    return answer


def test_a_stalled_body_is_given_up(setup: Setup) -> None:
    """A body silent for MIMIC_NETWORK_TIMEOUT is given up, its parts closed and the
    connection ended: stalled requests held their parts (up to 8 MiB each in memory, a
    spool descriptor past it) for as long as their senders liked."""
    web = start_web(setup.root, setup.issuer, network_timeout=1)
    try:
        memory = web.context.part_memory  # type: ignore[union-attr]
        assert memory is not None
        before = setup.instance_count()
        stalled = new_ct()
        head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        answer = _answer(_raw_post(web.address, setup.token(), head + part10(stalled)[:20000]))
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert setup.instance_count() == before
        assert memory.held == 0

        good = new_ct()
        body = multipart(part10(good)).removesuffix(f"--{BOUNDARY}--\r\n".encode())
        answer = _answer(_raw_post(web.address, setup.token(),
                                   body + head + part10(stalled)[:20000]))
        assert answer.startswith(b"HTTP/1.1 202 "), answer[:200]
        headers, _, json_body = answer.partition(b"\r\n\r\n")
        assert b"connection: close" in headers.lower()
        assert stored_uids(json.loads(json_body)) == [good.SOPInstanceUID]
        # The part it stalled in is named failed, as out of resources: send it again.
        assert failures(json.loads(json_body)) == [(stalled.SOPInstanceUID, 0xA700)]
        assert setup.instance_count() == before + 1 and not setup.find(stalled)
        assert memory.held == 0
    finally:
        web.stop()
    assert not list((setup.root / "data" / "spool").glob("*"))


def test_a_body_trickled_in_is_given_up(setup: Setup) -> None:
    """One byte within each read's deadline, far less than MIN_PROGRESS_BYTES a network
    timeout: given up (408), its part's memory given back. The deadline of each read alone
    let such a sender hold its part for as long as it went on."""
    web = start_web(setup.root, setup.issuer, network_timeout=1)
    try:
        memory = web.context.part_memory  # type: ignore[union-attr]
        assert memory is not None
        trickled = new_ct()
        head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        data = part10(trickled)
        sock = _raw_post(web.address, setup.token(), head + data[:20000])
        answer = b""
        for sent in range(20000, 20030):  # 0.4 s a byte: 12 s in all, were it not cut off
            try:
                sock.sendall(data[sent:sent + 1])
            except OSError:
                break
            readable, _, _ = select.select([sock], [], [], 0.4)
            if readable:
                answer = _answer(sock)
                break
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert memory.held == 0 and not setup.find(trickled)
    finally:
        web.stop()


def test_a_client_gone_mid_body_is_not_an_error(
    setup: Setup, caplog: pytest.LogCaptureFixture,
) -> None:
    """The stored part stays stored and the request's end is recorded; the disconnect is a
    WARNING, not uvicorn's "Exception in ASGI application" at ERROR with a traceback."""
    good, cut = new_ct(), new_ct()
    before = setup.instance_count()
    body = multipart(part10(good)).removesuffix(f"--{BOUNDARY}--\r\n".encode())
    sock = _raw_post(setup.web.address, setup.token(),
                     body + f"--{BOUNDARY}\r\n\r\n".encode() + part10(cut)[:20000])
    deadline = time.monotonic() + 30
    while setup.instance_count() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    sock.close()
    gone = "STOW-RS client went away before the body ended"
    while gone not in _stow_records(caplog) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone in _stow_records(caplog)
    time.sleep(0.2)  # what uvicorn logs after the app returns
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert setup.instance_count() == before + 1 and not setup.find(cut)


def _received_records(setup: Setup, study: str) -> list[dict[str, Any]]:
    return [r for r in setup.audit() if r.get("event") == "110104" and r.get("received")
            and r.get("studies") == [study]]


def _journals(setup: Setup) -> list[Path]:
    return sorted((setup.root / "data" / "audit-journal").glob("*.journal"))


def test_a_killed_web_process_s_stored_parts_are_audited_by_the_next_start(
    setup: Setup,
) -> None:
    """The file trail writes a STOW-RS request's Instances Transferred at the request's end,
    which a process killed in mid-body (SIGKILL, the kernel's OOM killer) never reaches: its
    stored part had no record, ever. Each stored part is journaled as it is kept, and the
    next ``mimic web`` start on the data directory (or the web worker that replaces a killed
    one) writes the record, once, tagged with the request's journal; a request that ends
    writes its own record so tagged and leaves no journal."""
    web = WebProcess(setup.root / "data", setup.issuer, policy=None,
                     policy_file=str(setup.root / "policy.toml"))
    web.start()
    try:
        whole = new_ct()
        answer = setup.post(multipart(part10(whole)), url=web.url)
        assert answer.status_code == 200, answer.text
        [ended] = _received_records(setup, whole.StudyInstanceUID)
        assert ended["instances"] == 1 and ended["association"]
        assert _journals(setup) == []

        kept, cut = new_ct(), new_ct()
        body = multipart(part10(kept)).removesuffix(f"--{BOUNDARY}--\r\n".encode())
        sock = _raw_post(("127.0.0.1", web.port), setup.token(),
                         body + f"--{BOUNDARY}\r\n\r\n".encode() + part10(cut)[:20000])
        try:
            deadline = time.monotonic() + 30
            while not setup.find(kept) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert setup.find(kept) == [kept.SOPInstanceUID]  # stored, the body still coming
            # Journaled just after its index commit, which C-FIND may see first.
            assert wait_for(lambda: [j.read_text().count('\n["S",') for j in _journals(setup)]
                            == [1], timeout=10)
            assert web.proc is not None
            web.proc.kill()
            web.proc.wait(30)
        finally:
            sock.close()
        assert _received_records(setup, kept.StudyInstanceUID) == []  # its end never came
    finally:
        web.stop()
    again = WebProcess(setup.root / "data", setup.issuer, policy=None,
                       policy_file=str(setup.root / "policy.toml")).start()
    assert again.stop() == 0, again.log()
    [recovered] = _received_records(setup, kept.StudyInstanceUID)
    assert recovered["instances"] == 1 and recovered["association"]
    assert recovered["patient_id"] == kept.PatientID
    assert recovered["service"] == "STOW-RS" and recovered["user"] == ended["user"]
    assert recovered["sop_instances"] == {
        kept.StudyInstanceUID: {kept.SOPClassUID: [kept.SOPInstanceUID]}}
    assert _journals(setup) == []
    assert any(e.get("message") == "audit records written from an ended association's journal"
               for e in again.log_entries())
    assert not setup.find(cut)
