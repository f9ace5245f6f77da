"""Object keys: a short hash prefix to spread load, the UIDs to be readable, a version.

``ab/<Study UID>/<Series UID>/<SOP Instance UID>.<version>.dcm`` where ``ab`` is the first
two hex digits of SHA-256(Study Instance UID) and ``version`` is random. A re-sent instance
gets a new version, so its new bytes never overwrite the ones the index still points at.
UIDs are validated before they reach this module, so keys hold only digits, dots and '/'.
"""

from __future__ import annotations

import hashlib
import uuid


def new_object_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    prefix = hashlib.sha256(study_uid.encode("ascii")).hexdigest()[:2]
    version = uuid.uuid4().hex[:16]
    return f"{prefix}/{study_uid}/{series_uid}/{sop_instance_uid}.{version}.dcm"


def series_of_key(key: str) -> tuple[str, str] | None:
    """The Study and Series Instance UIDs an object key names (None for another shape)."""
    parts = key.split("/")
    return (parts[1], parts[2]) if len(parts) == 4 else None


def study_of_key(key: str) -> str | None:
    """The Study Instance UID an object key names (None for a key of another shape)."""
    named = series_of_key(key)
    return named[0] if named is not None else None
