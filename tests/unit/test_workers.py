"""The worker count and the association count the workers share."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mimic_server.config import Settings
from mimic_server.errors import ConfigurationError
from mimic_server.workers import cpu_quota, worker_count
from mimic_server.workers.table import NOT_ACCEPTING, AssociationTable


@pytest.fixture(autouse=True)
def _supervisor_directories_removed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A Supervisor makes its directory (the association table, the metrics files) in the
    system's temporary directory, removed when it stops; most tests here never start or
    stop theirs, and left one there each run."""
    import shutil
    import tempfile

    made: list[str] = []
    mkdtemp = tempfile.mkdtemp

    def recorded(*args: Any, **kwargs: Any) -> str:
        made.append(mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recorded)
    yield
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)


def test_workers_setting_wins(tmp_path: Path) -> None:
    assert worker_count(Settings(data_dir=tmp_path, workers=3)) == 3


def test_default_is_the_cpus_this_process_may_use(tmp_path: Path) -> None:
    count = worker_count(Settings(data_dir=tmp_path))
    assert 1 <= count <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("v2", "expected"), [
    ("max 100000\n", None), ("150000 100000\n", 1.5), ("100000 100000\n", 1.0),
])
def test_cgroup_v2_quota(tmp_path: Path, v2: str, expected: float | None) -> None:
    (tmp_path / "cpu.max").write_text(v2)
    missing = (tmp_path / "none", tmp_path / "none")
    assert cpu_quota(tmp_path / "cpu.max", missing) == expected


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    quota, period = tmp_path / "quota", tmp_path / "period"
    period.write_text("100000\n")
    quota.write_text("-1\n")  # unlimited
    assert cpu_quota(tmp_path / "absent", (quota, period)) is None
    quota.write_text("200000\n")
    assert cpu_quota(tmp_path / "absent", (quota, period)) == 2.0


def test_association_table_totals_every_worker(tmp_path: Path) -> None:
    supervisor = AssociationTable(tmp_path / "t", 3, create=True)
    worker0 = AssociationTable(tmp_path / "t", 3)
    worker2 = AssociationTable(tmp_path / "t", 3)
    assert worker0.admit(0, 2) == 2
    assert worker2.admit(2, 1) == 3  # its own and worker 0's
    assert supervisor.total() == 3
    supervisor.publish(0, 0)  # worker 0 died
    assert worker2.admit(2, 1) == 1
    for table in (supervisor, worker0, worker2):
        table.close()


def test_held_connections_are_shared_and_a_worker_not_accepting_is_not_waited_for(
    tmp_path: Path,
) -> None:
    supervisor = AssociationTable(tmp_path / "t", 3, create=True)
    worker0 = AssociationTable(tmp_path / "t", 3)
    worker1 = AssociationTable(tmp_path / "t", 3)
    assert worker0.least_held_elsewhere(0) == NOT_ACCEPTING  # none accepts yet
    worker1.hold(1, 2)
    assert worker0.least_held_elsewhere(0) == 2
    worker0.hold(0, 5)
    assert worker1.least_held_elsewhere(1) == 5
    assert worker0.total() == 0  # held connections are not the associations the limit counts
    supervisor.hold(1, NOT_ACCEPTING)  # worker 1 died (or drains)
    assert worker0.least_held_elsewhere(0) == NOT_ACCEPTING
    for table in (supervisor, worker0, worker1):
        table.close()


