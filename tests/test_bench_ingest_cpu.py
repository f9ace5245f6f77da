"""The per-object CPU benchmark of the ingest path still runs (``bench/ingest_cpu.py``):
every variant, every phase. Never a timing threshold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("current", "serial-put", "sqlalchemy-insert", "before", "pydicom-header",
            "sqlalchemy-audit", "pre-ping", "lxml-audit", "before-audit", "unremembered-json",
            "unkept-connection", "pglz-header", "hash-first")


def test_ingest_cpu_runs_every_variant(postgres_server: str, tmp_path: Path) -> None:
    out = tmp_path / "ingest_cpu.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest_cpu.py"), "--kind", "small", "--count",
         "3", "--rounds", "2", "--variants", ",".join(VARIANTS), "--postgres", postgres_server,
         "--json", str(out)],
        check=True, capture_output=True, timeout=600,
    )
    results = json.loads(out.read_text())
    for variant in VARIANTS:
        cpu = results["small"][variant]["cpu_ms"]
        assert set(cpu) == {"received", "attributes", "audit", "put+index", "total", "database"}
        database = cpu.pop("database")  # the backends' CPU, in clock ticks: may round to 0
        assert database >= 0 and all(value > 0 for value in cpu.values()), cpu


def test_ingest_cpu_times_the_index_alone(tmp_path: Path) -> None:
    """``--index-only``: the upsert (with its audit row) without the put, on SQLite."""
    out = tmp_path / "ingest_cpu.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest_cpu.py"), "--kind", "small", "--count",
         "3", "--rounds", "2", "--index", "sqlite", "--index-only", "--variants",
         "current,unkept-connection", "--json", str(out)],
        check=True, capture_output=True, timeout=600,
    )
    results = json.loads(out.read_text())
    for variant in ("current", "unkept-connection"):
        cpu = results["small"][variant]["cpu_ms"]
        assert set(cpu) == {"received", "attributes", "audit", "index", "total"}
        assert all(value > 0 for value in cpu.values()), cpu


def test_ingest_cpu_times_the_whole_ingest(tmp_path: Path) -> None:
    """``--whole``: ``archive.ingest.ingest`` as one phase, as a C-STORE handler calls it."""
    out = tmp_path / "ingest_cpu.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest_cpu.py"), "--kind", "small", "--count",
         "3", "--rounds", "2", "--index", "sqlite", "--whole", "--json", str(out)],
        check=True, capture_output=True, timeout=600,
    )
    cpu = json.loads(out.read_text())["small"]["current"]["cpu_ms"]
    assert set(cpu) == {"received", "ingest", "total"}
    assert all(value > 0 for value in cpu.values()), cpu
