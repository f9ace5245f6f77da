"""Verification Service Class SCP (C-ECHO), DICOM PS3.4 Annex A."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mimic_server.dimse.session import session_of
from mimic_server.errors import Status
from mimic_server.security.policy import Policy, Service

if TYPE_CHECKING:
    from pynetdicom.events import Event


def handle_echo(event: Event, policy: Policy) -> int:
    """Handle ``evt.EVT_C_ECHO``.

    Returns
    -------
    int
        ``0x0000`` Success, or ``0x0124`` Refused: Not Authorized.
    """
    session = session_of(event.assoc)
    if session is None or not policy.may(session, Service.ECHO):
        return Status.NOT_AUTHORIZED
    return Status.SUCCESS
