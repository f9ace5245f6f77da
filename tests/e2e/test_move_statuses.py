"""C-MOVE final statuses (PS3.4 C.4.2.1.4, Table C.4-2) through a real pynetdicom SCU, and
that a refused C-MOVE opens no sub-association and sends nothing, and is in the audit trail
(as a refused C-GET is).

The destinations: ``COUNTER``, a TCP listener of the test that counts the connections it
receives (any sub-association would start with one); ``NOWHERE``, a port nobody listens on;
``REFUSER``, a Storage SCP that accepts the sub-association and answers every C-STORE with
the status the test sets.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import pydicom
import pytest
from lxml import etree
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet as GET,
)
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove as MOVE,
)

from mimic_server.app import Archive
from mimic_server.config import Settings
from mimic_server.security import audit_message as am
from mimic_server.security.policy import Policy, Service
from tests.data import ct_small
from tests.support import (
    HOST,
    MimicProcess,
    associate,
    client_context,
    first_client_context,
    free_port,
    wait_for,
)


class Counter:
    """A TCP listener that counts (and closes) every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def counter() -> Iterator[Counter]:
    listener = Counter()
    yield listener
    listener.close()


class Refuser:
    """A Storage SCP (plain TCP, CT) that accepts the sub-association and answers every
    C-STORE with :attr:`status`, storing nothing."""

    def __init__(self) -> None:
        self.status = 0xA700
        self.asked = 0
        self.port = free_port()
        ae = AE(ae_title="REFUSER")
        ae.add_supported_context(CTImageStorage, "1.2.840.10008.1.2.1")
        ae.add_supported_context(CTImageStorage, "1.2.840.10008.1.2")
        self.server = ae.start_server((HOST, self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: Any) -> int:
        self.asked += 1
        return self.status


@pytest.fixture(scope="module")
def refuser() -> Iterator[Refuser]:
    scp = Refuser()
    yield scp
    scp.server.shutdown()


def _registry(counter: Counter, ca_file: Path | None = None,
              refuser: Refuser | None = None) -> str:
    registry: dict[str, Any] = {
        "COUNTER": {"host": HOST, "port": counter.port, "tls": False},
        "NOWHERE": {"host": HOST, "port": free_port(), "tls": False},
        "NOWHERETLS": {"host": HOST, "port": free_port()},  # TLS (the default), port closed
    }
    if ca_file is not None:  # a TLS destination with a CA file of its own
        registry["RENAMED"] = {"host": HOST, "port": counter.port, "ca_file": str(ca_file)}
    if refuser is not None:
        registry["REFUSER"] = {"host": HOST, "port": refuser.port, "tls": False}
    return json.dumps(registry)


def _a_ca_file(directory: Path) -> Path:
    """A PEM file of one CA certificate (any: it is read, never used to verify)."""
    bundle = Path(certifi.where()).read_text()
    end = "-----END CERTIFICATE-----"
    path = directory / "destination-ca.pem"
    path.write_text(bundle[bundle.index("-----BEGIN CERTIFICATE-----"):bundle.index(end)]
                    + end + "\n")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, counter: Counter,
           refuser: Refuser) -> Iterator[MimicProcess]:
    root = tmp_path_factory.mktemp("move")
    process = MimicProcess(
        root / "data", move_destinations=_registry(counter, _a_ca_file(root), refuser)
    ).start()
    ctx = client_context(process.client_cert, process.client_key, process.ca_cert)
    assoc = associate(process.port, ctx, transfer_syntaxes=["1.2.840.10008.1.2.1"])
    assert assoc.send_c_store(ct_small()).Status == 0
    assoc.release()
    yield process
    assert process.stop() == 0, process.log()


def _move(port: int, ctx: Any, identifier: Dataset, destination: str) -> list[Dataset]:
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(MOVE)
    assoc = ae.associate(HOST, port, ae_title="MIMIC", tls_args=(ctx, "localhost"))
    assert assoc.is_established
    responses = []
    for status, answer in assoc.send_c_move(identifier, destination, MOVE):
        if answer is not None and "FailedSOPInstanceUIDList" in answer:
            status.FailedSOPInstanceUIDList = answer.FailedSOPInstanceUIDList
        responses.append(status)
    assoc.release()
    return responses


