"""Several worker processes on one DICOM port (``MIMIC_WORKERS=2``): both serve, the metrics
and the association limit are the server's, trust changes and drains reach every worker, and
a worker that dies is replaced."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mimic_server.certs import devpki
from mimic_server.signals import REPEAT_AFTER
from tests.data import ct_copy
from tests.support import (
    MimicProcess,
    associate,
    client_context,
    dev_ca,
    drained_whole,
    free_port,
    wait_for,
    write_cert,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
UID_ROOT = "1.2.826.0.1.3680043.8.498.61."
#: Associations a test opens at most while waiting for both workers to have one: a worker
#: holding more leaves a new connection to the other (``net/server.py``), so the second
#: association should already land on the other worker; the rest is margin for a machine
#: too loaded for the other worker to accept within ACCEPT_DEFERRAL.
SPREAD_ATTEMPTS = 24


def metric(server: MimicProcess, name: str, **labels: str) -> float:
    status, body = server.ops("/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def per_worker(server: MimicProcess) -> dict[str, float]:
    return {w: metric(server, "mimic_worker_associations_accepted", worker=w)
            for w in ("0", "1")}


def worker_pids(server: MimicProcess) -> dict[int, int]:
    """The latest pid of each worker slot, from the supervisor's "worker started" lines."""
    pids: dict[int, int] = {}
    for entry in server.log_entries():
        if entry.get("message") == "worker started":
            pids[int(entry["worker"])] = int(entry["pid"])
    return pids


