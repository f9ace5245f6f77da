"""Which of several proposed transfer syntaxes the archive takes (``dimse/syntaxes.py``)."""

from __future__ import annotations

from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)

from mimic_server.dimse.syntaxes import preferred


def test_explicit_vr_goes_first_when_the_first_choice_is_native() -> None:
    assert preferred([ImplicitVRLittleEndian, JPEGBaseline8Bit, ExplicitVRLittleEndian]) == [
        ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit]
    # The answer is the same on every association (the syntax's kind is looked up once).
    for _ in range(3):
        assert preferred([str(ImplicitVRLittleEndian), str(ExplicitVRLittleEndian)])[0] == (
            ExplicitVRLittleEndian)


def test_an_encapsulated_first_choice_is_kept() -> None:
    proposed = [JPEG2000Lossless, ExplicitVRLittleEndian]
    assert preferred(proposed) == proposed
    assert preferred([str(s) for s in proposed]) == proposed


def test_unacceptable_syntaxes_are_dropped() -> None:
    assert preferred([UID("1.2.3.4.5.6"), ImplicitVRLittleEndian]) == [ImplicitVRLittleEndian]
    assert preferred([UID("1.2.3.4.5.6")]) == []
