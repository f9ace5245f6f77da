"""Generic audit records turned into DICOM audit messages (PS3.15 A.5.3) and index fields.

Every part of MIMIC records an event the same way, ``AuditLog.record(event, outcome,
**details)``, with details in one vocabulary (``peer``, ``identity``, ``trust_name``,
``calling_ae``, ``called_ae``, ``user``, ``service``, ``destination``, ``reason``,
``event_type``, ``studies``, ...). This module is the one place that knows how such a record
becomes the XML an audit repository reads, so that a new caller (the access policy, user
identity negotiation) needs no message code of its own. It also picks the few fields that
``mimic audit`` filters on (time, event, outcome, identity, calling AE, user, studies).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mimic_server.security import audit_message as am

#: ``event_type`` detail values (PS3.16 CID 401) as callers name them.
EVENT_TYPES: dict[str, am.Code] = {
    "login": am.LOGIN,
    "logout": am.LOGOUT,
    "use-of-restricted-function": am.USE_OF_RESTRICTED_FUNCTION,
    "node-authentication": am.NODE_AUTHENTICATION,
    "security-configuration": am.SECURITY_CONFIGURATION,
    "network-configuration": am.NETWORK_CONFIGURATION,
    "software-configuration": am.SOFTWARE_CONFIGURATION,
    "application-start": am.APPLICATION_START,
    "application-stop": am.APPLICATION_STOP,
}


@dataclass(frozen=True, slots=True)
class Archive:
    """The archive as an audit participant and audit source."""

    ae_title: str
    host: str | None = None
    source_id: str | None = None

    @property
    def audit_source(self) -> str:
        return self.source_id or self.ae_title


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit record: the DICOM audit message and the fields to find it by."""

    when: datetime
    event_code: str
    event_name: str
    event_type: str | None
    outcome: int
    identity: str | None
    trust_name: str | None
    calling_ae: str | None
    user: str | None
    studies: tuple[str, ...]
    xml: str

    def index_fields(self) -> dict[str, Any]:
        return {
            "time": self.when.isoformat(), "event": self.event_code,
            "event_name": self.event_name, "event_type": self.event_type,
            "outcome": self.outcome, "identity": self.identity, "trust_name": self.trust_name,
            "calling_ae": self.calling_ae, "user": self.user, "studies": list(self.studies),
        }


def build(event: tuple[str, str, str], outcome: int, details: Mapping[str, Any],
          archive: Archive, when: datetime | None = None) -> AuditEntry:
    """The audit message for one record, with its index fields."""
    when = when or datetime.now(UTC)
    message = _message(am.Code(*event), outcome, details, archive)
    message = am.AuditMessage(
        message.event, message.outcome, message.participants, message.source_id,
        action=message.action, event_types=message.event_types,
        outcome_description=message.outcome_description, objects=message.objects, when=when,
    )
    types = message.event_types
    return AuditEntry(
        when=when, event_code=event[0], event_name=event[2],
        event_type=_type_name(types[0]) if types else None, outcome=outcome,
        identity=_text(details.get("identity")), trust_name=_text(details.get("trust_name")),
        calling_ae=_text(details.get("calling_ae")), user=_text(details.get("user")),
        studies=tuple(sorted(_studies(details))), xml=message.to_xml(),
    )


