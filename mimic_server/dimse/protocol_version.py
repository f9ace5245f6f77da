"""An A-ASSOCIATE-RQ whose Protocol Version the archive does not speak, refused at admission.

PS3.8 9.3.2: the Protocol Version field has one bit per version of the upper layer protocol
the requestor supports; version 1 is bit 0, and a receiver that implements only it "shall only
test that bit 0 is set". pynetdicom's state machine (AE-6) compares the field with 0x0001
instead and answers anything else itself, A-ASSOCIATE-RJ 1/2/2, before the association thread
sees the request: no ``EVT_REQUESTED``, so that rejection was neither logged nor audited,
against every other rejection, and a request also announcing a later version (0x0003) was
refused although version 1 is in it.

The fence (``mimic_server/patches.py``, ``protocol-version-refusal``) puts :func:`admitting`
in AE-6's place: it hands every request up as AE-6 does for an acceptable one, noting on the
association a version without bit 0; admission (``association.handle_requested``) then
rejects it with the same A-ASSOCIATE-RJ (1/2/2, PS3.8 Table 9-21: rejected-permanent,
service-provider ACSE, protocol-version-not-supported), logged and audited as every
rejection is. Once per association, never on the P-DATA path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_REFUSED = "_mimic_refused_protocol_version"
#: Version 1 of the DICOM upper layer protocol, the only one there is (PS3.8 9.3.2).
_VERSION_1 = 0x0001


def admitting(original: Callable[[Any], str]) -> Callable[[Any], str]:
    """AE-6 (Sta2 + Evt6), the received A-ASSOCIATE-RQ always issued as an A-ASSOCIATE
    indication; ``original`` (pynetdicom's) is what the fence verified this reproduces."""

    def AE_6(dul: Any) -> str:  # the state machine's name for the action
        dul.artim_timer.stop()
        request = dul._recv_pdu.get(False)
        primitive = request.to_primitive()
        if not request.protocol_version & _VERSION_1:
            setattr(dul.assoc, _REFUSED, request.protocol_version)
        dul.to_user_queue.put(primitive)
        return "Sta3"

    return AE_6


def refused_version(assoc: Any) -> int | None:
    """The Protocol Version of ``assoc``'s A-ASSOCIATE-RQ when it lacks version 1, else None."""
    return getattr(assoc, _REFUSED, None)
