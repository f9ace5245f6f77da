"""The presentation context items of A-ASSOCIATE-RQ and -AC, decoded and encoded directly.

A requestor such as dcmtk's ``storescu`` proposes 128 presentation contexts, each an item
with an abstract syntax and three transfer syntax sub-items: 640 items to decode, and 256 to
encode in the A-ASSOCIATE-AC. pynetdicom decodes and encodes every item generically: a list of
field descriptions built anew for each item (``_decoders`` / ``_encoders``), one call per
field, the bytes concatenated field by field. That was 1.35 ms to decode such a request and
1.2 ms to build and encode its answer, some 20 % of the server's CPU for an association's
set-up (12 ms; a modality that opens an association per image pays it per object). The
replacements here do what those field lists say, for these four item kinds only: the same
attributes set through the same property setters (so the same UIDs, the same validation),
the same bytes
(``tests/unit/test_association_items.py`` compares both ways). Installed by the fence
(``patches.py``, ``association-items``), which checks first that each replaced method and
the field lists it stands for are the ones verified; any other item keeps pynetdicom's code.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pynetdicom.pdu_items import UNPACK_UCHAR

#: Item type, reserved, item length (PS3.8 9.3.2.2.1, 9.3.2.2.2).
_SUB_ITEM_HEADER = struct.Struct(">BBH")
#: Item type, reserved, item length, context ID, reserved, result/reason, reserved (PS3.8
#: Table 9-18).
_ACCEPTED_CONTEXT_HEADER = struct.Struct(">BBHBBBB")

Method = Callable[..., Any]


def syntax_name_decoder(attribute: str) -> Callable[[Method], Method]:
    """``decode`` of an abstract or transfer syntax sub-item, whose one field is the UID
    after the 4-byte header, one trailing NUL (padding) dropped, set through ``attribute``'s
    setter as pynetdicom's ``_decoders`` do."""

    def make(original: Method) -> Method:
        def decode(self: Any, bytestream: bytes) -> None:
            value = bytestream[4:]
            setattr(self, attribute, value[:-1] if value[-1:] == b"\x00" else value)

        return decode

    return make


def syntax_name_encoder(attribute: str) -> Callable[[Method], Method]:
    """``encode`` of an abstract or transfer syntax sub-item: the header, then the UID in
    ASCII (a missing or non-ASCII UID raises as pynetdicom's encoder does)."""

    def make(original: Method) -> Method:
        def encode(self: Any) -> bytes:
            name = getattr(self, attribute)
            header = _SUB_ITEM_HEADER.pack(self.item_type, 0x00, len(name) if name else 0)
            return header + name.encode("ascii", errors="strict")

        return encode

    return make


def proposed_context_decoder(original: Method) -> Method:
    """``decode`` of a Presentation Context (RQ) item: the context ID, then its sub-items
    (each decoded by its own class's ``decode``)."""

    def decode(self: Any, bytestream: bytes) -> None:
        self.presentation_context_id = UNPACK_UCHAR(bytestream[4:5])[0]
        self.abstract_transfer_syntax_sub_items = self._wrap_generate_items(bytestream[8:])

    return decode


def accepted_context_encoder(original: Method) -> Method:
    """``encode`` of a Presentation Context (AC) item: its fixed fields, then every transfer
    syntax sub-item it holds (its length counts the first, as pynetdicom's does)."""

    def encode(self: Any) -> bytes:
        header = _ACCEPTED_CONTEXT_HEADER.pack(
            self.item_type, 0x00, self.item_length, self.presentation_context_id, 0x00,
            self.result_reason, 0x00,
        )
        return header + b"".join([item.encode() for item in self.transfer_syntax_sub_item])

    return encode
