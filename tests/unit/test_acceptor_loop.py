"""The acceptor association's loop without pynetdicom's 1 ms sleep (fence entry
``acceptor-loop``, ``net/reactor.py`` ``_run_acceptor_turns``): the same loop otherwise, line
for line; applied only with ``idle-waits``' bell; gone when pynetdicom's loop changes; and a
served association's thread does not sleep between requests."""

from __future__ import annotations

import ast
import inspect
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, association
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from mimic_server import patches
from mimic_server.app import Archive
from mimic_server.net import reactor
from tests.patch_sites import change_source, keep_switches
from tests.support import HOST


def _body(function: Any) -> str:
    """The statements of a function, comments and docstring left out, as AST text."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    node = tree.body[0]
    assert isinstance(node, ast.FunctionDef)
    statements = node.body
    if (statements and isinstance(statements[0], ast.Expr)
            and isinstance(statements[0].value, ast.Constant)):
        statements = statements[1:]  # the docstring
    return "\n".join(ast.dump(s) for s in statements)


def test_the_loop_is_pynetdicoms_without_the_sleep() -> None:
    """Statement for statement pynetdicom's ``Association._run_reactor``, but for the
    ``time.sleep(0.001)`` at the top of each turn (and its logger's name here)."""
    theirs = _body(patches.resolve("pynetdicom.association:Association._run_reactor"))
    sleep = ast.dump(ast.parse("time.sleep(0.001)").body[0])
    assert sleep in theirs
    ours = _body(reactor._run_acceptor_turns).replace("ASSOCIATION_LOGGER", "LOGGER")
    assert ours == theirs.replace(sleep + ", ", "", 1)  # the first statement of the while
    assert reactor.ASSOCIATION_LOGGER is association.LOGGER


def _acceptor_loop(fence: patches.Fence) -> Any:
    """The loop a new acceptor association, adapted as the server adapts it, will run."""
    assoc = Association(AE(), mode="acceptor")
    ours, peer = socket.socketpair()
    with ours, peer:
        assoc.dul.socket = AssociationSocket(assoc, client_socket=ours)  # as accepted
        fence.association_adapter(64 * 1024)(assoc)
    return assoc._run_reactor


def test_applied_with_idle_waits_and_gone_when_pynetdicoms_loop_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keep_switches(monkeypatch)
    fence = patches.apply()
    assert {patches.ACCEPTOR_LOOP, patches.IDLE_WAITS} <= fence.applied
    assert _acceptor_loop(fence).__func__ is reactor._run_acceptor_turns

    entry = next(p for p in patches.PATCHES if p.name == patches.ACCEPTOR_LOOP)
    change_source(monkeypatch, next(s for s in entry.sites
                                    if s.target.endswith("Association._run_reactor")))
    fence = patches.apply()
    assert patches.ACCEPTOR_LOOP in fence.skipped
    loop = _acceptor_loop(fence)
    assert getattr(loop, "__func__", None) is not reactor._run_acceptor_turns


def test_not_applied_without_idle_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the bell the look at the message queue does not wait: pynetdicom's sleep is
    then what keeps the loop from spinning, so the loop stays pynetdicom's."""
    keep_switches(monkeypatch)
    monkeypatch.setenv(patches.PATCHES_OFF, patches.IDLE_WAITS)
    fence = patches.apply()
    assert patches.ACCEPTOR_LOOP in fence.applied  # its own sites are as verified
    assert _acceptor_loop(fence).__func__ is Association._run_reactor
    assoc = Association(AE(), mode="acceptor")
    reactor.run_without_sleep(assoc)  # a DIMSE provider without the bell: left alone
    assert "_run_reactor" not in vars(assoc)


class _CountingTime:
    """``pynetdicom.association``'s ``time`` module, keeping the sleeps of the server's
    association threads (acceptors) and of the client's apart."""

    def __init__(self) -> None:
        self.acceptor_sleeps: list[float] = []
        self.requestor_sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        thread = threading.current_thread()
        if isinstance(thread, Association) and thread.is_acceptor:
            self.acceptor_sleeps.append(seconds)
        else:
            self.requestor_sleeps.append(seconds)
        time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    from mimic_server.config import Settings

    served = Archive(Settings(data_dir=tmp_path / "data", host=HOST, port=0, tls=False,
                              ops_port=0))
    served.start()
    try:
        yield served
    finally:
        served.stop(0)


def test_a_served_association_answers_without_sleeping_between_requests(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty C-ECHOs and a release over one association: every one answered Success, the
    association released, and the server's association thread never took the loop's 1 ms
    sleep (pynetdicom's loop sleeps before each look at its queue: at least once a request;
    ``kill`` still waits in 10 ms sleeps for the DUL thread to stop, once, at the end)."""
    counting = _CountingTime()
    monkeypatch.setattr(association, "time", counting)
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, archive.address[1], ae_title="MIMIC")
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_echo().Status for _ in range(20)]
    finally:
        assoc.release()
    assert statuses == [0] * 20
    assert assoc.is_released
    assert 0.001 not in counting.acceptor_sleeps
    assert set(counting.acceptor_sleeps) <= {0.01}
    assert 0.001 in counting.requestor_sleeps  # the counting works: the client's own loop
