"""The presentation context items decoded and encoded by the fence (``association-items``)
are pynetdicom's: the same attributes from the same bytes, the same bytes (or the same
error) from the same items, whole A-ASSOCIATE-RQ and -AC PDUs included."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pynetdicom.pdu_items
import pytest
from pynetdicom import StoragePresentationContexts
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_items import (
    AbstractSyntaxSubItem,
    PDUItem,
    PresentationContextItemAC,
    PresentationContextItemRQ,
    TransferSyntaxSubItem,
)

from bench.association_pdus import storescu_like_request
from mimic_server import patches
from mimic_server.net import association_items
from tests.pdu_state import state as _state

EXPLICIT = "1.2.840.10008.1.2.1"
#: Every (class, method) the patch replaces.
REPLACED = (
    (AbstractSyntaxSubItem, "decode"), (AbstractSyntaxSubItem, "encode"),
    (TransferSyntaxSubItem, "decode"), (TransferSyntaxSubItem, "encode"),
    (PresentationContextItemRQ, "decode"), (PresentationContextItemAC, "encode"),
)

#: Where the memory of proposals is installed (``proposal-memo``), off during these tests.
REMEMBERING = ((A_ASSOCIATE_RQ, "_wrap_generate_items"),
               (PresentationContextItemRQ, "to_primitive"))


@pytest.fixture(autouse=True)
def pynetdicoms_items() -> Iterator[None]:
    """pynetdicom's own item code during the test (the reference), and whatever the fence
    had installed on these classes (and ``MIMIC_PATCHES_OFF``) put back after it."""
    saved = [(owner, name, vars(owner).get(name)) for owner, name in REPLACED + REMEMBERING]
    off = os.environ.get(patches.PATCHES_OFF)
    patches._association_items(enabled=False)
    patches._proposal_memo(enabled=False)  # each request decoded, never given from memory
    assert _installed() == set()
    yield
    for owner, name, entry in saved:
        if entry is not None:
            setattr(owner, name, entry)
        elif name in vars(owner):
            delattr(owner, name)
    if off is None:
        os.environ.pop(patches.PATCHES_OFF, None)
    else:
        os.environ[patches.PATCHES_OFF] = off


def _installed() -> set[tuple[str, str]]:
    """The (class, method) pairs on which the patch's replacement is installed."""
    return {(owner.__name__, name) for owner, name in REPLACED
            if getattr(getattr(owner, name), patches.PATCH_NAME, None)
            == patches.ASSOCIATION_ITEMS}


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a call returned, or the type of what it raised."""
    try:
        return "returned", call()
    except Exception as exc:
        return "raised", type(exc)


def _sub_item(item_type: int, name: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(name)) + name


def _proposed(context_id: int, abstract: bytes, *syntaxes: bytes) -> bytes:
    body = _sub_item(0x30, abstract) + b"".join(_sub_item(0x40, s) for s in syntaxes)
    return struct.pack(">BBHBBBB", 0x20, 0, 4 + len(body), context_id, 0, 0, 0) + body


def test_pynetdicoms_field_packers_are_the_formats_written_out() -> None:
    """The replacements pack with their own structs: the ones pynetdicom's field lists use."""
    assert pynetdicom.pdu_items.PACK_UCHAR.__self__.format in ("B", ">B")  # type: ignore[attr-defined]
    assert pynetdicom.pdu_items.PACK_UINT2.__self__.format == ">H"  # type: ignore[attr-defined]
    assert pynetdicom.pdu_items.UNPACK_UCHAR is association_items.UNPACK_UCHAR


SUB_ITEMS = [
    (AbstractSyntaxSubItem, "abstract_syntax_name", b"1.2.840.10008.5.1.4.1.1.2"),
    (AbstractSyntaxSubItem, "abstract_syntax_name", b"1.2.840.10008.5.1.4.1.1.2.1\x00"),
    (AbstractSyntaxSubItem, "abstract_syntax_name", b""),  # empty: kept as an empty UID
    (TransferSyntaxSubItem, "transfer_syntax_name", EXPLICIT.encode()),
    (TransferSyntaxSubItem, "transfer_syntax_name", b"1.2.840.10008.1.2.4.50\x00"),
    (TransferSyntaxSubItem, "transfer_syntax_name", b"1.2.3\x00\x00"),  # one NUL dropped
    (TransferSyntaxSubItem, "transfer_syntax_name", b""),  # empty: None
    (TransferSyntaxSubItem, "transfer_syntax_name", b"1.2.3.4.5.999"),  # private
    (TransferSyntaxSubItem, "transfer_syntax_name", "1.2.3.é".encode()),  # not ASCII
]