def spread(server: MimicProcess, ctx: Any) -> list[Any]:
    """Open (and keep open) associations until both workers hold at least one."""
    before = per_worker(server)
    opened = []
    for _ in range(SPREAD_ATTEMPTS):
        assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT_LE])
        assert assoc.is_established
        opened.append(assoc)
        now = per_worker(server)
        if all(now[w] > before[w] for w in now):
            return opened
    pytest.fail(f"every association landed on one worker: {per_worker(server)}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MimicProcess]:
    process = MimicProcess(tmp_path / "data", workers="2", cert_refresh_seconds="3600").start()
    yield process
    assert process.stop() == 0, process.log()


def context(server: MimicProcess, name: str = "modality1") -> Any:
    client = server.certs / "clients" / name
    return client_context(client / "client.pem", client / "client.key", server.ca_cert)


def test_both_workers_serve_and_the_metrics_add_up(server: MimicProcess, tmp_path: Path) -> None:
    listening = next(e for e in server.log_entries() if e.get("message") == "listening")
    assert listening["workers"] == 2
    assert len(worker_pids(server)) == 2
    stores_before = metric(server, "mimic_dimse_requests_total", service="C-STORE",
                           status="success")
    opened = spread(server, context(server))
    for n, assoc in enumerate(opened):
        status = assoc.send_c_store(ct_copy(tmp_path, f"{UID_ROOT}1.{n}"))
        assert status.Status == 0
    assert wait_for(lambda: metric(server, "mimic_associations_active") == len(opened))
    for assoc in opened:
        assoc.release()
    # Every worker's counts, summed by the supervisor's /metrics.
    stored = metric(server, "mimic_dimse_requests_total", service="C-STORE", status="success")
    assert stored - stores_before == len(opened) == server.instance_count()
    assert sum(per_worker(server).values()) == len(opened)
    assert wait_for(lambda: metric(server, "mimic_associations_active") == 0)
    assert metric(server, "mimic_workers_ready") == 2
    ready = json.loads(server.ops("/readyz")[1])
    assert ready["checks"]["workers"] == {"ok": True, "detail": "2 of 2 workers ready"}
    # The first-start banner: printed once, by the supervisor.
    assert server.log().count("Development PKI created") == 1


def test_associations_spread_evenly_over_the_workers(server: MimicProcess) -> None:
    """Four associations opened one after another, each kept open: two on each worker (the
    accept loops of both wake for each connection; the one holding more leaves it to the
    other), where the first to call accept() used to take any number of them."""
    ctx = context(server)
    before = per_worker(server)
    opened = [associate(server.port, ctx, transfer_syntaxes=[EXPLICIT_LE]) for _ in range(4)]
    try:
        assert all(assoc.is_established for assoc in opened)
        now = per_worker(server)
        assert sorted(now[w] - before[w] for w in now) == [2, 2], now
    finally:
        for assoc in opened:
            assoc.release()


def test_the_association_limit_is_a_total(tmp_path: Path) -> None:
    server = MimicProcess(tmp_path / "data", workers="2", max_associations="2").start()
    try:
        ctx = context(server)
        first = associate(server.port, ctx)
        second = associate(server.port, ctx)
        assert first.is_established and second.is_established
        third = associate(server.port, ctx)
        assert third.is_rejected  # whichever worker it reached: 3 open > 2
        first.release()
        assert wait_for(lambda: (a := associate(server.port, ctx)).is_established
                        and (a.release() or True), timeout=10)
        second.release()
    finally:
        assert server.stop() == 0, server.log()


def trust_updates(server: MimicProcess) -> list[dict[str, Any]]:
    return [e for e in server.log_entries() if e.get("message") == "trust set updated"]


def test_revocation_reaches_every_worker(server: MimicProcess) -> None:
    devpki.issue_client(server.certs, "modalityr")
    server.hup()  # forwarded to every worker
    assert wait_for(lambda: {e.get("worker") for e in trust_updates(server)} == {0, 1},
                    timeout=20)
    opened = spread(server, context(server, "modalityr"))
    bystander = associate(server.port, context(server))
    assert bystander.is_established

    before = len(trust_updates(server))  # a watcher may have seen the new files as well
    devpki.revoke(server.certs, "modalityr")
    server.hup()
    assert wait_for(lambda: all(a.is_aborted for a in opened), timeout=20)
    assert wait_for(lambda: {e.get("worker") for e in trust_updates(server)[before:]} == {0, 1},
                    timeout=20)
    assert not associate(server.port, context(server, "modalityr")).is_established
    assert bystander.send_c_echo().Status == 0
    bystander.release()
    updated = {e.get("worker") for e in server.log_entries()
               if e.get("message") == "trust set updated" and e.get("aborted_associations")}
    assert updated == {0, 1}  # each worker aborted its own


def test_a_revoked_ca_found_by_one_worker_reaches_the_other(
    server: MimicProcess, tmp_path: Path
) -> None:
    """The supervisor relays any change of what a worker serves, not only of the trusted
    client fingerprints: a CA removed from trusted-ca/ and found by worker 0 alone (its
    poll; here its own SIGHUP) is applied by worker 1 at once, not at its next poll (an
    hour here), and every association of a certificate it issued is aborted."""
    ca_pem, _, ca_cert, ca_key = write_cert(tmp_path / "wardca", "ward-ca",
                                            issuer=dev_ca(server.certs), ca=True)
    (server.certs / "trusted-ca").mkdir(exist_ok=True)
    (server.certs / "trusted-ca" / "ward-ca.pem").write_bytes(ca_pem.read_bytes())
    cert, key, _, _ = write_cert(tmp_path / "ward", "wardclient", issuer=(ca_cert, ca_key))
    ctx = client_context(cert, key, server.ca_cert)
    server.hup()
    assert wait_for(lambda: {e.get("worker") for e in trust_updates(server)} == {0, 1},
                    timeout=20)
    opened = spread(server, ctx)

    devpki.revoke(server.certs, "ward-ca")
    os.kill(worker_pids(server)[0], signal.SIGHUP)
    # Well within the 15 s network timeout after which the peers would abort by themselves.
    assert wait_for(lambda: all(a.is_aborted for a in opened), timeout=6), \
        [(e.get("worker"), e.get("aborted_associations")) for e in trust_updates(server)]
    assert not associate(server.port, ctx, transfer_syntaxes=[EXPLICIT_LE]).is_established


def test_no_client_expiry_series_once_nothing_is_trusted(server: MimicProcess) -> None:
    """The soonest client expiry goes from /metrics once no client or CA is trusted, as in a
    single process (a worker's multiprocess file could not drop the series)."""
    def series(name: str) -> list[tuple[dict[str, str], float]]:
        status, body = server.ops("/metrics")
        assert status == 200
        return [(s.labels, s.value) for f in text_string_to_metric_families(body.decode())
                for s in f.samples if s.name == name]

    expiry = "mimic_certificate_not_after_timestamp_seconds"
    assert {labels["role"] for labels, _ in series(expiry)} == {"server", "client"}
    devpki.revoke(server.certs, "modality1")  # the only trusted client
    server.hup()
    assert wait_for(lambda: [v for _, v in series("mimic_trusted_certificates")] == [0.0],
                    timeout=20)
    assert wait_for(lambda: {labels["role"] for labels, _ in series(expiry)} == {"server"},
                    timeout=5), series(expiry)


#: SIGHUPs sent to each worker by the storm test, a few hundred microseconds apart on average.
STORM_SIGNALS = 300


def test_a_sighup_storm_leaves_every_worker_responsive(server: MimicProcess) -> None:
    """SIGHUPs that arrive while a worker still handles the previous one (the supervisor's
    forward and its relay of another worker's trust change come together): a handler that
    took a lock deadlocked the worker's main thread, and with it its certificate watcher and
    its drain. After the storm both still reload, and both stop when told."""
    rng = random.Random(7)
    for _ in range(STORM_SIGNALS):
        for pid in worker_pids(server).values():
            os.kill(pid, signal.SIGHUP)
        time.sleep(rng.random() * 0.001)
    before = len(trust_updates(server))
    devpki.issue_client(server.certs, "modalitys")
    server.hup()
    assert wait_for(lambda: {e.get("worker") for e in trust_updates(server)[before:]} == {0, 1},
                    timeout=20), server.log()
    assert server.stop() == 0, server.log()
    stopped = {e["worker"] for e in server.log_entries() if e.get("message") == "worker stopped"}
    assert stopped == {0, 1}
    assert "did not stop" not in server.log()


def test_sigterm_drains_associations_on_every_worker(tmp_path: Path) -> None:
    server = MimicProcess(tmp_path / "data", workers="2", drain_seconds="30").start()
    opened = spread(server, context(server))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: server.ops("/readyz")[0] == 503)
    assert not associate(server.port, context(server)).is_established
    # Still served while they drain, on both workers, then released by the peer.
    for n, assoc in enumerate(opened):
        assert assoc.send_c_store(ct_copy(tmp_path, f"{UID_ROOT}2.{n}")).Status == 0
        assoc.release()
    server.proc.wait(60)
    assert server.stop() == 0, server.log()
    assert server.instance_count() == len(opened)
    entries = server.log_entries()
    drained = {e["worker"] for e in entries if e.get("message") == "worker stopped"}
    assert drained == {0, 1}
    stopped = next(e for e in entries if e.get("message") == "stopped")
    assert stopped["aborted_associations"] == 0


