"""C-FIND, C-MOVE and C-GET against a real server loaded with pydicom's test files.

Peers: pynetdicom over TLS, dcmtk ``findscu +tls``, a dcmtk ``storescp +tls`` as the C-MOVE
destination, and dcmtk ``movescu`` / ``getscu`` (no TLS of their own) through a socat TLS
tunnel. What is retrieved must be byte-identical to what was stored.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.data import Storable, ct_small, storable_files
from tests.support import (
    HOST,
    MimicProcess,
    client_context,
    dcmtk,
    dcmtk_tls,
    free_port,
    maps_numpy,
    start_storescp,
    wait_for,
)

PR_FIND = PatientRootQueryRetrieveInformationModelFind
SR_FIND = StudyRootQueryRetrieveInformationModelFind
EXPLICIT = "1.2.840.10008.1.2.1"


class Archive:
    def __init__(self, server: MimicProcess, destination_dir: Path, destination_port: int):
        self.server = server
        self.destination_dir = destination_dir
        self.destination_port = destination_port

    def tls(self):  # type: ignore[no-untyped-def]
        s = self.server
        return client_context(s.client_cert, s.client_key, s.ca_cert)

    def associate(self, contexts: list[str], *, relational: bool = False,
                  roles: list[Any] | None = None,
                  storage: list[tuple[str, str]] | None = None):  # type: ignore[no-untyped-def]
        ae = AE(ae_title="MODALITY1")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for uid in contexts:
            ae.add_requested_context(uid)
        for uid, syntax in storage or []:
            ae.add_requested_context(uid, syntax)
        ext = []
        if relational:
            for uid in contexts:
                item = SOPClassExtendedNegotiation()
                item.sop_class_uid = uid
                item.service_class_application_information = b"\x01"
                ext.append(item)
        assoc = ae.associate(HOST, self.server.port, ae_title="MIMIC",
                             tls_args=(self.tls(), "localhost"),
                             ext_neg=(roles or []) + ext, evt_handlers=self._handlers)
        assert assoc.is_established
        return assoc

    _handlers: list[Any] = []

    def find(self, identifier: Dataset, model: str = SR_FIND, *,
             relational: bool = False) -> tuple[list[Dataset], Dataset]:
        assoc = self.associate([model], relational=relational)
        answers, final = [], Dataset()
        for status, ds in assoc.send_c_find(identifier, model):
            if status.Status in (0xFF00, 0xFF01):
                answers.append(ds)
            else:
                final = status
        assoc.release()
        return answers, final


def _id(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _send_all(server: MimicProcess, files: tuple[Storable, ...]) -> None:
    from tests.support import associate

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


@contextlib.contextmanager
def running_archive(
    root: Path, destinations: dict[str, dict[str, Any]] | None = None, **settings: str
) -> Iterator[Archive]:
    """MIMIC holding every storable test file, with a dcmtk ``storescp +tls`` registered as
    C-MOVE destination ``STORESCP`` (plus ``destinations``); ``settings`` as for
    :class:`MimicProcess`."""
    destination_port = free_port()
    registry = {
        "STORESCP": {"host": HOST, "port": destination_port, "tls": True,
                     "server_name": "localhost"},
        **(destinations or {}),
    }
    server = MimicProcess(root / "data", move_destinations=json.dumps(registry), **settings)
    server.start()
    scp, out = start_storescp(root, server, destination_port)
    try:
        _send_all(server, storable_files())
        yield Archive(server, out, destination_port)
    finally:
        scp.terminate()
        scp.wait(10)
        assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Archive]:
    nowhere = {"NOWHERE": {"host": HOST, "port": free_port(), "tls": False}}
    with running_archive(
        tmp_path_factory.mktemp("qr"), nowhere, max_find_results="40", database_url=database_url
    ) as archive:
        yield archive


def _uids(answers: list[Dataset], keyword: str) -> set[str]:
    return {str(a.get(keyword)) for a in answers}


# -- C-FIND: levels, models, return keys --------------------------------------------------


def test_patient_root_patient_level_with_computed_counts(archive: Archive) -> None:
    answers, final = archive.find(
        _id("PATIENT", PatientID="11RG3", PatientName="", NumberOfPatientRelatedStudies="",
            NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances=""),
        PR_FIND,
    )
    assert final.Status == 0 and len(answers) == 1
    answer = answers[0]
    assert answer.PatientName == "CompressedSamples^RG3"
    assert answer.QueryRetrieveLevel == "PATIENT"
    assert answer.RetrieveAETitle == "MIMIC"
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert int(answer.NumberOfPatientRelatedInstances) >= 3


def test_study_root_study_level_keys(archive: Archive) -> None:
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    answers, final = archive.find(
        _id("STUDY", StudyInstanceUID=ct.StudyInstanceUID, PatientName="", PatientID="",
            StudyDate="", ModalitiesInStudy="", NumberOfStudyRelatedSeries="",
            NumberOfStudyRelatedInstances="", SOPClassesInStudy="", AccessionNumber="",
            InstitutionName="")
    )
    assert final.Status == 0 and len(answers) == 1
    a = answers[0]
    assert a.PatientID == ct.PatientID and a.StudyDate == ct.StudyDate
    assert a.ModalitiesInStudy == "CT"
    assert a.NumberOfStudyRelatedSeries == 1 and a.NumberOfStudyRelatedInstances == 1
    assert a.SOPClassesInStudy == ct.SOPClassUID
    assert a.InstitutionName == ct.InstitutionName  # from the stored header
    assert "AccessionNumber" in a  # requested: present, empty


def test_series_and_image_levels(archive: Archive) -> None:
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    series, _ = archive.find(
        _id("SERIES", StudyInstanceUID=ct.StudyInstanceUID, SeriesInstanceUID="", Modality="",
            NumberOfSeriesRelatedInstances="")
    )
    assert _uids(series, "SeriesInstanceUID") == {ct.SeriesInstanceUID}
    assert series[0].NumberOfSeriesRelatedInstances == 1
    images, _ = archive.find(
        _id("IMAGE", PatientID=ct.PatientID, StudyInstanceUID=ct.StudyInstanceUID,
            SeriesInstanceUID=ct.SeriesInstanceUID, SOPInstanceUID="", InstanceNumber=""),
        PR_FIND,
    )
    assert _uids(images, "SOPInstanceUID") == {ct.SOPInstanceUID}


# -- C-FIND: the matching rules -----------------------------------------------------------


def test_single_value_and_case(archive: Archive) -> None:
    assert len(archive.find(_id("STUDY", PatientID="11RG3"))[0]) == 1
    assert len(archive.find(_id("STUDY", PatientID="11rg3"))[0]) == 0  # LO: exact
    # PN is case-insensitive (declared in the conformance statement).
    answers, _ = archive.find(_id("STUDY", PatientName="compressedsamples^rg3", PatientID=""))
    assert _uids(answers, "PatientID") == {"11RG3"}


def test_list_of_uids(archive: Archive) -> None:
    wanted = sorted({f.path.name for f in storable_files()} & {"CT_small.dcm", "MR_small.dcm"})
    uids = [pydicom.dcmread(f.path, stop_before_pixels=True).StudyInstanceUID
            for f in storable_files() if f.path.name in wanted]
    answers, _ = archive.find(_id("STUDY", StudyInstanceUID=uids))
    assert _uids(answers, "StudyInstanceUID") == set(uids)


def test_wildcards_and_sql_specials(archive: Archive) -> None:
    answers, _ = archive.find(_id("STUDY", PatientName="Compressed*", PatientID=""))
    assert {"11RG3", "1CT1", "4MR1", "9RG1"} <= _uids(answers, "PatientID")
    answers, _ = archive.find(_id("STUDY", PatientID="?CT?"))
    assert _uids(answers, "PatientID") == {"1CT1"}
    # SQL LIKE specials in a key match literally.
    assert archive.find(_id("STUDY", PatientID="%"))[0] == []
    assert archive.find(_id("STUDY", PatientID="1_T1"))[0] == []


def test_date_ranges(archive: Archive) -> None:
    def dates(value: str) -> set[str]:
        return _uids(archive.find(_id("STUDY", StudyDate=value))[0], "StudyDate")

    closed = dates("20040101-20041231")
    assert closed == {"20040119", "20040826"}
    assert all(d >= "20170101" for d in dates("20170101-"))
    assert all(d and d <= "19971231" for d in dates("-19971231"))
    # An empty stored date never matches a range.
    assert "" not in dates("-99991231")
    assert dates("20040119") == {"20040119"}


def test_time_range(archive: Archive) -> None:
    answers, _ = archive.find(_id("STUDY", StudyDate="20040119", StudyTime="0700-0800"))
    assert len(answers) == 1
    assert archive.find(_id("STUDY", StudyDate="20040119", StudyTime="0800-"))[0] == []


def test_empty_value_matching(archive: Archive) -> None:
    answers, _ = archive.find(_id("STUDY", PatientID="11RG3", AccessionNumber='""'))
    assert answers == []  # RG3 has an accession number
    answers, _ = archive.find(_id("STUDY", PatientID="4MR1", AccessionNumber='""'))
    assert len(answers) == 1


def test_sequence_matching(archive: Archive) -> None:
    item = Dataset()
    item.CodeValue = "nonexistent-code"
    ds = _id("IMAGE", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4", SOPInstanceUID="")
    ds.AnatomicRegionSequence = [item]
    assert archive.find(ds)[0] == []


def test_a_sequence_key_is_answered_with_the_matching_items_only(archive: Archive) -> None:
    """CT_small's Other Patient IDs Sequence holds ABCD1234 and 1234ABCD, each with a Type of
    Patient ID: a key asking for 1234ABCD and its Issuer was answered with both items, every
    attribute of each (PS3.4 C.2.2.2.6: the matching items, only the requested attributes)."""
    item = Dataset()
    item.PatientID, item.IssuerOfPatientID = "1234ABCD", ""
    ds = _id("STUDY", StudyInstanceUID="1.3.6.1.4.1.5962.1.2.1.20040119072730.12322")
    ds.OtherPatientIDsSequence = [item]
    answers, final = archive.find(ds)
    assert final.Status == 0 and len(answers) == 1
    assert [{e.keyword: e.value for e in i} for i in answers[0].OtherPatientIDsSequence] == [
        {"PatientID": "1234ABCD", "IssuerOfPatientID": ""}]
    ds.OtherPatientIDsSequence = [Dataset()]  # an empty item: the whole sequence
    answers, _ = archive.find(ds)
    assert [i.PatientID for i in answers[0].OtherPatientIDsSequence] == ["ABCD1234", "1234ABCD"]
    assert all(i.TypeOfPatientID == "TEXT" for i in answers[0].OtherPatientIDsSequence)


@pytest.mark.parametrize(
    ("pattern", "patient_ids"),
    [
        ("山田*", {"H31EXAMPLE", "H32EXAMPLE"}),  # ISO 2022 Japanese
        ("Διον*", {"SCSGREEK"}),  # ISO 8859-7
        ("Buc^Jérôme", {"SCSFREN"}),  # Latin-1
        ("buc^jérôme", {"SCSFREN"}),
        ("Люк*", {"SCSRUSS"}),  # Cyrillic
        ("김희중", {"2008-3"}),  # Korean
        ("Wang^XiaoDong", {"X1EXAMPLE", "X2EXAMPLE"}),
    ],
)
def test_utf8_queries_find_names_stored_in_other_character_sets(
    archive: Archive, pattern: str, patient_ids: set[str]
) -> None:
    ds = _id("STUDY", PatientName=pattern, PatientID="")
    ds.SpecificCharacterSet = "ISO_IR 192"
    answers, final = archive.find(ds)
    assert final.Status == 0
    assert patient_ids <= _uids(answers, "PatientID")


@pytest.mark.parametrize(
    ("charset", "key", "patient_ids"),
    [
        ("\\ISO 2022 IR 87", "=山田^太郎", {"H31EXAMPLE", "H32EXAMPLE"}),
        ("\\ISO 2022 IR 87", "=山田*", {"H31EXAMPLE", "H32EXAMPLE"}),
        ("ISO_IR 192", "=山田^太郎", {"H31EXAMPLE", "H32EXAMPLE"}),
        ("ISO_IR 192", "==やまだ^たろう", {"H31EXAMPLE", "H32EXAMPLE"}),
        ("ISO_IR 192", "Yamada^Tarou=山田^太郎", {"H31EXAMPLE"}),  # H32's is in katakana
    ],
)
def test_person_name_keys_naming_component_groups(
    archive: Archive, charset: str, key: str, patient_ids: set[str]
) -> None:
    """A key naming the ideographic or phonetic group ('=' first), or several groups, found
    nothing: the '=' stayed in the compared text. Each group it names now matches the stored
    name's group in the same position, in whichever character set the key comes."""
    ds = _id("STUDY", PatientName=key, PatientID="")
    ds.SpecificCharacterSet = charset
    answers, final = archive.find(ds)
    assert final.Status == 0
    assert _uids(answers, "PatientID") == patient_ids