class _Process:
    """A worker process as the supervisor sees it: alive, and the signals it was sent."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.pid = 100

    def poll(self) -> None:
        return None

    def send_signal(self, number: int) -> None:
        self.signals.append(number)

    def kill(self) -> None:
        import signal

        self.signals.append(signal.SIGKILL)


def test_a_second_trust_change_is_relayed_at_once_and_echoes_are_not(tmp_path: Path) -> None:
    """A revocation a moment after an onboarding still reaches the other workers at once;
    the others' reports of the set they were just told about are not relayed back."""
    import signal

    from mimic_server.workers.link import trust_token
    from mimic_server.workers.supervisor import Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 2)
    one, two = (_Run(_Process(), 0.0, ready=True) for _ in range(2))  # type: ignore[arg-type]
    supervisor.slots[0].run, supervisor.slots[1].run = one, two
    onboarded, revoked = trust_token({"a", "b"}), trust_token({"b"})

    supervisor._relay_trust_change(one, onboarded)  # worker 1 sees B added
    supervisor._relay_trust_change(two, onboarded)  # worker 2's reload on that SIGHUP: echo
    supervisor._relay_trust_change(two, revoked)  # worker 2 sees A disabled, 0.1 s later
    supervisor._relay_trust_change(one, revoked)  # worker 1's reload: echo

    assert two.process.signals == [signal.SIGHUP]  # type: ignore[attr-defined]
    assert one.process.signals == [signal.SIGHUP]  # type: ignore[attr-defined]
    assert trust_token(["b", "a"]) == onboarded  # the order of the set does not matter


def _entry(tmp_path: Path, name: str, kind: str = "client", **binding: Any) -> Any:
    from mimic_server.certs import TrustedCertificate
    from tests.support import write_cert

    _, _, certificate, _ = write_cert(tmp_path / name, name, ca=kind == "ca")
    return TrustedCertificate(name, kind, certificate, **binding)  # type: ignore[arg-type]


def test_the_trust_token_covers_cas_bindings_and_the_server_chain(tmp_path: Path) -> None:
    """A worker reports a trust change (which the supervisor relays to the others at once)
    when anything it serves changes, not only the set of trusted client fingerprints: a CA
    revoked, a server certificate rotated, a client's AE titles or access rule edited."""
    from mimic_server.certs import CertBundle
    from mimic_server.certs.trust import applied_content
    from mimic_server.security.grants import FULL, MODALITY
    from mimic_server.workers.link import trust_token

    client = _entry(tmp_path, "modality1", ae_titles=frozenset({"CT1"}), rule=MODALITY)
    ca = _entry(tmp_path, "ward-ca", "ca")

    def token(chain: bytes = b"chain", *trusted: Any) -> str:
        return trust_token(applied_content(CertBundle(chain, b"key", trusted)))

    base = token(b"chain", client, ca)
    assert token(b"chain", ca, client) == base  # the order of the entries does not matter
    assert token(b"chain", client) != base  # the CA revoked
    assert token(b"rotated", client, ca) != base  # the server certificate rotated
    rebound = dataclasses.replace(client, ae_titles=frozenset({"CT2"}))
    assert token(b"chain", rebound, ca) != base  # the client's AE titles changed
    regranted = dataclasses.replace(client, rule=FULL)
    assert token(b"chain", regranted, ca) != base  # its access rule changed


def test_the_trust_token_is_the_same_in_every_worker(tmp_path: Path) -> None:
    """The workers' reports of one change must hash alike, or each would be relayed again:
    a rule's sets of services are written sorted, whatever the process's hash seed."""
    import subprocess
    import sys

    program = (
        "from mimic_server.certs.trust import _canonical\n"
        "from mimic_server.security.grants import FULL\n"
        "import json; print(json.dumps(_canonical(FULL)))\n"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", program], check=True, capture_output=True,
                       text=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2", "3", "4")
    }
    assert len(outputs) == 1, outputs


class _Ended(_Process):
    """A worker process that has ended with ``code`` (negative: the signal)."""

    def __init__(self, pid: int, code: int) -> None:
        super().__init__()
        self.pid, self.code = pid, code

    def poll(self) -> int:  # type: ignore[override]
        return self.code

    def wait(self, timeout: float | None = None) -> int:
        return self.code


