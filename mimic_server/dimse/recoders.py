"""The conversions between uncompressed little endian transfer syntaxes that a C-GET / C-MOVE
sub-operation makes as it sends, without pydicom: each takes the stored data set's bytes in
pieces and gives the destination's encoding in pieces of a given size, holding a few pieces,
whatever the object's size.

pynetdicom converts within one byte order, between Implicit VR, Explicit VR and Deflated
Explicit VR Little Endian (never between byte orders, nor to or from a compressed syntax):
it parsed the whole object and encoded it again, some three times its size in memory, and
for a data set nested a few hundred levels deep past Python's recursion limit. Every such
conversion has one here, so pydicom converts nothing the fence's senders send
(``raw_send.stored_bytes_encoder`` for objects held whole, ``stream_send`` for the others).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from mimic_server.archive.inflated import deflated_pieces, inflated_pieces
from mimic_server.codec.explicit_stream import explicit_pieces
from mimic_server.codec.implicit_stream import implicit_pieces

#: A conversion: (the stored data set's pieces, the size of the pieces given) -> pieces.
Recoder = Callable[[Iterator[Any], int], Iterator[bytes]]

#: (implicit VR, little endian, deflated) of the three syntaxes.
IMPLICIT, EXPLICIT, DEFLATED = (True, True, False), (False, True, False), (False, True, True)


def _implicit_deflated(pieces: Iterator[Any], size: int) -> Iterator[bytes]:
    return deflated_pieces(explicit_pieces(pieces, size), size)


def _deflated_implicit(pieces: Iterator[Any], size: int) -> Iterator[bytes]:
    return implicit_pieces(inflated_pieces(pieces, size), size)


#: (stored transfer syntax, the encoding the destination took) -> its conversion. Only the
#: stored syntax tells an Explicit VR Little Endian data set from an encapsulated one, which
#: is never converted.
RECODERS: dict[tuple[str, tuple[bool, bool, bool]], Recoder] = {
    (ExplicitVRLittleEndian, IMPLICIT): implicit_pieces,
    (ExplicitVRLittleEndian, DEFLATED): deflated_pieces,
    (ImplicitVRLittleEndian, EXPLICIT): explicit_pieces,
    (ImplicitVRLittleEndian, DEFLATED): _implicit_deflated,
    (DeflatedExplicitVRLittleEndian, EXPLICIT): inflated_pieces,
    (DeflatedExplicitVRLittleEndian, IMPLICIT): _deflated_implicit,
}


def recoder(stored_syntax: str, wanted: tuple[bool, bool, bool]) -> Recoder | None:
    """The conversion of a data set stored in ``stored_syntax`` to the ``wanted``
    (implicit VR, little endian, deflated) encoding; None where there is none here."""
    return RECODERS.get((str(stored_syntax), wanted))