def test_a_second_sigterm_ends_every_workers_drain_at_once(tmp_path: Path) -> None:
    """The operator repeats the stop (a second SIGTERM to the supervisor while the workers
    drain, a second or more after the first): each worker is told to stop now, aborts what
    is still open and exits, long before MIMIC_DRAIN_SECONDS. A stop asked for, not a
    failure: exit 0, every association aborted counted, every object answered Success
    kept. (One sooner is the first passed on twice:
    ``test_one_stop_delivered_twice_still_drains``.)"""
    server = MimicProcess(tmp_path / "data", workers="2", drain_seconds="300",
                          network_timeout="600").start()
    opened = spread(server, context(server))
    for n, assoc in enumerate(opened):
        assoc.network_timeout = 600  # no idle peer that ends the drain by itself
        assert assoc.send_c_store(ct_copy(tmp_path, f"{UID_ROOT}6.{n}")).Status == 0
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    first = time.monotonic()
    assert wait_for(lambda: server.ops("/readyz")[0] == 503)
    assert all(a.is_established for a in opened)  # draining: nothing aborted yet
    time.sleep(max(0.0, first + REPEAT_AFTER + 0.1 - time.monotonic()))
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0, server.log()  # the drain would have lasted 300 s
    assert wait_for(lambda: all(a.is_aborted for a in opened), timeout=10)
    server.stop()
    entries = server.log_entries()
    cut = [e for e in entries if e.get("message") == "drain cut short" and "worker" not in e]
    assert [e["workers"] for e in cut] == [2]
    stopped = next(e for e in entries if e.get("message") == "stopped")
    assert stopped["aborted_associations"] == len(opened)
    assert stopped["aborted_associations_complete"] is True
    assert stopped["workers_failed"] == 0
    assert server.instance_count() == len(opened)