def test_a_worker_that_dies_during_the_drain_fails_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Of the serving workers, one that stopped cleanly counts; one killed during its drain
    is logged at ERROR and makes the aborted total incomplete; a replacement still starting
    (not ready: SIGTERM ends it before its handler is set) had nothing to lose."""
    import logging
    import signal

    from mimic_server.workers.supervisor import Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 3)
    clean = _Run(_Ended(101, 0), 0.0, ready=True, draining=True, aborted=2, stopped=True)  # type: ignore[arg-type]
    killed = _Run(_Ended(102, -signal.SIGKILL), 0.0, ready=True, draining=True)  # type: ignore[arg-type]
    starting = _Run(_Ended(103, -signal.SIGTERM), 0.0)  # type: ignore[arg-type]
    for slot, run in zip(supervisor.slots, (clean, killed, starting), strict=True):
        slot.run = run
    with caplog.at_level(logging.INFO, logger="mimic_server.workers.supervisor"):
        assert supervisor._drain() == 1
    # Those that served are told to drain; the one still starting goes at once.
    assert [r.process.signals for r in (clean, killed, starting)] == [  # type: ignore[attr-defined]
        [signal.SIGTERM], [signal.SIGTERM], [signal.SIGKILL]
    ]
    deaths = [r for r in caplog.records if r.getMessage() == "worker died during the drain"]
    assert [(r.levelname, r.pid, r.signal, r.worker) for r in deaths] == [  # type: ignore[attr-defined]
        ("ERROR", 102, "SIGKILL", 1)
    ]
    stopped = next(r for r in caplog.records if r.getMessage() == "stopped")
    assert stopped.aborted_associations == 2  # type: ignore[attr-defined]
    assert stopped.aborted_associations_complete is False  # type: ignore[attr-defined]
    assert stopped.workers_failed == 1  # type: ignore[attr-defined]


class _DrainingUntilHup(_Process):
    """A draining worker whose last association is of a certificate revoked meanwhile: the
    operator's SIGHUP reaches the supervisor while it waits for this worker to end, and the
    worker ends once that SIGHUP is forwarded to it (its revoked association aborted)."""

    def __init__(self, supervisor: Any) -> None:
        super().__init__()
        self.supervisor = supervisor

    def poll(self) -> int | None:  # type: ignore[override]
        import signal

        if signal.SIGHUP in self.signals:
            return 0
        if self.signals == [signal.SIGTERM]:  # draining: the revocation's SIGHUP comes
            self.signals.append(0)
            self.supervisor.request_hup()
        return None

    def wait(self, timeout: float | None = None) -> int:
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired("mimic serve-worker", timeout or 0.0)
        return code


def test_a_sighup_during_the_drain_is_forwarded_to_the_draining_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The supervisor waits up to MIMIC_DRAIN_SECONDS + 15 s for its workers: a SIGHUP then
    (a certificate revoked during a stop) is forwarded as at any other time, so that each
    worker aborts the revoked peer's associations now; it used to wait unforwarded until the
    drain ended, and the revoked peer stored until then."""
    import logging
    import signal

    from mimic_server.workers.supervisor import Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path, drain_seconds=0), {}, 1)
    process = _DrainingUntilHup(supervisor)
    supervisor.slots[0].run = _Run(process, 0.0, ready=True, draining=True,  # type: ignore[arg-type]
                                   stopped=True)
    with caplog.at_level(logging.INFO, logger="mimic_server.workers.supervisor"):
        assert supervisor._drain() == 0
    assert signal.SIGHUP in process.signals
    assert signal.SIGKILL not in process.signals
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_sighup_for_a_worker_still_starting_is_sent_when_it_is_ready(
    tmp_path: Path,
) -> None:
    """A replacement reads its certificates early in its start and says ready at its end: a
    SIGHUP (forwarded, or relayed from another worker's trust change) in between is held
    for it, not dropped, and sent once it reports ready; it would otherwise serve a revoked
    certificate until its next poll."""
    import signal

    from mimic_server.workers.link import trust_token
    from mimic_server.workers.supervisor import Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 2)
    serving = _Run(_Process(), 0.0, ready=True)  # type: ignore[arg-type]
    replacement = _Run(_Process(), 0.0)  # type: ignore[arg-type]
    supervisor.slots[0].run, supervisor.slots[1].run = serving, replacement

    supervisor.hup()  # the operator's SIGHUP
    supervisor._relay_trust_change(serving, trust_token({"revoked"}))  # the serving one's
    assert serving.process.signals == [signal.SIGHUP]  # type: ignore[attr-defined]
    assert replacement.process.signals == []  # type: ignore[attr-defined]

    read_end, write_end = os.pipe()
    os.write(write_end, b'{"event": "status-port", "status_port": 1}\n{"event": "ready"}\n')
    os.close(write_end)
    supervisor._read_status(supervisor.slots[1], replacement, read_end)  # to the pipe's end
    assert replacement.ready
    assert replacement.process.signals == [signal.SIGHUP]  # type: ignore[attr-defined]


