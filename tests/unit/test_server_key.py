"""The server's key as the listener loads it (``net/tls.py``): an encrypted key is refused at
once, with a ConfigurationError that says so, whether or not the process has a terminal:
OpenSSL's own pass phrase prompt on /dev/tty held the certificate watcher's thread for ever
under ``mimic serve`` in a shell, and raised an OSError without one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tests.support import write_cert

PROBE = """
import sys
from pathlib import Path
from mimic_server.certs import CertBundle
from mimic_server.errors import ConfigurationError
from mimic_server.net.tls import server_context
try:
    server_context(CertBundle(Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]).read_bytes(), ()))
except ConfigurationError as exc:
    print("refused:", exc)
"""


def _encrypted_pair(directory: Path) -> tuple[Path, Path]:
    _, _, ca, ca_key = write_cert(directory, "ca", ca=True)
    cert, _, _, key = write_cert(directory, "server", issuer=(ca, ca_key), server=True)
    encrypted = directory / "server-encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass phrase")))
    return cert, encrypted


def _controlling_terminal(slave: str) -> None:
    """In the child: a session of its own whose controlling terminal is the pty, as under
    ``mimic serve`` in a shell, tmux or screen."""
    os.setsid()
    os.close(os.open(slave, os.O_RDWR))  # a session leader's first tty becomes its own


def test_an_encrypted_server_key_is_refused_at_once_under_a_terminal(tmp_path: Path) -> None:
    cert, key = _encrypted_pair(tmp_path)
    master, slave = os.openpty()
    try:
        probe = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(cert), str(key)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=slave, text=True,
            preexec_fn=lambda: _controlling_terminal(os.ttyname(slave)),
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        try:  # a hang guard, not a time limit: refused, it answers in milliseconds
            out, _ = probe.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            probe.kill()
            out = probe.communicate()[0]
            raise AssertionError(f"waiting for a pass phrase on the terminal: {out!r}") from None
    finally:
        os.close(master)
        os.close(slave)
    assert "refused: server key is encrypted" in out
    assert "pass phrase:" not in out.lower()


def test_an_encrypted_server_key_is_refused_without_a_terminal(tmp_path: Path) -> None:
    cert, key = _encrypted_pair(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(cert), str(key)], capture_output=True, text=True,
        stdin=subprocess.DEVNULL, start_new_session=True, check=False, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    ).stdout
    assert "refused: server key is encrypted" in out
