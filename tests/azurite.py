"""Azurite, the Azure Storage emulator from npm, as a loopback process for one test session.

``scripts/test.sh`` installs it (``npm install`` from the committed package-lock.json); tests
that need it are skipped with the reason when ``node_modules/.bin/azurite-blob`` is absent.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from tests.support import HOST, free_port

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BLOB = ROOT / "node_modules" / ".bin" / "azurite-blob"

#: Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{HOST}:{port}/{ACCOUNT};"
    )


class Azurite:
    """``azurite-blob`` on a free loopback port with its own storage directory."""

    def __init__(self, location: Path) -> None:
        self.location = location
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.port)

    def arguments(self) -> list[str]:
        """How the emulator keeps its data: files under ``location``."""
        self.location.mkdir(parents=True, exist_ok=True)
        return ["--location", str(self.location)]

    def start(self, timeout: float = 30.0) -> Azurite:
        self.proc = subprocess.Popen(
            [str(AZURITE_BLOB), "--blobHost", HOST, "--blobPort", str(self.port),
             *self.arguments(), "--skipApiVersionCheck", "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"azurite-blob exited {self.proc.returncode}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("azurite-blob did not start")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 2 s: once it has served a request Azurite waits some
        10 s for its keep-alive connections before it exits, a teardown's wait for nothing
        (what it holds is this run's and thrown away)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
