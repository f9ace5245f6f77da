"""pynetdicom as it comes, as a receiver beside MIMIC: the floor under MIMIC's per-association
CPU that is pynetdicom's own.

MIMIC is built on pynetdicom (the association, its DUL and DIMSE providers, the state
machine), with a fenced set of changes to them (``mimic_server/patches.py``). What a C++
server such as Orthanc spends on an association is a fraction of what a Python one does;
this receiver shows how much of MIMIC's figure pynetdicom itself costs, with none of
MIMIC's changes and none of its work (trust set, access policy, audit trail, index,
metrics): a stock ``AE`` with the Verification and CT Image Storage SCPs, started with
``start_server`` (its own accept loop and polling threads), over mutual TLS when given a
certificate. A C-STORE is written to a file, unindexed and not fsynced, as ``storescp``
does.

    python bench/bare_pynetdicom.py PORT OUT_DIR [--tls KEY CERT CA]

``bench/association_cpu.py`` runs it as the receiver ``pynetdicom``.
"""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.store_throughput import HOST, Server  # noqa: E402

AE_TITLE = "PYNETDICOM"


class BarePynetdicom(Server):
    """This module's SCP in a process of its own, as the other receivers are."""

    label = "pynetdicom"
    called_ae = AE_TITLE

    @property
    def out_dir(self) -> Path:
        return self.workdir / "out"

    def command(self) -> tuple[list[str], dict[str, str]]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), str(self.port), str(self.out_dir)]
        if self.pki is not None:
            cmd += ["--tls", str(self.pki.server_key), str(self.pki.server_cert),
                    str(self.pki.ca)]
        return cmd, {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}

    def count(self) -> int:
        return sum(1 for p in self.out_dir.iterdir() if p.is_file())


def _server_context(key: str, cert: str, ca: str) -> ssl.SSLContext:
    """Mutual TLS as MIMIC asks it: TLS 1.2 or later, the client's certificate required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    return context


def serve(port: int, out_dir: Path, tls: list[str] | None) -> None:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage, Verification

    def store(event: Any) -> int:
        uid = event.request.AffectedSOPInstanceUID
        (out_dir / f"{uid}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title=AE_TITLE)
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage)
    context = _server_context(*tls) if tls else None
    server = ae.start_server((HOST, port), block=False, ssl_context=context,
                             evt_handlers=[(evt.EVT_C_STORE, store)])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tls", nargs=3, metavar=("KEY", "CERT", "CA"))
    args = parser.parse_args()
    serve(args.port, args.out_dir, args.tls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
