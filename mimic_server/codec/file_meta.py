"""The Part 10 preamble and File Meta Information that MIMIC writes in front of a data set."""

from __future__ import annotations

import struct

#: MIMIC's Implementation Class UID (a UUID-derived OID, PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.166831424185209478937263318385113413712"
IMPLEMENTATION_VERSION_NAME = "MIMIC_010"


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae_title: str
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1).

    Written here rather than by pydicom's ``write_file_meta_info``: eight short elements
    in explicit VR little endian, byte for byte what pydicom writes
    (tests/unit/test_file_meta.py), at a fiftieth of the cost on every C-STORE.
    """
    elements = [
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
        _element(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
        _element(0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
        _element(0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
        _element(0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")),
    ]
    if source_ae_title:
        elements.append(_element(0x0016, b"AE", _padded(source_ae_title, b" ")))
    body = b"".join(elements)
    group_length = _element(0x0000, b"UL", struct.pack("<L", len(body)))
    return b"".join((_PREAMBLE, group_length, body))


_PREAMBLE = b"\x00" * 128 + b"DICM"


def _padded(value: str, pad: bytes) -> bytes:
    encoded = value.encode("ascii")
    return encoded + pad if len(encoded) % 2 else encoded


def _element(number: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":  # 32-bit length after two reserved bytes
        return struct.pack("<HH2sxxL", 0x0002, number, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, number, vr, len(value)) + value
