"""The access policy through the network: per identity services, Move Destinations, query
limits, and the policy file reloaded without restart (issue 13, "Access policy").

One ``mimic serve`` with a policy file; its trust entries carry rules in their binding files
(``devpki.issue_client(rule=...)``) or get them from the policy file. Real pynetdicom and dcmtk
peers; every refusal is checked for its DICOM answer, for "nothing stored / nothing sent" and
for its audit record.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from mimic_server.certs import devpki
from tests.data import ct_copy, ct_small
from tests.support import HOST, MimicProcess, client_context, dcmtk, wait_for

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
EXPLICIT = "1.2.840.10008.1.2.1"
USER_REJECTION = 0x01

POLICY = """
[default]
services = ["echo", "store"]

[certificates.fileonly]
services = ["echo", "find"]
"""


class Counter:
    """A TCP listener that counts (and closes) every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


class Setup:
    def __init__(self, server: MimicProcess, allowed: Counter, denied: Counter,
                 policy: Path) -> None:
        self.server, self.allowed, self.denied, self.policy = server, allowed, denied, policy

    def context(self, name: str) -> Any:
        certs = self.server.certs
        return client_context(certs / "clients" / name / "client.pem",
                              certs / "clients" / name / "client.key", certs / "ca" / "ca.pem")

    def associate(self, name: str, contexts: list[str], **kwargs: Any) -> Any:
        ae = AE(ae_title=name.upper()[:16])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        for uid in contexts:
            ae.add_requested_context(uid, [EXPLICIT])
        return ae.associate(HOST, self.server.port, ae_title="MIMIC",
                            tls_args=(self.context(name), "localhost"), **kwargs)

    def audit(self) -> list[dict[str, Any]]:
        path = self.server.data_dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def dcmtk_args(self, name: str) -> list[str]:
        certs = self.server.certs
        return ["+tls", str(certs / "clients" / name / "client.key"),
                str(certs / "clients" / name / "client.pem"),
                "+cf", str(certs / "ca" / "ca.pem"), "-aet", name.upper(), "-aec", "MIMIC",
                HOST, str(self.server.port)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("policy")
    data = root / "data"
    certs = data / "certs"
    devpki.init(certs)  # modality1: every service, every destination
    devpki.issue_client(certs, "ct")  # no rule: a modality
    devpki.issue_client(certs, "qr", rule={
        "services": ["echo", "find", "move", "get"], "move_destinations": ["ALLOWED"],
        "max_find_results": 1,
    })
    devpki.issue_client(certs, "narrow", rule={
        "services": ["find"], "find_requires": ["PatientID", "AccessionNumber"],
    })
    devpki.issue_client(certs, "fileonly")
    policy = root / "policy.toml"
    policy.write_text(POLICY)
    allowed, denied = Counter(), Counter()
    destinations = {
        "ALLOWED": {"host": HOST, "port": allowed.port, "tls": False},
        "DENIED": {"host": HOST, "port": denied.port, "tls": False},
    }
    server = MimicProcess(data, move_destinations=json.dumps(destinations),
                          policy_file=str(policy), cert_refresh_seconds="0.5").start()
    one = Setup(server, allowed, denied, policy)
    assoc = one.associate("modality1", [CTImageStorage])
    assert assoc.send_c_store(ct_small()).Status == 0
    second = ct_copy(root, "1.2.826.0.1.3680043.8.498.77.1", "1.2.826.0.1.3680043.8.498.77.2")
    assert assoc.send_c_store(second).Status == 0
    assoc.release()
    yield one
    assert server.stop() == 0, server.log()


def _study() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = pydicom.dcmread(ct_small()).StudyInstanceUID
    return ds


def _series_query() -> Dataset:
    ds = _study()
    ds.QueryRetrieveLevel = "SERIES"
    ds.SeriesInstanceUID = ""
    return ds


def _refused_services(assoc: Any) -> set[str]:
    return {str(cx.abstract_syntax) for cx in assoc.rejected_contexts
            if cx.result == USER_REJECTION}


def test_modality_may_echo_and_store_only(setup: Setup) -> None:
    before = setup.server.instance_count()
    assoc = setup.associate("ct", [Verification, CTImageStorage, FIND, MOVE, GET])
    assert assoc.is_established
    assert _refused_services(assoc) == {FIND, MOVE, GET}
    assert {str(cx.abstract_syntax) for cx in assoc.accepted_contexts} == {
        Verification, CTImageStorage}
    assert assoc.send_c_echo().Status == 0
    with pytest.raises(ValueError):  # no accepted context: nothing can be asked, nothing answered
        list(assoc.send_c_find(_study(), FIND))
    assoc.release()
    assert setup.server.instance_count() == before
    [record] = [r for r in setup.audit() if r.get("calling_ae") == "CT"
                and "presentation contexts refused" in r.get("reason", "")]
    assert record["EventID"]["meaning"] == "Security Alert"
    assert record["event_type"] == "use-of-restricted-function"
    assert record["trust_name"] == "ct"
    assert set(record["service"].split(",")) == {"C-FIND", "C-MOVE", "C-GET"}


def test_an_association_with_nothing_granted_is_rejected(setup: Setup) -> None:
    assoc = setup.associate("ct", [FIND, MOVE])
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x01)
    assert any(r.get("reason") == "no proposed presentation context is for a granted service"
               and r.get("trust_name") == "ct" for r in setup.audit())


