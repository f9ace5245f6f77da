"""Every line ``mimic serve`` writes to stderr is a JSON log record, even when a library
warns (pydicom warns about each invalid value it reads), and such a record quotes no value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.data import ct_copy
from tests.support import MimicProcess, associate, client_context

EXPLICIT = "1.2.840.10008.1.2.1"


def _invalid_series_number(directory: Path) -> Path:
    """CT_small with Series Number (IS) "x ": pydicom warns when the server reads it."""
    path = ct_copy(directory, "1.2.826.0.1.3680043.8.498.88.1")
    data = path.read_bytes()
    at = data.index(b" \x00\x11\x00IS\x02\x00") + 8
    path.write_bytes(data[:at] + b"x " + data[at + 2 :])
    return path


def test_library_warnings_become_json_records_without_values(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init = subprocess.run([sys.executable, "-m", "mimic_server", "certs", "init",
                           "--data-dir", str(data)], capture_output=True, text=True)
    assert init.returncode == 0, init.stderr  # so that `serve` prints no first-start banner
    server = MimicProcess(data).start()
    try:
        ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
        assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT])
        assert assoc.send_c_store(_invalid_series_number(tmp_path)).Status == 0x0000
        assoc.release()
    finally:
        assert server.stop() == 0, server.log()
    lines = server.log().splitlines()
    assert lines
    for line in lines:
        json.loads(line)  # not JSON: a plain-text line reached stderr
    warned = [e for e in server.log_entries() if e["logger"] == "py.warnings"]
    assert warned and warned[0]["level"] == "WARNING" and warned[0]["category"] == "UserWarning"
    assert "'x'" not in server.log()
