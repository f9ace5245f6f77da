"""``python -m mimic_server web`` on a loopback port, beside a ``mimic serve`` on the same
data directory and index, with an OIDC issuer double minting the bearer tokens."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.oidc_double import OidcIssuerDouble
from tests.support import HOST, MimicProcess, free_port, terminate

AUDIENCE = "api://mimic"
#: DICOMweb's rule: Radiologists search, retrieve and store; Clerks only search.
POLICY = """
[certificates.dicomweb]
services = ["find", "get", "store"]
roles = { Radiologist = ["find", "get", "store"], Clerk = ["find"] }
"""
ORIGIN = "https://viewer.example.org"


class WebProcess:
    """``mimic web`` with bearer tokens of ``issuer`` and the policy above."""

    def __init__(self, data_dir: Path, issuer: OidcIssuerDouble | None, *,
                 policy: str | None = POLICY, **settings: str) -> None:
        self.data_dir = data_dir
        self.policy = policy
        self.port = int(settings.pop("web_port", None) or free_port())
        # One worker unless a test asks for more (tests/e2e/test_web_workers.py does): a
        # second interpreter per `mimic web` costs the suite time and the tests nothing.
        settings.setdefault("web_workers", "1")
        self.settings = settings
        self.issuer = issuer
        self.log_path = data_dir.parent / f"{data_dir.name}-web-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/dicomweb"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIMIC_")}
        env.update(MIMIC_DATA_DIR=str(self.data_dir), MIMIC_WEB_HOST=HOST,
                   MIMIC_WEB_PORT=str(self.port), MIMIC_LOG_FORMAT="json",
                   MIMIC_WEB_CORS_ORIGINS=ORIGIN)
        if self.policy is not None:
            policy = self.data_dir.parent / "dicomweb-policy.toml"
            policy.write_text(self.policy)
            env["MIMIC_POLICY_FILE"] = str(policy)
        if self.issuer is not None:
            env.update(MIMIC_OIDC_ISSUER=self.issuer.issuer, MIMIC_OIDC_AUDIENCE=AUDIENCE,
                       MIMIC_OIDC_CA_FILE=str(self.issuer.ca_file))
        env.update({f"MIMIC_{k.upper()}": str(v) for k, v in self.settings.items()})
        return env

    def run(self, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run to its end (a start that is refused)."""
        return subprocess.run([sys.executable, "-m", "mimic_server", "web"],
                              env=self.environment(), capture_output=True, text=True,
                              timeout=timeout, cwd=self.data_dir.parent)

    def start(self, timeout: float = 120.0) -> WebProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mimic_server", "web"], env=self.environment(),
            stdout=self._log, stderr=self._log, cwd=self.data_dir.parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mimic web exited {self.proc.returncode}:\n{self.log()}")
            if any(e.get("message") == "DICOMweb listening" for e in self.log_entries()):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"mimic web did not start:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        code = terminate(self.proc, timeout)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_entries(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        return entries


@contextlib.contextmanager
def serve_and_web(root: Path) -> Iterator[tuple[MimicProcess, WebProcess, OidcIssuerDouble]]:
    """``mimic serve`` and ``mimic web`` on ``root/data`` (embedded), with an OIDC issuer
    double for the bearer tokens; each must stop cleanly."""
    issuer = OidcIssuerDouble(root / "oidc").start()
    server = MimicProcess(root / "data").start()
    web = WebProcess(root / "data", issuer)
    try:
        web.start()
        yield server, web, issuer
    finally:
        web_code, server_code = web.stop(), server.stop()
        issuer.stop()
        assert web_code == 0, web.log()
        assert server_code == 0, server.log()
