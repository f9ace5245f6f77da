"""The transfer syntaxes the archive accepts, and which one it takes of several proposed.

Accepted are the syntaxes the archive can keep *and give back*, the same for every front
door (``archive/syntaxes.py``, re-exported here); a context proposing none of them is
refused at presentation-context negotiation (``syntax_refusal.py``).

Preference: pynetdicom's unrestricted storage negotiation accepts the *requestor's* first
transfer syntax. Many requestors (pynetdicom's own SCU among them) list Implicit VR Little
Endian first, which for a C-GET means re-encoding every stored Explicit VR object (private
elements lose their VR). :func:`prefer_stored_encoding` therefore reorders each proposed
context before negotiation: Explicit VR Little Endian, the encoding of almost everything
stored, goes first when the requestor's first choice is a native (uncompressed) syntax; an
encapsulated first choice is kept (MIMIC never transcodes pixel data).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.uid import UID, ExplicitVRLittleEndian

from mimic_server.archive.syntaxes import ARCHIVE_TRANSFER_SYNTAXES, accepted

if TYPE_CHECKING:
    from pynetdicom.events import Event

__all__ = ["ARCHIVE_TRANSFER_SYNTAXES", "acceptable", "prefer_stored_encoding", "preferred"]

#: The accepted syntaxes that do not encapsulate pixel data: asked of the first acceptable
#: syntax of every proposed context (128 an association for storescu), so decided once here
#: rather than by a validated pydicom ``UID`` each time.
_NATIVE = frozenset(s for s in ARCHIVE_TRANSFER_SYNTAXES if not UID(s).is_encapsulated)


def acceptable(syntaxes: list[str]) -> list[str]:
    """The proposed syntaxes the archive accepts, in the requestor's order."""
    return [s for s in syntaxes if accepted(s)]


def preferred(syntaxes: list[str]) -> list[str]:
    """The acceptable syntaxes in the archive's order of preference (see module doc);
    an empty list when none is acceptable."""
    usable = acceptable(syntaxes)
    if usable and usable[0] in _NATIVE and ExplicitVRLittleEndian in usable:
        usable.remove(ExplicitVRLittleEndian)
        usable.insert(0, ExplicitVRLittleEndian)
    return usable


def prefer_stored_encoding(event: Event) -> None:
    """Handle ``evt.EVT_REQUESTED``: reorder the proposed transfer syntaxes, before
    pynetdicom negotiates (it does so right after this event, pynetdicom 3.0.4
    ``Association._run``); a context with none acceptable is left for the refusal."""
    for context in event.assoc.requestor.primitive.presentation_context_definition_list:
        syntaxes = preferred([str(s) for s in context.transfer_syntax])
        if syntaxes and syntaxes != context.transfer_syntax:
            context.transfer_syntax = syntaxes