@pytest.mark.parametrize("delivery", ["to every process", "twice to the supervisor"])
def test_one_stop_delivered_twice_still_drains(tmp_path: Path, delivery: str) -> None:
    """One stop can arrive twice. A service manager that signals every process of the
    service (systemd's KillMode=control-group) sends each worker a SIGTERM beside the one
    its supervisor relays. coreutils ``timeout`` passes the signal it gets on to its command
    and then to the command's process group, and so do scripts that signal a process and
    its group (``kill $PID; kill -- -$PGID``): the supervisor gets two SIGTERMs a few
    milliseconds apart. Neither is the operator's second stop: the workers drain as on one,
    the open associations are still served and released by their peers, and nothing is
    aborted or logged as cut short."""
    server = MimicProcess(tmp_path / "data", workers="2", drain_seconds="120",
                          network_timeout="600").start()
    opened = spread(server, context(server))
    for assoc in opened:
        assoc.network_timeout = 600
    assert server.proc is not None
    workers = list(worker_pids(server).values())
    server.proc.send_signal(signal.SIGTERM)
    if delivery == "to every process":
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
    else:
        time.sleep(0.02)  # handled by then: two signals of a kind pending at once are one
        server.proc.send_signal(signal.SIGTERM)
    # 503 once every worker drains; a second stop taken for a repeated one would abort
    # within the supervisor's next look (20 ms) or a worker's drain wait (0.1 s).
    assert wait_for(lambda: server.ops("/readyz")[0] == 503)
    time.sleep(1.0)
    for n, assoc in enumerate(opened):
        assert assoc.is_established
        assert assoc.send_c_store(ct_copy(tmp_path, f"{UID_ROOT}8.{n}")).Status == 0
        assoc.release()
    assert server.proc.wait(60) == 0, server.log()
    server.stop()
    assert drained_whole(server)["aborted_associations"] == 0
    assert server.instance_count() == len(opened)


def test_a_worker_that_dies_during_the_drain_is_logged_and_fails_the_stop(
    tmp_path: Path,
) -> None:
    """A worker killed (OOM, a crash) while it drains loses its open associations: the
    supervisor says so at ERROR, its ``stopped`` total is marked incomplete, and it exits 4
    rather than 0, so that a service manager sees an unclean stop."""
    server = MimicProcess(tmp_path / "data", workers="2", drain_seconds="3",
                          cert_refresh_seconds="3600").start()
    opened = spread(server, context(server))
    on_victim = per_worker(server)["1"]  # accepted, none closed: open
    victim = worker_pids(server)[1]
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: server.ops("/readyz")[0] == 503)
    os.kill(victim, signal.SIGKILL)  # mid-drain, with an association open
    code = server.proc.wait(60)
    server.stop()
    for assoc in opened:
        assoc.release()
    entries = server.log_entries()
    death = next(e for e in entries if e.get("message") == "worker died during the drain")
    assert death["level"] == "ERROR" and death["pid"] == victim
    assert death["signal"] == "SIGKILL" and death["worker"] == 1
    assert death["stop_reported"] is False
    stopped = next(e for e in entries if e.get("message") == "stopped")
    assert stopped["aborted_associations_complete"] is False
    assert stopped["workers_failed"] == 1
    assert death["open_associations"] == on_victim >= 1
    assert code == 4, server.log()


