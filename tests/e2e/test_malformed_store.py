"""Damaged data sets sent by pynetdicom as raw bytes: refused with 0xC000, nothing stored.

Every damage sits after Pixel Data, where the header parse (which stops at Pixel Data) does
not look: only the structural walk of the whole data set can see it.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from mimic_server.codec.file_meta import encode_file_meta
from tests.data import Storable, ct_copy
from tests.malformed import DAMAGES, damaged, part10
from tests.support import MimicProcess, associate, client_context


def _copy(tmp_path: Path, uid: str) -> Storable:
    path = ct_copy(tmp_path, uid)
    with open(path, "rb") as fh:
        fh.seek(132)
        pydicom.filereader._read_file_meta_info(fh)
        offset = fh.tell()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Storable(path, ds.SOPClassUID, uid, str(ds.file_meta.TransferSyntaxUID), offset)


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_data_set_is_refused_and_not_stored(
    server: MimicProcess, tmp_path: Path, damage: str
) -> None:
    uid = f"1.2.826.0.1.3680043.8.498.77.{DAMAGES.index(damage) + 1}"
    item = _copy(tmp_path, uid)
    path = part10(item, damaged(item.dataset_bytes())[damage], tmp_path, "damaged")
    before, objects_before = server.instance_count(), len(server.stored_objects())

    assoc = associate(
        server.port, client_context(server.client_cert, server.client_key, server.ca_cert),
        contexts=[item.sop_class_uid], transfer_syntaxes=[item.transfer_syntax_uid],
    )
    assert assoc.is_established
    answer = assoc.send_c_store(path)
    refused_state = server.instance_count(), len(server.stored_objects())
    spare_only = not server.incoming_leftovers()
    # The association is still usable: the undamaged object is stored.
    whole = assoc.send_c_store(item.path)
    assoc.release()

    assert answer.Status == 0xC000, hex(answer.Status)
    assert str(answer.ErrorComment).startswith("malformed"), answer.ErrorComment
    assert refused_state == (before, objects_before)
    assert spare_only
    assert whole.Status == 0x0000
    assert server.instance_count() == before + 1


def test_explicit_vr_bytes_on_an_implicit_vr_context_are_refused(
    server: MimicProcess, tmp_path: Path
) -> None:
    """PS3.5 A.1. Stored under a File Meta declaring Implicit VR Little Endian, an Explicit
    VR data set was unreadable to dcmtk, and C-GET / C-MOVE handed it on so."""
    uid = "1.2.826.0.1.3680043.8.498.77.100"
    item = _copy(tmp_path, uid)  # Explicit VR Little Endian
    path = tmp_path / "mislabelled.dcm"
    path.write_bytes(encode_file_meta(item.sop_class_uid, uid, ImplicitVRLittleEndian, "")
                     + item.dataset_bytes())
    before, objects_before = server.instance_count(), len(server.stored_objects())

    assoc = associate(
        server.port, client_context(server.client_cert, server.client_key, server.ca_cert),
        contexts=[item.sop_class_uid], transfer_syntaxes=[ImplicitVRLittleEndian],
    )
    assert assoc.is_established
    answer = assoc.send_c_store(path)
    assoc.release()

    assert answer.Status == 0xC000, hex(answer.Status)
    assert answer.ErrorComment == "explicit VR data set on an Implicit VR transfer syntax"
    assert (server.instance_count(), len(server.stored_objects())) == (before, objects_before)
    assert not server.incoming_leftovers()
