"""A WADO-RS study or series retrieve cut off mid-stream (the store fails under an object
being sent, or the client leaves): the object being sent and every one after it were not
sent, and the audit record counts each of them as failed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from mimic_server.archive.read import VerifiedObject
from mimic_server.query.finder import InstanceRef
from mimic_server.security import audit
from mimic_server.security.audit import AuditLog
from mimic_server.security.policy import Policy
from mimic_server.storage.memory import MemoryStore
from mimic_server.web.dicomweb import wado
from mimic_server.web.dicomweb.app import build_dicomweb
from mimic_server.web.dicomweb.context import DicomWebContext
from tests.unit.test_wado_stored_again import (
    CT,
    EXPLICIT,
    MULTIPART,
    SERIES,
    STUDY,
    Details,
    Finder,
    _object,
)


class Failing:
    """A verified object whose store fails after its first piece is sent."""

    def __init__(self, obj: VerifiedObject) -> None:
        self.ref = obj.ref

    def chunks(self) -> Iterator[bytes]:
        yield b"\0" * 1024
        raise OSError(5, "EIO")


class Outcomes(Details):
    """The records' details, and their entries (for the outcome)."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[Any] = []

    def write(self, entry: Any, details: dict[str, Any]) -> None:
        self.entries.append(entry)
        super().write(entry, details)


@pytest.mark.parametrize("cut", [0, 1, 2])
def test_every_instance_not_reached_is_failed(monkeypatch: pytest.MonkeyPatch, cut: int) -> None:
    store = MemoryStore()
    refs: list[InstanceRef] = []
    for n in range(3):
        ref, _data = _object(store, f"{SERIES}.{n + 1}", EXPLICIT, f"object {n}".encode())
        refs.append(ref)
    details = Outcomes()
    ctx = DicomWebContext(finder=Finder(refs, {}), store=store,  # type: ignore[arg-type]
                          policy=Policy("MIMIC"), audit=AuditLog(None, sinks=[details]),
                          tokens=None, auth="none")
    read_now = wado.read_now

    def failing_at_cut(ctx: DicomWebContext, ref: InstanceRef, **options: Any) -> Any:
        obj = read_now(ctx, ref, **options)
        return Failing(obj) if ref is refs[cut] else obj

    monkeypatch.setattr(wado, "read_now", failing_at_cut)
    client = TestClient(build_dicomweb(ctx), raise_server_exceptions=False)
    answer = client.get(f"/studies/{STUDY}", headers={"Accept": MULTIPART})
    boundary = answer.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    assert f"--{boundary}--".encode() not in answer.content  # the body broke off
    record = details.transferred()
    assert record["instances"] == cut
    assert record["failed"] == 3 - cut  # the one cut off and each after it
    assert record["studies"] == ({STUDY: {CT: cut}} if cut else {})
    assert details.entries[-1].outcome == audit.MINOR_FAILURE
