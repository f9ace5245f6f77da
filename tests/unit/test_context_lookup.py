"""The fence's remembered context lookups (``context-lookup``): once an association is
established, each question about its accepted presentation contexts gets pynetdicom's own
answer, found once; before that, and for a question without an answer, pynetdicom's
lookup runs every time."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from mimic_server.net.contexts import remembering_lookup

#: pynetdicom's own lookup, also where an earlier test's start installed the fence's.
PYNETDICOMS: Any = getattr(Association._get_valid_context, "_mimic_original",
                           Association._get_valid_context)
LOOKUP = remembering_lookup(PYNETDICOMS)


def _accepted(context_id: int, abstract: str, syntax: str, scu: bool, scp: bool
              ) -> PresentationContext:
    context = build_context(abstract, [syntax])
    context.context_id = context_id
    context.result = 0x00
    context._as_scu, context._as_scp = scu, scp
    return context


def _association(established: bool = True) -> Association:
    """An acceptor's association with the contexts a C-GET's peer gets accepted: storage
    as SCP of the storage sub-operations (our SCU role), in two transfer syntaxes."""
    assoc = Association(AE(), mode="acceptor")
    contexts = [
        _accepted(1, Verification, ImplicitVRLittleEndian, True, True),
        _accepted(3, CTImageStorage, ImplicitVRLittleEndian, True, False),
        _accepted(5, CTImageStorage, ExplicitVRLittleEndian, True, False),
        _accepted(7, MRImageStorage, JPEG2000Lossless, True, False),
    ]
    assoc._accepted_cx = {c.context_id: c for c in contexts}
    assoc.is_established = established
    return assoc


class _Counted:
    """pynetdicom's lookup, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, assoc: Any, *args: Any) -> Any:
        self.calls += 1
        return PYNETDICOMS(assoc, *args)


QUESTIONS: list[tuple[Any, ...]] = [
    (CTImageStorage, ExplicitVRLittleEndian, "scu", None, True),
    (CTImageStorage, ImplicitVRLittleEndian, "scu", None, True),
    (CTImageStorage, "1.2.840.10008.1.2.2", "scu", None, True),  # big endian: no match
    (CTImageStorage, ExplicitVRLittleEndian, "scp", None, True),
    (CTImageStorage, "", "scu", None, True),
    (MRImageStorage, JPEG2000Lossless, "scu", None, False),
    (MRImageStorage, ExplicitVRLittleEndian, "scu", None, True),  # compressed: no match
    (Verification, "", "scu", 1, True),
    (Verification, "", None, 9, True),  # an unknown ID: every accepted context searched
]


def _answer(lookup: Any, assoc: Association, question: tuple[Any, ...]) -> Any:
    try:
        return lookup(assoc, *question)
    except ValueError as exc:
        return ("ValueError", str(exc))


@pytest.mark.parametrize("question", QUESTIONS, ids=repr)
def test_each_answer_is_pynetdicoms(question: tuple[Any, ...]) -> None:
    ours, theirs = _association(), _association()
    first = _answer(LOOKUP, ours, question)
    again = _answer(LOOKUP, ours, question)
    expected = _answer(PYNETDICOMS, theirs, question)
    if isinstance(expected, PresentationContext):
        assert first is again is ours._accepted_cx[expected.context_id]
    else:
        assert first == again == expected


@pytest.mark.parametrize("accepted,expected", [
    ([ImplicitVRLittleEndian, ExplicitVRLittleEndian], ExplicitVRLittleEndian),
    ([ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian],
     DeflatedExplicitVRLittleEndian),
    ([ImplicitVRLittleEndian], ImplicitVRLittleEndian),
], ids=["explicit before pynetdicom's implicit", "its own first", "else pynetdicom's"])
def test_a_deflated_data_set_goes_as_stored_else_as_it_inflates(
    accepted: list[str], expected: str,
) -> None:
    """pynetdicom takes the first convertible context, in Implicit VR where a requestor
    proposed one context per syntax, Implicit first: the object was then inflated and
    re-encoded whole (512 MiB for one stored in 127 KiB, review). Its own Deflated context,
    else Explicit VR Little Endian (what it is once inflated, sent as it inflates)."""
    assoc = Association(AE(), mode="acceptor")
    contexts = [_accepted(1 + 2 * n, CTImageStorage, syntax, True, False)
                for n, syntax in enumerate(accepted)]
    assoc._accepted_cx = {c.context_id: c for c in contexts}
    assoc.is_established = True
    context = LOOKUP(assoc, CTImageStorage, DeflatedExplicitVRLittleEndian, "scu")
    assert context.transfer_syntax[0] == expected
    assert LOOKUP(assoc, CTImageStorage, DeflatedExplicitVRLittleEndian, "scu") is context


def test_an_established_associations_answer_is_found_once() -> None:
    counted = _Counted()
    lookup = remembering_lookup(counted)
    assoc = _association()
    answers = [lookup(assoc, CTImageStorage, ExplicitVRLittleEndian, "scu") for _ in range(5)]
    assert counted.calls == 1
    assert all(a is assoc._accepted_cx[5] for a in answers)
    lookup(assoc, CTImageStorage, ImplicitVRLittleEndian, "scu")  # another question
    assert counted.calls == 2
    assert lookup(_association(), CTImageStorage, ExplicitVRLittleEndian, "scu").context_id == 5
    assert counted.calls == 3  # another association: its own


def test_before_establishment_and_without_an_answer_pynetdicom_looks_each_time() -> None:
    counted = _Counted()
    lookup = remembering_lookup(counted)
    negotiating = _association(established=False)
    for _ in range(3):
        lookup(negotiating, CTImageStorage, ExplicitVRLittleEndian, "scu")
    assert counted.calls == 3
    established = _association()
    for _ in range(3):
        with pytest.raises(ValueError, match="No presentation context"):
            lookup(established, MRImageStorage, ExplicitVRLittleEndian, "scu", None, True)
    assert counted.calls == 6


def test_the_fence_installs_it_and_its_fallback_removes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mimic_server import patches
    from tests.patch_sites import change_signature

    assert "context-lookup" in patches.apply().applied
    installed = Association._get_valid_context
    assert getattr(installed, patches.PATCH_NAME) == "context-lookup"
    site = next(p for p in patches.PATCHES if p.name == "context-lookup").sites[0]
    change_signature(monkeypatch, site)  # a release whose lookup differs
    assert "context-lookup" in patches.apply().skipped
    assert not hasattr(Association._get_valid_context, patches.PATCH_NAME)
    monkeypatch.undo()
    assert "context-lookup" in patches.apply().applied
