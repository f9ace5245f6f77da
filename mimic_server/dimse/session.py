"""What we know about one association while it lasts: its peer, its user, what it may do
and what it did."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mimic_server.security.grants import Grants, Service
from mimic_server.security.identity import Identity
from mimic_server.security.user_identity import AssociationUser

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from mimic_server.security.audit_journal import Journal

_ATTRIBUTE = "_mimic_session"


@dataclass
class Session:
    identity: Identity
    calling_ae_title: str
    peer_address: str
    called_ae_title: str = ""
    #: The verified user (User Identity Negotiation), None when the requestor sent none.
    user: AssociationUser | None = None
    #: The identity's rule and the services it grants this association, fixed at admission
    #: (a policy reload applies to new associations).
    grants: Grants | None = None
    services: frozenset[Service] | None = None
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    failed: int = 0
    bytes_stored: int = 0
    studies: set[str] = field(default_factory=set)
    #: Per study: instances stored per SOP Class, and the patient (audit trail only).
    study_classes: dict[str, Counter[str]] = field(default_factory=dict)
    study_patients: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Where the trail records per association: its received instances as each is
    #: acknowledged, for the records should its end never come (``audit_journal``).
    journal: Journal | None = None
    #: The match list of the C-GET / C-MOVE being answered (for its audit messages).
    retrieving: list[Any] | None = None
    #: Whether the association was released (A-RELEASE-RP sent or received), not aborted.
    released: bool = False
    #: The association's end has written the records of its received instances (under
    #: ``lock``): a C-STORE that completes after it (the peer aborted while it was being
    #: stored or indexed) is no longer counted and writes its own (``store_audit``).
    ended: bool = False
    #: Query/Retrieve SOP Classes for which relational queries were negotiated.
    relational_classes: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_stored(self, size: int, study_uid: str, sop_class_uid: str = "",
                     patient: tuple[str, str] | None = None) -> None:
        with self.lock:
            self.count_stored_locked(size, study_uid, sop_class_uid, patient)

    def count_stored_locked(self, size: int, study_uid: str, sop_class_uid: str = "",
                            patient: tuple[str, str] | None = None) -> None:
        """:meth:`count_stored` for a caller that holds ``lock``."""
        self.stored += 1
        self.bytes_stored += size
        self.studies.add(study_uid)
        self.study_classes.setdefault(study_uid, Counter())[sop_class_uid] += 1
        if patient is not None:
            self.study_patients.setdefault(study_uid, patient)

    def relational(self, sop_class_uid: str) -> bool:
        return sop_class_uid in self.relational_classes

    def count_failed(self) -> None:
        with self.lock:
            self.failed += 1


def attach_session(assoc: Association, session: Session) -> None:
    setattr(assoc, _ATTRIBUTE, session)


def session_of(assoc: Association) -> Session | None:
    return getattr(assoc, _ATTRIBUTE, None)
