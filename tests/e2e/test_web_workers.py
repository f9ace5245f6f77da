"""``mimic web`` with several worker processes (``MIMIC_WEB_WORKERS``) on one port: each
worker serves, a worker that dies is replaced while the others serve, SIGHUP reaches the
workers without ending them, SIGTERM ends them all, and a worker that cannot start stops
the server with exit code 2 instead of being restarted in a loop."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.test_stow import DICOM_MULTIPART, multipart, new_ct, part10
from tests.oidc_double import OidcIssuerDouble
from tests.web_support import AUDIENCE, WebProcess

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcIssuerDouble]:
    double = OidcIssuerDouble(tmp_path_factory.mktemp("oidc")).start()
    yield double
    double.stop()


def workers(pid: int) -> list[int]:
    """The worker processes of ``mimic web`` ``pid`` (multiprocessing's spawned children,
    not its resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return sorted(found)


def _search(web: WebProcess, token: str) -> int:
    # A new connection each time: the kernel hands it to whichever worker accepts.
    return requests.get(f"{web.url}/studies", timeout=30, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/dicom+json",
        "Connection": "close"}).status_code


def _wait_for(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_workers_serve_are_replaced_and_stop(tmp_path: Path,
                                             issuer: OidcIssuerDouble) -> None:
    web = WebProcess(tmp_path / "data", issuer, web_workers="2").start()
    try:
        assert web.proc is not None
        first = workers(web.proc.pid)
        assert len(first) == 2
        token = issuer.mint(audience=AUDIENCE, roles=["Radiologist"])
        assert {_search(web, token) for _ in range(20)} == {200}
        assert requests.get(f"http://127.0.0.1:{web.port}/healthz", timeout=10).ok

        os.kill(first[0], signal.SIGKILL)
        _wait_for(lambda: len(workers(web.proc.pid)) == 2
                  and first[0] not in workers(web.proc.pid))
        replaced = workers(web.proc.pid)
        assert first[1] in replaced
        _wait_for(lambda: all(_search(web, token) == 200 for _ in range(10)))

        web.proc.send_signal(signal.SIGHUP)  # the policy file is read again, nobody ends
        time.sleep(1.0)
        assert workers(web.proc.pid) == replaced
        assert {_search(web, token) for _ in range(10)} == {200}
    finally:
        code = web.stop()
    assert code == 0
    for pid in replaced:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    assert any(e.get("message") == "DICOMweb listening" and e.get("workers") == 2
               for e in web.log_entries())


def test_a_dying_worker_is_logged_and_one_dying_young_is_replaced_after_a_back_off(
        tmp_path: Path, issuer: OidcIssuerDouble) -> None:
    """A worker killed (as the kernel kills one for memory) is an ERROR line with its pid and
    signal; killed again young, its replacement waits twice as long, not half a second."""
    web = WebProcess(tmp_path / "data", issuer, web_workers="2").start()
    try:
        assert web.proc is not None
        pid = web.proc.pid

        def deaths() -> list[dict]:
            return [e for e in web.log_entries()
                    if e.get("message") == "web worker died; replacing it"]

        before = workers(pid)
        assert len(before) == 2
        victim = before[0]
        killed = [victim]
        for _ in range(2):
            os.kill(victim, signal.SIGKILL)
            # One reading of the workers per look: read twice, the killed one could still be
            # counted in the first and gone from the second, before any replacement came.
            replaced: list[int] = []

            def replacement(gone: list[int] = before, replaced: list[int] = replaced) -> bool:
                now = workers(pid)
                replaced[:] = [p for p in now if p not in gone]
                return len(now) == 2 and len(replaced) == 1

            _wait_for(replacement)
            victim = replaced[0]
            killed.append(victim)
            before = workers(pid)
        _wait_for(lambda: len(deaths()) == 2)
        first, second = deaths()
        assert first["level"] == second["level"] == "ERROR"
        assert first["signal"] == second["signal"] == "SIGKILL"
        assert [first["pid"], second["pid"]] == killed[:2]
        assert first["worker"] == second["worker"]
        # Each died within 30 s of its start: 0.5 s, then 1 s before its replacement.
        assert [first["restart_in_seconds"], second["restart_in_seconds"]] == [0.5, 1.0]
        token = issuer.mint(audience=AUDIENCE, roles=["Radiologist"])
        _wait_for(lambda: all(_search(web, token) == 200 for _ in range(10)))
    finally:
        assert web.stop() == 0


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path,
                                                     issuer: OidcIssuerDouble) -> None:
    # Only a worker reads the policy file: the parent has started, its workers cannot.
    web = WebProcess(tmp_path / "data", issuer, policy="[certificates.dicomweb\nbroken",
                     web_workers="2")
    result = web.run(timeout=180)
    assert result.returncode == 2, result.stderr
    assert "worker could not start" in result.stderr


def _incoming(data_dir: Path) -> list[Path]:
    """Everything under the file store's ``.incoming``: each store's directory of spare and
    in-flight temporary files, and its lock file."""
    incoming = data_dir / "objects" / ".incoming"
    return sorted(incoming.rglob("*")) if incoming.exists() else []


def _stow(web: WebProcess, token: str) -> int:
    return requests.post(f"{web.url}/studies", data=multipart(part10(new_ct())), timeout=60,
                         headers={"Authorization": f"Bearer {token}",
                                  "Content-Type": DICOM_MULTIPART,
                                  "Accept": "application/dicom+json",
                                  "Connection": "close"}).status_code


@pytest.mark.parametrize("count", ["2", "1"])
def test_a_clean_stop_leaves_no_spare_files_and_a_crash_is_swept_at_the_next_start(
        tmp_path: Path, issuer: OidcIssuerDouble, count: str) -> None:
    """Each process's file store makes 16 empty spare files ahead in ``.incoming/<id>/``
    and holds a lock there while it lives. A clean stop (SIGTERM) removes them, one process
    or every worker's, where they used to stay until the next start swept them. A crash
    (SIGKILL, the parent with its workers) leaves them, and the next start sweeps them."""
    data = tmp_path / "data"
    web = WebProcess(data, issuer, web_workers=count).start()
    try:
        token = issuer.mint(audience=AUDIENCE, roles=["Radiologist"])
        assert {_stow(web, token) for _ in range(4)} == {200}
        assert _incoming(data)  # while it runs: its spares and locks
    finally:
        assert web.stop() == 0, web.log()
    assert _incoming(data) == []

    web.log_path.rename(tmp_path / "first-web.log")
    again = WebProcess(data, issuer, web_workers=count, web_port=str(web.port)).start()
    assert again.proc is not None
    pids = [again.proc.pid, *workers(again.proc.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    again.stop()
    _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids[1:]))
    assert any(p.name.endswith(".lock") for p in _incoming(data))
    again.log_path.rename(tmp_path / "crashed-web.log")
    third = WebProcess(data, issuer, web_workers=count, web_port=str(web.port)).start()
    assert third.stop() == 0, third.log()
    assert _incoming(data) == []