def test_the_workers_check_is_ready_while_some_worker_accepts(tmp_path: Path) -> None:
    """The workers share one listening socket, so one that accepts serves the replica: a
    worker dead or being replaced must not take the whole replica out of the ingress for
    its replacement's start (a crash loop's back-off included). None ready is not ready."""
    from mimic_server.workers.supervisor import Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 3)
    with pytest.raises(ConfigurationError, match="0 of 3 workers ready"):
        supervisor._workers_ready()  # none started yet
    starting = [_Run(_Process(), 0.0) for _ in range(3)]  # type: ignore[arg-type]
    for slot, run in zip(supervisor.slots, starting, strict=True):
        slot.run = run
    with pytest.raises(ConfigurationError, match="0 of 3 workers ready"):
        supervisor._workers_ready()
    supervisor.slots[1].run = _Run(_Process(), 0.0, ready=True)  # type: ignore[arg-type]
    assert supervisor._workers_ready() == "1 of 3 workers ready"
    supervisor.slots[1].run = _Run(_Ended(102, -9), 0.0, ready=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="0 of 3 workers ready"):
        supervisor._workers_ready()  # it said ready, then died


def test_the_certificate_expiry_is_exported_from_what_the_workers_reported(
    tmp_path: Path,
) -> None:
    """The supervisor exports the soonest expiry per role from the workers' reports: a
    client expiry no worker has any more (nothing trusted) is absent, which the workers'
    multiprocess files could not say (a series written there cannot be removed)."""
    from prometheus_client.parser import text_string_to_metric_families

    from mimic_server.workers.supervisor import Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 2)
    one, two = (_Run(_Process(), 0.0, ready=True) for _ in range(2))  # type: ignore[arg-type]
    supervisor.slots[0].run, supervisor.slots[1].run = one, two
    one.server_not_after, two.server_not_after = 2000.0, 1000.0
    one.client_not_after, two.client_not_after = 3000.0, 4000.0

    def expiry() -> dict[str, float]:
        text = supervisor.metrics.exposition().decode()
        return {s.labels["role"]: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "mimic_certificate_not_after_timestamp_seconds"}

    assert expiry() == {"server": 1000.0, "client": 3000.0}
    one.client_not_after = None  # worker 0 applied a trust set with nothing in it
    assert expiry() == {"server": 1000.0, "client": 4000.0}  # worker 1 not yet
    two.client_not_after = None
    assert expiry() == {"server": 1000.0}


def test_a_replacement_that_does_not_start_in_time_is_killed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replacement hung in its start (it never reports ready) would hold its slot with
    /readyz 503 for good: past START_TIMEOUT it is killed, once, logged at ERROR (its death
    is then replaced with the crash loop's back-off); one still in time, or ready, is not."""
    import logging
    import signal
    import time

    from mimic_server.workers.supervisor import START_TIMEOUT, Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 3)
    now = time.monotonic()
    hung = _Run(_Process(), now - START_TIMEOUT - 1)  # type: ignore[arg-type]
    starting = _Run(_Process(), now - START_TIMEOUT + 5)  # type: ignore[arg-type]
    ready = _Run(_Process(), now - 10 * START_TIMEOUT, ready=True)  # type: ignore[arg-type]
    runs = (hung, starting, ready)
    with caplog.at_level(logging.ERROR, logger="mimic_server.workers.supervisor"):
        for _ in range(2):
            for slot, run in zip(supervisor.slots, runs, strict=True):
                supervisor._check_start(slot, run, now)
    assert [r.process.signals for r in runs] == [[signal.SIGKILL], [], []]  # type: ignore[attr-defined]
    logged = [r for r in caplog.records if r.getMessage() == "worker did not start; killing it"]
    assert [(r.worker, r.levelname) for r in logged] == [(0, "ERROR")]  # type: ignore[attr-defined]


