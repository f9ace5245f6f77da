"""The audit trail of Query/Retrieve: one Query message per C-FIND, and per C-GET / C-MOVE a
Begin Transferring DICOM Instances before the first object and a DICOM Instances Transferred
at the end (PS3.15 A.5.3.12, A.5.3.2, A.5.3.4).

The handlers stay as they are: ``app.py`` wraps them. A wrapper watches what the handler
yields (statuses, the C-MOVE destination, the datasets, whether pynetdicom encoded them, i.e.
sent them, and whether the destination's response took them) and records through the
generic ``AuditLog.record``. A C-GET / C-MOVE refused before its first sub-operation (an
unknown Move Destination, not granted, a bad Identifier, the index unavailable, an
unexpected error) is a DICOM Instances Transferred too, with no study, its failure outcome
and the status and reason: the attempt to send a patient's studies somewhere is in the trail
whoever refused it (the policy adds its Security Alert), as a refused C-FIND's Query is.
A request's record is written as soon as its end is known (a final status yielded, the
C-MOVE's answer sent in place of pynetdicom's), not when its generator closes: pynetdicom
drops the generator after a final status without closing it, and a reference cycle
through it could hold that close back until the garbage collector ran, seconds later on
an idle server, or never before the process ended.
One whose Identifier matches no instance (Success, no sub-operation) is recorded the same
way, with outcome 0: the attempt to retrieve a patient's study is in the trail whether or
not the archive held it.
C-MOVE to another AE is recorded as DICOM Instances
Transferred, not Export: PS3.15 A.5.3.6 keeps Export for data leaving the DICOM security
domain (media, print, e-mail), and a C-MOVE destination is a
registered DICOM node; the destination is its own participant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pynetdicom.status import (
    STATUS_FAILURE,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
)

from mimic_server.dimse.move_answer import answer_of
from mimic_server.dimse.raw_send import answered_send_in_use
from mimic_server.dimse.retrieve import index_row_of
from mimic_server.dimse.session import Session, session_of
from mimic_server.dimse.unexpected import _MOVE_BEFORE_DESTINATION
from mimic_server.errors import Status
from mimic_server.security import audit
from mimic_server.security.transfer_tally import (
    Patient,
    TransferTally,
    by_patient,
    failed_in,
    patient_details,
    patient_of,
)
from mimic_server.storage.keys import study_of_key

if TYPE_CHECKING:
    from mimic_server.query.finder import InstanceRef
    from mimic_server.security.audit import AuditLog

_SUCCESS = {0x0000, 0xFF00, 0xFF01}
_PENDING = {0xFF00, 0xFF01}
#: The final statuses pynetdicom gives a retrieve with a sub-operation failed or warned.
_SUB_OPERATIONS_NOT_ALL_TAKEN = {Status.SUB_OPERATIONS_WARNING, Status.SUB_OPERATIONS_FAILED}


def participants(event: Any, session: Session | None) -> dict[str, Any]:
    """The requestor as audit details: address, certificate, trust entry, AE titles, user
    (by name, as the login and the C-STORE records name it: the object itself was written
    as its repr, roles and all, into the user field and the message's UserID)."""
    details: dict[str, Any] = {"called_ae": _called(event)}
    if session is not None:
        user = getattr(session, "user", None)
        details.update(
            peer=session.peer_address, identity=session.identity.label,
            trust_name=session.identity.trust_name, calling_ae=session.calling_ae_title,
            user=user.name if user is not None else None,
        )
    return details


def outcome_of(status: int) -> int:
    """0 success, 4 refused or cancelled, 8 out of resources or unexpected (conformance
    section 6). Cancel (0xFE00) is the requestor's doing: it was 8, caught by the
    "unexpected" range above 0xC100."""
    if status in _SUCCESS:
        return audit.SUCCESS
    if status == Status.CANCEL:
        return audit.MINOR_FAILURE
    if status & 0xFF00 == 0xA700 or status >= 0xC100:  # out of resources, unexpected
        return audit.SERIOUS_FAILURE
    return audit.MINOR_FAILURE


def audited_find(handler: Callable[..., Iterator[Any]],
                 audit_log: AuditLog) -> Callable[..., Iterator[Any]]:
    """One Query message per C-FIND, with the Identifier as received (base64) and its SOP
    Class and transfer syntax, when the C-FIND ends, with its final status.

    pynetdicom stops asking for items once the handler has yielded a final status (a
    refusal, Cancel) and drops the generator, which closes it: that is no cancel. Taken
    for one, every refused C-FIND (0x0124, 0xA900, 0xC000, the limits' 0xA700) was
    recorded as 0xFE00, outcome 8. After the last Pending pynetdicom answers Success
    itself: the record said 0xFF00."""

    @functools.wraps(handler)
    def find(event: Any, *args: Any) -> Iterator[Any]:
        status, final, recorded = Status.SUCCESS, False, False

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            request = event.request
            identifier = getattr(request, "Identifier", None)
            audit_log.record(
                audit.QUERY, outcome_of(status), service="C-FIND",
                sop_class=str(request.AffectedSOPClassUID or ""),
                transfer_syntax=str(getattr(event.context, "transfer_syntax", "") or ""),
                identifier=identifier.getvalue() if identifier is not None else b"",
                status=f"0x{status:04X}", **participants(event, session_of(event.assoc)),
            )

        try:
            for item in handler(event, *args):
                status = _status(item, status)
                final = final or status not in _PENDING
                if final:  # pynetdicom drops the generator after it (module docstring)
                    record()
                yield item
            if not final:  # pynetdicom answers Success after the matches
                status = Status.SUCCESS
        except GeneratorExit:
            if not final:  # the association went away mid-answer
                status = Status.CANCEL
            raise
        except Exception:
            status = 0xC311  # answered by guarded_stream
            raise
        finally:
            record()

    return find


def audited_retrieve(handler: Callable[..., Iterator[Any]], audit_log: AuditLog,
                     service: str) -> Callable[..., Iterator[Any]]:
    """C-GET / C-MOVE: Begin Transferring when pynetdicom asks for the first object (the
    studies from the match list the handler noted on the session), DICOM Instances
    Transferred per request at the end with what was sent, per study and SOP Class; or,
    for a request refused before it began, that matched nothing, or whose C-MOVE
    destination could not be reached, with none and why.

    Not when the number of sub-operations is announced: pynetdicom then opens a C-MOVE's
    sub-association, and a destination that cannot be reached gets nothing, so no transfer
    began (PS3.15 A.5.3.3 is the start of one). Its DICOM Instances Transferred says what
    the requestor was told: every match failed, 0xA702 and the reason."""

    @functools.wraps(handler)
    def retrieve(event: Any, *args: Any) -> Iterator[Any]:
        session = session_of(event.assoc)
        details = participants(event, session)
        details["service"] = service
        if service == "C-MOVE":
            details["destination"] = str(event.move_destination or "").strip()
        sent = TransferTally()
        # Whose each match is, for a failed sub-operation that has no index row (a
        # stand-in): its SOP Instance UID -> patient when the matches are several
        # patients' (``_Matches``).
        matched = _Matches()
        failed, status, pending, began = 0, Status.SUCCESS, None, False
        yielded = 0  # items passed on to pynetdicom
        # The number of sub-operations announced, and those the destination took with a
        # Warning: what pynetdicom's final status is made of (:func:`_final_status`).
        suboperations, warned = 0, 0
        # The final status is the one the requestor was answered (a status the handler
        # handed over, pynetdicom's own after the last sub-operation, an unexpected
        # error's); not when the association went away or pynetdicom answered a cancel.
        final_known = False
        # The C-MOVE's answer (with the fence): what replaced pynetdicom's 0xA801, if
        # anything, is known only there once pynetdicom has dropped the handler.
        answer = answer_of(event.assoc) if service == "C-MOVE" else None
        # The match list once announced: its Begin Transferring is written when pynetdicom
        # asks for the first object, i.e. once a C-MOVE's sub-association is established.
        announced: list[InstanceRef] | None = None
        # The handler yielded its final status (pynetdicom then drops the generator: that is
        # no cancel), and the reason it gave for a refusal.
        answered, reason = False, None
        recorded = False

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            if not (began or sent.sent):
                if answered or status not in (*_SUCCESS, Status.CANCEL):
                    extra = {"failed": failed} if failed else {}
                    audit_log.record(
                        audit.INSTANCES_TRANSFERRED, outcome_of(status), received=False,
                        studies={}, instances=0, reason=str(reason or "refused"),
                        status=f"0x{status:04X}", **extra, **details,
                    )
            else:
                # One per patient, each with its own failures (PS3.15 A.5.3.4), and the
                # status the requestor was answered, as a refusal's record has it: that
                # of a destination that refused every C-STORE (0xA702) was missing.
                # pynetdicom's 0xB000 / 0xA702 are the sub-operations' failures, which
                # each patient's own count decides (conformance section 6: outcome 4 once
                # one failed): a patient none of whose failed keeps outcome 0.
                answered_as = {"status": f"0x{status:04X}"} if final_known else {}
                for one in sent.records():
                    outcome = outcome_of(Status.SUCCESS if status in _SUB_OPERATIONS_NOT_ALL_TAKEN
                                         else status)
                    if failed_in(one) and outcome == audit.SUCCESS:
                        outcome = audit.MINOR_FAILURE
                    audit_log.record(audit.INSTANCES_TRANSFERRED, outcome, received=False,
                                     **answered_as, **one, **details)

        def unreachable() -> None:
            """The destination could not be reached: every match failed unsent, as the
            requestor is being told (0xA702 and the Failed SOP Instance UID List)."""
            nonlocal answered, status, reason, failed
            if answer is None:
                return
            answered, status, reason = True, answer.status or status, answer.comment
            failed = len(answer.failed or ())
            record()

        try:
            for item in handler(event, *args):
                if pending is not None:  # pynetdicom has tried to send the previous one
                    failed += _tally(pending, sent, matched)
                    warned += _warned(pending)
                    pending = None
                if isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str):
                    details["destination_address"] = item[0]
                elif isinstance(item, int) and not began:
                    suboperations = item
                    refs = _take_refs(session)
                    if refs:
                        announced = refs
                    elif item < 1:
                        # Nothing matched: pynetdicom answers Success itself and drops the
                        # generator, which is no cancel.
                        answered, reason = True, "no instance matched"
                elif _no_destination(item) and service == "C-MOVE" and not began:
                    # No destination: a refusal, whose status is in the C-MOVE's answer
                    # (pynetdicom's own 0xA801 without the fence).
                    answered = True
                    status = (answer.status if answer is not None and answer.status is not None
                              else Status.MOVE_DESTINATION_UNKNOWN)
                    reason = answer.comment if answer is not None else None
                    failed = len(answer.failed or ()) if answer is not None else 0
                    _take_refs(session)  # noted for a Begin Transferring that will not come
                elif isinstance(item, tuple) and len(item) == 2:
                    status = _status(item, status)
                    if item[1] is not None and _status_value(item[0]) == Status.PENDING:
                        pending = item[1]
                    elif _status_value(item[0]) not in (None, Status.PENDING):
                        answered = True
                        reason = getattr(item[0], "ErrorComment", None)
                if answered:  # final: pynetdicom drops the generator after it (module doc)
                    final_known = True
                    record()
                elif announced is not None and answer is not None:
                    # pynetdicom now opens the sub-association; if it cannot, it sends the
                    # answer in place of its 0xA801 and drops the generator unread.
                    answer.on_used = _then(answer.on_used, unreachable)
                yield item
                yielded += 1
                if announced is not None:  # asked for the first object: the transfer begins
                    began = True
                    # One message per patient (PS3.15 A.5.3.3: one patient per message).
                    groups = by_patient(announced)
                    matched = _Matches.of(groups)
                    for patient, refs in groups.items():
                        audit_log.record(audit.BEGIN_TRANSFERRING, audit.SUCCESS,
                                         studies=_studies_of(refs), instances=len(refs),
                                         **patient_details(patient), **details)
                    announced = None
            if pending is not None:
                failed += _tally(pending, sent, matched)
                warned += _warned(pending)
            if began and not answered:  # pynetdicom answers the final status itself
                status, final_known = _final_status(suboperations, failed, warned), True
        except GeneratorExit:
            if announced is not None and answer is not None and answer.used:
                unreachable()  # recorded already, when the answer was sent
            elif not answered:  # the association went away, or the requestor cancelled
                status = Status.CANCEL
                if announced is not None:  # before any sub-operation: still in the trail
                    answered, reason = True, "ended before any sub-operation"
            raise
        except Exception:
            # As guarded_stream answers it (``unexpected.py``), or pynetdicom for a C-MOVE
            # without its destination yet: the record said 0xC311, C-FIND's.
            status, reason = _unexpected(service, yielded), "unexpected error"
            final_known = True
            raise
        finally:
            record()

    return retrieve


