"""The transfer syntaxes the archive keeps, whichever front door an object comes through.

Accepted are the syntaxes the archive can keep *and give back*: it stores the bytes as
received, reads the header to index it (codec/header.py: native little or big endian,
implicit or explicit VR, deflated; every encapsulated syntax is explicit VR little endian),
and sends the stored bytes out again (over DIMSE through pynetdicom, which must know the
syntax: pydicom's ``AllTransferSyntaxes``). A syntax outside this set (a private one, or one
newer than pydicom 3.0) would be stored and then fail every retrieve, so it is refused: at
presentation-context negotiation for C-STORE (``dimse/syntax_refusal.py``), per part for
STOW-RS (Failure Reason ``0xC122``).
"""

from __future__ import annotations

from pydicom.uid import AllTransferSyntaxes

#: JPIP HTJ2K Referenced Deflate: a deflated data set that pydicom 3.0 does not flag as
#: deflated, so its header could not be read for the index.
_UNREADABLE = frozenset({"1.2.840.10008.1.2.4.205"})

#: Every transfer syntax an object may be stored in, in pydicom's order.
ARCHIVE_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(
    str(uid) for uid in AllTransferSyntaxes if uid not in _UNREADABLE
)
_ACCEPTED = frozenset(ARCHIVE_TRANSFER_SYNTAXES)


def accepted(transfer_syntax: str) -> bool:
    """Whether the archive keeps objects in ``transfer_syntax``."""
    return transfer_syntax in _ACCEPTED
