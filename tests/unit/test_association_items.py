"""The presentation context items decoded and encoded by the fence (``association-items``)
are pynetdicom's: the same attributes from the same bytes, the same bytes from the same
items, whole A-ASSOCIATE-RQ and -AC PDUs included."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pydicom.uid import UID
from pynetdicom import StoragePresentationContexts, build_context
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

EXPLICIT = "1.2.840.10008.1.2.1"


def _state(value: Any) -> Any:
    """An item's attributes, its sub-items' too, in comparable form."""
    if isinstance(value, PDUItem):
        return type(value).__name__, {k: _state(v) for k, v in vars(value).items()}
    if isinstance(value, list):
        return [_state(v) for v in value]
    if isinstance(value, UID):
        return "UID", str(value)
    return value


def _sub_item(item_type: int, name: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(name)) + name


def _proposed(context_id: int, abstract: bytes, *syntaxes: bytes) -> bytes:
    body = _sub_item(0x30, abstract) + b"".join(_sub_item(0x40, s) for s in syntaxes)
    return struct.pack(">BBHBBBB", 0x20, 0, 4 + len(body), context_id, 0, 0, 0) + body


SUB_ITEMS = [
    (AbstractSyntaxSubItem, "abstract_syntax_name", b"1.2.840.10008.5.1.4.1.1.2"),
    (AbstractSyntaxSubItem, "abstract_syntax_name", b"1.2.840.10008.5.1.4.1.1.2.1\x00"),
    (TransferSyntaxSubItem, "transfer_syntax_name", EXPLICIT.encode()),
    (TransferSyntaxSubItem, "transfer_syntax_name", b"1.2.840.10008.1.2.4.50\x00"),
    (TransferSyntaxSubItem, "transfer_syntax_name", b""),  # an empty one: None
    (TransferSyntaxSubItem, "transfer_syntax_name", b"1.2.3.4.5.999"),  # private
]


@pytest.mark.parametrize(("kind", "attribute", "name"), SUB_ITEMS)
def test_a_syntax_sub_item_decodes_and_encodes_as_pynetdicoms(
    kind: type[PDUItem], attribute: str, name: bytes
) -> None:
    data = _sub_item(0x30 if kind is AbstractSyntaxSubItem else 0x40, name)
    theirs, ours = kind(), kind()
    PDUItem.decode(theirs, data)
    association_items.syntax_name_decoder(attribute)(PDUItem.decode)(ours, data)
    assert _state(ours) == _state(theirs)
    encode = association_items.syntax_name_encoder(attribute)(PDUItem.encode)
    if getattr(theirs, attribute) is None:  # nothing to encode: both refuse alike
        with pytest.raises(AttributeError):
            PDUItem.encode(theirs)
        with pytest.raises(AttributeError):
            encode(ours)
        return
    item_type = data[0]
    assert encode(ours) == PDUItem.encode(theirs) == _sub_item(item_type, name.rstrip(b"\x00"))


@pytest.mark.parametrize("data", [
    _proposed(1, b"1.2.840.10008.5.1.4.1.1.2", EXPLICIT.encode(), b"1.2.840.10008.1.2"),
    _proposed(255, b"1.2.840.10008.5.1.4.1.1.7\x00", b"1.2.840.10008.1.2.4.50\x00"),
    _proposed(3, b"1.2.840.10008.1.1"),  # no transfer syntax at all
])
def test_a_proposed_context_decodes_as_pynetdicoms(data: bytes) -> None:
    theirs, ours = PresentationContextItemRQ(), PresentationContextItemRQ()
    PDUItem.decode(theirs, data)
    association_items.proposed_context_decoder(PDUItem.decode)(ours, data)
    assert _state(ours) == _state(theirs)
    assert ours.to_primitive().__dict__ == theirs.to_primitive().__dict__


@pytest.mark.parametrize(("result", "syntax"), [
    (0x00, EXPLICIT), (0x01, EXPLICIT), (0x04, "1.2.3.4.5.999"), (0x03, "1.2.840.10008.1.2"),
])
def test_an_accepted_or_refused_context_encodes_as_pynetdicoms(result: int, syntax: str) -> None:
    context = build_context("1.2.840.10008.5.1.4.1.1.2", [syntax])
    context.context_id = 7
    context.result = result
    item = PresentationContextItemAC()
    item.from_primitive(context)
    encode = association_items.accepted_context_encoder(PDUItem.encode)
    assert encode(item) == PDUItem.encode(item)
    item.transfer_syntax_sub_item = []  # none at all: the fixed fields alone
    assert encode(item) == PDUItem.encode(item)
    item.result_reason = None  # unset: both refuse
    with pytest.raises(struct.error):
        PDUItem.encode(item)
    with pytest.raises(struct.error):
        encode(item)


def _fence(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    """Start the fence with this patch applied or left off (its fallback undoes it)."""
    if on:
        monkeypatch.delenv(patches.PATCHES_OFF, raising=False)
    else:
        monkeypatch.setenv(patches.PATCHES_OFF, patches.ASSOCIATION_ITEMS)
    assert (patches.ASSOCIATION_ITEMS in patches.apply().applied) is on


def test_whole_association_pdus_are_pynetdicoms(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fence on and off: the same request decoded to the same items and primitive, and
    the same answer encoded to the same bytes."""
    seen = {}
    try:
        for on in (False, True):
            _fence(monkeypatch, on)
            assert (getattr(TransferSyntaxSubItem.decode, patches.PATCH_NAME, None)
                    == (patches.ASSOCIATION_ITEMS if on else None))
            raw, answer = storescu_like_request()
            request = A_ASSOCIATE_RQ()
            request.decode(raw)
            seen[on] = (raw, _state(request.variable_items), request.encode(),
                        A_ASSOCIATE_AC(answer).encode())
            assert len(request.to_primitive().presentation_context_definition_list) == len(
                StoragePresentationContexts)
    finally:
        monkeypatch.delenv(patches.PATCHES_OFF, raising=False)
        patches.apply()
    assert seen[True] == seen[False]
    assert seen[True][2] == seen[True][0]  # and the request re-encodes to its own bytes