def test_a_replacement_reporting_ready_as_its_start_runs_out_is_kept(tmp_path: Path) -> None:
    """The ready report (the status reader's thread, under the supervisor's lock) and the
    start's deadline (the main loop) meet: the deadline is decided under the same lock, so
    a worker that became ready first is not killed."""
    import threading
    import time

    from mimic_server.workers.supervisor import START_TIMEOUT, Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 1)
    now = time.monotonic()
    run = _Run(_Process(), now - START_TIMEOUT - 1)  # type: ignore[arg-type]
    slot = supervisor.slots[0]
    with supervisor._lock:  # as _ready holds it while it marks the run ready
        checking = threading.Thread(target=supervisor._check_start, args=(slot, run, now))
        checking.start()
        checking.join(0.3)
        run.ready = True
    checking.join(10)
    assert run.process.signals == []  # type: ignore[attr-defined]
    assert not run.start_overrun


def test_the_supervisor_wakes_when_a_replacements_start_runs_out(tmp_path: Path) -> None:
    """Its main loop waits on the workers' pidfds and its wake-up pipe only; a replacement
    that hangs ends neither, so the start's deadline is one of the waits' ends too (without
    it the wait below would never return)."""
    import threading
    import time

    from mimic_server.workers.supervisor import START_TIMEOUT, Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 1)
    never, _keep = os.pipe()  # a pidfd that never turns readable: the process lives on
    supervisor.slots[0].run = _Run(_Process(), time.monotonic() - START_TIMEOUT,  # type: ignore[arg-type]
                                   pidfd=never)
    waiting = threading.Thread(target=supervisor._wait, daemon=True)
    waiting.start()
    waiting.join(30)
    assert not waiting.is_alive()


