"""The Azure mode end to end: Blob Storage (Azurite) + PostgreSQL behind a real ``mimic serve``.

pydicom's test files go in over TLS, C-FIND answers from PostgreSQL, C-MOVE delivers a study
byte-identical to a dcmtk ``storescp +tls``; a blob corrupted behind the server's back fails
only its own C-GET sub-operation (a large object streams range by range, byte-identical),
``mimic reconcile`` reports it and ``--fix`` repairs the
index; with the storage account down, C-STORE answers 0xA700 promptly.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pydicom
import pytest
from azure.storage.blob import BlobServiceClient
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.azurite import AZURITE_BLOB, Azurite
from tests.data import storable_files
from tests.database import migrated_database
from tests.e2e.test_query_retrieve import (
    Archive,
    _dataset_bytes,
    _get,
    _id,
    _received_files,
    running_archive,
)
from tests.support import (
    associate,
    client_context,
    wait_for,
)
from tests.test_cli import mimic

pytestmark = [pytest.mark.azurite, pytest.mark.postgres, pytest.mark.dcmtk]

CONTAINER = "dicom"


@pytest.fixture(scope="module")
def database(postgres_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database, migrated with 'mimic db upgrade', dropped afterwards."""
    with migrated_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """This module's own Azurite: the last test stops it."""
    if not AZURITE_BLOB.exists():
        pytest.skip("Azurite is not installed: run scripts/test.sh (npm install)")
    service = Azurite(tmp_path_factory.mktemp("azurite-e2e")).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory, database: str, blob: Azurite
) -> Iterator[Archive]:
    with running_archive(
        tmp_path_factory.mktemp("azure"), database_url=database,
        blob_connection_string=blob.connection_string, blob_container=CONTAINER,
        blob_retries="1", blob_timeout="3",
    ) as archive:
        yield archive


def _reconcile(archive: Archive, database: str, blob: Azurite, *args: str) -> tuple[int, dict]:
    done = mimic("reconcile", "--json", "--data-dir", str(archive.server.data_dir),
                 "--database-url", database, "--blob-connection-string",
                 blob.connection_string, "--blob-container", CONTAINER, *args)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def _object_key(database: str, sop_instance_uid: str) -> str:
    dsn = database.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT object_key FROM instances WHERE sop_instance_uid = %s",
                           (sop_instance_uid,)).fetchone()
    assert row, sop_instance_uid
    return str(row[0])


def test_objects_are_blobs_with_their_hashes(archive: Archive, database: str,
                                             blob: Azurite) -> None:
    container = BlobServiceClient.from_connection_string(
        blob.connection_string).get_container_client(CONTAINER)
    files = storable_files()
    names = set(container.list_blob_names())
    assert len(names) == len(files)
    ct = next(f for f in files if f.path.name == "CT_small.dcm")
    key = _object_key(database, ct.sop_instance_uid)
    assert key in names and key.split("/")[3].startswith(ct.sop_instance_uid + ".")
    props = container.get_blob_client(key).get_blob_properties()
    data = container.get_blob_client(key).download_blob().readall()
    assert props.metadata["sha256"] == hashlib.sha256(data).hexdigest()
    assert bytes(props.content_settings.content_md5) == hashlib.md5(data).digest()
    assert data.endswith(ct.dataset_bytes())  # bytes kept as received


def test_find_answers_from_postgresql(archive: Archive) -> None:
    answers, final = archive.find(_id("STUDY", PatientID="1CT1", PatientName="",
                                      StudyInstanceUID=""))
    assert final.Status == 0 and len(answers) == 1
    assert answers[0].PatientName == "CompressedSamples^CT1"


def test_move_to_storescp_byte_identical(archive: Archive) -> None:
    rg3 = [f for f in storable_files() if f.path.name.startswith("RG3_")]
    study = pydicom.dcmread(rg3[0].path, stop_before_pixels=True).StudyInstanceUID
    assoc = archive.associate([StudyRootQueryRetrieveInformationModelMove])
    responses = list(assoc.send_c_move(_id("STUDY", StudyInstanceUID=study), "STORESCP",
                                       StudyRootQueryRetrieveInformationModelMove))
    assoc.release()
    final = responses[-1][0]
    assert final.Status == 0x0000, final
    assert wait_for(lambda: len(_received_files(archive.destination_dir)) >= len(rg3))
    received = _received_files(archive.destination_dir)
    for item in rg3:
        assert _dataset_bytes(received[item.sop_instance_uid]) == item.dataset_bytes()