def _then(first: Callable[[], None] | None, second: Callable[[], None]) -> Callable[[], None]:
    """``first`` (if any), then ``second``: a MoveAnswer's ``on_used`` that keeps the
    handler's own (its log line)."""

    def both() -> None:
        if first is not None:
            first()
        second()

    return both


def _final_status(suboperations: int, failed: int, warned: int) -> int:
    """The final status pynetdicom answers a C-GET / C-MOVE whose handler yielded every
    sub-operation (``QueryRetrieveServiceClass._get_scp`` / ``_move_scp``, after the
    handler's last item): Success when none failed or had a Warning; 0xA702 (Unable to
    perform sub-operations) when as many failed as were announced; else 0xB000."""
    if not failed and not warned:
        return Status.SUCCESS
    if failed == suboperations:
        return Status.SUB_OPERATIONS_FAILED
    return Status.SUB_OPERATIONS_WARNING


def _unexpected(service: str, yielded: int) -> int:
    """The status a C-GET / C-MOVE that failed unexpectedly was answered."""
    if service == "C-MOVE":
        return Status.MOVE_UNEXPECTED if yielded else _MOVE_BEFORE_DESTINATION
    return Status.GET_UNEXPECTED


def _no_destination(item: Any) -> bool:
    """A C-MOVE handler's ``(None, None)``: no destination, the request is refused."""
    return isinstance(item, tuple) and len(item) == 2 and item[0] is None and item[1] is None