def _descriptors() -> set[str]:
    """This process's open descriptors by number and target: a count also moved with
    descriptors that an earlier test's threads closed meanwhile (38 against 44 under xdist)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
            found.add(f"{fd} {os.readlink(f'/proc/self/fd/{fd}')}")
    return found


@pytest.mark.parametrize("failing", ["second-pipe", "popen", "reader-thread"])
def test_a_replacement_that_cannot_be_started_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    failing: str,
) -> None:
    """No descriptor (or memory) left as a worker is to be replaced: logged at ERROR and
    tried again with the crash loop's back-off; the supervisor goes on (it used to raise out
    of its loop, its workers dying with it, undrained), and no descriptor is left."""
    import errno
    import logging
    import socket
    import subprocess
    import sys
    import threading
    import time

    from mimic_server.workers import supervisor as module
    from mimic_server.workers.supervisor import FIRST_BACKOFF, Supervisor

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 1)
    supervisor._listener = socket.socket()
    pipes = [0]

    def pipe() -> tuple[int, int]:
        pipes[0] += 1
        if failing == "second-pipe" and pipes[0] % 2 == 0:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_pipe()

    started: list[subprocess.Popen[bytes]] = []

    def popen(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        if failing != "reader-thread":
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        # A process that runs (a worker importing), whose status reader cannot be started.
        started.append(real_popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        return started[-1]

    real_thread_start = threading.Thread.start

    def thread_start(self: threading.Thread) -> None:
        if self.name.startswith("mimic-worker-"):
            raise RuntimeError("can't start new thread")
        real_thread_start(self)

    real_pipe, real_popen = os.pipe, subprocess.Popen
    monkeypatch.setattr(module.os, "pipe", pipe)
    monkeypatch.setattr(module.subprocess, "Popen", popen)
    monkeypatch.setattr(threading.Thread, "start", thread_start)
    slot = supervisor.slots[0]
    before = _descriptors()
    now = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="mimic_server.workers.supervisor"):
        supervisor._replace(slot, now)
        supervisor._replace(slot, now)
    assert _descriptors() - before == set()  # none left open by the failed starts
    assert all(process.poll() is not None for process in started)  # none left running
    assert slot.run is None and slot.young_deaths == 2
    assert slot.restart_at == now + 2 * FIRST_BACKOFF
    logged = [r for r in caplog.records if r.getMessage() == "cannot start a worker; trying again"]
    assert [(r.levelname, r.worker) for r in logged] == [("ERROR", 0)] * 2  # type: ignore[attr-defined]
    supervisor._listener.close()


def test_a_fault_of_the_supervisors_own_still_drains_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mimic_server.workers.supervisor import Supervisor

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 1)
    drained: list[bool] = []

    def fails() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(supervisor, "_wait", fails)
    monkeypatch.setattr(supervisor, "_drain", lambda: drained.append(True) or 0)
    with pytest.raises(RuntimeError):
        supervisor.run()
    assert drained == [True]


def test_workers_ended_by_a_stop_during_the_start_are_no_failed_start(tmp_path: Path) -> None:
    """A service manager's SIGTERM reaches every process of its group: workers still
    starting end with it. With the stop asked for, that is no configuration error (exit 2):
    the start ends and the drain follows; without, it is one."""
    import signal

    from mimic_server.workers.supervisor import Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 2)
    supervisor.slots[0].run = _Run(_Ended(101, -signal.SIGTERM), 0.0)  # type: ignore[arg-type]
    supervisor.slots[1].run = _Run(_Ended(102, 0), 0.0, ready=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="worker 0 could not start"):
        supervisor._await_ready(supervisor.slots)
    supervisor.request_stop()
    supervisor._await_ready(supervisor.slots)  # returns


def test_the_trusted_count_is_the_ready_workers_least(tmp_path: Path) -> None:
    """``mimic_trusted_certificates`` is exported by the supervisor from what the ready
    workers reported: a replacement still starting (nothing loaded yet) does not pull it to
    0, as its multiprocess file did ("nothing trusted", what an alert watches for)."""
    import json

    from prometheus_client.parser import text_string_to_metric_families

    from mimic_server.web.metrics import ArchiveMetrics
    from mimic_server.workers.supervisor import Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 2)

    def trusted() -> list[float]:
        text = supervisor.metrics.exposition().decode()
        return [s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "mimic_trusted_certificates"]

    assert trusted() == []  # nobody has reported
    serving = _Run(_Process(), 0.0, ready=True)  # type: ignore[arg-type]
    replacement = _Run(_Process(), 0.0)  # type: ignore[arg-type]
    supervisor.slots[0].run, supervisor.slots[1].run = serving, replacement
    read_end, write_end = os.pipe()
    os.write(write_end, json.dumps({"event": "certificate", "server_not_after": 1.0,
                                    "client_not_after": 2.0,
                                    "trusted_certificates": 3}).encode() + b"\n")
    os.close(write_end)
    supervisor._read_status(supervisor.slots[0], serving, read_end)
    # A worker's own metrics write no such gauge to the multiprocess files.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(supervisor._metrics_dir)
    try:
        worker = ArchiveMetrics(worker=True)
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    assert worker.trusted_certificates is None
    assert trusted() == [3.0]
    replacement.ready, replacement.trusted_certificates = True, 2  # found a revocation first
    assert trusted() == [2.0]


def test_an_ended_workers_counts_are_kept_in_one_file_for_all(tmp_path: Path) -> None:
    """A worker that ended leaves its counters and histograms, which the scrape goes on
    adding up, but not files of its own: they are added into one file kept for every worker
    that ended. Its live gauges go. Each used to leave two files read at every scrape, so a
    crash loop grew the scrape's time and the directory without end."""
    import subprocess
    import sys

    from prometheus_client.parser import text_string_to_metric_families

    from mimic_server.web.metrics import ServerMetrics

    program = (
        "import sys\n"
        "from mimic_server.web.metrics import ArchiveMetrics\n"
        "m = ArchiveMetrics(worker=True)\n"
        "m.serve_as_worker(int(sys.argv[1]))\n"
        "m.active_associations_from(lambda: 1)\n"
        "m.association('accepted')\n"
        "m.request_answered('C-STORE', 'success', 0.02 * (1 + int(sys.argv[1])))\n"
        "m.stored(1000)\n"
        "print(__import__('os').getpid())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    pids = [int(subprocess.run([sys.executable, "-c", program, str(n % 2)], env=env,
                               check=True, capture_output=True, text=True).stdout)
            for n in range(4)]
    metrics = ServerMetrics(tmp_path, 2)

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = metrics.exposition().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples
                if s.name.startswith("mimic_") and not s.name.startswith("mimic_worker")}

    before = samples()
    assert before[("mimic_associations_active", ())] == 4  # each says 1, summed live
    for pid in pids[:3]:
        metrics.worker_ended(pid)
    after = samples()
    assert after.pop(("mimic_associations_active", ())) == 1  # the one still alive
    before.pop(("mimic_associations_active", ()))
    # Every counter and histogram as it was (a sum of floats in another order: approx).
    assert after == pytest.approx(before)
    assert after[("mimic_dimse_requests_total", (("service", "C-STORE"),
                                                  ("status", "success")))] == 4
    assert after[("mimic_stored_bytes_total", ())] == 4000
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"counter_{pids[3]}.db", f"histogram_{pids[3]}.db",
                            f"gauge_livesum_{pids[3]}.db", "counter_ended.db",
                            "histogram_ended.db"])


