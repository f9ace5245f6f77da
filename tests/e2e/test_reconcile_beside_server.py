"""``mimic reconcile`` run again and again beside a running ``mimic serve`` on the same data
directory: the server's stores (dcmtk ``storescu`` batches over TLS) must all succeed.

The reconcile tool opens a file store on the server's object directory; it must never touch
the server's in-flight temporary files (they were swept once, failing stores with 0xA700).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from mimic_server.backends import open_object_store
from mimic_server.config import Settings
from tests.data import ct_copy
from tests.support import MimicProcess, dcmtk_tls
from tests.test_cli import mimic

BATCH = 300


def _large_copy(directory: Path, sop_instance_uid: str) -> None:
    """CT_small with 128 KiB of pixel data: a put that writes and fsyncs long enough for a
    concurrent sweep to land inside it."""
    path = ct_copy(directory, sop_instance_uid)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 256
    ds.PixelData = bytes(256 * 256 * 2)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[MimicProcess]:
    process = MimicProcess(tmp_path / "data").start()
    yield process
    assert process.stop() == 0, process.log()


def _open_stores(data_dir: Path, stop: threading.Event) -> None:
    while not stop.is_set():
        store = open_object_store(Settings(data_dir=data_dir))
        if hasattr(store, "close"):
            store.close()


def test_stores_succeed_while_reconcile_runs(sqlite_server: MimicProcess, tmp_path: Path) -> None:
    files = tmp_path / "batch"
    files.mkdir()
    for n in range(BATCH):
        _large_copy(files, f"1.2.826.0.1.3680043.8.498.77.{n}")
    log = tmp_path / "storescu.log"
    with open(log, "w") as out:
        storescu = subprocess.Popen(
            ["storescu", "-v", *dcmtk_tls(sqlite_server), "-aet", "MODALITY1", "-aec",
             "MIMIC", "localhost", str(sqlite_server.port), "+sd", str(files)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"},
        )
    # `mimic reconcile` itself, as often as it starts; and, in this process, what it does
    # first (open a file store on the server's directory) in a tight loop, so the stores
    # meet it many times per object rather than a few times per batch.
    stop = threading.Event()
    opener = threading.Thread(target=_open_stores, args=(sqlite_server.data_dir, stop))
    opener.start()
    runs = 0
    try:
        while storescu.poll() is None or runs == 0:
            done = mimic("reconcile", "--json", "--data-dir", str(sqlite_server.data_dir),
                         "--log-format", "text")
            assert done.returncode in (0, 1), done.stderr
            runs += 1
    finally:
        stop.set()
        opener.join()
    output = log.read_text()
    failed = [line for line in output.splitlines()
              if "Store Response" in line and "(Success)" not in line]
    assert storescu.returncode == 0 and not failed, (failed[:5], output[-1000:])
    assert sqlite_server.instance_count() == BATCH
    assert len(sqlite_server.stored_objects()) == BATCH
