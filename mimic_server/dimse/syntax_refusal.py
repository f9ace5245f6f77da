"""Refuse, at negotiation, a presentation context with no transfer syntax the archive keeps.

pynetdicom's unrestricted storage service (``_config.UNRESTRICTED_STORAGE_SERVICE``, which
MIMIC needs for private and newer storage SOP classes) accepts every storage-like context
with the first proposed transfer syntax, whatever it is: a C-STORE in a private syntax was
answered Success and every later C-GET of it failed. No public hook can reject a single
context, so :func:`install` wraps the negotiation function: proposed transfer syntaxes
outside ``syntaxes.ARCHIVE_TRANSFER_SYNTAXES`` are dropped, and a context left with none gets
result 0x04 (transfer syntaxes not supported, PS3.8 Table 9-18).

Verified on pynetdicom 3.0.4: ``pynetdicom.acse.negotiate_unrestricted`` (imported from
``pynetdicom.presentation``) is called by ``ACSE._negotiate_as_acceptor`` as
``negotiate_unrestricted(rq_contexts, ac_contexts, roles)``.
"""

from __future__ import annotations

from typing import Any

import pynetdicom.acse
from pynetdicom.presentation import PresentationContext

from mimic_server.dimse.syntaxes import acceptable

VERIFIED_ON = "pynetdicom 3.0.4"
_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04


def install() -> None:
    """Wrap pynetdicom's unrestricted negotiation once per process."""
    original = pynetdicom.acse.negotiate_unrestricted
    if getattr(original, "_mimic_syntax_refusal", False):
        return

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
            context.transfer_syntax = syntaxes or proposed.transfer_syntax[:1]
            if syntaxes:
                usable.append(context)
            else:
                context.result = _TRANSFER_SYNTAXES_NOT_SUPPORTED
                refused.append(context)
        accepted, reply_roles = original(usable, ac_contexts, roles)
        return sorted(accepted + refused, key=lambda cx: cx.context_id), reply_roles

    negotiate._mimic_syntax_refusal = True  # type: ignore[attr-defined]
    pynetdicom.acse.negotiate_unrestricted = negotiate  # type: ignore[assignment]