def _study(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _ct_study() -> Dataset:
    return _study(StudyInstanceUID=pydicom.dcmread(ct_small()).StudyInstanceUID)


def _tls(server: MimicProcess):  # type: ignore[no-untyped-def]
    return client_context(server.client_cert, server.client_key, server.ca_cert)


def _trail(server: MimicProcess) -> list[str]:
    return (server.data_dir / "audit.jsonl").read_text().splitlines()


def _refusal_record(server: MimicProcess, since: int,
                    status: int | None = None) -> tuple[dict[str, Any], Any]:
    """The one DICOM Instances Transferred written after line ``since`` of the trail (with
    ``status``: the one whose outcome names it), and its audit message. An earlier test's
    association writes its record when the server has seen it close, which on a loaded
    machine can come after this test read the trail's length: ``status`` leaves it out."""

    def transferred() -> list[dict[str, Any]]:
        records = [json.loads(line) for line in _trail(server)[since:]]
        return [r for r in records if r["event_name"] == "DICOM Instances Transferred"
                and (status is None or f"status=0x{status:04X}" in r["xml"])]

    assert wait_for(lambda: len(transferred()) == 1)  # written once pynetdicom is done
    [record] = transferred()
    am.validate(record["xml"])
    return record, etree.fromstring(record["xml"])


def _destination(message: Any) -> str:
    [participant] = [p for p in message.findall("ActiveParticipant")
                     if p.find("RoleIDCode[@csd-code='110152']") is not None]
    return str(participant.get("UserID"))


@pytest.mark.parametrize("destination", ["COUNTER", "NOWHERE"])
@pytest.mark.parametrize(
    ("identifier", "status"),
    [(_study(PatientName="*"), 0xA900), (_study(StudyInstanceUID="1.2.*"), 0xC000)],
    ids=["no-unique-key", "wildcard-uid"],
)
def test_bad_identifier_is_refused_before_any_sub_association(
    server: MimicProcess, counter: Counter, destination: str, identifier: Dataset, status: int
) -> None:
    before, lines = counter.connections, len(_trail(server))
    [final] = _move(server.port, _tls(server), identifier, destination)
    assert final.Status == status and final.ErrorComment
    assert counter.connections == before
    record, message = _refusal_record(server, lines, status)
    assert record["outcome"] == 4 and record["studies"] == []
    assert _destination(message) == destination
    described = message.find("EventIdentification/EventOutcomeDescription").text
    assert final.ErrorComment in described and f"status=0x{status:04X}" in described


def test_unknown_destination(server: MimicProcess, counter: Counter) -> None:
    """Refused 0xA801, and in the trail: the requestor tried to send a study to an AE title
    nobody registered."""
    before, lines = counter.connections, len(_trail(server))
    [final] = _move(server.port, _tls(server), _ct_study(), "ELSEWHERE")
    assert final.Status == 0xA801
    assert "FailedSOPInstanceUIDList" not in final  # no sub-operation was counted
    assert counter.connections == before
    record, message = _refusal_record(server, lines, final.Status)
    assert record["outcome"] == 4 and record["studies"] == []
    assert record["calling_ae"] == "MODALITY1" and _destination(message) == "ELSEWHERE"
    assert message.find("EventIdentification").get("EventActionCode") == "R"
    assert message.find("ParticipantObjectIdentification") is None  # nothing was sent
    described = message.find("EventIdentification/EventOutcomeDescription").text
    assert "unknown move destination" in described and "status=0xA801" in described


def test_refused_get_is_audited(server: MimicProcess) -> None:
    """A C-GET refused for its Identifier: 0xA900 to the requestor, a DICOM Instances
    Transferred with outcome 4 naming it as the destination, the status and the reason."""
    lines = len(_trail(server))
    assoc = associate(server.port, _tls(server), contexts=[GET])
    assert assoc.is_established
    [(final, _)] = list(assoc.send_c_get(_study(PatientName="*"), GET))
    assoc.release()
    assert final.Status == 0xA900 and final.ErrorComment
    record, message = _refusal_record(server, lines, final.Status)
    assert record["outcome"] == 4 and record["studies"] == []
    assert _destination(message) == "MODALITY1"
    described = message.find("EventIdentification/EventOutcomeDescription").text
    assert final.ErrorComment in described and "service=C-GET" in described
    assert "status=0xA900" in described


@pytest.mark.parametrize(
    ("identifier", "status"),
    [(_study(PatientName="*"), 0xA900), (_study(StudyInstanceUID="1.2.*"), 0xC000)],
    ids=["no-unique-key", "wildcard-uid"],
)
def test_refused_get_counts_no_sub_operation(
    server: MimicProcess, identifier: Dataset, status: int
) -> None:
    """A C-GET refused before any sub-operation is answered as a refused C-MOVE is: its
    status and Error Comment, no sub-operation counts, no Identifier. It said Failed 1 with
    an empty Failed SOP Instance UID List (pynetdicom's answer to a handler that announces
    one sub-operation, then fails), though no sub-operation existed."""
    assoc = associate(server.port, _tls(server), contexts=[GET])
    assert assoc.is_established
    [(final, answer)] = list(assoc.send_c_get(identifier, GET))
    assoc.release()
    assert final.Status == status and final.ErrorComment
    for count in ("Remaining", "Completed", "Failed", "Warning"):
        assert f"NumberOf{count}Suboperations" not in final
    assert answer is None or "FailedSOPInstanceUIDList" not in answer


def test_unreachable_destination_fails_every_sub_operation_and_is_logged(
    server: MimicProcess,
) -> None:
    """0xA702 with every sub-operation failed, and (PS3.4 C.4.2.1.4.2: a Refused status
    once a sub-operation failed) their UIDs in the Failed SOP Instance UID List, which was
    missing."""
    [final] = _move(server.port, _tls(server), _ct_study(), "NOWHERE")
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 1
    assert final.NumberOfCompletedSuboperations == 0
    assert final.FailedSOPInstanceUIDList == pydicom.dcmread(ct_small()).SOPInstanceUID
    logged = [e for e in server.log_entries() if e["message"] == "C-MOVE destination unreachable"]
    assert logged and logged[-1]["level"] == "WARNING"
    assert logged[-1]["destination"] == "NOWHERE"
    ct = pydicom.dcmread(ct_small())
    for uid in (ct.StudyInstanceUID, ct.SOPInstanceUID, str(ct.PatientName), ct.PatientID):
        assert uid not in server.log()


def test_unreachable_destination_is_audited_as_failed(server: MimicProcess) -> None:
    """The DICOM Instances Transferred of a C-MOVE whose destination cannot be reached says
    what the requestor was told: every match failed, 0xA702, 'destination unreachable', a
    failure outcome. It said failed=0 with no status (pynetdicom drops the handler without
    reading further, which the audit wrapper took for a cancel). No Begin Transferring: no
    transfer began (PS3.15 A.5.3.3), there was one with outcome 0."""
    lines = len(_trail(server))
    [final] = _move(server.port, _tls(server), _ct_study(), "NOWHERE")
    assert final.Status == 0xA702
    record, message = _refusal_record(server, lines, final.Status)
    assert record["failed"] == 1 and record["instances"] == 0
    assert record["status"] == "0xA702" and record["reason"] == "destination unreachable"
    assert record["outcome"] == 8
    assert _destination(message) == "NOWHERE"
    described = message.find("EventIdentification/EventOutcomeDescription").text
    assert "destination unreachable" in described and "failed=1" in described
    events = [json.loads(line)["event"] for line in _trail(server)[lines:]]
    assert "110102" not in events


@pytest.mark.parametrize("refusal", [0xA700, 0xC000], ids=["0xA700", "0xC000"])
def test_a_destination_refusing_every_c_store_is_audited_with_the_final_status(
    server: MimicProcess, refuser: Refuser, refusal: int
) -> None:
    """The destination accepts the sub-association and refuses each C-STORE: the requestor
    is answered 0xA702 (pynetdicom's final status when every sub-operation failed), and the
    DICOM Instances Transferred says so, as a refusal's does: it held no status at all,
    only failed=1."""
    refuser.status, asked = refusal, refuser.asked
    lines = len(_trail(server))
    final = _move(server.port, _tls(server), _ct_study(), "REFUSER")[-1]
    assert refuser.asked == asked + 1  # the C-STORE went out, and was refused
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 1
    assert final.NumberOfCompletedSuboperations == 0
    record, message = _refusal_record(server, lines, final.Status)
    assert record["status"] == "0xA702"
    assert record["failed"] == 1 and record["instances"] == 0
    # Section 6: a transfer begun with a failed sub-operation (the destination was reached)
    assert record["outcome"] == 4
    described = message.find("EventIdentification/EventOutcomeDescription").text
    assert "status=0xA702" in described and "failed=1" in described
    assert _destination(message) == "REFUSER"


def test_a_ca_file_gone_since_start_fails_the_sub_operations_as_unreachable(
    server: MimicProcess, counter: Counter
) -> None:
    """A TLS destination's ca_file renamed after start (it is read at the first C-MOVE):
    0xA702 with every match failed and listed, as for a destination that cannot be reached,
    one ERROR naming the destination and its CA file, the audit record saying what was
    sent, and no connection to the destination. It raised in the handler: 0xC514 (a bug in
    MIMIC's handler, conformance 2.4), no Failed SOP Instance UID List, the audit 0xC311."""
    ca_file = server.data_dir.parent / "destination-ca.pem"  # _a_ca_file's
    ca_file.rename(ca_file.with_suffix(".old"))
    before, lines, logged = counter.connections, len(_trail(server)), len(server.log_entries())
    [final] = _move(server.port, _tls(server), _ct_study(), "RENAMED")
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 1
    assert final.NumberOfCompletedSuboperations == 0
    assert final.FailedSOPInstanceUIDList == pydicom.dcmread(ct_small()).SOPInstanceUID
    assert counter.connections == before
    errors = [e for e in server.log_entries()[logged:] if e["level"] == "ERROR"]
    assert [e["message"] for e in errors] == ["C-MOVE destination's TLS cannot be set up"]
    assert errors[0]["destination"] == "RENAMED"
    assert errors[0]["error"].startswith(f"CA file {ca_file} cannot be read")
    record, _ = _refusal_record(server, lines, final.Status)
    assert record["status"] == "0xA702" and record["failed"] == 1
    assert record["reason"] == "destination unreachable" and record["outcome"] == 8


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MimicProcess]:
    """An archive whose destinations each fail the sub-association another way, all at a
    pynetdicom acceptor (plain TCP) whose AE title is MRONLY and that takes MR only."""
    acceptor = AE(ae_title="MRONLY")
    acceptor.require_called_aet = True
    acceptor.add_supported_context(MRImageStorage)
    port = free_port()
    listener = acceptor.start_server((HOST, port), block=False)
    registry = {
        "ELSEWHERE": {"host": HOST, "port": port, "tls": False},  # called AE: 1/1/7
        "MRONLY": {"host": HOST, "port": port, "tls": False},  # no CT context
        "NOTTLS": {"host": HOST, "port": port},  # a plain-TCP destination registered as TLS
        "NOWHERE": {"host": HOST, "port": free_port(), "tls": False},
        "NOWHERETLS": {"host": HOST, "port": free_port()},  # TLS (the default), port closed
    }
    process = MimicProcess(tmp_path_factory.mktemp("refusing") / "data",
                           move_destinations=json.dumps(registry)).start()
    assoc = associate(process.port, _tls(process), transfer_syntaxes=["1.2.840.10008.1.2.1"])
    assert assoc.send_c_store(ct_small()).Status == 0
    assoc.release()
    yield process
    assert process.stop() == 0, process.log()
    listener.shutdown()