def test_dcmtk_findscu_of_a_modality_is_rejected(setup: Setup) -> None:
    result = dcmtk("findscu", *dcmtk_tls_args(setup, "ct"), "-S", "-k",
                   "QueryRetrieveLevel=STUDY", "-k", "PatientID=*")
    assert result.returncode != 0
    assert "Association Rejected" in result.stdout + result.stderr


def dcmtk_tls_args(setup: Setup, name: str) -> list[str]:
    return ["-v", *setup.dcmtk_args(name)]


def test_query_retrieve_identity_finds_within_its_limit(setup: Setup) -> None:
    assoc = setup.associate("qr", [FIND])
    assert assoc.is_established
    answers = [status.Status for status, _ in assoc.send_c_find(_series_query(), FIND)]
    assoc.release()
    # Two series match; the identity's own limit is 1 (the server's is 10000).
    assert answers == [0xFF00, 0xA700]


def test_modality1_is_not_limited(setup: Setup) -> None:
    assoc = setup.associate("modality1", [FIND])
    answers = [status.Status for status, _ in assoc.send_c_find(_series_query(), FIND)]
    assoc.release()
    assert answers == [0xFF00, 0xFF00, 0x0000]


def test_move_to_a_destination_not_granted_opens_no_association(setup: Setup) -> None:
    assoc = setup.associate("qr", [MOVE])
    before_denied, before_allowed = setup.denied.connections, setup.allowed.connections
    [final] = [s for s, _ in assoc.send_c_move(_study(), "DENIED", MOVE)]
    assert final.Status == 0x0124
    assert "not granted" in str(final.get("ErrorComment", ""))
    assert setup.denied.connections == before_denied
    # The granted destination is connected to (the counter closes it: 0xA702).
    [final] = [s for s, _ in assoc.send_c_move(_study(), "ALLOWED", MOVE)]
    assoc.release()
    assert final.Status == 0xA702
    assert setup.allowed.connections == before_allowed + 1
    assert any(r.get("destination") == "DENIED" and r.get("trust_name") == "qr"
               and r["EventID"]["meaning"] == "Security Alert" for r in setup.audit())


