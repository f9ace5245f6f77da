"""TLS session resumption (``MIMIC_TLS_SESSION_TICKETS``): by default the listener issues no
session ticket, TLS 1.3 or 1.2, so a TLS 1.3 connection always makes a full handshake (TLS
1.2 peers may still resume by session ID: OpenSSL's server session cache, which Python's
``ssl`` has no switch for); with tickets a peer that keeps one resumes, its certificate
still known to the trust index, and a new context (a trust change) resumes none of the old
tickets."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from mimic_server.certs import devpki
from mimic_server.certs.directory import DirectorySource
from mimic_server.certs.trust import TrustIndex
from mimic_server.config import Settings
from mimic_server.net.tls import server_context

VERSIONS = [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> devpki.DevPki:
    return devpki.init(tmp_path_factory.mktemp("pki"))


def _client(pki: devpki.DevPki, version: ssl.TLSVersion) -> ssl.SSLContext:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert pki.first_client is not None
    client.load_cert_chain(pki.first_client.cert, pki.first_client.key)
    client.load_verify_locations(pki.ca_cert)
    client.check_hostname = False
    client.maximum_version = version
    return client


def _connect(server: ssl.SSLContext, client: ssl.SSLContext,
             session: ssl.SSLSession | None = None) -> tuple[dict[str, Any], ssl.SSLSession]:
    """One connection over a socket pair: what the server saw, and the client's session
    (read after a byte from the server, so that TLS 1.3 tickets have arrived)."""
    ours, peer = socket.socketpair()
    seen: dict[str, Any] = {}

    def serve() -> None:
        with server.wrap_socket(ours, server_side=True) as tls:
            seen["reused"] = tls.session_reused
            seen["certificate"] = tls.getpeercert(binary_form=True)
            tls.sendall(b"x")
            tls.recv(1)

    thread = threading.Thread(target=serve)
    thread.start()
    with client.wrap_socket(peer, server_hostname="localhost", session=session) as tls:
        assert tls.recv(1) == b"x"
        kept = tls.session
        tls.sendall(b"y")
    thread.join(10)
    assert not thread.is_alive() and kept is not None
    return seen, kept


def _bundle(pki: devpki.DevPki) -> Any:
    return DirectorySource(pki.directory).load()


def test_the_default_is_no_ticket() -> None:
    assert Settings().tls_session_tickets == 0


@pytest.mark.parametrize("version", VERSIONS, ids=["TLS 1.3", "TLS 1.2"])
def test_by_default_no_ticket_is_issued(pki: devpki.DevPki, version: ssl.TLSVersion) -> None:
    server = server_context(_bundle(pki))
    assert server.num_tickets == 0 and server.options & ssl.OP_NO_TICKET
    client = _client(pki, version)
    first, session = _connect(server, client)
    assert not session.has_ticket and not first["reused"]
    if version is ssl.TLSVersion.TLSv1_3:  # no ticket, nothing to resume with
        again, _ = _connect(server, client, session)
        assert not again["reused"]


@pytest.mark.parametrize("version", VERSIONS, ids=["TLS 1.3", "TLS 1.2"])
def test_with_tickets_a_peer_resumes_and_is_still_identified(
    pki: devpki.DevPki, version: ssl.TLSVersion
) -> None:
    bundle = _bundle(pki)
    server = server_context(bundle, session_tickets=2)
    client = _client(pki, version)
    first, session = _connect(server, client)
    assert session.has_ticket
    again, _ = _connect(server, client, session)
    assert again["reused"] and again["certificate"] == first["certificate"]
    identity = TrustIndex(bundle).identify(again["certificate"])
    assert identity is not None and identity.trust_name == "modality1"
    # A new context (each trust change builds one) has new ticket keys: a full handshake.
    renewed, _ = _connect(server_context(bundle, session_tickets=2), client, session)
    assert not renewed["reused"]


def test_a_negative_or_huge_ticket_count_is_refused(tmp_path: Path) -> None:
    for value in (-1, 9):
        with pytest.raises(ValueError, match="tls_session_tickets"):
            Settings(data_dir=tmp_path, tls_session_tickets=value)
