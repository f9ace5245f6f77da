"""The pending-handshake table's eviction, with an injected clock (issue 10).

One byte (0x16) used to buy a peer protection from eviction, so a modality whose
ClientHello was still on its way through a TCP proxy was the first victim of the next
connection. Now a connection in its grace period is never the preferred victim.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mimic_server.net.handshakes import EVICTED_REASON, PendingHandshakes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the handshake loop did not get there"
        time.sleep(0.01)


@pytest.fixture
def table() -> Iterator[tuple[PendingHandshakes, Clock, list[tuple[Any, str]], list]]:
    clock = Clock()
    failed: list[tuple[Any, str]] = []
    pending = PendingHandshakes(3, 60, lambda sock, address: None,
                                lambda address, reason: failed.append((address, reason)),
                                clock=clock)
    peers: list[socket.socket] = []
    pending.start()
    yield pending, clock, failed, peers
    pending.stop()
    for peer in peers:
        peer.close()


def connect(
    pending: PendingHandshakes, peers: list[socket.socket], name: str, first_bytes: bytes
) -> None:
    """A connection as the accept loop hands it over, its peer having sent ``first_bytes``."""
    server_side, peer = socket.socketpair()
    peers.append(peer)
    if first_bytes:
        peer.sendall(first_bytes)
    server_side.setblocking(False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls = context.wrap_socket(server_side, server_side=True, do_handshake_on_connect=False)
    before = len(pending)
    pending.add(tls, name)
    wait_until(lambda: len(pending) == min(before + 1, pending.capacity) and not
               pending._incoming)


def test_one_byte_does_not_make_a_late_clienthello_the_victim(table: Any) -> None:
    """Cap 3: three attackers each send one byte, a modality connects (its ClientHello not
    here yet), a fourth attacker connects 50 ms later: the oldest attacker goes, not the
    modality (before: the modality, the only one that had not sent a byte)."""
    pending, clock, failed, peers = table
    for name in ("attacker1", "attacker2", "attacker3"):
        connect(pending, peers, name, b"\x16")
        clock.now += 1.0
    connect(pending, peers, "modality", b"")
    assert failed == [("attacker1", EVICTED_REASON)]
    clock.now += 0.05
    connect(pending, peers, "attacker4", b"\x16")
    assert failed == [("attacker1", EVICTED_REASON), ("attacker2", EVICTED_REASON)]


def test_a_silent_connection_past_its_grace_period_goes_first(table: Any) -> None:
    """An idle flood cannot push out a real client: a connection silent beyond the grace
    period is evicted before older ones that sent their ClientHello."""
    pending, clock, failed, peers = table
    connect(pending, peers, "modality", b"\x16")
    clock.now += 1.0
    connect(pending, peers, "idle1", b"")
    connect(pending, peers, "idle2", b"")
    clock.now += 1.0
    connect(pending, peers, "idle3", b"")
    assert failed == [("idle1", EVICTED_REASON)]


def test_without_a_silent_one_strictly_the_oldest_goes(table: Any) -> None:
    """Every connection young (within the grace period): age alone decides."""
    pending, clock, failed, peers = table
    for name in ("a", "b", "c", "d"):
        connect(pending, peers, name, b"")
        clock.now += 0.01
    assert failed == [("a", EVICTED_REASON)]
