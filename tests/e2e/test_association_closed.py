"""The `association closed` line's outcome (operator guide, log table): `released` for an
A-RELEASE, `aborted` for an A-ABORT, also when the peer aborts an idle association (its
connection closes before pynetdicom's association thread has noted the abort)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import MimicProcess, associate, client_context, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MimicProcess]:
    process = MimicProcess(tmp_path_factory.mktemp("closed") / "data").start()
    yield process
    assert process.stop() == 0, process.log()


def _outcomes(server: MimicProcess) -> list[str]:
    return [e["outcome"] for e in server.log_entries() if e["message"] == "association closed"]


@pytest.mark.parametrize("ending", ["abort", "release"])
def test_the_outcome_is_how_the_peer_ended_it(server: MimicProcess, ending: str,
                                              tmp_path: Path) -> None:
    before = len(_outcomes(server))
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    assoc = associate(server.port, ctx)
    assert assoc.is_established
    assoc.abort() if ending == "abort" else assoc.release()
    assert wait_for(lambda: len(_outcomes(server)) == before + 1)
    assert _outcomes(server)[-1] == ("aborted" if ending == "abort" else "released")
