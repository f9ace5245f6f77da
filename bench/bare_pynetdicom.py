"""pynetdicom as it comes, as a reference receiver beside MIMIC: what an association costs a
Python server built on pynetdicom with none of MIMIC's changes to it.

MIMIC is built on pynetdicom (the association, its DUL and DIMSE providers, the state
machine) and replaces parts of it through a fenced set of changes (``mimic_server/patches.py``:
the event-driven DUL and acceptor, the TLS reads, the C-STORE path). This receiver is the
same library unchanged and with none of MIMIC's work (trust set, access policy, audit trail,
index, metrics): a stock ``AE`` with the Verification and CT Image Storage SCPs, started
with ``start_server`` (its own accept loop, and threads that wake every millisecond while an
association lasts), receiving PDUs of up to 256 KiB as MIMIC does, over mutual TLS set up as
MIMIC's (TLS 1.2 or later, BCP 195 suites, the server's preference, no session tickets, the
client's certificate required) when given a certificate. A C-STORE is written to a file,
unindexed and not fsynced, as ``storescp`` does.

    python bench/bare_pynetdicom.py PORT OUT_DIR [--tls KEY CERT CA]

``bench/association_cpu.py`` runs it as the receiver ``pynetdicom``.
"""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.store_throughput import HOST, Server  # noqa: E402
from mimic_server.net.tls import TLS12_CIPHERS  # noqa: E402

#: MIMIC's default largest PDU received (``MIMIC_MAX_PDU_SIZE``).
MAX_PDU = 262144

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
        return cmd, {**os.environ, "PYTHONPATH": str(ROOT)}

    def count(self) -> int:
        return sum(1 for p in self.out_dir.iterdir() if p.is_file())


def _server_context(key: str, cert: str, ca: str) -> ssl.SSLContext:
    """Mutual TLS set up as MIMIC's listener sets it up (``mimic_server/net/tls.py``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
                        | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_TICKET)
    context.num_tickets = 0
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

    # Blocked before any thread starts, so that every thread inherits the mask and the
    # signals wait for sigwait below.
    stopping = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    ae = AE(ae_title=AE_TITLE)
    ae.maximum_pdu_size = MAX_PDU
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage)
    context = _server_context(*tls) if tls else None
    server = ae.start_server((HOST, port), block=False, ssl_context=context,
                             evt_handlers=[(evt.EVT_C_STORE, store)])
    signal.sigwait(stopping)
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