def test_an_empty_or_damaged_workers_file_fails_no_scrape(tmp_path: Path) -> None:
    """prometheus_client makes a worker's file empty, then sizes it: a scrape in between (a
    worker starting), or any scrape after a worker killed in between, raised struct.error
    out of the whole /metrics (prometheus/client_python#1199; seen while a worker was
    replaced). An empty file holds nothing: skipped. The supervisor's fold of an ended
    worker's files takes neither down either, and removes them."""
    from mimic_server.web.metrics import ServerMetrics

    metrics = ServerMetrics(tmp_path, 2)
    (tmp_path / "counter_101.db").touch()  # killed as it made its file, or making it now
    (tmp_path / "histogram_101.db").touch()
    assert b"mimic_workers 2.0" in metrics.exposition()
    (tmp_path / "counter_102.db").write_bytes((1 << 20).to_bytes(4, "little") + b"\0" * 4)
    metrics.worker_ended(101)
    metrics.worker_ended(102)  # damaged: claims more than it holds
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert b"mimic_workers 2.0" in metrics.exposition()


def test_a_kept_file_that_cannot_be_opened_leaves_the_ended_workers_own(tmp_path: Path) -> None:
    """The fold runs in the supervisor's main loop, before the dead worker's slot is zeroed:
    a kept file that cannot be opened (descriptors, its disk) must not raise out of it. The
    worker's own file stays, and scrapes go on reading it as before the fold existed."""
    from prometheus_client.mmap_dict import MmapedDict

    from mimic_server.web.metrics import ServerMetrics

    metrics = ServerMetrics(tmp_path, 2)
    own = MmapedDict(str(tmp_path / "counter_103.db"))
    own.write_value('["mimic_x", "mimic_x_total", {}, "x"]', 3.0, 0.0)
    own.close()
    (tmp_path / "counter_ended.db").mkdir()  # opened, it raises IsADirectoryError
    metrics.worker_ended(103)
    assert (tmp_path / "counter_103.db").exists()


def test_a_repository_the_supervisor_cannot_reach_leaves_its_records_to_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """No client certificate to show the audit repository (TLS off, none of its own): the
    records a recovery writes go to the file, said once at ERROR, and are not held back;
    nothing is tried before the first record."""
    from mimic_server.security.audit import INSTANCES_TRANSFERRED, AuditLog
    from mimic_server.workers.supervisor import _RecoveryRepository

    settings = Settings(data_dir=tmp_path, audit_syslog_host="127.0.0.1", tls=False)
    repository = _RecoveryRepository(settings)
    trail = AuditLog(tmp_path / "audit.jsonl", sinks=[repository])
    with caplog.at_level("ERROR"):
        repository.close()  # nothing written: nothing made, nothing said
        assert not caplog.records
        for _ in range(2):
            trail.record(INSTANCES_TRANSFERRED, 0, received=True, instances=0, failed=0)
    [said] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert said.getMessage().startswith("audit repository unusable")
    assert said.error == "ConfigurationError"  # type: ignore[attr-defined]
    assert len((tmp_path / "audit.jsonl").read_bytes().splitlines()) == 2
    assert trail.failures == 0  # the journal is not kept for it
    trail.close()


