"""PDU items and presentation contexts in comparable form: what two decodes are compared by."""

from __future__ import annotations

from typing import Any

from pydicom.uid import UID
from pynetdicom.pdu_items import PDUItem
from pynetdicom.presentation import PresentationContext


def state(value: Any) -> Any:
    """An item's or a context's attributes, its sub-items' too; a UID as its text, marked."""
    if isinstance(value, PDUItem | PresentationContext):
        return type(value).__name__, {k: state(v) for k, v in vars(value).items()}
    if isinstance(value, list):
        return [state(v) for v in value]
    if isinstance(value, UID):
        return "UID", str(value)
    return value
