from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.azurite import AZURITE_BLOB, Azurite
from tests.support import MimicProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MimicProcess]:
    """A real ``mimic serve`` process, zero-config (dev PKI on first start), for one module."""
    root: Path = tmp_path_factory.mktemp("mimic")
    process = MimicProcess(root / "data", cert_refresh_seconds="1").start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite blob service for the session (loopback, its own directory)."""
    if not AZURITE_BLOB.exists():
        pytest.skip("Azurite is not installed: run scripts/test.sh (npm install)")
    service = Azurite(tmp_path_factory.mktemp("azurite")).start()
    yield service
    service.stop()
