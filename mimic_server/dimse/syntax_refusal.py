"""Refuse, at negotiation, a presentation context with no transfer syntax the archive keeps.

pynetdicom's unrestricted storage service (``_config.UNRESTRICTED_STORAGE_SERVICE``, which
MIMIC needs for private and newer storage SOP classes) accepts every storage-like context
with the first proposed transfer syntax, whatever it is: a C-STORE in a private syntax was
answered Success and every later C-GET of it failed. No public hook can reject a single
context, so the fence (``mimic_server/patches.py``) wraps the negotiation function with
:func:`refusing_negotiation`: proposed transfer syntaxes
outside ``syntaxes.ARCHIVE_TRANSFER_SYNTAXES`` are dropped, and a context left with none gets
result 0x04 (transfer syntaxes not supported, PS3.8 Table 9-18). A context that admission
marked as not granted to the peer (``access.py``) gets result 0x01 (user-rejection) the same
way, without being offered to pynetdicom.

``pynetdicom.acse.negotiate_unrestricted`` (imported from ``pynetdicom.presentation``) is
called by ``ACSE._negotiate_as_acceptor`` as ``negotiate_unrestricted(rq_contexts,
ac_contexts, roles)``; the fence checks both before it wraps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext

from mimic_server.dimse.access import USER_REJECTION, refused_by_policy
from mimic_server.dimse.syntaxes import acceptable

_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04
#: The transfer syntax named in the A-ASSOCIATE-AC for a refused context that proposed none:
#: the item must hold one (pynetdicom's encoder takes the first), whose value PS3.8 9.3.3.2
#: makes not significant for a result other than acceptance.
_PLACEHOLDER = [ImplicitVRLittleEndian]


def refusing_negotiation(original: Callable[..., Any]) -> Callable[..., Any]:
    """pynetdicom's unrestricted negotiation, offered only the syntaxes the archive keeps."""

    def negotiate(
        rq_contexts: list[PresentationContext],
        ac_contexts: list[PresentationContext],
        roles: Any = None,
    ) -> Any:
        usable: list[PresentationContext] = []
        refused: list[PresentationContext] = []
        for proposed in rq_contexts:
            syntaxes = acceptable([str(s) for s in proposed.transfer_syntax])
            context = PresentationContext()
            context.context_id = proposed.context_id
            context.abstract_syntax = proposed.abstract_syntax
            # A context proposed without any transfer syntax (PS3.8 asks for one or more)
            # is refused like one with none the archive keeps: its A-ASSOCIATE-AC item
            # still needs one, or encoding the answer raised and the association, admitted
            # already, was aborted with an "unexpected error" logged at ERROR.
            context.transfer_syntax = syntaxes or proposed.transfer_syntax[:1] or _PLACEHOLDER
            if refused_by_policy(proposed):
                context.result = USER_REJECTION
                refused.append(context)
            elif syntaxes:
                usable.append(context)
            else:
                context.result = _TRANSFER_SYNTAXES_NOT_SUPPORTED
                refused.append(context)
        if roles:
            # A role item proposing neither role (PS3.7 D.3.3.4 allows SCU, SCP or both)
            # cannot be answered: pynetdicom's encoder of the reply item raises, which
            # aborted the admitted association. Left out, the default roles apply.
            roles = {uid: role for uid, role in roles.items() if any(role)}
        accepted, reply_roles = original(usable, ac_contexts, roles)
        return sorted(accepted + refused, key=lambda cx: cx.context_id), reply_roles

    return negotiate
