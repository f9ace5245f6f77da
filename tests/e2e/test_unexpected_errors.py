"""A bug in a handler is no longer invisible: every DIMSE service answers its chosen status
and writes one ERROR record with the exception's type and location, not its message."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

from mimic_server.app import Archive
from mimic_server.config import MoveDestination, Settings
from mimic_server.query.finder import Finder
from mimic_server.security.policy import Policy
from mimic_server.storage.memory import MemoryStore
from tests.data import ct_small
from tests.support import HOST, client_context

#: What a pydicom or driver message might quote: it must never reach the log.
SECRET = "DOE^JANE 19700101"


class ExplodingStore(MemoryStore):
    def put(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(SECRET)


def _explode(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError(SECRET)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    settings = Settings(
        data_dir=tmp_path / "data", host=HOST, port=0, ops_port=0,
        move_destinations={"ELSEWHERE": MoveDestination(host=HOST, port=9, tls=False)},
    )
    running = Archive(settings, object_store=ExplodingStore())
    running.start()
    yield running
    running.stop(drain_seconds=0)


def _associate(archive: Archive, contexts: list[str], roles: list[Any] | None = None) -> Any:
    certs = archive.settings.data_dir / "certs"
    ctx = client_context(certs / "clients" / "modality1" / "client.pem",
                         certs / "clients" / "modality1" / "client.key", certs / "ca" / "ca.pem")
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    for uid in contexts:
        ae.add_requested_context(uid)
    assoc = ae.associate(HOST, archive.address[1], ae_title="MIMIC",
                         tls_args=(ctx, "localhost"), ext_neg=roles or [])
    assert assoc.is_established
    return assoc


def _errors(caplog: pytest.LogCaptureFixture, service: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.levelno == logging.ERROR and getattr(r, "service", None) == service]


def _study() -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3"
    return identifier


def _check(caplog: pytest.LogCaptureFixture, service: str, status: int) -> None:
    (record,) = _errors(caplog, service)
    assert record.status == f"0x{status:04X}"  # type: ignore[attr-defined]
    assert record.error == "RuntimeError"  # type: ignore[attr-defined]
    assert any(":_explode:" in f or ":put:" in f for f in record.where)  # type: ignore[attr-defined]
    assert record.exc_info is None
    assert SECRET not in caplog.text  # neither in ours nor in what pynetdicom logs


def test_store(archive: Archive, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="mimic_server")
    assoc = _associate(archive, [CTImageStorage])
    answer = assoc.send_c_store(ct_small())
    assoc.release()
    assert answer.Status == 0xC211
    _check(caplog, "C-STORE", 0xC211)
    registry = archive.metrics.registry
    assert registry.get_sample_value("mimic_handler_errors_total", {"service": "C-STORE"}) == 1
    assert registry.get_sample_value("mimic_handler_errors_total", {"service": "C-FIND"}) == 0


def test_echo(
    archive: Archive, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.ERROR, logger="mimic_server")
    assoc = _associate(archive, [Verification])
    monkeypatch.setattr(Policy, "may", _explode)
    answer = assoc.send_c_echo()
    assoc.release()
    assert answer.Status == 0x0110
    _check(caplog, "C-ECHO", 0x0110)


def test_find(
    archive: Archive, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.ERROR, logger="mimic_server")
    monkeypatch.setattr(Finder, "find", _explode)
    assoc = _associate(archive, [StudyRootQueryRetrieveInformationModelFind])
    responses = list(assoc.send_c_find(_study(), StudyRootQueryRetrieveInformationModelFind))
    assoc.release()
    assert responses[-1][0].Status == 0xC311
    _check(caplog, "C-FIND", 0xC311)


def test_get(
    archive: Archive, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.ERROR, logger="mimic_server")
    monkeypatch.setattr(Finder, "instances", _explode)
    assoc = _associate(archive, [StudyRootQueryRetrieveInformationModelGet, CTImageStorage],
                       [build_role(CTImageStorage, scp_role=True)])
    responses = list(assoc.send_c_get(_study(), StudyRootQueryRetrieveInformationModelGet))
    assoc.release()
    assert responses[-1][0].Status == 0xC411
    # Before any sub-operation: no counts, no Failed SOP Instance UID List (get_answer).
    assert "NumberOfFailedSuboperations" not in responses[-1][0]
    assert responses[-1][1] is None or "FailedSOPInstanceUIDList" not in responses[-1][1]
    _check(caplog, "C-GET", 0xC411)


def test_move_before_its_destination(
    archive: Archive, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the destination is named only pynetdicom can answer: its 0xC514, logged."""
    caplog.set_level(logging.ERROR, logger="mimic_server")
    monkeypatch.setattr(Finder, "instances", _explode)
    assoc = _associate(archive, [StudyRootQueryRetrieveInformationModelMove])
    responses = list(assoc.send_c_move(
        _study(), "ELSEWHERE", StudyRootQueryRetrieveInformationModelMove
    ))
    assoc.release()
    assert responses[-1][0].Status == 0xC514
    _check(caplog, "C-MOVE", 0xC514)