def test_a_killed_worker_is_replaced(server: MimicProcess) -> None:
    opened = spread(server, context(server))
    on_victim = per_worker(server)["1"]  # accepted, none closed: open
    victim = worker_pids(server)[1]
    os.kill(victim, signal.SIGKILL)

    def died() -> dict[str, Any] | None:
        return next((e for e in server.log_entries()
                     if e.get("message") == "worker died; replacing it"), None)

    assert wait_for(lambda: died() is not None, timeout=20)
    death = died()
    assert death is not None
    assert death["level"] == "ERROR" and death["pid"] == victim
    assert death["signal"] == "SIGKILL" and death["worker"] == 1
    # The associations it held are counted lost, with it; worker 0's still serve.
    assert death["open_associations"] == on_victim >= 1
    assert metric(server, "mimic_worker_associations_lost_total") == on_victim
    assert wait_for(lambda: sum(a.is_established for a in opened) == len(opened) - on_victim)
    for assoc in opened:
        if assoc.is_established:
            assert assoc.send_c_echo().Status == 0
            assoc.release()
    # Scraped all through the replacement's start: the one still serving trusts modality1
    # and the CA, and the replacement (nothing loaded yet) does not say 0 ("nothing trusted").
    # The replica stays ready all along: worker 0 accepts on the shared socket.
    trusted: set[float] = set()
    readiness: set[int] = set()

    def replaced() -> bool:
        status, body = server.ops("/metrics")
        assert status == 200
        samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
        trusted.update(s.value for s in samples if s.name == "mimic_trusted_certificates")
        readiness.add(server.ops("/readyz")[0])
        ready = next(s.value for s in samples if s.name == "mimic_workers_ready")
        return worker_pids(server)[1] != victim and ready == 2

    assert wait_for(replaced, timeout=90, interval=0.01)
    assert trusted and 0.0 not in trusted, trusted
    assert readiness == {200}, readiness
    assert metric(server, "mimic_worker_restarts_total") == 1
    # New associations succeed (on either worker), the replacement among them eventually.
    ctx = context(server)
    for _ in range(4):
        assoc = associate(server.port, ctx)
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
    for assoc in spread(server, ctx):
        assoc.release()


def test_status_for_the_console_lists_every_workers_associations(server: MimicProcess) -> None:
    opened = spread(server, context(server))
    try:
        status, body = server.ops("/status/associations")
        assert status == 200
        answer = json.loads(body)
        held = answer["associations"]
        assert len(held) == len(opened)
        assert {a["worker"] for a in held} == {0, 1}  # each worker's own, asked of it
        assert answer["workers_unanswered"] == 0
        assert sum(m["associations"] for m in answer["minutes"]) >= len(opened)
    finally:
        for assoc in opened:
            assoc.release()
    assert wait_for(lambda: json.loads(server.ops("/status/associations")[1])
                    ["associations"] == [])


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "group-sigterm"])
def test_a_stop_sent_to_the_whole_group_during_the_start_exits_cleanly(
    tmp_path: Path, sent: int
) -> None:
    """Ctrl-C in a terminal (SIGINT to the foreground group) or a service manager's SIGTERM
    to every process while the workers still start: exit 0 with a 'stopped' line, not 2
    ("could not start", a configuration error) with tracebacks of workers still importing."""
    import subprocess
    import sys

    (tmp_path / "data").mkdir()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMIC_")}
    env.update(MIMIC_WORKERS="2", MIMIC_HOST="127.0.0.1", MIMIC_PORT=str(free_port()),
               MIMIC_OPS_HOST="127.0.0.1", MIMIC_OPS_PORT=str(free_port()),
               MIMIC_DATA_DIR=str(tmp_path / "data"), MIMIC_LOG_FORMAT="json")
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mimic_server", "serve"], env=env,
                                stdout=out, stderr=out, cwd=tmp_path,
                                start_new_session=True)  # a terminal job's own group
    try:
        assert wait_for(lambda: log.read_text().count('"worker started"') == 2, timeout=30,
                        interval=0.01)
        os.killpg(proc.pid, sent)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert '"stopped"' in text


def _serve_in_background(tmp_path: Path, **settings: str) -> tuple[Any, Path, int]:
    """``mimic serve`` with two workers, its output in a file: (process, log, DICOM port)."""
    import subprocess
    import sys

    (tmp_path / "data").mkdir()
    log = tmp_path / "serve.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMIC_")}
    env.update(MIMIC_WORKERS="2", MIMIC_HOST="127.0.0.1", MIMIC_PORT=str(port),
               MIMIC_OPS_HOST="127.0.0.1", MIMIC_OPS_PORT=str(free_port()),
               MIMIC_DATA_DIR=str(tmp_path / "data"), MIMIC_LOG_FORMAT="json",
               **{f"MIMIC_{k.upper()}": v for k, v in settings.items()})
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mimic_server", "serve"], env=env,
                                stdout=out, stderr=out, cwd=tmp_path)
    return proc, log, port


