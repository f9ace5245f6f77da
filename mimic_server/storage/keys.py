"""Object keys: a short hash prefix to spread load, the UIDs to be readable, a version.

``ab/<Study UID>/<Series UID>/<SOP Instance UID>.<version>.dcm`` where ``ab`` is the first
two hex digits of SHA-256(Study Instance UID) and ``version`` is random. A re-sent instance
gets a new version, so its new bytes never overwrite the ones the index still points at.
UIDs are validated before they reach this module, so keys hold only digits, dots and '/'.
"""

from __future__ import annotations

import hashlib
import re
import uuid

#: The shape of every key :func:`new_object_key` makes (the hash prefix is not recomputed:
#: the shape alone tells the archive's objects from what others put beside them).
_UID = r"[0-9]{1,64}(?:\.[0-9]{1,64})*"
_OBJECT_KEY = re.compile(rf"[0-9a-f]{{2}}/{_UID}/{_UID}/{_UID}\.[0-9a-f]{{16}}\.dcm")


def new_object_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    prefix = hashlib.sha256(study_uid.encode("ascii")).hexdigest()[:2]
    version = uuid.uuid4().hex[:16]
    return f"{prefix}/{study_uid}/{series_uid}/{sop_instance_uid}.{version}.dcm"


def is_object_key(key: str) -> bool:
    """Whether ``key`` has the shape of an object the archive put: reconcile deletes only
    such orphans, never a file or blob someone else left in the store (``README.txt``, a
    backup an operator parked in the container)."""
    return _OBJECT_KEY.fullmatch(key) is not None


def series_of_key(key: str) -> tuple[str, str] | None:
    """The Study and Series Instance UIDs an object key names (None for another shape)."""
    parts = key.split("/")
    return (parts[1], parts[2]) if len(parts) == 4 else None


def study_of_key(key: str) -> str | None:
    """The Study Instance UID an object key names (None for a key of another shape)."""
    named = series_of_key(key)
    return named[0] if named is not None else None