# -- C-FIND: refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "status"),
    [
        (_id("", PatientID="1CT1"), 0xA900),  # missing level
        (_id("WARD", PatientID="1CT1"), 0xA900),  # unknown level
        (_id("STUDY", StudyInstanceUID="1.2.*"), 0xC000),  # wildcard in a UID
        (_id("STUDY", StudyDate="2004-01-01-2005"), 0xC000),  # malformed range
        (_id("STUDY", StudyDate="20051231-20040101"), 0xC000),  # reversed range
        (_id("SERIES", Modality="CT"), 0xA900),  # hierarchical: StudyInstanceUID missing
        (_id("PATIENT", PatientID="1CT1"), 0xA900),  # no PATIENT level in Study Root
    ],
)
def test_bad_identifiers(archive: Archive, identifier: Dataset, status: int) -> None:
    if "QueryRetrieveLevel" in identifier and identifier.QueryRetrieveLevel == "":
        del identifier.QueryRetrieveLevel
    assoc = archive.associate([SR_FIND])
    results = list(assoc.send_c_find(identifier, SR_FIND))
    final = results[-1][0]
    assert final.Status == status, final
    assert final.ErrorComment
    # The association stays usable.
    ok = list(assoc.send_c_find(_id("STUDY", PatientID="1CT1"), SR_FIND))
    assert ok[-1][0].Status == 0 and len(ok) == 2
    assoc.release()


