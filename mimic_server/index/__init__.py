"""The SQL index of archived instances: SQLite (embedded) and PostgreSQL, one code path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mimic_server.index.attributes import InstanceAttributes

__all__ = ["Index", "InstanceAttributes", "StoredInstance"]


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """Where an instance's bytes are and what they must hash to."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    sha256: str
    size: int


class Index(Protocol):
    def upsert_instance(
        self,
        attrs: InstanceAttributes,
        *,
        transfer_syntax_uid: str,
        object_key: str,
        sha256: str,
        size: int,
        received_from: str,
    ) -> str | None:
        """Index one instance in one transaction; return the object key it replaced, if any."""
        ...

    def get_instance(self, sop_instance_uid: str) -> StoredInstance | None: ...

    def count_instances(self) -> int: ...

    def ping(self) -> None:
        """Raise ``OutOfResources`` if the database cannot be reached."""
        ...