def test_get_is_granted_without_store(setup: Setup) -> None:
    """A C-GET's storage contexts (SCP role) belong to the C-GET; a C-STORE of the
    requestor's own on them is still refused (0x0124), and nothing is stored."""
    ae = AE(ae_title="QR")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(GET, [EXPLICIT])
    ae.add_requested_context(CTImageStorage, [EXPLICIT])
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    from pynetdicom import evt
    assoc = ae.associate(HOST, setup.server.port, ae_title="MIMIC",
                         tls_args=(setup.context("qr"), "localhost"),
                         ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    statuses = [s.Status for s, _ in assoc.send_c_get(_study(), GET)]
    assert statuses[-1] == 0x0000 and len(received) == 2
    before = setup.server.instance_count()
    copy = ct_copy(setup.policy.parent, "1.2.826.0.1.3680043.8.498.77.9")
    assert assoc.send_c_store(copy).Status == 0x0124
    assoc.release()
    assert setup.server.instance_count() == before


@pytest.mark.parametrize("keys", [
    {"PatientID": "*"}, {"PatientID": "", "AccessionNumber": "?*"}, {"PatientName": "CT*"},
    # list matching is an OR: one value of "*" among several matches every patient
    {"PatientID": "*\\NOSUCH"}, {"AccessionNumber": "A1\\*"},
    {"PatientID": "^", "AccessionNumber": "- "},  # separators match as much as "*"
    {"PatientID": "*\t"}, {"AccessionNumber": "\u3000*"},  # stripped as the matcher strips
])
def test_find_must_narrow(setup: Setup, keys: dict[str, str]) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    assoc = setup.associate("narrow", [FIND])
    answers = [(s.Status, s.get("ErrorComment")) for s, _ in assoc.send_c_find(query, FIND)]
    assoc.release()
    [(status, comment)] = answers  # no match was sent
    assert status == 0x0124
    assert "AccessionNumber, PatientID" in str(comment)


def test_a_list_with_an_empty_value_still_narrows(setup: Setup) -> None:
    """An empty value among several matches nothing (list matching): "ID\\" is as narrow
    as "ID"."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientID = pydicom.dcmread(ct_small()).PatientID + "\\"
    assoc = setup.associate("narrow", [FIND])
    statuses = [s.Status for s, _ in assoc.send_c_find(query, FIND)]
    assoc.release()
    assert statuses[-1] == 0x0000 and 0xFF00 in statuses


def test_find_that_narrows_is_answered(setup: Setup) -> None:
    patient_id = pydicom.dcmread(ct_small()).PatientID
    result = dcmtk("findscu", *dcmtk_tls_args(setup, "narrow"), "-S", "-k",
                   "QueryRetrieveLevel=STUDY", "-k", f"PatientID={patient_id}",
                   "-k", "StudyInstanceUID")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Final Find Response (Success)" in result.stdout + result.stderr
    refused = dcmtk("findscu", *dcmtk_tls_args(setup, "narrow"), "-S", "-k",
                    "QueryRetrieveLevel=STUDY", "-k", "PatientID=*", "-k", "StudyInstanceUID")
    # dcmtk 3.6.7 has no name for 0x0124 in a C-FIND response.
    assert "Received Final Find Response (Unknown Status: 0x124)" in refused.stderr


def test_policy_file_change_and_breakage(setup: Setup) -> None:
    """A change applies to new associations without restart; a broken file keeps the last
    good policy and says so at ERROR on every attempt."""
    assoc = setup.associate("fileonly", [Verification, FIND])
    assert not _refused_services(assoc)
    assoc.release()
    since = len(setup.server.log_entries())
    setup.policy.write_text(POLICY.replace('["echo", "find"]', '["echo"]'))

    def find_refused() -> bool:
        assoc = setup.associate("fileonly", [Verification, FIND])
        refused = _refused_services(assoc) == {FIND}
        assoc.release()
        return refused

    def loaded_by() -> set[Any]:
        return {e.get("worker") for e in setup.server.log_entries()[since:]
                if e.get("message") == "access policy loaded"}

    assert wait_for(find_refused, timeout=20)
    # Every worker reads the file on its own poll: each must have loaded this one before the
    # file breaks, so that it is the last good policy of each (whichever worker accepts).
    workers = {e.get("worker") for e in setup.server.log_entries()[:since]
               if e.get("message") == "access policy loaded"}
    assert wait_for(lambda: loaded_by() >= workers, timeout=20)
    assert any(r.get("event_type") == "security-configuration" and r["EventOutcomeIndicator"] == 0
               for r in setup.audit())

    setup.policy.write_text("[certificates.fileonly]\nservices = [\"fly\"]\n")

    def errors() -> int:
        return sum(1 for e in setup.server.log_entries() if e.get("level") == "ERROR"
                   and "last good policy" in e.get("message", ""))

    assert wait_for(lambda: errors() >= 2, timeout=20)  # every attempt, not once
    assert find_refused()  # still the last good rules (echo only), not the default, not none
    assoc = setup.associate("fileonly", [Verification])
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    failures = [r for r in setup.audit() if r.get("event_type") == "security-configuration"
                and r["EventOutcomeIndicator"] == 8]
    # One Security Alert per broken version from each worker process (each loads the file).
    assert len(failures) == setup.server.worker_count()
    setup.policy.write_text(POLICY)
    assert wait_for(lambda: not find_refused(), timeout=20)


def test_sighup_reads_the_policy_at_once(setup: Setup) -> None:
    setup.policy.write_text(POLICY.replace('["echo", "find"]', '["echo", "store"]'))
    setup.server.hup()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assoc = setup.associate("fileonly", [Verification, FIND])
        refused = _refused_services(assoc)
        assoc.release()
        if refused == {FIND}:
            break
        time.sleep(0.1)
    assert refused == {FIND}
    setup.policy.write_text(POLICY)


def test_missing_policy_file_is_a_configuration_error(tmp_path: Path) -> None:
    server = MimicProcess(tmp_path / "data", policy_file=str(tmp_path / "absent.toml"))
    with pytest.raises(RuntimeError, match="exited 2"):
        server.start()


def test_a_bad_binding_rule_leaves_its_new_entry_untrusted(setup: Setup) -> None:
    """A rule the parser refuses (a typo) fails its entry whole, logged at ERROR naming the
    file: read as the default, it would grant store, which the rule meant to withhold. An
    entry issued after it with a good rule is trusted: the refresh read both."""
    certs = setup.server.certs
    # Issued beside the archive's PKI (same CA), then put in place after its bad binding:
    # issue_client itself writes the binding asked for, never a leftover one.
    scratch = setup.server.data_dir.parent / "typo-pki"
    shutil.copytree(certs / "ca", scratch / "ca")
    devpki.issue_client(scratch, "typo", rule=None)
    shutil.copytree(scratch / "clients" / "typo", certs / "clients" / "typo")
    (certs / "trusted" / "typo.json").write_text(json.dumps({"services": ["fnid"]}))
    shutil.copy(scratch / "trusted" / "typo.pem", certs / "trusted" / "typo.pem")
    devpki.issue_client(certs, "typo-free", rule={"services": ["echo", "find"]})

    def established(name: str) -> bool:
        assoc = setup.associate(name, [Verification, FIND])
        ok = assoc.is_established and not _refused_services(assoc)
        if assoc.is_established:
            assoc.release()
        return bool(ok)

    assert wait_for(lambda: established("typo-free"), timeout=20)
    assert any(e.get("level") == "ERROR" and e.get("file") == "trusted/typo.json"
               for e in setup.server.log_entries())
    assoc = setup.associate("typo", [Verification, FIND])
    assert not assoc.is_established