def test_relational_query_only_when_negotiated(archive: Archive) -> None:
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    ds = _id("SERIES", PatientID=ct.PatientID, SeriesInstanceUID="")
    answers, final = archive.find(ds, PR_FIND)
    assert final.Status == 0xA900 and "StudyInstanceUID" in final.ErrorComment
    answers, final = archive.find(ds, PR_FIND, relational=True)
    assert final.Status == 0 and _uids(answers, "SeriesInstanceUID") == {ct.SeriesInstanceUID}


def test_result_limit_is_a_clear_failure(archive: Archive) -> None:
    answers, final = archive.find(_id("IMAGE", StudyInstanceUID="", SOPInstanceUID=""),
                                  relational=True)
    assert len(answers) == 40
    assert final.Status == 0xA700 and "40" in final.ErrorComment


def test_cancel_stops_the_stream(tmp_path: Path) -> None:
    """C-CANCEL after the first match of a long answer ends the stream with Cancel.

    Its own server holds 300 instances, so the answer is still streaming when the cancel
    arrives (the shared fixture's result limit of 40 would end it first).
    """
    from tests.support import associate

    server = MimicProcess(tmp_path / "data").start()
    try:
        base = pydicom.dcmread(ct_small())
        files = []
        for n in range(300):
            base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = (
                f"1.2.826.0.1.3680043.8.498.400.{n}"
            )
            path = tmp_path / f"{n}.dcm"
            base.save_as(path, enforce_file_format=True)
            files.append(path)
        ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
        store = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT])
        assert all(store.send_c_store(p).Status == 0 for p in files)
        store.release()

        ae = AE(ae_title="MODALITY1")
        ae.add_requested_context(SR_FIND)
        assoc = ae.associate(HOST, server.port, ae_title="MIMIC", tls_args=(ctx, "localhost"))
        identifier = _id("IMAGE", StudyInstanceUID=base.StudyInstanceUID,
                         SeriesInstanceUID=base.SeriesInstanceUID, SOPInstanceUID="")
        outcomes = []
        # The SCP may legitimately finish before the C-CANCEL reaches it (PS3.4 C.4.1.2.3):
        # try a few times; every outcome must be consistent, and at least one a Cancel.
        for attempt in range(5):
            seen, final = 0, None
            for status, _ in assoc.send_c_find(identifier, SR_FIND, msg_id=9 + attempt):
                if status.Status == 0xFF00:
                    seen += 1
                    if seen == 1:
                        assoc.send_c_cancel(9 + attempt, query_model=SR_FIND)
                else:
                    final = status.Status
            outcomes.append((final, seen))
            assert (final == 0xFE00 and seen < 300) or (final == 0x0000 and seen == 300)
            if final == 0xFE00:
                break
        assert assoc.is_established
        assoc.release()
        assert any(final == 0xFE00 for final, _ in outcomes), outcomes
    finally:
        assert server.stop() == 0