def _message(event: am.Code, outcome: int, d: Mapping[str, Any],
             archive: Archive) -> am.AuditMessage:
    source_id = archive.audit_source
    code = event.code
    if code == am.APPLICATION_ACTIVITY.code and d.get("action") in ("started", "stopped"):
        return am.application_activity(_archive(archive, am.APPLICATION),
                                       d["action"] == "started", source_id)
    if code == am.SECURITY_ALERT.code:
        subject = (_ip(d.get("peer")) or _text(d.get("identity")) or _text(d.get("subject"))
                   or archive.ae_title)
        performer = _requestor(d) if _has_requestor(d) else None
        return _plus(am.security_alert(
            _archive(archive), _event_type(d, am.NODE_AUTHENTICATION), outcome, subject,
            _description(d) or "security alert", source_id, performer,
        ), _users(d))
    if code == am.AUDIT_LOG_USED.code:
        # The person who read it (a console user, the account running `mimic audit`),
        # then the process they read it with.
        users = _users(d)
        readers = [*users, _requestor(d)]
        return am.audit_log_used(readers, _archive(archive), str(d.get("audit_log") or
                                 "urn:mimic:audit-trail"), outcome, source_id, _description(d))
    if code == am.USER_AUTHENTICATION.code:
        # The one authenticated: the person when a user was asserted (then the peer process
        # follows), else the peer process by its certificate and AE title.
        login = d.get("event_type", "login") != "logout"
        users = _users(d)
        person = users[0] if users else _requestor(d)
        message = am.user_authentication(person, _archive(archive), login, outcome,
                                         source_id, _description(d))
        return _plus(message, [_requestor(d)] if users else [])
    if code == am.QUERY.code:
        return am.query(
            _requestor(d), _archive(archive), str(d.get("sop_class") or "unknown"),
            bytes(d.get("identifier") or b""), str(d.get("transfer_syntax") or "unknown"),
            outcome, source_id, others=_users(d),
        )
    if code in (am.BEGIN_TRANSFERRING.code, am.INSTANCES_TRANSFERRED.code, am.EXPORT.code):
        return _transfer(event, outcome, d, archive)
    if code in (am.INSTANCES_ACCESSED.code, am.STUDY_DELETED.code):
        accessor = _requestor(d) if _has_requestor(d) else _archive(archive)
        return _with_description(am.instances_accessed(
            accessor, str(d.get("action_code") or "R"), _study_objects(d), _patient(d),
            outcome, source_id, others=_users(d),
        ), d)
    # Any other event (a new caller's): the archive as participant, the event type if named.
    participants = [_requestor(d), _archive(archive)] if _has_requestor(d) else [
        _archive(archive)]
    types = (EVENT_TYPES[d["event_type"]],) if d.get("event_type") in EVENT_TYPES else ()
    return am.AuditMessage(event, outcome, participants, source_id, action="E",
                           event_types=types, outcome_description=_description(d))


def _transfer(event: am.Code, outcome: int, d: Mapping[str, Any],
              archive: Archive) -> am.AuditMessage:
    """Store (``received``: the requestor sends to the archive), C-GET (the archive sends to
    the requestor), C-MOVE (the archive sends to ``destination``; the requestor is another
    participant)."""
    requestor, studies, patient = _requestor(d), _study_objects(d), _patient(d)
    source_id = archive.audit_source
    if d.get("received"):
        source = _role(requestor, am.SOURCE)
        destination = _archive(archive, am.DESTINATION)
        others: list[am.Participant] = _users(d)
    else:
        source = _archive(archive, am.SOURCE)
        if d.get("destination"):
            destination = am.Participant(
                str(d["destination"]), False, (am.DESTINATION,),
                network_access_point=_ip(d.get("destination_address")),
                network_access_point_type=_access_type(_ip(d.get("destination_address"))),
            )
            others = [requestor, *_users(d)]
        else:
            destination = _role(requestor, am.DESTINATION)
            others = _users(d)
    if event.code == am.BEGIN_TRANSFERRING.code:
        message = am.begin_transferring(source, destination, studies, patient, outcome,
                                        source_id, others)
    elif event.code == am.EXPORT.code:
        message = _plus(am.export(source, destination, studies, patient, outcome, source_id),
                        others)
    else:
        message = am.instances_transferred(source, destination, studies, patient, outcome,
                                           source_id, received=bool(d.get("received")),
                                           others=others)
    return _with_description(message, d)


# -- participants --------------------------------------------------------------------------


def _archive(archive: Archive, *roles: am.Code) -> am.Participant:
    return am.Participant(
        archive.ae_title, False, roles or (am.APPLICATION,),
        network_access_point=archive.host, network_access_point_type=_access_type(archive.host),
    )


def _has_requestor(d: Mapping[str, Any]) -> bool:
    return any(d.get(k) for k in ("calling_ae", "identity", "peer"))


def _requestor(d: Mapping[str, Any]) -> am.Participant:
    """The peer process: its calling AE title (UserID), certificate subject
    (AlternativeUserID), trust entry (UserName), address (type 2)."""
    ip = _ip(d.get("peer"))
    return am.Participant(
        _text(d.get("calling_ae")) or ip or "unknown", True,
        alternative_user_id=_text(d.get("identity")), user_name=_text(d.get("trust_name")),
        network_access_point=ip, network_access_point_type=_access_type(ip),
    )


def _users(d: Mapping[str, Any]) -> list[am.Participant]:
    """The person behind the request (User Identity Negotiation), when one was asserted."""
    user = _text(d.get("user"))
    return [am.Participant(user, True)] if user else []


