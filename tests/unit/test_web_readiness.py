"""``mimic web``'s ``/readyz`` asks what ``mimic serve``'s does: the index answers and takes
writes, and the object store answers. It asked the index alone: with Blob Storage down (or
the object directory's disk full) every WADO-RS retrieve and STOW-RS failed while the replica
stayed in the ingress's rotation, ready."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mimic_server.config import Settings
from mimic_server.errors import OutOfResources
from mimic_server.storage.memory import MemoryStore
from mimic_server.webapp import WebArchive


class _StoreThatMayFail(MemoryStore):
    down = False

    def check(self) -> None:
        if self.down:
            raise OutOfResources("blob store unavailable: ServiceRequestError")


def test_readiness_follows_the_object_store(tmp_path: Path) -> None:
    store = _StoreThatMayFail()
    web = WebArchive(Settings(data_dir=tmp_path, web_auth="none"), object_store=store)
    client = TestClient(web.open())
    try:
        assert client.get("/readyz").json() == {"status": "ready"}
        store.down = True
        answer = client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json() == {"status": "not ready",
                                 "reason": "blob store unavailable: ServiceRequestError"}
        store.down = False
        assert client.get("/readyz").status_code == 200
    finally:
        web.stop()


@pytest.mark.parametrize(("given", "pool"), [(None, 40), (8, 8)])
def test_mimic_web_s_blob_pool_holds_its_request_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: int | None, pool: int,
) -> None:
    """Sized by MIMIC_MAX_ASSOCIATIONS (32) while up to 40 requests read at once, the pool
    dropped a connection per request past 32 (a new TLS handshake to Blob Storage each, and
    urllib3's WARNING "Connection pool is full"). MIMIC_BLOB_CONNECTIONS still decides."""
    from mimic_server.storage import azure_blob

    sizes: list[int] = []

    def service(**kwargs: object) -> object:
        sizes.append(kwargs["connections"])  # type: ignore[arg-type]
        return object()

    monkeypatch.setattr(azure_blob, "blob_service_client", service)
    monkeypatch.setattr(azure_blob, "AzureBlobStore", lambda *a, **k: MemoryStore())
    extra = {} if given is None else {"blob_connections": given}
    web = WebArchive(Settings(data_dir=tmp_path, web_auth="none",
                              blob_connection_string="UseDevelopmentStorage=true", **extra))
    web.open()
    web.stop()
    assert sizes == [pool]
