"""The per-association CPU benchmark still runs against MIMIC: a store, an echo and a find
per association, each checked (the count stored, the studies found), and beside it a stock
pynetdicom AE (``bench/bare_pynetdicom.py``), which has no C-FIND. Figures belong to
``bench/`` runs, never to a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.dcmtk


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One round of the benchmark with ``args``: the finished process and its JSON result."""
    out = tmp_path / "association_cpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "association_cpu.py"), "--rounds", "1",
         *args, "--output", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_association_cpu_benchmark_runs(tmp_path: Path) -> None:
    _, result = _run(tmp_path, "--associations", "3", "--receivers", "mimic-embedded")
    assert result["tls"] is True and result["associations"] == 3
    assert {(r["receiver"], r["kind"]) for r in result["runs"]} == {
        ("mimic-embedded", kind) for kind in ("store", "echo", "find")}
    assert all(r["wall_ms"] > 0 for r in result["runs"])
    assert set(result["median_cpu_ms"]["mimic-embedded"]) == {"store", "echo", "find"}


def test_stock_pynetdicom_is_a_receiver_for_echo_and_store(tmp_path: Path) -> None:
    _, result = _run(tmp_path, "--associations", "2", "--receivers", "pynetdicom")
    assert result["tls"] is True
    # the C-STOREs' count was checked by the benchmark (it exits non-zero on a shortfall)
    assert {(r["receiver"], r["kind"]) for r in result["runs"]} == {
        ("pynetdicom", "store"), ("pynetdicom", "echo")}
    assert all(r["wall_ms"] > 0 for r in result["runs"])


def test_stock_pynetdicom_receives_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Over plain TCP: a C-ECHO and a C-STORE answered, the object on disk, and the process
    ended by SIGTERM on its own (not by the SIGKILL that stop_process falls back to)."""
    from bench.association_cpu import _one
    from bench.bare_pynetdicom import BarePynetdicom
    from bench.store_throughput import make_small

    data = make_small(tmp_path / "in", 1, studies=1)
    (file,) = [p for d in data.parts for p in d.iterdir()]
    server = BarePynetdicom(tmp_path / "server", None)
    server.start()
    try:
        _one("echo", server, None)
        _one("store", server, file)
        assert server.count() == 1
        assert server.proc is not None
        server.proc.terminate()
        assert server.proc.wait(timeout=20) == 0
    finally:
        server.stop()


def test_over_plain_tcp_mimic_is_not_asked_for_a_c_find(tmp_path: Path) -> None:
    """Over plain TCP MIMIC's access policy grants no C-FIND (a refusal tested in the
    archive's own tests): the benchmark says so and measures the rest."""
    done, result = _run(tmp_path, "--associations", "2", "--receivers", "mimic-embedded",
                        "--plain")
    assert "find: not measured for MIMIC over plain TCP" in done.stderr
    assert result["tls"] is False
    assert {r["kind"] for r in result["runs"]} == {"store", "echo"}
