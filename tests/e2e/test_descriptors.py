"""A flood of idle connections cannot exhaust the server's file descriptors (issue 10).

Under a soft RLIMIT_NOFILE below the pending-handshake cap, descriptors ran out before the
cap was reached: no eviction, ``accept()`` failing with EMFILE in a busy loop, and a valid
modality's connection left in the listen backlog. Here a real ``mimic serve`` starts with a
soft limit of 128 and a hard one of 256, and 400 idle TCP connections from this test hold
their sockets open (a handshake deadline of 60 s: none expires during the test).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from mimic_server.net import descriptors
from tests.support import HOST, MimicProcess, client_context

SOFT, HARD = 128, 256
FLOOD = 400
MAX_ASSOCIATIONS = 4


@pytest.fixture
def fd_limited(tmp_path: Path) -> Iterator[MimicProcess]:
    process = MimicProcess(
        tmp_path / "data", fd_limit=(SOFT, HARD), max_associations=str(MAX_ASSOCIATIONS),
        handshake_timeout="60",
    ).start()
    yield process
    assert process.stop() == 0, process.log()


def bounded_echo(port: int, ctx: ssl.SSLContext) -> int | None:
    """A C-ECHO on a new TLS association, every wait bounded (connect and handshake
    included): its status, or None when no association was made."""
    ae = AE(ae_title="MODALITY1")
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, port, ae_title="MIMIC", tls_args=(ctx, "localhost"))
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) if status else None


def soft_fd_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


def test_idle_flood_under_a_low_descriptor_limit_does_not_lock_modalities_out(
    fd_limited: MimicProcess,
) -> None:
    """400 idle connections against a server limited to 256 descriptors: the soft limit was
    raised to the hard one, the pending-handshake cap clamped below it (logged), the flood
    evicted instead of exhausting descriptors, and valid C-ECHOs succeed throughout (before:
    soft limit 128 kept, cap 1024 never reached, the modality's connection never accepted)."""
    assert fd_limited.proc is not None
    pid = fd_limited.proc.pid
    assert soft_fd_limit(pid) == HARD
    clamped = [
        e for e in fd_limited.log_entries()
        if e.get("message") == "pending handshake cap clamped to the file descriptor limit"
    ]
    expected = HARD - descriptors.reserve(MAX_ASSOCIATIONS)
    assert clamped and clamped[0]["effective"] == expected, clamped
    assert clamped[0]["level"] == "INFO"

    ctx = client_context(fd_limited.client_cert, fd_limited.client_key, fd_limited.ca_cert)
    flood: list[socket.socket] = []
    try:
        for i in range(FLOOD):
            flood.append(socket.create_connection((HOST, fd_limited.port), timeout=10))
            if i % 100 == 99:
                assert bounded_echo(fd_limited.port, ctx) == 0x0000, (
                    f"C-ECHO failed after {i + 1} idle connections"
                )
        assert bounded_echo(fd_limited.port, ctx) == 0x0000
        open_fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        assert open_fds < HARD, f"{open_fds} descriptors open"
    finally:
        for sock in flood:
            sock.close()
    assert not [
        e for e in fd_limited.log_entries() if "Too many open files" in str(e)
    ], "the server ran out of descriptors"


@pytest.mark.postgres
def test_the_reserve_counts_the_postgresql_pool_as_set(
    tmp_path: Path, postgres_server: str,
) -> None:
    """On PostgreSQL the process may hold ``MIMIC_DATABASE_POOL_SIZE`` connections (up to
    1000), each a descriptor: the reserve counts that pool, not the embedded index's 32
    (before: a pool of 300 was counted as 32, and the handshake cap left it no room)."""
    from tests import database
    from tests.conftest import migrate

    with database.fresh_database(postgres_server) as url:
        migrate(url)
        process = MimicProcess(
            tmp_path / "data", fd_limit=(1024, 1024), max_associations=str(MAX_ASSOCIATIONS),
            database_url=url, database_pool_size="300", workers="1",
        ).start()
        try:
            clamped = [
                e for e in process.log_entries()
                if e.get("message") == "pending handshake cap clamped to the file descriptor limit"
            ]
        finally:
            assert process.stop() == 0, process.log()
    assert clamped and clamped[0]["reserved"] == descriptors.reserve(MAX_ASSOCIATIONS, 300)
    assert clamped[0]["effective"] == 1024 - (MAX_ASSOCIATIONS * 4 + 300 + 96)
