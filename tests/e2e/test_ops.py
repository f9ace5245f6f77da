"""The operations HTTP side of a real ``mimic serve``: health, readiness, metrics, drain.

The probes and the scrape are what a container platform and Prometheus do: plain HTTP GETs on
the ops port. The traffic they report is real (pynetdicom and Python ``ssl`` peers), and the
exposition is read back with prometheus_client's own text parser.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from mimic_server.signals import REPEAT_AFTER
from mimic_server.web.metrics import (
    HANDSHAKE_FAILURES,
    OUTCOMES,
    ROLES,
    SERVICES,
    STATUS_CATEGORIES,
)
from tests.data import ct_small
from tests.support import (
    HOST,
    MimicProcess,
    associate,
    client_context,
    drained_whole,
    maps_numpy,
    wait_for,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"

#: Every label and the values it may take: a scrape never holds anything else.
BOUNDED_LABELS = {
    "outcome": set(OUTCOMES),
    "service": set(SERVICES),
    "status": set(STATUS_CATEGORIES),
    "reason": set(HANDSHAKE_FAILURES),
    "role": set(ROLES),
    "le": None,  # histogram buckets: fixed in code
    "worker": None,  # a worker process's slot: 0 .. MIMIC_WORKERS - 1
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MimicProcess]:
    process = MimicProcess(tmp_path_factory.mktemp("ops") / "data").start()
    yield process
    assert process.stop() == 0, process.log()


def samples(server: MimicProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = server.ops("/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(server: MimicProcess, name: str, **labels: str) -> float:
    return samples(server).get((name, tuple(sorted(labels.items()))), 0.0)


def readiness(server: MimicProcess) -> tuple[int, dict]:
    status, body = server.ops("/readyz")
    return status, json.loads(body)


def test_a_running_archive_is_alive_and_ready(server: MimicProcess) -> None:
    status, body = server.ops("/healthz")
    assert status == 200 and json.loads(body)["status"] == "alive"
    status, ready = readiness(server)
    assert status == 200, ready
    # "workers": with several worker processes (MIMIC_WORKERS, default: the CPUs)
    assert set(ready["checks"]) - {"workers"} == {
        "index", "object_store", "certificate", "draining"
    }
    assert all(check["ok"] for check in ready["checks"].values())
    assert "valid until" in ready["checks"]["certificate"]["detail"]
    assert server.ops("/nothing")[0] == 404


def test_metrics_count_what_peers_did(server: MimicProcess) -> None:
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    before = samples(server)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return samples(server).get(key, 0.0) - before.get(key, 0.0)

    assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT_LE])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(ct_small()).Status == 0
    assert value(server, "mimic_associations_active") == 1
    assoc.release()

    refused = associate(server.port, ctx, called="NOT-MIMIC")
    assert refused.is_rejected

    no_certificate = client_context(None, None, server.ca_cert)
    with socket.create_connection((HOST, server.port), timeout=10) as raw:
        try:
            with no_certificate.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.recv(1)  # TLS 1.3: the server's refusal arrives on the first read
        except (ssl.SSLError, OSError):
            pass

    assert wait_for(lambda: grew("mimic_tls_handshake_failures_total",
                                 reason="certificate_missing") == 1)
    assert wait_for(lambda: value(server, "mimic_associations_active") == 0)
    assert grew("mimic_associations_total", outcome="accepted") == 1
    assert grew("mimic_associations_total", outcome="released") == 1
    assert grew("mimic_associations_total", outcome="rejected") == 1
    assert grew("mimic_dimse_requests_total", service="C-ECHO", status="success") == 1
    assert grew("mimic_dimse_requests_total", service="C-STORE", status="success") == 1
    assert grew("mimic_dimse_request_duration_seconds_count", service="C-STORE") == 1
    assert 0 < grew("mimic_stored_bytes_total") < ct_small().stat().st_size  # the data set
    assert grew("mimic_index_group_commits_total") == 1  # a lone C-STORE: its own commit
    assert grew("mimic_index_group_commit_instances_total") == 1

    now = samples(server)
    assert now[("mimic_trusted_certificates", ())] >= 1
    assert now[("mimic_certificate_not_after_timestamp_seconds", (("role", "server"),))] > 0
    assert now[("mimic_certificate_not_after_timestamp_seconds", (("role", "client"),))] > 0
    assert now[("mimic_trust_refresh_failures_total", ())] == 0


def test_metrics_labels_are_bounded_and_hold_no_patient_data(server: MimicProcess) -> None:
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT_LE])
    assert assoc.send_c_store(ct_small()).Status == 0
    assoc.release()
    for (_name, labels), _value in samples(server).items():
        for label, label_value in labels:
            assert label in BOUNDED_LABELS, label
            allowed = BOUNDED_LABELS[label]
            assert allowed is None or label_value in allowed, (label, label_value)
    text = server.ops("/metrics")[1].decode()
    ds = pydicom.dcmread(ct_small())
    for secret in (str(ds.PatientName), ds.PatientID, ds.SOPInstanceUID, ds.StudyInstanceUID,
                   "MODALITY1", "modality1"):
        assert secret not in text


def test_readiness_fails_while_the_object_directory_is_unusable(server: MimicProcess) -> None:
    objects = server.data_dir / "objects"
    aside = server.data_dir / "objects-aside"
    objects.rename(aside)
    try:
        status, ready = readiness(server)
        assert status == 503, ready
        assert ready["checks"]["object_store"]["ok"] is False
        assert ready["checks"]["index"]["ok"] is True
        status, _ = server.ops("/healthz")
        assert status == 200  # alive: a restart would not bring the directory back
    finally:
        aside.rename(objects)
    assert readiness(server)[0] == 200


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_listener_death_makes_healthz_503(tmp_path: Path) -> None:
    """In process: a listener loop that dies (here: an error in its accept loop)."""
    from mimic_server.app import Archive
    from mimic_server.config import Settings
    from tests.support import free_port

    ops_port = free_port()
    archive = Archive(Settings(data_dir=tmp_path / "data", host=HOST, port=0, tls=False,
                               ops_host=HOST, ops_port=ops_port))
    archive.start()
    probe = MimicProcess(tmp_path / "unused", ops_port=str(ops_port))
    try:
        assert probe.ops("/healthz")[0] == 200
        assert archive.server is not None

        def broken() -> None:
            raise RuntimeError("accept loop broke")

        archive.server.service_actions = broken  # type: ignore[method-assign]
        # The accept loop turns when a connection arrives (an idle one does not wake).
        socket.create_connection(archive.address, timeout=10).close()
        assert wait_for(lambda: not archive.listener_alive())
        status, body = probe.ops("/healthz")
        assert status == 503 and json.loads(body)["listener"] == "dead"
    finally:
        archive.stop(0)


def test_ops_port_zero_turns_the_listener_off(tmp_path: Path) -> None:
    process = MimicProcess(tmp_path / "data", ops_port="0").start()
    try:
        listening = next(e for e in process.log_entries() if e.get("message") == "listening")
        assert listening["ops"] == "off"
    finally:
        assert process.stop() == 0


@pytest.mark.postgres
def test_readiness_fails_while_the_database_is_down(tmp_path: Path) -> None:
    from tests.conftest import migrate
    from tests.database import PrivateCluster

    cluster = PrivateCluster()
    cluster.start()
    process = None
    try:
        url = cluster.url.replace("postgresql://", "postgresql+psycopg://")
        migrate(url)
        process = MimicProcess(tmp_path / "data", database_url=url).start()
        assert readiness(process)[0] == 200
        cluster.stop()
        status, ready = readiness(process)
        assert status == 503, ready
        assert ready["checks"]["index"]["ok"] is False
        assert ready["checks"]["object_store"]["ok"] is True
        body = json.dumps(ready)
        assert str(cluster.port) not in body and "postgres@" not in body
        cluster.start()
        assert wait_for(lambda: readiness(process)[0] == 200, timeout=30)
    finally:
        if process is not None:
            assert process.stop() == 0, process.log()
        cluster.remove()


@pytest.mark.postgres
def test_readiness_fails_while_the_database_refuses_writes(tmp_path: Path) -> None:
    """A PostgreSQL turned read-only after start (as Azure does when its storage is nearly
    full: default_transaction_read_only, applied on reload to open sessions) still answers
    SELECT 1, while every C-STORE is refused 0xA700: /readyz answers 503 for it, and 200
    again once writes are taken."""
    import psycopg

    from tests.conftest import migrate
    from tests.database import PrivateCluster

    cluster = PrivateCluster()
    cluster.start()
    process = None

    def read_only(on: bool) -> None:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            value = "on" if on else "off"
            conn.execute(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
            conn.execute("SELECT pg_reload_conf()")

    try:
        url = cluster.url.replace("postgresql://", "postgresql+psycopg://")
        migrate(url)
        process = MimicProcess(tmp_path / "data", database_url=url).start()
        ctx = client_context(process.client_cert, process.client_key, process.ca_cert)
        assert readiness(process)[0] == 200
        read_only(True)
        ds = pydicom.dcmread(ct_small())
        ds.SOPInstanceUID = generate_uid()
        assoc = associate(process.port, ctx)
        try:
            assert assoc.send_c_store(ds).Status == 0xA700
        finally:
            assoc.release()
        status, ready = readiness(process)
        assert status == 503, ready
        assert ready["checks"]["index"] == {
            "ok": False, "detail": "index is read-only (transaction_read_only is on)"
        }
        read_only(False)
        assert wait_for(lambda: readiness(process)[0] == 200, timeout=30)
    finally:
        if process is not None:
            assert process.stop() == 0, process.log()
        cluster.remove()


def test_a_second_ctrl_c_ends_the_drain_at_once(tmp_path: Path) -> None:
    """One process (MIMIC_WORKERS=1), stopped with Ctrl-C while an association is open, and
    Ctrl-C again while it drains (a second or more later): the open association is aborted
    and the process exits 0 at once, not after MIMIC_DRAIN_SECONDS; the object answered
    Success is kept."""
    server = MimicProcess(tmp_path / "data", workers="1", drain_seconds="300",
                          network_timeout="600").start()
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT_LE])
    assoc.network_timeout = 600  # no idle peer that ends the drain by itself
    template = pydicom.dcmread(ct_small())
    assert assoc.send_c_store(template).Status == 0
    assert server.proc is not None
    assert not maps_numpy(server.proc.pid)  # it serves DICOM without (archive_imports.py)
    server.proc.send_signal(signal.SIGINT)
    first = time.monotonic()
    assert wait_for(lambda: server.ops("/readyz")[0] == 503)
    assert assoc.is_established  # draining: not aborted yet
    # Sooner than REPEAT_AFTER, it would be the first stop passed on twice.
    time.sleep(max(0.0, first + REPEAT_AFTER + 0.1 - time.monotonic()))
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(30) == 0, server.log()  # the drain would have lasted 300 s
    assert wait_for(lambda: assoc.is_aborted, timeout=10)
    server.stop()
    entries = server.log_entries()
    cut = next(e for e in entries if e.get("message") == "drain cut short")
    assert cut["open_associations"] == 1 and cut["level"] == "WARNING"
    stopped = next(e for e in entries if e.get("message") == "stopped")
    assert stopped["aborted_associations"] == 1
    assert server.instance_count() == 1


def test_one_stop_passed_on_twice_still_drains_one_process(tmp_path: Path) -> None:
    """One process (MIMIC_WORKERS=1) given one stop twice, a few milliseconds apart (as
    coreutils ``timeout`` passes it on to the process and then to its process group): the
    open association drains (still served, released by its peer), nothing is cut short."""
    server = MimicProcess(tmp_path / "data", workers="1", drain_seconds="120",
                          network_timeout="600").start()
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT_LE])
    assoc.network_timeout = 600
    template = pydicom.dcmread(ct_small())
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.02)  # handled by then: two signals of a kind pending at once are one
    server.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: server.ops("/readyz")[0] == 503)
    time.sleep(1.0)  # a cut drain aborts within a drain wait
    assert assoc.is_established
    assert assoc.send_c_store(template).Status == 0
    assoc.release()
    assert server.proc.wait(60) == 0, server.log()
    server.stop()
    assert drained_whole(server)["aborted_associations"] == 0
    assert server.instance_count() == 1


def test_sigterm_drains_a_sender_in_mid_stream(tmp_path: Path) -> None:
    """SIGTERM while a modality streams objects: /readyz 503 at once, new associations are
    refused, the open one gets MIMIC_DRAIN_SECONDS and is then aborted, the process exits 0,
    and every object answered Success is in the index and the object store."""
    server = MimicProcess(tmp_path / "data", drain_seconds="3").start()
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    template = pydicom.dcmread(ct_small())
    succeeded: list[str] = []
    answered_other: list[str] = []
    ended = threading.Event()

    def send() -> None:
        assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT_LE])
        try:
            for _ in range(1_000_000):  # until the drain ends the association
                uid = generate_uid()
                template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = uid
                status = assoc.send_c_store(template)
                if "Status" not in status:
                    return  # aborted: no answer
                (succeeded if status.Status == 0 else answered_other).append(uid)
        finally:
            ended.set()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert wait_for(lambda: len(succeeded) >= 20 or ended.is_set(), timeout=60)
    assert not ended.is_set()
    assert server.proc is not None
    server.proc.send_signal(15)

    assert wait_for(lambda: server.ops("/readyz")[0] == 503)
    assert json.loads(server.ops("/readyz")[1])["checks"]["draining"]["ok"] is False
    assert server.ops("/healthz")[0] == 200  # draining is not dying
    latecomer = associate(server.port, ctx)
    assert not latecomer.is_established

    server.proc.wait(60)
    sender.join(30)
    assert server.stop() == 0, server.log()
    assert ended.is_set() and not answered_other
    stopped = next(e for e in server.log_entries() if e.get("message") == "stopped")
    assert stopped["aborted_associations"] == 1
    indexed = {row[0] for row in server._query("SELECT sop_instance_uid FROM instances")}
    assert set(succeeded) <= indexed, set(succeeded) - indexed
    for uid in succeeded:
        assert server.object_for(uid).is_file()
