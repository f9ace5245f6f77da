"""The SQL index of archived instances: SQLite (embedded) and PostgreSQL, one code path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # not at run time: the index's schema and engine must not import pydicom
    from mimic_server.index.attributes import InstanceAttributes

__all__ = ["Index", "StoredInstance"]


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
        in_transaction: Callable[[Any], None] | None = None,
        before_new_rows: Callable[[], None] | None = None,
    ) -> str | None:
        """Index one instance in one transaction; return the object key it replaced, if any.

        Returns (or raises) only once that transaction has committed (or failed); it may be
        shared with concurrent callers (group commit), whose failures are not this caller's.
        ``in_transaction(connection)`` writes more in the same transaction (the C-STORE's
        audit row, in the PostgreSQL configuration): it commits with the instance or not at
        all, and a retried or rewritten transaction runs it again on its connection.
        ``before_new_rows()`` runs before a new patient, study or series row is inserted
        (the wait for a put that overlaps the transaction): others wait on such a row.
        Raises ``HierarchyConflict`` (nothing written) where the instance's study is filed
        under another Patient ID or its series under another study."""
        ...

    def get_instance(self, sop_instance_uid: str) -> StoredInstance | None: ...

    def count_instances(self) -> int: ...

    def ping(self) -> None:
        """Raise ``OutOfResources`` if the database cannot be reached."""
        ...
