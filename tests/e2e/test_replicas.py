"""Two replicas: two ``mimic serve`` processes sharing one PostgreSQL database and one object
store (Azurite), as Container Apps runs them.

Four senders spread over both store into the same study at once; either replica answers
C-FIND for everything and C-GET / C-MOVE byte for byte for objects the other received; a
replica killed with SIGKILL in mid-stream loses nothing it answered Success for, and
``mimic reconcile`` afterwards finds only leftovers that were never acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pydicom
import pytest
from azure.storage.blob import BlobServiceClient
from pydicom.uid import generate_uid
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.azurite import AZURITE_BLOB, Azurite
from tests.data import ct_copy
from tests.database import migrated_database
from tests.e2e.test_query_retrieve import Archive, _dataset_bytes, _id, _received_files
from tests.support import (
    HOST,
    MimicProcess,
    associate,
    client_context,
    free_port,
    start_storescp,
    wait_for,
)
from tests.test_cli import mimic

pytestmark = [pytest.mark.azurite, pytest.mark.postgres, pytest.mark.dcmtk]

CONTAINER = "replicas"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
SENDERS, PER_SENDER = 4, 12


@dataclass
class Replicas:
    a: MimicProcess
    b: MimicProcess
    database: str
    blob: Azurite
    destination_dir: Path
    destination_port: int

    def dsn(self) -> str:
        return self.database.replace("postgresql+psycopg://", "postgresql://")

    def rows(self, sql: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.dsn()) as conn:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]

    def container(self):  # type: ignore[no-untyped-def]
        service = BlobServiceClient.from_connection_string(self.blob.connection_string)
        return service.get_container_client(CONTAINER)


@pytest.fixture(scope="module")
def database(postgres_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database, migrated with 'mimic db upgrade', dropped afterwards."""
    with migrated_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Replicas]:
    if not AZURITE_BLOB.exists():
        pytest.skip("Azurite is not installed: run scripts/test.sh (npm install)")
    root = tmp_path_factory.mktemp("replicas")
    blob = Azurite(root / "azurite").start()
    destination_port = free_port()
    registry = json.dumps({"STORESCP": {"host": HOST, "port": destination_port, "tls": True,
                                        "server_name": "localhost"}})
    shared = {
        "database_url": database, "blob_connection_string": blob.connection_string,
        "blob_container": CONTAINER, "move_destinations": registry,
    }
    a = MimicProcess(root / "a", **shared).start()  # makes the development PKI
    # The second replica trusts and presents what the first one made, as two replicas
    # reading one Key Vault do.
    b = MimicProcess(root / "b", cert_dir=str(a.certs), **shared).start()
    scp, out = start_storescp(root, a, destination_port)
    try:
        yield Replicas(a, b, database, blob, out, destination_port)
    finally:
        scp.terminate()
        scp.wait(10)
        for server in (a, b):
            server.stop()
        blob.stop()


def _tls(server: MimicProcess):  # type: ignore[no-untyped-def]
    """The first client's TLS context; both replicas use the first one's certificates."""
    certs = Path(server.settings.get("cert_dir") or server.certs)
    client = certs / "clients" / "modality1"
    return client_context(client / "client.pem", client / "client.key", certs / "ca" / "ca.pem")


def _send(server: MimicProcess, paths: list[Path], acknowledged: list[str],
          stop_after: threading.Event | None = None) -> None:
    """Send ``paths`` over one association; record every SOP Instance UID answered Success."""
    assoc = associate(server.port, _tls(server), contexts=[CT_IMAGE], transfer_syntaxes=[EXPLICIT])
    assert assoc.is_established
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            if status is None or "Status" not in status:
                return  # the association is gone (the replica was killed)
            assert status.Status == 0x0000, status
            acknowledged.append(path.stem)
            if stop_after is not None and stop_after.is_set():
                return
    finally:
        if assoc.is_established:
            assoc.release()