def _started_pids(log: Path) -> dict[int, int]:
    pids = {}
    for line in log.read_text().splitlines():
        if '"worker started"' in line:
            entry = json.loads(line)
            pids[int(entry["worker"])] = int(entry["pid"])
    return pids


def test_a_sigterm_during_a_start_one_worker_does_not_finish_drains_the_others(
    tmp_path: Path,
) -> None:
    """A container's stop signals the supervisor alone (PID 1). While one worker hangs in its
    start (here: stopped; in service, a database or store that does not answer), the
    supervisor waited for it for up to START_TIMEOUT (120 s) before doing anything about
    the stop: the worker already up kept admitting new associations, never told to drain,
    until the platform's SIGKILL ended them all. Now the stop ends the wait: the worker up
    stops accepting at once, and the one still starting goes with the drain."""
    proc, log, port = _serve_in_background(tmp_path, drain_seconds="2")
    stuck = None
    try:
        assert wait_for(lambda: len(_started_pids(log)) == 2, timeout=30, interval=0.01)
        stuck = _started_pids(log)[1]
        os.kill(stuck, signal.SIGSTOP)  # still importing: it will not say ready
        assert wait_for(lambda: '"worker listening"' in log.read_text(), timeout=60), \
            log.read_text()[-3000:]
        certs = tmp_path / "data" / "certs"
        ctx = client_context(certs / "clients" / "modality1" / "client.pem",
                             certs / "clients" / "modality1" / "client.key",
                             certs / "ca" / "ca.pem")
        first = associate(port, ctx)
        assert first.is_established  # worker 0 serves, worker 1 is still starting
        first.release()
        proc.send_signal(signal.SIGTERM)
        # Worker 0 is told to drain at once, and worker 1 holds the listening socket no
        # longer: a new association is refused within seconds, not admitted for as long
        # as worker 1 takes to start, nor left waiting in a backlog nobody accepts from.
        def refused() -> bool:
            assoc = associate(port, ctx)
            if assoc.is_established:
                assoc.release()
            return not assoc.is_established

        assert wait_for(refused, timeout=10, interval=0.5), log.read_text()[-3000:]
        code = proc.wait(30)
    finally:
        if stuck is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stuck, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 0, text[-3000:]  # a stop, not "the workers did not start" (exit 2)
    assert '"stopped"' in text
    # The one still starting is not waited for (drain + 15 s) as one that serves would be.
    assert "did not stop" not in text and "died during the drain" not in text


def test_a_sighup_to_every_process_during_the_start_is_no_failed_start(tmp_path: Path) -> None:
    """A reload signal sent to every process of the service (``systemctl kill -s HUP``, a
    cgroup-wide kill; the workers are in process groups of their own) while the workers
    still import: a worker, whose handler is not set yet, died of it, and ``mimic serve``
    exited 2 ("worker 0 could not start (signal SIGHUP)"). A worker blocks SIGHUP until
    its handler is set (its supervisor holds back its own SIGHUPs until then anyway)."""
    proc, log, _ = _serve_in_background(tmp_path)
    try:
        assert wait_for(lambda: len(_started_pids(log)) == 2, timeout=30, interval=0.01)
        for pid in [proc.pid, *_started_pids(log).values()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        assert wait_for(lambda: '"listening"' in log.read_text() or proc.poll() is not None,
                        timeout=60)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert '"worker died' not in log.read_text()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()[-3000:]


@pytest.mark.parametrize("hup_to", ["supervisor", "one worker"])
def test_a_revocation_during_the_drain_aborts_the_revoked_peers_associations(
    tmp_path: Path, hup_to: str
) -> None:
    """A certificate revoked while the workers drain (an operator's or the Key Vault
    watcher's SIGHUP after a SIGTERM) is acted on as at any other time: the revoked peer's
    association on each worker is aborted at once, not left storing until the drain ends.
    The SIGHUP reaches the workers from the supervisor, or from one worker's trust change
    relayed to the other; a bystander keeps storing and releases, and the stop is clean
    (nothing aborted by the drain itself). The watchers poll hourly here: only the SIGHUP
    can have done it."""
    server = MimicProcess(tmp_path / "data", workers="2", drain_seconds="120",
                          cert_refresh_seconds="3600").start()
    try:
        devpki.issue_client(server.certs, "modalityr")
        server.hup()
        assert wait_for(lambda: {e.get("worker") for e in trust_updates(server)} == {0, 1},
                        timeout=20)
        revoked = spread(server, context(server, "modalityr"))
        bystander = associate(server.port, context(server), transfer_syntaxes=[EXPLICIT_LE])
        assert bystander.is_established
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: server.ops("/readyz")[0] == 503)
        for n, assoc in enumerate(revoked):  # served while they drain, as any other
            assert assoc.send_c_store(ct_copy(tmp_path, f"{UID_ROOT}3.{n}")).Status == 0

        before = len(trust_updates(server))
        devpki.revoke(server.certs, "modalityr")
        if hup_to == "supervisor":
            server.hup()
        else:
            os.kill(worker_pids(server)[0], signal.SIGHUP)
        # Well within the peers' 15 s network timeout, after which they abort by themselves.
        assert wait_for(lambda: all(a.is_aborted for a in revoked), timeout=6), \
            [(e.get("worker"), e.get("aborted_associations")) for e in trust_updates(server)]
        aborting = {e.get("worker") for e in trust_updates(server)[before:]
                    if e.get("aborted_associations")}
        assert aborting == {0, 1}  # each worker aborted its own
        assert bystander.send_c_store(ct_copy(tmp_path, f"{UID_ROOT}3.99")).Status == 0
        bystander.release()
        # Nothing open any more: the drain ends now, not at MIMIC_DRAIN_SECONDS.
        assert server.proc.wait(30) == 0, server.log()
    finally:
        server.stop()
    assert server.instance_count() == len(revoked) + 1
    stopped = next(e for e in server.log_entries() if e.get("message") == "stopped")
    assert stopped["aborted_associations"] == 0
    assert stopped["workers_failed"] == 0


