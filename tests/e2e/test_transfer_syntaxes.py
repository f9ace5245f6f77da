"""Transfer syntaxes through the network: every accepted one comes back byte for byte, a
syntax the archive could not send back is refused at negotiation, and a C-GET by a requestor
that lists Implicit VR first still receives the stored Explicit VR bytes."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from mimic_server.dimse.syntaxes import ARCHIVE_TRANSFER_SYNTAXES
from tests.data import DATA_ROOT, ct_small
from tests.support import HOST, MimicProcess, client_context

STUDY = "1.2.826.0.1.3680043.8.498.770"
SERIES = "1.2.826.0.1.3680043.8.498.771"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
PRIVATE_SYNTAX = "1.2.3.4.5.6"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MimicProcess]:
    process = MimicProcess(tmp_path_factory.mktemp("syntaxes") / "data").start()
    yield process
    assert process.stop() == 0


def _associate(server: MimicProcess, ae: AE) -> Association:
    _config.STORE_SEND_CHUNKED_DATASET = True  # the files' data set bytes, as they are
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ae.maximum_pdu_size = 131072
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    assoc = ae.associate(HOST, server.port, ae_title="MIMIC", tls_args=(ctx, "localhost"))
    assert assoc.is_established
    return assoc


def _object(directory: Path, syntax: str, n: int) -> Path:
    """A small object in ``syntax``: CT_small written natively, or an RLE file whose
    encapsulated pixel data is relabelled (the archive never decodes pixel data)."""
    uid = UID(syntax)
    source = ct_small() if not uid.is_encapsulated else Path(
        DATA_ROOT, "test_files", "MR_small_RLE.dcm"
    )
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = uid
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SYNTAX1", STUDY, SERIES
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{SERIES}.{n}"
    path = directory / f"{n}.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True, implicit_vr=uid.is_implicit_VR,
                     little_endian=uid.is_little_endian)
    return path


def _dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[144 + int.from_bytes(data[140:144], "little"):]


def _get(server: MimicProcess, ae: AE, identifier: Dataset) -> tuple[dict[str, bytes], Any]:
    received: dict[str, bytes] = {}

    def on_store(event: Any) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    roles = [build_role(uid, scp_role=True)
             for uid in sorted({str(cx.abstract_syntax) for cx in ae.requested_contexts})
             if uid != StudyRootQueryRetrieveInformationModelGet]
    assoc = ae.associate(HOST, server.port, ae_title="MIMIC", tls_args=(ctx, "localhost"),
                         ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    assoc.release()
    return received, responses[-1][0]


def _study(uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = uid
    return identifier


def test_every_accepted_syntax_is_stored_and_retrieved_unchanged(
    server: MimicProcess, tmp_path: Path
) -> None:
    paths = {syntax: _object(tmp_path, syntax, n)
             for n, syntax in enumerate(ARCHIVE_TRANSFER_SYNTAXES)}
    ae = AE(ae_title="MODALITY1")
    for syntax, path in paths.items():
        ae.add_requested_context(pydicom.dcmread(path).SOPClassUID, [syntax])
    assoc = _associate(server, ae)
    statuses = {syntax: assoc.send_c_store(path).Status for syntax, path in paths.items()}
    assoc.release()
    assert statuses == dict.fromkeys(paths, 0)

    ae = AE(ae_title="MODALITY1")
    for syntax, path in paths.items():
        ae.add_requested_context(pydicom.dcmread(path).SOPClassUID, [syntax])
    received, final = _get(server, ae, _study(STUDY))
    assert final.Status == 0, final
    assert final.NumberOfCompletedSuboperations == len(paths)
    for n, (syntax, path) in enumerate(paths.items()):
        assert received[f"{SERIES}.{n}"] == _dataset_bytes(path), syntax


def test_a_private_transfer_syntax_is_refused_at_negotiation(server: MimicProcess) -> None:
    before = server.instance_count()
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage, [PRIVATE_SYNTAX])
    ae.add_requested_context(CTImageStorage, [PRIVATE_SYNTAX, EXPLICIT])
    assoc = _associate(server, ae)
    rejected = {cx.context_id: cx.result for cx in assoc.rejected_contexts}
    accepted = {cx.context_id: str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    assoc.release()
    assert rejected == {1: 0x04}  # transfer syntaxes not supported
    assert accepted == {3: EXPLICIT}
    assert server.instance_count() == before


def test_a_private_syntax_store_cannot_happen(server: MimicProcess, tmp_path: Path) -> None:
    """The finding: such an object was answered Success, then every C-GET failed."""
    before = server.instance_count()
    ds = pydicom.dcmread(ct_small())
    ds.file_meta.TransferSyntaxUID = PRIVATE_SYNTAX  # encoded as explicit VR little endian
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{SERIES}.900"
    path = tmp_path / "private.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True)
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage, [PRIVATE_SYNTAX])
    ae.add_requested_context(Verification)  # pynetdicom aborts when nothing is accepted
    assoc = _associate(server, ae)
    with pytest.raises(ValueError, match="presentation context"):
        assoc.send_c_store(path)
    assoc.release()
    assert server.instance_count() == before


def test_get_with_default_contexts_sends_the_stored_explicit_bytes(
    server: MimicProcess, tmp_path: Path
) -> None:
    """pynetdicom's defaults propose Implicit VR first: the archive takes Explicit VR, so the
    stored bytes go out unchanged and private elements keep their VR."""
    study = "1.2.826.0.1.3680043.8.498.780"
    ds = pydicom.dcmread(ct_small())
    ds.StudyInstanceUID, ds.PatientID = study, "SYNTAX2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study}.1"
    path = tmp_path / "explicit.dcm"
    ds.save_as(path, enforce_file_format=True)
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage, [EXPLICIT])
    assoc = _associate(server, ae)
    assert assoc.send_c_store(path).Status == 0
    assoc.release()

    ae = AE(ae_title="MODALITY1")
    ae.requested_contexts = StoragePresentationContexts  # Implicit VR Little Endian first
    received, final = _get(server, ae, _study(study))
    assert final.Status == 0, final
    raw = received[f"{study}.1"]
    assert raw == _dataset_bytes(path)
    back = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw), force=True)
    assert back[0x00091001].VR == ds[0x00091001].VR != "UN"


def test_a_suboperation_that_cannot_be_sent_is_logged(
    server: MimicProcess, tmp_path: Path
) -> None:
    """An RLE object asked for over uncompressed contexts only: pynetdicom counts the
    sub-operation failed; the archive says so in its log (no patient data)."""
    rle = "1.2.840.10008.1.2.5"
    path = _object(tmp_path, rle, 950)
    ds = pydicom.dcmread(path)
    study = "1.2.826.0.1.3680043.8.498.790"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, f"{study}.1"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(ds.SOPClassUID, [rle])
    assoc = _associate(server, ae)
    assert assoc.send_c_store(path).Status == 0
    assoc.release()

    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(ds.SOPClassUID, [EXPLICIT])
    received, final = _get(server, ae, _study(study))
    assert final.Status == 0xA702 and not received
    entries = [e for e in server.log_entries() if "not sent" in e.get("message", "")]
    assert entries and entries[-1]["transfer_syntax"] == rle
    assert str(ds.PatientID) not in server.log()


@pytest.mark.parametrize(("stored", "asked"), [(BIG_ENDIAN, EXPLICIT), (EXPLICIT, BIG_ENDIAN)],
                         ids=["big endian to little", "little endian to big"])
def test_an_object_goes_to_no_context_of_the_other_byte_order(
    server: MimicProcess, tmp_path: Path, stored: str, asked: str
) -> None:
    """pynetdicom converts within one byte order only: an object stored in Big Endian goes
    only to a destination that took Big Endian (as stored), and a little endian one never
    to one that took Big Endian alone. Such a sub-operation is not sent (0xA702, logged),
    and nothing is converted whole."""
    path = _object(tmp_path, stored, 960)
    ds = pydicom.dcmread(path)
    study = f"1.2.826.0.1.3680043.8.498.79{1 if stored == BIG_ENDIAN else 2}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, f"{study}.1"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(ds.SOPClassUID, [stored])
    assoc = _associate(server, ae)
    assert assoc.send_c_store(path).Status == 0
    assoc.release()

    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(ds.SOPClassUID, [asked])
    logged = len(server.log_entries())
    received, final = _get(server, ae, _study(study))
    assert final.Status == 0xA702 and not received
    entries = server.log_entries()[logged:]
    assert [e["transfer_syntax"] for e in entries if "not sent" in e.get("message", "")] == [
        stored]
    assert not any("converted" in e.get("message", "") for e in entries)

    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(ds.SOPClassUID, [stored])
    received, final = _get(server, ae, _study(study))
    assert final.Status == 0 and received[str(ds.SOPInstanceUID)] == _dataset_bytes(path)


def _deflated_with_zeros(directory: Path) -> Path:
    """CT_small whose Pixel Data (OB) is about 2 MiB of zeros, deflated as a writer that
    flushes after the header does, with the length at which the inflater consumes the last
    input byte while the final bytes of zeros are still held back by its output cap
    (1 MiB a call: ``codec/structure.py``)."""
    explicit = _object(directory, EXPLICIT, 900)
    ds = pydicom.dcmread(explicit)
    for tag in [e.tag for e in ds if e.tag >= 0x7FE00010]:  # Pixel Data and what follows
        del ds[tag]  # (CT_small's Data Set Trailing Padding): it goes after the header
    pydicom.dcmwrite(explicit, ds, enforce_file_format=True)
    header = _dataset_bytes(explicit)
    stream = next(
        s for s in (_deflate(header, (2 << 20) - len(header) + extra)
                    for extra in range(0, 4096, 2))
        if len(s) % 2 == 0 and _output_outlasts_input(s)  # a pad byte would be input left
    )
    path = _object(directory, DEFLATED, 900)
    data = path.read_bytes()
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    path.write_bytes(data[:meta_end] + stream)
    return path


def _deflate(header: bytes, zeros: int) -> bytes:
    pixels = b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<L", zeros) + bytes(zeros)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return (compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
            + compressor.compress(pixels) + compressor.flush())


def _output_outlasts_input(stream: bytes) -> bool:
    inflater, pending = zlib.decompressobj(-zlib.MAX_WBITS), stream
    while pending:
        inflater.decompress(pending, 1 << 20)
        pending = inflater.unconsumed_tail
    return not inflater.eof


def test_a_deflated_object_that_inflates_far_is_stored_unchanged(
    server: MimicProcess, tmp_path: Path
) -> None:
    path = _deflated_with_zeros(tmp_path)
    sop_class = pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(sop_class, [DEFLATED])
    assoc = _associate(server, ae)
    status = assoc.send_c_store(path)
    assoc.release()
    assert status.Status == 0x0000, status

    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(sop_class, [DEFLATED])
    identifier = _study(STUDY)
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SeriesInstanceUID = SERIES
    identifier.SOPInstanceUID = f"{SERIES}.900"
    received, final = _get(server, ae, identifier)
    assert final.Status == 0, final
    assert received == {f"{SERIES}.900": _dataset_bytes(path)}