@pytest.mark.parametrize(("kind", "attribute", "name"), SUB_ITEMS)
def test_a_syntax_sub_item_decodes_and_encodes_as_pynetdicoms(
    kind: type[PDUItem], attribute: str, name: bytes
) -> None:
    data = _sub_item(0x30 if kind is AbstractSyntaxSubItem else 0x40, name)
    theirs, ours = kind(), kind()
    decoded = _outcome(lambda: PDUItem.decode(theirs, data))
    decode = association_items.syntax_name_decoder(attribute)(PDUItem.decode)
    assert _outcome(lambda: decode(ours, data)) == decoded
    assert _state(ours) == _state(theirs)
    encode = association_items.syntax_name_encoder(attribute)(PDUItem.encode)
    assert _outcome(lambda: encode(ours)) == _outcome(lambda: PDUItem.encode(theirs))


def test_one_trailing_nul_of_a_proposed_syntax_is_padding() -> None:
    item = TransferSyntaxSubItem()
    association_items.syntax_name_decoder("transfer_syntax_name")(PDUItem.decode)(
        item, _sub_item(0x40, b"1.2.840.10008.1.2.4.50\x00"))
    assert item.transfer_syntax_name == "1.2.840.10008.1.2.4.50"


@pytest.mark.parametrize("data", [
    _proposed(1, b"1.2.840.10008.5.1.4.1.1.2", EXPLICIT.encode(), b"1.2.840.10008.1.2"),
    _proposed(255, b"1.2.840.10008.5.1.4.1.1.7\x00", b"1.2.840.10008.1.2.4.50\x00"),
    _proposed(3, b"1.2.840.10008.1.1"),  # no transfer syntax at all
    _proposed(5, b"1.2.840.10008.1.1")[:5],  # cut short after the context ID
    _proposed(5, b"1.2.840.10008.1.1")[:4],  # cut short before it
])
def test_a_proposed_context_decodes_as_pynetdicoms(data: bytes) -> None:
    theirs, ours = PresentationContextItemRQ(), PresentationContextItemRQ()
    decoded = _outcome(lambda: PDUItem.decode(theirs, data))
    decode = association_items.proposed_context_decoder(PDUItem.decode)
    assert _outcome(lambda: decode(ours, data)) == decoded
    assert _state(ours) == _state(theirs)


def _syntax(uid: str) -> TransferSyntaxSubItem:
    item = TransferSyntaxSubItem()
    item.transfer_syntax_name = uid
    return item


@pytest.mark.parametrize(("context_id", "result", "syntaxes"), [
    (7, 0x00, [EXPLICIT]), (7, 0x01, [EXPLICIT]), (1, 0x04, ["1.2.3.4.5.999"]),
    (255, 0x03, ["1.2.840.10008.1.2"]),
    (7, 0x00, []),  # no sub-item: the fixed fields alone
    (7, 0x00, ["1.2.840.10008.1.2", EXPLICIT]),  # two: both written, the first counted
    (7, 256, [EXPLICIT]), (7, -1, [EXPLICIT]), (7, None, [EXPLICIT]),  # refused alike
    (None, 0x00, [EXPLICIT]), (256, 0x00, [EXPLICIT]),
])
def test_an_accepted_or_refused_context_encodes_as_pynetdicoms(
    context_id: int | None, result: int | None, syntaxes: list[str]
) -> None:
    item = PresentationContextItemAC()
    item.presentation_context_id = context_id
    item.result_reason = result
    item.transfer_syntax_sub_item = [_syntax(uid) for uid in syntaxes]
    encode = association_items.accepted_context_encoder(PDUItem.encode)
    assert _outcome(lambda: encode(item)) == _outcome(lambda: PDUItem.encode(item))


def test_whole_association_pdus_are_pynetdicoms(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fence on and off: the same request decoded to the same items and primitive, and
    the same answer encoded to the same bytes."""
    seen = {}
    for on in (False, True):  # each decode the items' own, none given from memory
        if on:
            monkeypatch.setenv(patches.PATCHES_OFF, patches.PROPOSAL_MEMO)
        else:
            monkeypatch.setenv(patches.PATCHES_OFF,
                               f"{patches.ASSOCIATION_ITEMS},{patches.PROPOSAL_MEMO}")
        fence = patches.apply()
        assert (patches.ASSOCIATION_ITEMS in fence.applied) is on
        assert patches.PROPOSAL_MEMO in fence.skipped
        assert _installed() == ({(o.__name__, n) for o, n in REPLACED} if on else set())
        raw, answer = storescu_like_request()
        request = A_ASSOCIATE_RQ()
        request.decode(raw)
        seen[on] = (raw, _state(request.variable_items), request.encode(),
                    A_ASSOCIATE_AC(answer).encode())
        assert len(request.to_primitive().presentation_context_definition_list) == len(
            StoragePresentationContexts)
    assert seen[True] == seen[False]
    assert seen[True][2] == seen[True][0]  # and the request re-encodes to its own bytes


def test_the_fallback_leaves_the_inherited_methods_inherited() -> None:
    patches.apply()
    assert _installed() == {(o.__name__, n) for o, n in REPLACED}
    patches._association_items(enabled=False)
    for owner, name in REPLACED:
        assert getattr(owner, name) is getattr(PDUItem, name)
    assert "decode" not in vars(TransferSyntaxSubItem)
    assert "encode" not in vars(PresentationContextItemAC)