def _study(directory: Path, count: int, study: str, series: list[str]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = ct_copy(directory, generate_uid(), series[n % len(series)])
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_four_senders_over_two_replicas_into_one_study(replicas: Replicas,
                                                       tmp_path: Path) -> None:
    study = generate_uid()
    series = [generate_uid(), generate_uid()]
    paths = _study(tmp_path, SENDERS * PER_SENDER, study, series)
    acknowledged: list[str] = []
    threads = [
        threading.Thread(
            target=_send,
            args=((replicas.a, replicas.b)[n % 2], paths[n::SENDERS], acknowledged),
        )
        for n in range(SENDERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(acknowledged) == sorted(p.stem for p in paths)

    # Exact counts, no duplicate parent rows although both replicas created them at once.
    assert replicas.rows("SELECT count(*) FROM studies WHERE study_instance_uid = %s",
                         study) == [(1,)]
    assert replicas.rows(
        "SELECT count(*) FROM series s JOIN studies t ON s.study_fk = t.id"
        " WHERE t.study_instance_uid = %s", study) == [(2,)]
    instance_rows = replicas.rows(
        "SELECT i.sop_instance_uid, i.object_key, i.sha256 FROM instances i"
        " JOIN series s ON i.series_fk = s.id JOIN studies t ON s.study_fk = t.id"
        " WHERE t.study_instance_uid = %s", study)
    assert sorted(r[0] for r in instance_rows) == sorted(p.stem for p in paths)
    container = replicas.container()
    for _, key, sha256 in instance_rows:
        assert hashlib.sha256(container.download_blob(key).readall()).hexdigest() == sha256

    # C-FIND through either replica sees every instance, whichever replica received it.
    for server in (replicas.a, replicas.b):
        archive = Archive(server, replicas.destination_dir, replicas.destination_port)
        archive.tls = lambda s=server: _tls(s)  # type: ignore[method-assign]
        answers, final = archive.find(_id("STUDY", StudyInstanceUID=study,
                                          NumberOfStudyRelatedInstances=""))
        assert final.Status == 0 and len(answers) == 1
        assert int(answers[0].NumberOfStudyRelatedInstances) == len(paths)
        images, final = archive.find(_id("IMAGE", StudyInstanceUID=study,
                                         SeriesInstanceUID=series[0], SOPInstanceUID=""))
        assert final.Status == 0
        assert {str(i.SOPInstanceUID) for i in images} == {
            p.stem for p in paths[0::2]
        }

    originals = {p.stem: _dataset_bytes(p) for p in paths}

    # C-GET through B returns, byte for byte, the objects A received (and the reverse).
    for server in (replicas.a, replicas.b):
        received = _c_get(server, study)
        assert set(received) == set(originals)
        assert all(received[uid] == originals[uid] for uid in originals)

    # C-MOVE through B delivers what A received to a dcmtk storescp.
    from_a = [p.stem for n, p in enumerate(paths) if n % SENDERS in (0, 2)]
    archive = Archive(replicas.b, replicas.destination_dir, replicas.destination_port)
    archive.tls = lambda: _tls(replicas.b)  # type: ignore[method-assign]
    assoc = archive.associate([StudyRootQueryRetrieveInformationModelMove])
    responses = list(assoc.send_c_move(_id("STUDY", StudyInstanceUID=study), "STORESCP",
                                       StudyRootQueryRetrieveInformationModelMove))
    assoc.release()
    assert responses[-1][0].Status == 0x0000, responses[-1][0]
    assert wait_for(lambda: set(from_a) <= set(_received_files(replicas.destination_dir)), 30)
    delivered = _received_files(replicas.destination_dir)
    for uid in from_a:
        assert _dataset_bytes(delivered[uid]) == originals[uid]


def _c_get(server: MimicProcess, study: str) -> dict[str, bytes]:
    from pynetdicom import AE, build_role, evt

    received: dict[str, bytes] = {}

    def on_store(event):  # type: ignore[no-untyped-def]
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CT_IMAGE, EXPLICIT)
    assoc = ae.associate(HOST, server.port, ae_title="MIMIC", tls_args=(_tls(server), "localhost"),
                         ext_neg=[build_role(CT_IMAGE, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    responses = list(assoc.send_c_get(_id("STUDY", StudyInstanceUID=study),
                                      StudyRootQueryRetrieveInformationModelGet))
    assoc.release()
    assert responses[-1][0].Status == 0x0000, responses[-1][0]
    return received


def test_kill_9_in_mid_stream_loses_nothing_acknowledged(replicas: Replicas,
                                                         tmp_path: Path) -> None:
    """Runs last: it kills replica A."""
    study = generate_uid()
    paths = _study(tmp_path, 150, study, [generate_uid()])
    acknowledged: list[str] = []
    sender = threading.Thread(target=_send, args=(replicas.a, paths, acknowledged))
    sender.start()
    assert wait_for(lambda: len(acknowledged) >= 20, 60)
    assert replicas.a.proc is not None
    replicas.a.proc.kill()  # SIGKILL: no drain, no cleanup
    replicas.a.proc.wait(10)
    sender.join(60)
    assert not sender.is_alive()
    assert 20 <= len(acknowledged) < len(paths)

    # Everything answered Success is indexed, and its object is whole.
    rows = {r[0]: (r[1], r[2]) for r in replicas.rows(
        "SELECT i.sop_instance_uid, i.object_key, i.sha256 FROM instances i"
        " JOIN series s ON i.series_fk = s.id JOIN studies t ON s.study_fk = t.id"
        " WHERE t.study_instance_uid = %s", study)}
    assert set(acknowledged) <= set(rows)
    container = replicas.container()
    for uid in acknowledged:
        key, sha256 = rows[uid]
        assert hashlib.sha256(container.download_blob(key).readall()).hexdigest() == sha256
    # ... and the surviving replica serves it.
    received = _c_get(replicas.b, study)
    assert set(acknowledged) <= set(received)

    # reconcile finds no broken row; any orphan belongs to an object never acknowledged.
    done = mimic("reconcile", "--json", "--data-dir", str(replicas.b.data_dir),
                 "--database-url", replicas.database,
                 "--blob-connection-string", replicas.blob.connection_string,
                 "--blob-container", CONTAINER)
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert report["missing_objects"] == 0 and report["corrupt_objects"] == 0, report
    # An object key ends in <SOP Instance UID>.<16 hex>.dcm.
    orphan_uids = {key.rsplit("/", 1)[-1].rsplit(".", 2)[0] for key in report["orphans"]}
    assert not (orphan_uids & set(acknowledged)), report
