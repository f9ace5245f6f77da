"""The comparison and cloud-latency benchmarks still run, with tiny counts.

Only that every receiver takes and holds what was sent (each run's count is verified inside
the benchmark, which raises otherwise), that the report and chart are written, and that the
delaying proxy forwards bytes intact and never early; never a throughput threshold (figures
belong to ``bench/`` runs and docs/benchmarks.md). Orthanc takes part when it is installed
(``/usr/sbin/Orthanc``); the suite does not need it.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import psycopg
import pytest

from bench import compare, latency, receivers
from tests.azurite import AZURITE_BLOB

pytestmark = [
    pytest.mark.dcmtk, pytest.mark.postgres, pytest.mark.azurite,
    pytest.mark.skipif(not AZURITE_BLOB.exists(), reason="Azurite is not installed: run "
                       "scripts/test.sh (npm install)"),
]


#: The machine's busy seconds of a run may fall short of its processes' by a tick per CPU at
#: each end of the run (``/proc/stat`` is counted in ticks of ``1 / SC_CLK_TCK`` seconds).
TICKS_PER_RUN = 2 * (os.cpu_count() or 1) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timeout(1200)  # 12 runs, each starting a fresh receiver: slow on a loaded machine
def test_compare_runs_every_receiver(postgres_server: str, tmp_path: Path) -> None:
    wanted = list(receivers.RECEIVERS)
    if receivers.orthanc_missing() is not None:
        wanted = [x for x in wanted if not x.startswith("orthanc")]
    labels, notes = compare.available_receivers(wanted, postgres_server)
    assert labels == wanted, notes

    result = compare.run(rounds=1, small=2, large=0, labels=labels, postgres=postgres_server,
                         tls_modes=(True,), associations=(2,), log=False)

    runs = {(r["receiver"], r["scenario"]): r for r in result["runs"]}  # type: ignore[attr-defined]
    for label in labels:
        for scenario in ("small-2-tls",):
            run = runs[(label, scenario)]
            assert run["instances"] == 2 and len(run["seconds"]) == 1, run
            # the machine was busy at least as long as the receiver and the senders together,
            # within what the two readings' resolution allows: /proc/stat counts whole ticks
            # per CPU, sampled at each end of the run, the processes' times are exact
            busy = run["cpu_seconds"][0] + run["sender_cpu_seconds"][0]
            assert busy > 0, run
            assert run["machine_busy_seconds"][0] >= 0.8 * busy - TICKS_PER_RUN, run
            assert run["database_cpu_seconds"][0] >= 0, run
    text = compare.markdown(result)
    for label in labels:
        assert compare.NAMES[label] in text
    assert "CPU per object in each receiver's best round, 2 associations over TLS" in text
    chart = tmp_path / "chart.png"
    compare.chart(result, chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = compare.section(result, notes)
    assert section.startswith(compare.BEGIN) and section.endswith(compare.END)


@pytest.mark.timeout(900)
def test_latency_runs_in_every_mode(postgres_server: str) -> None:
    result = latency.run(count=2, rounds=1, associations=(2,), modes=latency.MODES,
                         postgres=postgres_server, pg_delay_ms=1.0, blob_delay_ms=2.5,
                         tls=True, log=False)

    best = result["best"]
    assert set(best) == set(latency.MODES)  # type: ignore[arg-type]
    for mode in latency.MODES:
        assert set(best[mode]) == {2}, best[mode]  # type: ignore[index]
    rtt = result["round_trips"]
    assert rtt["latency"]["postgres_rtt_ms"] >= 2.0, rtt  # type: ignore[index]
    assert rtt["latency"]["blob_rtt_ms"] >= 5.0, rtt  # type: ignore[index]
    assert "16 associations" not in latency.markdown(result)  # no 16-association figure made up
    assert result["azurite"] == "--inMemoryPersistence --loose"
    for run in result["runs"]:  # type: ignore[attr-defined]
        # every process of the run is accounted for, beside the whole machine
        assert run["azurite_cpu_s"] >= 0 and run["postgres_cpu_s"] >= 0, run
        assert run["machine_busy_s"] + run["machine_idle_s"] > 0, run
        assert run["proxy_cpu_s"] == pytest.approx(
            run["pg_proxy_cpu_s"] + run["blob_proxy_cpu_s"], abs=0.011), run
        if run["mode"] == "direct":
            assert run["proxy_cpu_s"] == 0, run


def test_delay_proxy_forwards_in_order_and_never_early(postgres_server: str) -> None:
    port = int(psycopg.conninfo.conninfo_to_dict(postgres_server).get("port", 5432))
    proxy = latency.DelayProxy(port, delay_ms=20.0).start()
    try:
        dsn = psycopg.conninfo.make_conninfo(postgres_server, port=proxy.port)
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT md5(repeat('0123456789', 200000)), "
                               "repeat('0123456789', 200000)").fetchone()
            assert row is not None
            assert hashlib.md5(row[1].encode()).hexdigest() == row[0]  # 2 MB arrived intact
            started = time.monotonic()
            conn.execute("SELECT 1")
            assert time.monotonic() - started >= 0.040  # two one-way delays, at least
    finally:
        proxy.stop()


def test_latency_counts_the_cpu_of_the_database_backends(postgres_server: str) -> None:
    """The backends of one database are found by their process title and their CPU read."""
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        dbname = conn.info.dbname
        before = latency.database_cpu(dbname)
        conn.execute("SELECT sum(i) FROM generate_series(1, 3000000) AS i").fetchone()
        after = latency.database_cpu(dbname)
        assert conn.info.backend_pid in after
        assert latency.database_cpu_delta(before, after) > 0