def test_a_dead_workers_audit_journals_are_recovered_off_the_main_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recovery of a dead worker's journals can take seconds (the audit repository's
    sender: its certificate read, perhaps from Key Vault, its queue's close): it runs in a
    thread of its own, so the main loop goes on (the replacement, a SIGHUP, a SIGTERM). A
    death during one has it run once more; a stop waits for it."""
    import threading
    import time

    from mimic_server.workers.supervisor import Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 2)
    release = threading.Event()
    began = threading.Semaphore(0)
    threads: list[str] = []

    def recover() -> None:
        threads.append(threading.current_thread().name)
        began.release()
        assert release.wait(30)

    monkeypatch.setattr(supervisor, "_recover_audit", recover)
    for index, pid in ((0, 101), (1, 102)):
        dead = _Run(_Ended(pid, -9), 0.0, ready=True)  # type: ignore[arg-type]
        supervisor.slots[index].run = dead
        dead.process.returncode = -9  # type: ignore[attr-defined]
        supervisor._died(supervisor.slots[index], dead, time.monotonic())  # returns at once
        assert began.acquire(timeout=30)  # the first recovery is under way...
        began.release()
    assert threads == ["audit-recovery"]  # ...and the second death waits for it to end
    assert supervisor._recover_again
    recovering = supervisor._recovering
    assert recovering is not None
    release.set()
    recovering.join(30)
    assert threads == ["audit-recovery", "audit-recovery"]
    assert supervisor._recovering is None and not supervisor._recover_again


def test_a_second_stop_is_sent_once_to_the_workers_that_have_not_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The operator's second SIGTERM during the drain (a second or more after the first;
    sooner, it is the first passed on twice): each worker still draining is told to
    stop now (``signals.STOP_NOW``), once however many stops follow; one that has stopped
    already is not: it is about to exit, and the signal reached it in its interpreter's
    finalization (its default action back) killed it, a clean stop counted as failed."""
    import logging

    from mimic_server.signals import REPEAT_AFTER, STOP_NOW, StopRequests
    from mimic_server.workers.supervisor import Supervisor, _Run

    supervisor = Supervisor(Settings(data_dir=tmp_path), {}, 2)
    now = [100.0]
    supervisor._stop_requests = StopRequests(clock=lambda: now[0])
    draining = _Run(_Process(), 0.0, ready=True, draining=True)  # type: ignore[arg-type]
    stopped = _Run(_Process(), 0.0, ready=True, draining=True, stopped=True)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="mimic_server.workers.supervisor"):
        supervisor.request_stop()
        now[0] += 0.005
        supervisor.request_stop()  # the same stop passed on twice (coreutils timeout)
        supervisor._forward_stop_now([draining, stopped])
        assert draining.process.signals == []  # type: ignore[attr-defined]  # one stop
        now[0] += REPEAT_AFTER
        supervisor.request_stop()
        supervisor.request_stop()
        supervisor._forward_stop_now([draining, stopped])
        supervisor._forward_stop_now([draining, stopped])
        assert draining.process.signals == [STOP_NOW]  # type: ignore[attr-defined]
        assert stopped.process.signals == []  # type: ignore[attr-defined]
        assert [r.workers for r in caplog.records  # type: ignore[attr-defined]
                if r.getMessage() == "drain cut short"] == [1]
        # Repeated once every worker has stopped: no drain is left to cut, none is said cut.
        caplog.clear()
        late = Supervisor(Settings(data_dir=tmp_path), {}, 2)
        late._stop_requests = StopRequests(clock=lambda: now[0])
        late.request_stop()
        now[0] += REPEAT_AFTER
        late.request_stop()
        late._forward_stop_now([stopped])
        assert stopped.process.signals == []  # type: ignore[attr-defined]
        assert not [r for r in caplog.records if r.getMessage() == "drain cut short"]
    supervisor._close()
    late._close()
