"""A C-FIND / C-MOVE Identifier with an element pydicom cannot decode is refused without
quoting the element's value anywhere at INFO or above (the value is the peer's, possibly
patient data; pydicom's own message quotes it: ``Instead received b'...'``).

The SCU sends the element as raw bytes: pydicom would refuse to encode it, so the test
wraps pynetdicom's ``encode`` to append it to the encoded Identifier.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pynetdicom.association
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind as FIND,
)
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove as MOVE,
)

from tests.support import HOST, MimicProcess, client_context, free_port

EXPLICIT = "1.2.840.10008.1.2.1"
MARKER = b"MRKQZZ"
#: (0020,1208) Number of Study Related Instances sent as UL with six bytes (not a multiple
#: of four): it sorts after Study Instance UID, so appending it keeps the tags ascending.
UNDECODABLE = struct.pack("<HH", 0x0020, 0x1208) + b"UL" + struct.pack("<H", 6) + MARKER


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MimicProcess]:
    registry = json.dumps({"NOWHERE": {"host": HOST, "port": free_port(), "tls": False}})
    process = MimicProcess(
        tmp_path_factory.mktemp("undecodable") / "data", move_destinations=registry
    ).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture
def with_undecodable_element(monkeypatch: pytest.MonkeyPatch) -> None:
    original: Callable[..., bytes | None] = pynetdicom.association.encode

    def encode(ds: Dataset, *args: Any, **kwargs: Any) -> bytes | None:
        encoded = original(ds, *args, **kwargs)
        return encoded + UNDECODABLE if encoded is not None and "QueryRetrieveLevel" in ds \
            else encoded

    monkeypatch.setattr(pynetdicom.association, "encode", encode)


def _identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    return ds


def _final(server: MimicProcess, context: str, send: Callable[[Any], Any]) -> Dataset:
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(context, [EXPLICIT])
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    assoc = ae.associate(HOST, server.port, ae_title="MIMIC", tls_args=(ctx, "localhost"))
    assert assoc.is_established
    statuses = [status for status, _ in send(assoc)]
    assoc.release()
    return statuses[-1]


def _assert_value_not_logged(server: MimicProcess) -> None:
    entries = server.log_entries()
    assert any(e["level"] == "WARNING" and "refused" in e["message"] for e in entries)
    for entry in entries:
        if entry["level"] != "DEBUG":
            assert MARKER.decode() not in json.dumps(entry), entry


@pytest.mark.usefixtures("with_undecodable_element")
def test_find_refusal_quotes_no_value(server: MimicProcess) -> None:
    final = _final(server, FIND, lambda assoc: assoc.send_c_find(_identifier(), FIND))
    assert final.Status == 0xA900
    assert "NumberOfStudyRelatedInstances" in final.ErrorComment
    assert MARKER.decode() not in final.ErrorComment
    _assert_value_not_logged(server)


@pytest.mark.usefixtures("with_undecodable_element")
def test_move_refusal_quotes_no_value(server: MimicProcess) -> None:
    final = _final(
        server, MOVE, lambda assoc: assoc.send_c_move(_identifier(), "NOWHERE", MOVE)
    )
    assert final.Status == 0xA900
    assert MARKER.decode() not in final.get("ErrorComment", "")
    _assert_value_not_logged(server)
