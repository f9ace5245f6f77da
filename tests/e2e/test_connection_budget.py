"""A server whose PostgreSQL connections are budgeted (``MIMIC_DATABASE_POOL_SIZE``) under a
database's connection limit, as on a small Azure server (B1ms: 35 for every replica
together): concurrent associations wait for a connection, none is refused for want of one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests import database
from tests.conftest import migrate
from tests.data import ct_copy
from tests.support import MimicProcess, associate, client_context

EXPLICIT = "1.2.840.10008.1.2.1"
SENDERS = 8
PER_SENDER = 6
#: The role's connection limit; the server's one process has a pool of one less (a slot spare,
#: as the deployment's budget keeps for migrations and maintenance).
LIMIT = 4


@pytest.fixture
def limited_url(postgres_server: str) -> Iterator[str]:
    with database.fresh_database(postgres_server) as url:
        migrate(url)
        with database.limited_role(postgres_server, url, LIMIT) as limited:
            yield limited


def test_concurrent_new_series_within_a_connection_limit(limited_url: str,
                                                         tmp_path: Path) -> None:
    """Each object starts a series of its own. With the default pool of 32 each such
    C-STORE had a transaction of its own, waiting for its put inside it, and eight
    associations wanted eight connections at once: the server opened them and PostgreSQL
    refused those past its limit (C-STOREs refused 0xA700, audit records lost). With the
    pool inside the limit they wait for one another's connections instead."""
    server = MimicProcess(tmp_path / "server", database_url=limited_url, workers="1",
                          database_pool_size=str(LIMIT - 1)).start()
    files = tmp_path / "files"
    files.mkdir()
    paths = {
        s: [ct_copy(files, f"1.2.826.0.1.3680043.8.498.311.{s}.{n}",
                    f"1.2.826.0.1.3680043.8.498.310.{s}.{n}") for n in range(PER_SENDER)]
        for s in range(SENDERS)
    }
    statuses: list[int] = []
    start = threading.Barrier(SENDERS)

    def sender(index: int) -> None:
        ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
        assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT])
        start.wait()
        for path in paths[index]:
            statuses.append(int(assoc.send_c_store(path).Status))
        assoc.release()

    try:
        threads = [threading.Thread(target=sender, args=(i,)) for i in range(SENDERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        assert server.stop() == 0
    assert statuses == [0] * (SENDERS * PER_SENDER)
    admin = limited_url.replace("postgresql+psycopg://", "postgresql://").rsplit("@", 1)[1]
    with psycopg.connect(f"postgresql://postgres@{admin}") as conn:
        assert conn.execute("SELECT count(*) FROM instances").fetchone() == (
            SENDERS * PER_SENDER,)
        assert conn.execute("SELECT count(*) FROM audit_events WHERE event_code = %s",
                            ("110104",)).fetchone() == (SENDERS * PER_SENDER,)
    messages = [e.get("message") for e in server.log_entries()]
    assert "writing an audit record failed" not in messages
    assert "index write failed" not in messages
    # SQLAlchemy's pool lines ("Pool disposed" at the stop) stay below INFO, as its own do.
    assert not [m for m in messages if m and m.startswith("Pool ")]