@pytest.mark.parametrize(("destination", "cause"), [
    ("ELSEWHERE", "A-ASSOCIATE-RJ 1/1/7 (Rejected Permanent, Service User: Called AE title "
                  "not recognised)"),
    ("MRONLY", "no presentation context accepted"),
    ("NOTTLS", "TLS: WRONG_VERSION_NUMBER"),
    ("NOWHERE", "no TCP connection"),
    # A TLS destination that is down said only "Connection refused", not the guide's cause.
    ("NOWHERETLS", "no TCP connection (Connection refused)"),
])
def test_unreachable_destination_is_logged_with_its_cause(
    refusing: MimicProcess, destination: str, cause: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each way a sub-association fails is named in its WARNING: every one was logged the
    same 'C-MOVE destination unreachable' without a cause."""
    # The acceptor's own negotiation, not the archive's switch left by an Archive started
    # in this process (which accepts any storage SOP Class).
    monkeypatch.setattr(_config, "UNRESTRICTED_STORAGE_SERVICE", False)
    server = refusing
    [final] = _move(server.port, _tls(server), _ct_study(), destination)
    assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 1
    [line] = [e for e in server.log_entries()  # each destination is moved to once
              if e["message"] == "C-MOVE destination unreachable"
              and e["destination"] == destination]
    assert line["level"] == "WARNING"
    assert line["cause"].startswith(cause), line["cause"]


def test_reachable_destination_gets_its_sub_association(
    server: MimicProcess, counter: Counter
) -> None:
    """The counterpart of the refusals: with a match, the destination is contacted."""
    before = counter.connections
    [final] = _move(server.port, _tls(server), _ct_study(), "COUNTER")
    assert final.Status == 0xA702  # the counter closes the connection: nothing could be sent
    assert counter.connections == before + 1


def test_not_granted_is_not_authorized(tmp_path: Path, counter: Counter) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", host=HOST, port=0, ops_port=0,
        move_destinations=json.loads(_registry(counter)),
    )
    granted = frozenset(Service) - {Service.MOVE}
    archive = Archive(settings, policy=Policy(settings.ae_title, granted=granted))
    archive.start()
    try:
        ctx = first_client_context(settings.data_dir)
        before = counter.connections
        # C-MOVE not granted: its presentation context is refused at negotiation
        # (user-rejection) and the association, with nothing else proposed, is rejected.
        ae = AE(ae_title="MODALITY1")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(MOVE)
        assoc = ae.associate(HOST, archive.address[1], ae_title="MIMIC",
                             tls_args=(ctx, "localhost"))
        assert assoc.is_rejected
        assert counter.connections == before
    finally:
        archive.stop(0)


def _source(message: Any) -> str:
    [participant] = [p for p in message.findall("ActiveParticipant")
                     if p.find("RoleIDCode[@csd-code='110153']") is not None]
    return str(participant.get("UserID"))


@pytest.mark.parametrize("service", ["C-GET", "C-MOVE"])
def test_retrieve_that_matches_nothing_is_audited(
    server: MimicProcess, counter: Counter, service: str
) -> None:
    """Success with no sub-operation (the Identifier matches no instance) is in the trail as
    a refusal is: a DICOM Instances Transferred with no study, the archive as source, the
    Move Destination or the C-GET requestor as destination, outcome 0 and ``status=0x0000``.
    It left nothing: pynetdicom answers Success and drops the handler, which read as a
    cancel."""
    lines, before = len(_trail(server)), counter.connections
    nothing = _study(StudyInstanceUID="1.2.826.0.1.3680043.8.498.1")
    if service == "C-MOVE":
        [final] = _move(server.port, _tls(server), nothing, "COUNTER")
        destination = "COUNTER"
    else:
        assoc = associate(server.port, _tls(server), contexts=[GET])
        assert assoc.is_established
        [(final, _)] = list(assoc.send_c_get(nothing, GET))
        assoc.release()
        destination = "MODALITY1"
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 0
    assert counter.connections == before
    record, message = _refusal_record(server, lines, final.Status)
    assert record["outcome"] == 0 and record["studies"] == []
    assert record["calling_ae"] == "MODALITY1"
    assert _destination(message) == destination and _source(message) == "MIMIC"
    assert message.find("EventIdentification").get("EventActionCode") == "R"
    assert message.find("ParticipantObjectIdentification") is None  # nothing was sent
    described = message.find("EventIdentification/EventOutcomeDescription").text
    assert "no instance matched" in described and f"service={service}" in described
    assert "status=0x0000" in described and "instances=0" in described


def test_a_note_beside_a_destination_ca_fails_no_c_move(
    tmp_path: Path, counter: Counter
) -> None:
    """A TLS destination's ca_file with a note beside its PEM block that is not ASCII (the
    start's check and OpenSSL read it) is read as OpenSSL reads it, at the first C-MOVE:
    the sub-association is attempted (the counter sees a connection and closes it, 0xA702
    as for any destination that drops the handshake), and no ERROR. Read as UTF-8 text, a
    Latin-1 note made the C-MOVE an unreachable destination without any connection (ERROR
    'cannot be read: UnicodeDecodeError'), and a UTF-8 one raised in the handler out of
    load_verify_locations(cadata=...): 0xC514, the audit record's 0xC311."""
    pem = _a_ca_file(tmp_path).read_bytes()
    registry: dict[str, Any] = {}
    for name, note in (("LATIN1", "Zürich".encode("latin-1")), ("UTF8", "Zürich".encode())):
        ca_file = tmp_path / f"{name.lower()}-ca.pem"
        ca_file.write_bytes(b"# Destination CA, " + note + b"\n" + pem)
        registry[name] = {"host": HOST, "port": counter.port, "ca_file": str(ca_file)}
    process = MimicProcess(tmp_path / "data", move_destinations=json.dumps(registry)).start()
    try:
        assoc = associate(process.port, _tls(process), transfer_syntaxes=["1.2.840.10008.1.2.1"])
        assert assoc.send_c_store(ct_small()).Status == 0
        assoc.release()
        for name in registry:
            before, logged = counter.connections, len(process.log_entries())
            [final] = _move(process.port, _tls(process), _ct_study(), name)
            assert final.Status == 0xA702, (name, hex(final.Status))
            assert wait_for(lambda before=before: counter.connections > before,
                            timeout=5), name
            errors = [e for e in process.log_entries()[logged:] if e["level"] == "ERROR"]
            assert errors == [], (name, errors)
    finally:
        assert process.stop() == 0, process.log()
