"""CPU per blob put of the Blob Storage store, with and without requests' own layers.

    .venv/bin/python bench/blob_put_cpu.py --count 200 --rounds 8 [--json out.json]

Starts its own Azurite (loopback, in memory as ``bench/latency.py`` runs it) and puts ``--count``
objects per round, small (40 KB, one request) and large (525 KB, one request), through two
clients of ``storage/azure_blob.py``, interleaved round by round (their order rotated):

- ``current``: the client as the server builds it (``blob_service_client``: puts through
  ``BlobSession``'s short way);
- ``requests``: the same client on a plain ``requests.Session`` (the session before the
  short way; what the server still uses where the environment configures a proxy).

It prints the putting process's CPU (``time.process_time``) per put, median over rounds, and
the median of the per-round ratios (the figure to read on a VM whose speed drifts), and reads
one object of each round back to check it. Never a threshold: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from azure.core.pipeline.transport import RequestsTransport  # noqa: E402
from azure.storage.blob import BlobServiceClient  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402
from urllib3.util.retry import Retry  # noqa: E402

from bench.latency import BenchAzurite  # noqa: E402
from mimic_server.storage.azure_blob import AzureBlobStore, blob_service_client  # noqa: E402

SIZES = {"small": 40_000, "large": 525_000}


def _plain_requests_client(connection_string: str) -> BlobServiceClient:
    """``blob_service_client`` as it was before ``BlobSession``: a plain session."""
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32,
                          max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    for scheme in ("https://", "http://"):
        session.mount(scheme, adapter)
    transport = RequestsTransport(session=session, session_owner=True, use_env_settings=False,
                                  connection_timeout=10.0, read_timeout=10.0,
                                  connection_verify=True)
    reference = blob_service_client(connection_string=connection_string)
    return BlobServiceClient.from_connection_string(
        connection_string, transport=transport, retry_policy=reference._config.retry_policy,
        max_single_get_size=reference._config.max_single_get_size,
        max_chunk_get_size=reference._config.max_chunk_get_size,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="puts per round and size")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--kind", choices=[*SIZES, "both"], default="both")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    kinds = list(SIZES) if args.kind == "both" else [args.kind]
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="mimic-blob-put-") as tmp:
        azurite = BenchAzurite(Path(tmp) / "azurite").start()
        stores: dict[str, AzureBlobStore] = {}
        try:
            stores = {
                "current": AzureBlobStore(
                    blob_service_client(connection_string=azurite.connection_string), "bench"),
                "requests": AzureBlobStore(
                    _plain_requests_client(azurite.connection_string), "bench"),
            }
            names = list(stores)
            for kind in kinds:
                data = os.urandom(SIZES[kind])
                sha256 = hashlib.sha256(data).hexdigest()
                per_variant: dict[str, list[float]] = {name: [] for name in names}
                for round_ in range(args.rounds):
                    order = names[round_ % len(names):] + names[:round_ % len(names)]
                    for name in order:
                        store = stores[name]
                        started = time.process_time()
                        for i in range(args.count):
                            store.put(f"{kind}/{name}/{round_}/{i}.dcm", [data], sha256)
                        per_variant[name].append(
                            (time.process_time() - started) / args.count * 1000)
                        with store.open(f"{kind}/{name}/{round_}/0.dcm") as fh:
                            assert fh.read() == data, f"{name} read back other bytes"
                results[kind] = per_variant
        finally:
            for store in stores.values():  # their kept connections: Azurite stops at once
                store.container.close()
            azurite.stop()
    summary: dict[str, dict[str, float]] = {}
    for kind, per_variant in results.items():
        ratios = [c / r for c, r in zip(per_variant["current"], per_variant["requests"],
                                        strict=True)]
        summary[kind] = {
            "current_ms": statistics.median(per_variant["current"]),
            "requests_ms": statistics.median(per_variant["requests"]),
            "ratio": statistics.median(ratios),
        }
        print(f"{kind} ({SIZES[kind]} bytes, {args.count} puts x {args.rounds} rounds): "
              f"CPU ms per put, current {summary[kind]['current_ms']:.3f}, "
              f"requests {summary[kind]['requests_ms']:.3f}, "
              f"current / requests {summary[kind]['ratio']:.3f} (median of rounds)")
    if args.json:
        args.json.write_text(json.dumps({"rounds": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