def _take_refs(session: Session | None) -> list[InstanceRef] | None:
    if session is None:
        return None
    refs, session.retrieving = session.retrieving, None
    return refs


def _studies_of(refs: list[InstanceRef]) -> dict[str, dict[str, int]]:
    studies: dict[str, dict[str, int]] = {}
    for ref in refs:
        classes = studies.setdefault(study_of_key(ref.object_key) or "unknown", {})
        classes[ref.sop_class_uid] = classes.get(ref.sop_class_uid, 0) + 1
    return studies


class _Matches:
    """Whose each match is, to put a failed sub-operation on its patient: the one patient
    of all the matches, or for several each SOP Instance UID's (a failed sub-operation's
    stand-in carries only that). Made once, when the transfer begins; nothing per object
    for one patient's matches."""

    __slots__ = ("of_uid", "only")

    def __init__(self, only: Patient | None = None,
                 of_uid: dict[str, Patient] | None = None) -> None:
        self.only = only
        self.of_uid = of_uid or {}

    @classmethod
    def of(cls, groups: dict[Patient, list[InstanceRef]]) -> _Matches:
        if len(groups) == 1:
            return cls(only=next(iter(groups)))
        return cls(of_uid={ref.sop_instance_uid: patient
                           for patient, refs in groups.items() for ref in refs})

    def patient(self, dataset: Any) -> Patient | None:
        """The patient of a dataset that failed, if known: its index row's, else the
        match list's."""
        row = index_row_of(dataset)
        if row is not None:
            return patient_of(row)
        if self.only is not None:
            return self.only
        return self.of_uid.get(str(getattr(dataset, "SOPInstanceUID", "") or ""))


