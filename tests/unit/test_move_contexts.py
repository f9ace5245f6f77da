"""The presentation contexts a C-MOVE's sub-association proposes for the objects it sends:
a destination accepts one transfer syntax per context, and a sub-operation converts only
between the uncompressed little endian syntaxes, so every other syntax held is proposed in
a context of its own."""

from __future__ import annotations

from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
)

from mimic_server.dimse.move import _contexts
from mimic_server.query.finder import InstanceRef


def _ref(sop_class: str, syntax: str, n: int) -> InstanceRef:
    return InstanceRef(sop_class, f"1.2.3.{n}", syntax, f"key{n}", "00" * 32)


def _proposed(refs: list[InstanceRef]) -> list[tuple[str, list[str]]]:
    return [(str(c.abstract_syntax), [str(s) for s in c.transfer_syntax])
            for c in _contexts(refs)]


def test_big_endian_is_proposed_alone_beside_the_little_endian_syntaxes() -> None:
    refs = [_ref(CTImageStorage, ExplicitVRLittleEndian, 1),
            _ref(CTImageStorage, ExplicitVRBigEndian, 2),
            _ref(CTImageStorage, DeflatedExplicitVRLittleEndian, 3),
            _ref(CTImageStorage, JPEGBaseline8Bit, 4),
            _ref(MRImageStorage, ExplicitVRBigEndian, 5)]
    assert _proposed(refs) == [
        (CTImageStorage, [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                          ImplicitVRLittleEndian]),
        (CTImageStorage, [ExplicitVRBigEndian]),
        (CTImageStorage, [JPEGBaseline8Bit]),
        (MRImageStorage, [ExplicitVRBigEndian]),
    ]


def test_an_unknown_syntax_is_proposed_alone() -> None:
    refs = [_ref(CTImageStorage, "1.2.3.4.5.6.7", 1), _ref(CTImageStorage,
                                                          ImplicitVRLittleEndian, 2)]
    assert _proposed(refs) == [
        (CTImageStorage, ["1.2.3.4.5.6.7"]),
        (CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]),
    ]