def _role(participant: am.Participant, role: am.Code) -> am.Participant:
    return am.Participant(
        participant.user_id, participant.is_requestor, (role,),
        participant.alternative_user_id, participant.user_name,
        participant.network_access_point, participant.network_access_point_type,
    )


# -- objects -------------------------------------------------------------------------------


def _studies(d: Mapping[str, Any]) -> list[str]:
    studies = d.get("studies") or {}
    return [str(s) for s in studies]


def _study_objects(d: Mapping[str, Any]) -> list[am.StudyObject]:
    """``studies``: ``{study UID: {SOP Class UID: count}}`` or a list of study UIDs;
    ``sop_instances`` (optional): ``{study UID: {SOP Class UID: [SOP Instance UID, ...]}}``."""
    studies = d.get("studies") or {}
    if isinstance(studies, Mapping):
        named = d.get("sop_instances") or {}
        return [am.StudyObject(str(uid), {str(k): int(v) for k, v in (classes or {}).items()},
                               instances={str(k): tuple(str(i) for i in v)
                                          for k, v in (named.get(uid) or {}).items()})
                for uid, classes in sorted(studies.items())]
    return [am.StudyObject(str(uid)) for uid in sorted(studies)]


def _patient(d: Mapping[str, Any]) -> am.PatientObject | None:
    if d.get("patient_id") is None and d.get("patient_name") is None:
        return None
    return am.PatientObject(str(d.get("patient_id") or ""), _text(d.get("patient_name")))


# -- small helpers ---------------------------------------------------------------------------


def _event_type(d: Mapping[str, Any], default: am.Code) -> am.Code:
    return EVENT_TYPES.get(str(d.get("event_type") or ""), default)


def _type_name(code: am.Code) -> str:
    for name, known in EVENT_TYPES.items():
        if known.code == code.code:
            return name
    return code.meaning


def _description(d: Mapping[str, Any]) -> str | None:
    parts = []
    if d.get("reason"):
        parts.append(str(d["reason"]))
    if d.get("service"):
        parts.append(f"service={d['service']}")
    if d.get("called_ae"):
        parts.append(f"called AE={d['called_ae']}")
    if d.get("destination") and d.get("reason"):
        parts.append(f"destination={d['destination']}")
    if d.get("filter"):
        parts.append(f"filter: {d['filter']}")
    if d.get("route"):
        parts.append(f"route={d['route']}")
    if d.get("count") is not None:
        parts.append(f"count={d['count']}")
    if d.get("IntervalStart"):
        parts.append(f"from {d['IntervalStart']} to {d.get('IntervalEnd', '')}")
    # failed_patient_unknown: a retrieve of several patients' failures it could not place
    # (``transfer_tally``).
    for key in ("status", "instances", "failed", "failed_patient_unknown", "aborted",
                "trusted"):
        if d.get(key) is not None:
            parts.append(f"{key}={d[key]}")
    return "; ".join(parts) or None


def _plus(message: am.AuditMessage, extra: list[am.Participant]) -> am.AuditMessage:
    if not extra:
        return message
    return am.AuditMessage(
        message.event, message.outcome, [*message.participants, *extra], message.source_id,
        action=message.action, event_types=message.event_types,
        outcome_description=message.outcome_description, objects=message.objects,
        when=message.when,
    )


def _with_description(message: am.AuditMessage, d: Mapping[str, Any]) -> am.AuditMessage:
    description = _description(d)
    if not description:
        return message
    return am.AuditMessage(
        message.event, message.outcome, message.participants, message.source_id,
        action=message.action, event_types=message.event_types,
        outcome_description=description, objects=message.objects, when=message.when,
    )


def _ip(peer: Any) -> str | None:
    """The address of ``host:port`` (or of a bare address, or ``[v6]:port``)."""
    text = _text(peer)
    if not text:
        return None
    if text.startswith("["):
        return text[1:].partition("]")[0]
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host.count(":") == 0:
        return host
    return text


def _access_type(address: str | None) -> str:
    if address is None:
        return am.IP_ADDRESS
    return am.IP_ADDRESS if _looks_like_ip(address) else am.MACHINE_NAME


@functools.lru_cache(maxsize=1024)
def _looks_like_ip(address: str) -> bool:
    """Cached: the archive's host and an association's peer come back with every record (a
    host name costs ``ipaddress`` an exception each time)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def json_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """The details as they go into a JSON line: bytes (a query identifier) are in the XML."""
    return {k: v for k, v in details.items() if not isinstance(v, bytes | bytearray)}


