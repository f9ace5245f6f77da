"""The server's private key never touches a filesystem: not at start, not when the trust set
is reloaded (SIGHUP), not for a C-MOVE over TLS.

``ssl.SSLContext.load_cert_chain`` only takes paths, so the easy way is a temporary file
(0600, deleted at once); on a disk-backed ``/tmp`` the key then sits in the journal and in
freed blocks. The real ``mimic serve`` process runs with a Python audit hook (a
``sitecustomize`` on ``PYTHONPATH``) that lists every path the process opens for writing; a
key file shows up there however briefly it lived.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pydicom
import pytest
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)

from mimic_server.certs import devpki
from tests.data import storable_files
from tests.e2e.test_query_retrieve import _id, running_archive
from tests.support import wait_for

#: Installed in the server process before anything else runs.
SITECUSTOMIZE = '''
import os, sys
_out = open(os.environ["TEST_WRITES_LOG"], "a", buffering=1)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT

def _hook(event, args):
    if event != "open":
        return
    path, mode, flags = args
    writing = bool(mode and any(c in str(mode) for c in "wax+"))
    writing = writing or bool(isinstance(flags, int) and flags & _WRITE_FLAGS)
    if writing and isinstance(path, (str, bytes, os.PathLike)):
        _out.write(os.fsdecode(path) + "\\n")

sys.addaudithook(_hook)
'''


def written_outside(log: Path, data_dir: Path) -> list[str]:
    """Paths the server opened for writing outside its data directory. Not counted: bytecode,
    the worker supervisor's private directory (metrics files and the association table,
    ``workers/supervisor.py``), and the file ``tempfile`` creates and removes at once to find
    a usable temporary directory."""
    paths = log.read_text().splitlines() if log.exists() else []
    inside = str(data_dir.resolve())
    workers = os.path.join(os.path.realpath(tempfile.gettempdir()), "mimic-workers-")
    return [
        p for p in paths
        if not os.path.realpath(p).startswith((inside, workers)) and not p.endswith(".pyc")
        and not _tempfile_probe(p)
    ]


def _tempfile_probe(path: str) -> bool:
    name = os.path.basename(path)
    return (os.path.dirname(os.path.realpath(path)) == os.path.realpath(tempfile.gettempdir())
            and len(name) == 8 and not os.path.exists(path))


def test_no_key_file_at_start_refresh_or_c_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "writes.log"
    monkeypatch.setenv("PYTHONPATH", str(hook))  # inherited by ``mimic serve``
    monkeypatch.setenv("TEST_WRITES_LOG", str(log))

    (tmp_path / "qr").mkdir()
    with running_archive(tmp_path / "qr") as archive:
        server = archive.server
        assert wait_for(lambda: log.exists() and log.stat().st_size > 0), "hook not loaded"
        # A new trusted client and SIGHUP: the server builds a new context with its key.
        devpki.issue_client(server.certs, "second")
        server.hup()
        assert wait_for(lambda: any(
            e.get("message") == "trust set updated" for e in server.log_entries()
        ))
        # A C-MOVE to a TLS destination: the server as a TLS client, presenting its key.
        rg3 = [f for f in storable_files() if f.path.name.startswith("RG3_")]
        study = pydicom.dcmread(rg3[0].path, stop_before_pixels=True).StudyInstanceUID
        assoc = archive.associate([StudyRootQueryRetrieveInformationModelMove])
        responses = list(assoc.send_c_move(
            _id("STUDY", StudyInstanceUID=study), "STORESCP",
            StudyRootQueryRetrieveInformationModelMove,
        ))
        assoc.release()
        final = responses[-1][0] if responses else None
        # No answer in time (the peer's DIMSE timeout) leaves an empty Dataset: say why.
        assert final is not None and "Status" in final and final.Status == 0x0000, (
            f"C-MOVE answered {final!r}; the server's log ends:\n{server.log()[-6000:]}")
        assert written_outside(log, server.data_dir) == []