def test_findscu_over_tls(archive: Archive) -> None:
    result = dcmtk(
        "findscu", "-v", "-S", *dcmtk_tls(archive.server), "-aet", "MODALITY1", "-aec", "MIMIC",
        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=1CT1", "-k", "PatientName",
        "-k", "StudyInstanceUID", "localhost", str(archive.server.port),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "CompressedSamples^CT1" in output
    assert "Received Final Find Response (Success)" in output


# -- C-MOVE and C-GET ---------------------------------------------------------------------


def _dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    start = data.index(b"DICM") + 4
    group_length = int.from_bytes(data[start + 8 : start + 12], "little")
    return data[start + 12 + group_length :]


def _original(sop_instance_uid: str) -> Storable:
    return next(f for f in storable_files() if f.sop_instance_uid == sop_instance_uid)


def _received_files(folder: Path) -> dict[str, Path]:
    found = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found[str(ds.SOPInstanceUID)] = path
    return found


def test_move_to_storescp_over_tls(archive: Archive) -> None:
    rg3 = [f for f in storable_files() if f.path.name.startswith("RG3_")]
    study = pydicom.dcmread(rg3[0].path, stop_before_pixels=True).StudyInstanceUID
    assoc = archive.associate([StudyRootQueryRetrieveInformationModelMove])
    responses = list(assoc.send_c_move(
        _id("STUDY", StudyInstanceUID=study), "STORESCP",
        StudyRootQueryRetrieveInformationModelMove,
    ))
    assoc.release()
    final = responses[-1][0]
    assert final.Status == 0x0000, final
    assert final.NumberOfCompletedSuboperations >= len(rg3)
    pending = [s for s, _ in responses[:-1]]
    assert pending and all("NumberOfRemainingSuboperations" in s for s in pending)
    assert wait_for(lambda: len(_received_files(archive.destination_dir)) >= len(rg3))
    received = _received_files(archive.destination_dir)
    for item in rg3:
        assert _dataset_bytes(received[item.sop_instance_uid]) == item.dataset_bytes()


def test_move_to_unknown_destination(archive: Archive) -> None:
    assoc = archive.associate([StudyRootQueryRetrieveInformationModelMove])
    responses = list(assoc.send_c_move(
        _id("STUDY", StudyInstanceUID="1.2.3"), "ELSEWHERE",
        StudyRootQueryRetrieveInformationModelMove,
    ))
    assoc.release()
    assert responses[-1][0].Status == 0xA801


def _get(
    archive: Archive, identifier: Dataset, model: str, wanted: list[Storable]
) -> tuple[list[Dataset], Dataset]:
    received: list[Dataset] = []

    def on_store(event):  # type: ignore[no-untyped-def]
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append((ds, event.request.DataSet.getvalue()))
        return 0x0000

    from pynetdicom import evt

    # One context per (SOP Class, transfer syntax) held, with the SCP role for C-GET.
    pairs = sorted({(f.sop_class_uid, f.transfer_syntax_uid) for f in storable_files()})
    pairs = [p for p in pairs if p[0] in {f.sop_class_uid for f in wanted}][:120]
    roles = [build_role(uid, scp_role=True) for uid in sorted({p[0] for p in pairs})]
    archive._handlers = [(evt.EVT_C_STORE, on_store)]
    try:
        assoc = archive.associate([model], roles=roles, storage=pairs)
        responses = list(assoc.send_c_get(identifier, model))
        assoc.release()
    finally:
        archive._handlers = []
    final, identifier = responses[-1]
    if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
        final.FailedSOPInstanceUIDList = identifier.FailedSOPInstanceUIDList
    return received, final  # type: ignore[return-value]


def test_get_patient_root_byte_identical(archive: Archive) -> None:
    mr2 = [f for f in storable_files() if f.path.name.startswith("MR2_")]
    received, final = _get(archive, _id("PATIENT", PatientID="5MR2"),
                           PatientRootQueryRetrieveInformationModelGet, mr2)
    assert final.Status == 0, final
    assert final.NumberOfCompletedSuboperations == len(mr2)
    by_uid = {str(ds.SOPInstanceUID): raw for ds, raw in received}  # type: ignore[misc]
    for item in mr2:
        assert by_uid[item.sop_instance_uid] == item.dataset_bytes()


def test_corrupted_object_fails_its_suboperation_only(archive: Archive) -> None:
    us1 = sorted((f for f in storable_files() if f.path.name.startswith("US1_")),
                 key=lambda f: f.path.name)
    victim = us1[0]
    path = archive.server.object_for(victim.sop_instance_uid)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    received, final = _get(archive, _id("PATIENT", PatientID="13US1"),
                           PatientRootQueryRetrieveInformationModelGet, us1)
    got = {str(ds.SOPInstanceUID) for ds, _ in received}  # type: ignore[misc]
    assert victim.sop_instance_uid not in got
    assert final.Status in (0xB000, 0xA702)
    assert final.NumberOfFailedSuboperations == 1
    assert victim.sop_instance_uid in list(final.get("FailedSOPInstanceUIDList", []) or []) or (
        final.FailedSOPInstanceUIDList == victim.sop_instance_uid
    )
    assert any("SHA-256" in e.get("message", "") for e in archive.server.log_entries())


def test_movescu_and_getscu_through_a_tls_tunnel(archive: Archive, tmp_path: Path) -> None:
    s = archive.server
    tunnel_port = free_port()
    tunnel = subprocess.Popen(
        ["socat", f"TCP-LISTEN:{tunnel_port},bind={HOST},reuseaddr,fork",
         f"OPENSSL:{HOST}:{s.port},cert={s.client_cert},key={s.client_key},"
         f"cafile={s.ca_cert},commonname=localhost"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
        get_dir = tmp_path / "get"
        get_dir.mkdir()
        got = dcmtk("getscu", "-v", "-S", "-aet", "MODALITY1", "-aec", "MIMIC", "-od",
                    str(get_dir), "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={ct.StudyInstanceUID}", HOST, str(tunnel_port))
        assert got.returncode == 0, got.stderr
        files = list(get_dir.iterdir())
        assert len(files) == 1
        # getscu re-encodes what it writes (no bit-preserving mode, unlike storescp +B):
        # compare the content; the bytes on the wire are checked by the tests above.
        got_ds = pydicom.dcmread(files[0])
        assert got_ds.PixelData == pydicom.dcmread(ct_small()).PixelData
        assert got_ds.SOPInstanceUID == ct.SOPInstanceUID

        moved = dcmtk("movescu", "-v", "-S", "-aet", "MODALITY1", "-aec", "MIMIC",
                      "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"StudyInstanceUID={ct.StudyInstanceUID}", HOST, str(tunnel_port))
        assert moved.returncode == 0, moved.stderr
        assert wait_for(lambda: ct.SOPInstanceUID in _received_files(archive.destination_dir))
    finally:
        tunnel.terminate()
        tunnel.wait(10)


def test_cancelled_move_stops_cleanly(archive: Archive) -> None:
    """Patient Root C-MOVE of 13 objects, C-CANCEL after the first: final status Cancel."""
    assoc = archive.associate([PatientRootQueryRetrieveInformationModelMove])
    statuses = []
    for status, _ in assoc.send_c_move(
        _id("PATIENT", PatientID="ID1"), "STORESCP",
        PatientRootQueryRetrieveInformationModelMove, msg_id=21,
    ):
        statuses.append(status)
        if status.Status == 0xFF00 and len(statuses) == 1:
            assoc.send_c_cancel(21, query_model=PatientRootQueryRetrieveInformationModelMove)
    final = statuses[-1]
    assert final.Status == 0xFE00, final
    assert final.NumberOfCompletedSuboperations < 13
    # The association is still usable after the cancel.
    assert assoc.is_established
    assoc.release()


def test_move_identifier_without_unique_key_is_refused(archive: Archive) -> None:
    assoc = archive.associate([StudyRootQueryRetrieveInformationModelMove])
    responses = list(assoc.send_c_move(
        _id("STUDY", PatientName="*"), "STORESCP", StudyRootQueryRetrieveInformationModelMove
    ))
    assoc.release()
    final = responses[-1][0]
    assert final.Status in (0xA900, 0xC000) and final.ErrorComment


def test_worklist_find_is_not_supported(archive: Archive) -> None:
    """Modality Worklist is not a service of the archive: 0x0122, not a crash."""
    worklist = "1.2.840.10008.5.1.4.31"
    assoc = archive.associate([worklist])
    ds = Dataset()
    ds.PatientName = "*"
    results = list(assoc.send_c_find(ds, worklist))
    assoc.release()
    assert results[-1][0].Status == 0x0122


def test_no_process_of_the_archive_imported_numpy(archive: Archive) -> None:
    """Every storable test file stored (compressed ones included), queried, moved and got
    byte-identical by the tests above, by processes that never imported numpy: pydicom's
    pixel handlers are numpy's only user, and the archive decodes no pixels
    (``mimic_server/archive_imports.py``)."""
    entries = archive.server.log_entries()
    listening = next(e for e in entries if e.get("message") == "listening")
    workers = [int(e["pid"]) for e in entries if e.get("message") == "worker started"]
    assert len(workers) == listening.get("workers", 0)  # one per CPU (none on one CPU)
    assert archive.server.proc is not None
    for pid in [archive.server.proc.pid, *workers]:
        assert not maps_numpy(pid), pid