def incoming_files(server: MimicProcess) -> list[Path]:
    """Everything under the file store's ``.incoming``: each store's directory of spare and
    in-flight temporary files, and its lock file."""
    incoming = server.data_dir / "objects" / ".incoming"
    return sorted(incoming.rglob("*")) if incoming.exists() else []


@pytest.mark.parametrize("workers", ["2", "1"])
def test_a_clean_stop_leaves_no_spare_files_and_a_crash_is_swept_at_the_next_start(
    tmp_path: Path, workers: str
) -> None:
    """Each file store makes 16 empty spare files ahead in ``.incoming/<id>/`` and holds a
    lock there while it lives. A clean stop (SIGTERM, drain, exit 0) removes them, the
    supervisor's (which never puts: it makes none) and every worker's, where they used to
    stay, 16 per store (47 files and 3 locks with two workers). A crash leaves them, and the
    next start sweeps what no living process holds."""
    server = MimicProcess(tmp_path / "data", workers=workers).start()
    try:
        ctx = context(server)
        opened = spread(server, ctx) if workers == "2" else [
            associate(server.port, ctx, transfer_syntaxes=[EXPLICIT_LE])]
        for n, assoc in enumerate(opened):
            assert assoc.send_c_store(ct_copy(tmp_path, f"{UID_ROOT}4.{n}")).Status == 0
            assoc.release()
        assert incoming_files(server)  # while it runs: its spares and locks
    finally:
        assert server.stop() == 0, server.log()
    assert incoming_files(server) == []
    assert server.instance_count() == len(opened)
    assert len(server.stored_objects()) == len(opened)

    # A crash (SIGKILL: a container killed, the workers with their supervisor) leaves them.
    server.log_path.rename(tmp_path / "first-serve.log")  # each start its own log to read
    again = MimicProcess(server.data_dir, workers=workers).start()
    pids = [again.proc.pid] if again.proc is not None else []
    pids += list(worker_pids(again).values())
    assert again.proc is not None
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    again.proc.wait(30)
    again.stop()
    assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids))
    assert any(p.name.endswith(".lock") for p in incoming_files(again))
    # The next start sweeps them; its own go at its clean stop.
    again.log_path.rename(tmp_path / "crashed-serve.log")
    third = MimicProcess(server.data_dir, workers=workers).start()
    assert third.stop() == 0, third.log()
    assert incoming_files(third) == []
    assert len(third.stored_objects()) == len(opened)
