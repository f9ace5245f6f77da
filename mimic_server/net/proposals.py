"""Proposed presentation contexts remembered: each item decoded once, its context built once.

A requestor proposes the same presentation contexts on every association: dcmtk's
``storescu`` the same 128 items, byte for byte, each time a modality opens an association
for an image, a router for a study. pynetdicom decodes each item of the A-ASSOCIATE-RQ into
five objects (the item, its abstract syntax and its transfer syntax sub-items) and then
builds a ``PresentationContext`` from them, each UID through a validating setter: some
0.8 ms of an association's set-up for such a proposal, the same work every time.

Here the bytes of a Presentation Context (RQ) item are remembered with what its decode
made (the context ID and the sub-item objects) and, after its first conversion, with the
``PresentationContext`` it became. An item met again gets that context ID and the same
sub-items (in a list of its own; nothing writes to a received item's sub-items: pynetdicom
reads them to convert the item and to log it), and a copy of that context made as
``contexts.copy_plain`` makes one (a new object and list of transfer syntaxes sharing the
immutable UIDs), which negotiation then changes as it would the context it built itself.
The same bytes decode to the same values (the decoders are functions of the bytes), so the
memory changes nothing but the work; a warning pydicom or pynetdicom gives about a
non-conformant UID in an item is logged at the item's first decode in a process only.

Bounded: an item longer than :data:`LARGEST` bytes is not remembered (a conformant one
has at most a few dozen syntaxes of at most 64 characters; storescu's are about 110 bytes),
and once :data:`LIMIT` items or :data:`BYTES` bytes of them are remembered, all are
forgotten at once: a server meets a few proposals, and a peer sending ever new ones only
pays the decode, as before, and holds at most some megabytes here. Installed by
the fence (``patches.py``, ``proposal-memo``) in place of
``A_ASSOCIATE_RQ._wrap_generate_items`` (the loop that makes and decodes the request's
variable items: each item's own decode, ``association-items``' or pynetdicom's, stays as it
is) and around ``PresentationContextItemRQ.to_primitive``.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import is_
from typing import Any

from pynetdicom.pdu_items import PDU_ITEM_TYPES

from mimic_server.net.contexts import copy_plain, plain

#: The most items remembered before all are forgotten.
LIMIT = 4096
#: The most bytes of items remembered before all are forgotten (with the objects decoded
#: from them, some ten times as much memory).
BYTES = 1 << 20
#: The longest item remembered: 14 transfer syntaxes of 64 characters and more.
LARGEST = 1024
#: The item type of a Presentation Context item in an A-ASSOCIATE-RQ (PS3.8 9.3.2.2).
_PROPOSED_CONTEXT = 0x20
#: The attributes a decoded item has (``PresentationContextItemRQ.__init__``, verified by
#: the fence): nothing else to remember.
_ITEM_FIELDS = frozenset({"presentation_context_id", "abstract_transfer_syntax_sub_items"})

#: An item's bytes -> [its context ID, its sub-items (a tuple), the context it converted to
#: (a copy no one else holds) or None before its first conversion].
_decoded: dict[bytes, list[Any]] = {}
#: The bytes of the items in :data:`_decoded`.
_held_bytes = 0
#: id(the first sub-item of a remembered item) -> the same entry: how ``to_primitive`` knows
#: an item whose sub-items came from the memory (the entry keeps that object alive, so no
#: other living object has its id).
_by_first_item: dict[int, list[Any]] = {}

Method = Callable[..., Any]


def remembering_items(original: Method) -> Method:
    """``A_ASSOCIATE_RQ._wrap_generate_items``: pynetdicom's loop over the request's variable
    items (each a new item of its type, decoded from its bytes), where a Presentation
    Context (RQ) item decoded before gets the values it decoded to then."""

    def _wrap_generate_items(self: Any, bytestream: bytes) -> list[Any]:
        if type(bytestream) is not bytes:
            return original(self, bytestream)  # type: ignore[no-any-return]
        items = []
        for item_type, item_bytes in self._generate_items(bytestream):
            item = PDU_ITEM_TYPES[item_type]()
            if item_type == _PROPOSED_CONTEXT:
                entry = _decoded.get(item_bytes)
                if entry is not None:
                    item.presentation_context_id = entry[0]
                    item.abstract_transfer_syntax_sub_items = list(entry[1])
                else:
                    item.decode(item_bytes)
                    _remember(item, item_bytes)
            else:
                item.decode(item_bytes)
            items.append(item)
        return items

    return _wrap_generate_items


def _remember(item: Any, item_bytes: bytes) -> None:
    global _held_bytes
    sub_items = item.abstract_transfer_syntax_sub_items
    if len(item_bytes) > LARGEST or not sub_items or type(sub_items) is not list or (
        item.__dict__.keys() != _ITEM_FIELDS
    ):
        return
    if len(_decoded) >= LIMIT or _held_bytes + len(item_bytes) > BYTES:
        forget()
    entry = [item.presentation_context_id, tuple(sub_items), None]
    _decoded[item_bytes] = entry
    _by_first_item[id(sub_items[0])] = entry
    _held_bytes += len(item_bytes)


def remembering_converter(original: Method) -> Method:
    """``PresentationContextItemRQ.to_primitive`` that gives an item decoded from the memory
    a copy of the context such an item converted to before."""

    def to_primitive(self: Any) -> Any:
        sub_items = self.abstract_transfer_syntax_sub_items
        entry = _by_first_item.get(id(sub_items[0])) if sub_items else None
        if entry is None or entry[0] != self.presentation_context_id or len(sub_items) != len(
            entry[1]
        ) or not all(map(is_, sub_items, entry[1])):
            return original(self)
        converted = entry[2]
        if converted is not None:
            return copy_plain(converted)
        context = original(self)
        if plain(context.__dict__):
            entry[2] = copy_plain(context)
        return context

    return to_primitive


def forget() -> None:
    """Forget every item (when full, and for tests)."""
    global _held_bytes
    _decoded.clear()
    _by_first_item.clear()
    _held_bytes = 0


def remembered() -> int:
    """How many items are remembered (tests)."""
    return len(_decoded)
