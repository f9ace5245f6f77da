"""``mimic web``'s ``/readyz`` asks what ``mimic serve``'s does: the index answers and takes
writes, and the object store answers. It asked the index alone: with Blob Storage down (or
the object directory's disk full) every WADO-RS retrieve and STOW-RS failed while the replica
stayed in the ingress's rotation, ready."""

from __future__ import annotations

from pathlib import Path

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