def _tally(dataset: Any, sent: TransferTally, matched: _Matches) -> int:
    """Count a dataset pynetdicom was given: sent if the destination's response took it
    (Success or Warning, ``raw_send.answered_send``); else 1, failed: no presentation
    context, a refusal, no response (a send cut off midway). Without that wrapper (fence
    entry ``answered-send`` off): sent if it was encoded and the encoder did not fail it
    (``_mimic_refused``: nothing was sent). A stored object
    is named by its index row (its study and patient as the index files them); the objects
    sent are never parsed for the audit. A failure is put on its patient where known
    (``matched``)."""
    if answered_send_in_use():
        if not _taken(getattr(dataset, "_mimic_answer", None)):
            sent.failed_one(matched.patient(dataset))
            return 1
    elif not getattr(dataset, "_mimic_encoded", False) or getattr(
            dataset, "_mimic_refused", False):
        sent.failed_one(matched.patient(dataset))
        return 1
    row = index_row_of(dataset)
    if row is None:
        sent.failed_one(matched.patient(dataset))
        return 1
    study = row.study_instance_uid or study_of_key(row.object_key) or "unknown"
    sent.sent_one(patient_of(row), study, row.sop_class_uid)
    return 0


def _warned(dataset: Any) -> int:
    """1 if the destination took the object with a Warning status (pynetdicom counts it in
    Number of Warning Sub-operations, and its final status is then 0xB000), else 0. Known
    only with ``answered-send`` (``_mimic_answer``); without it, none is counted."""
    answer = getattr(dataset, "_mimic_answer", None)
    if answer is None or not answered_send_in_use():
        return 0
    return int(STORAGE_SERVICE_CLASS_STATUS.get(answer, (STATUS_FAILURE, ""))[0]
               == STATUS_WARNING)


def _taken(answer: int | None) -> bool:
    """Whether a C-STORE response's Status says the destination took the object, as
    pynetdicom counts it: a code the Storage Service Class does not define is a failure."""
    if answer is None:
        return False
    category = STORAGE_SERVICE_CLASS_STATUS.get(answer, (STATUS_FAILURE, ""))[0]
    return category in (STATUS_SUCCESS, STATUS_WARNING)


def _status(item: Any, previous: int) -> int:
    if not (isinstance(item, tuple) and len(item) == 2):
        return previous
    value = _status_value(item[0])
    return previous if value is None else value


def _status_value(status: Any) -> int | None:
    if status is None:
        return None
    if isinstance(status, int):
        return status
    value = getattr(status, "Status", None)
    return int(value) if value is not None else None


def _called(event: Any) -> str | None:
    try:
        return str(event.assoc.acceptor.ae_title).strip() or None
    except AttributeError:
        return None