def test_large_object_streams_from_a_blob_byte_identical(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 24 MiB object (above the 8 MiB streaming threshold) is hashed and sent by C-GET
    range by range from the blob; pynetdicom as SCU receives it byte-identical."""
    from pynetdicom import _config

    from tests.e2e.test_large_retrieve import MEDIUM, Large
    from tests.e2e.test_large_retrieve import _get as get_large

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    large = Large(archive.server, archive.destination_dir, tmp_path)
    uid = large.store("blob", MEDIUM)

    received, final, _ = get_large(large, uid)

    assert final.Status == 0x0000, final
    assert received == {uid: large.digests[uid]}


def test_corrupted_blob_fails_its_suboperation_and_reconcile_repairs(
    archive: Archive, database: str, blob: Azurite
) -> None:
    us1 = sorted((f for f in storable_files() if f.path.name.startswith("US1_")),
                 key=lambda f: f.path.name)
    victim = us1[0]
    key = _object_key(database, victim.sop_instance_uid)
    client = BlobServiceClient.from_connection_string(
        blob.connection_string).get_blob_client(CONTAINER, key)
    data = bytearray(client.download_blob().readall())
    data[-10] ^= 0xFF
    metadata = client.get_blob_properties().metadata
    client.upload_blob(bytes(data), overwrite=True, metadata=metadata)  # silent bit rot

    received, final = _get(archive, _id("PATIENT", PatientID="13US1"),
                           PatientRootQueryRetrieveInformationModelGet, us1)
    got = {str(ds.SOPInstanceUID) for ds, _ in received}  # type: ignore[misc]
    assert victim.sop_instance_uid not in got
    assert {f.sop_instance_uid for f in us1[1:]} <= got
    assert final.Status in (0xB000, 0xA702) and final.NumberOfFailedSuboperations == 1

    code, report = _reconcile(archive, database, blob)
    assert code == 1
    assert report["corrupt"] == [{"sop_instance_uid": victim.sop_instance_uid, "key": key}]
    assert report["orphans"] == [] and report["missing"] == []

    code, fixed = _reconcile(archive, database, blob, "--fix", "--settle-seconds", "0")
    assert code == 0 and fixed["removed"] == [victim.sop_instance_uid]
    assert _reconcile(archive, database, blob)[0] == 0
    # The instance is gone from the index; the others are still retrieved.
    again, final = _get(archive, _id("PATIENT", PatientID="13US1"),
                        PatientRootQueryRetrieveInformationModelGet, us1)
    assert final.Status == 0 and len(again) == len(received)


def test_store_down_is_out_of_resources_promptly(archive: Archive, blob: Azurite) -> None:
    """Runs last: the storage account goes away for good."""
    blob.stop()
    s = archive.server
    ct = next(f for f in storable_files() if f.path.name == "CT_small.dcm")
    assoc = associate(s.port, client_context(s.client_cert, s.client_key, s.ca_cert),
                      contexts=[ct.sop_class_uid], transfer_syntaxes=[ct.transfer_syntax_uid])
    started = time.monotonic()
    status = assoc.send_c_store(ct.path)
    elapsed = time.monotonic() - started
    assoc.release()
    assert status.Status == 0xA700, status
    assert elapsed < 30

    mr = [f for f in storable_files() if f.path.name == "MR_small.dcm"]
    started = time.monotonic()
    received, final = _get(archive, _id("PATIENT", PatientID="4MR1"),
                           PatientRootQueryRetrieveInformationModelGet, mr)
    assert received == [] and final.NumberOfFailedSuboperations >= 1
    assert final.NumberOfCompletedSuboperations == 0
    assert time.monotonic() - started < 30
