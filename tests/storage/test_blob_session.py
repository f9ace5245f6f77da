"""The blob client's session: puts skip requests' own layers, everything else takes them, and
the short way verifies, fails and retries as requests' way does (``storage/blob_session.py``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mimic_server.errors import OutOfResources
from mimic_server.storage import azure_blob
from mimic_server.storage.azure_blob import AzureBlobStore, blob_service_client
from mimic_server.storage.blob_session import BlobSession
from tests.azurite import ACCOUNT, ACCOUNT_KEY, AZURITE_BLOB, Azurite
from tests.support import HOST, free_port, write_cert

KEY = "ab/1.2.3/1.2.3.4/1.2.3.4.5.0123456789abcdef.dcm"
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                    "all_proxy", "NO_PROXY", "no_proxy", "NETRC")


@pytest.fixture(autouse=True)
def _no_environment_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No proxy or netrc here, whatever the machine has: the short way is on."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of requests sent the short way and through ``requests.Session.send``."""
    counts = {"direct": 0, "requests": 0}
    direct, send = BlobSession._send_direct, requests.Session.send

    def counted_direct(self: BlobSession, *args: Any, **kwargs: Any) -> Any:
        counts["direct"] += 1
        return direct(self, *args, **kwargs)

    def counted_send(self: requests.Session, *args: Any, **kwargs: Any) -> Any:
        counts["requests"] += 1
        return send(self, *args, **kwargs)

    monkeypatch.setattr(BlobSession, "_send_direct", counted_direct)
    monkeypatch.setattr(requests.Session, "send", counted_send)
    return counts


def test_puts_take_the_short_way_and_everything_else_requests_own(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = blob_service_client(connection_string=azurite.connection_string, retries=0)
    store = AzureBlobStore(service, f"c{uuid.uuid4().hex[:20]}", block_size=64 * 1024)
    counts = _counting(monkeypatch)
    one_shot, blocks = os.urandom(40_000), os.urandom(150_000)
    store.put(KEY, [one_shot], _sha(one_shot))
    assert counts == {"direct": 1, "requests": 0}
    store.put(KEY + ".2", [blocks[:7], memoryview(blocks)[7:]], _sha(blocks))
    assert counts == {"direct": 1 + 3 + 1, "requests": 0}  # three blocks, then their list

    with store.open(KEY) as fh:
        assert fh.read() == one_shot
    with store.open(KEY + ".2") as fh:
        assert fh.read() == blocks
    props = store.container.get_blob_client(KEY + ".2").get_blob_properties()
    assert props.metadata == {"sha256": _sha(blocks)}
    assert bytes(props.content_settings.content_md5) == hashlib.md5(blocks).digest()
    store.delete(KEY)
    assert not store.exists(KEY)
    assert counts["direct"] == 5 and counts["requests"] >= 5  # reads, delete, exists


def test_the_short_way_only_where_the_environment_configures_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = blob_service_client(connection_string="UseDevelopmentStorage=true")
    session = service._pipeline._transport.session  # type: ignore[attr-defined]
    assert isinstance(session, BlobSession) and session.trust_env is False

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    service = blob_service_client(connection_string="UseDevelopmentStorage=true")
    session = service._pipeline._transport.session  # type: ignore[attr-defined]
    assert session.trust_env is True
    taken: list[str] = []
    monkeypatch.setattr(BlobSession, "_send_direct",
                        lambda self, *a, **k: taken.append("direct"))
    monkeypatch.setattr(requests.Session, "request",
                        lambda self, *a, **k: taken.append("requests"))
    session.request("PUT", "http://127.0.0.1:1/a", data=b"x", headers={},
                    allow_redirects=False, verify=session.verify)
    assert taken == ["requests"]  # the proxy settings apply: requests' way


def test_a_request_the_short_way_does_not_take_goes_requests_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Anything but an in-memory body with the session's own settings: requests decides."""
    session = BlobSession(4, True)
    taken: list[str] = []
    monkeypatch.setattr(BlobSession, "_send_direct",
                        lambda self, *a, **k: taken.append("direct"))
    monkeypatch.setattr(requests.Session, "request",
                        lambda self, *a, **k: taken.append("requests"))
    simple = {"data": b"x", "headers": {}, "allow_redirects": False, "verify": True}
    session.request("PUT", "http://127.0.0.1:1/a", **simple)  # type: ignore[arg-type]
    assert taken == ["direct"]
    for change in ({"data": None}, {"data": iter([b"x"])}, {"allow_redirects": True},
                   {"stream": True}, {"proxies": {"http": "http://p:1"}}, {"verify": "/ca.pem"},
                   {"cert": "/c.pem"}, {"files": {"f": b"x"}}, {"params": {"a": "b"}}):
        taken.clear()
        session.request("PUT", "http://127.0.0.1:1/a", **{**simple, **change})  # type: ignore[arg-type]
        assert taken == ["requests"], change


# -- TLS: the short way verifies the service as requests does --------------------------------


class _HttpsAzurite(Azurite):
    def __init__(self, location: Path, cert: Path, key: Path) -> None:
        super().__init__(location)
        self.cert, self.key = cert, key

    def arguments(self) -> list[str]:
        return [*super().arguments(), "--cert", str(self.cert), "--key", str(self.key)]

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint=https://{HOST}:{self.port}/{ACCOUNT};")


@pytest.fixture
def https_azurite(tmp_path: Path) -> Iterator[tuple[_HttpsAzurite, Path]]:
    if not AZURITE_BLOB.exists():
        pytest.skip("azurite is not installed (scripts/test.sh installs it)")
    ca_path, _, ca_cert, ca_key = write_cert(tmp_path / "pki", "blob-ca", ca=True)
    cert, key, _, _ = write_cert(tmp_path / "pki", "blob-server", issuer=(ca_cert, ca_key),
                                 server=True)
    azurite = _HttpsAzurite(tmp_path / "azurite", cert, key).start()
    try:
        yield azurite, ca_path
    finally:
        if azurite.proc is not None:  # nothing of it to keep: no grace time for its sockets
            azurite.proc.kill()
            azurite.proc.wait()


def test_puts_over_https_are_verified_against_the_configured_bundle(
    https_azurite: tuple[_HttpsAzurite, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    azurite, ca_path = https_azurite
    container = f"c{uuid.uuid4().hex[:20]}"
    data = os.urandom(40_000)

    # The service's CA is not among those requests trusts by default: refused, nothing kept.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    untrusting = blob_service_client(connection_string=azurite.connection_string, retries=0,
                                     timeout=5)
    counts = _counting(monkeypatch)
    store = AzureBlobStore.__new__(AzureBlobStore)  # its container is made below, trusted
    store.block_size = 4 * 1024 * 1024
    store._container = untrusting.get_container_client(container)
    with pytest.raises(OutOfResources, match="ServiceRequestError"):
        store.put(KEY, [data], _sha(data))
    assert counts["direct"] == 1

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_path))
    trusting = AzureBlobStore(
        blob_service_client(connection_string=azurite.connection_string, retries=0),
        container)
    assert not trusting.exists(KEY)
    trusting.put(KEY, [data], _sha(data))
    assert counts["direct"] == 2
    with trusting.open(KEY) as fh:
        assert fh.read() == data


# -- faults: raised as requests raises them, so the SDK retries them --------------------------


class _FaultyService:
    """A loopback HTTP server that creates containers and then misbehaves on every put of a
    blob as ``fault`` says; counts the puts it saw."""

    def __init__(self, fault: Callable[[socket.socket], None]) -> None:
        self.fault = fault
        self.puts = 0
        self.port = free_port()
        self._listener = socket.create_server((HOST, self.port))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint=http://{HOST}:{self.port}/{ACCOUNT};")

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            while head := _read_request(conn):
                if "restype=container" in head.split(b"\r\n", 1)[0].decode():
                    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                    continue
                self.puts += head.startswith(b"PUT")  # not the Delete Blob after a failure
                self.fault(conn)
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def _read_request(conn: socket.socket) -> bytes:
    """One request's head, its body read past; b"" when the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        body += chunk
    return head


def _outcome(service: _FaultyService, short_way: bool,
             monkeypatch: pytest.MonkeyPatch) -> tuple[str, int, dict[str, int]]:
    """What a put to the service raised, how many puts the service saw, and which way they
    went: the short way, or requests' own (where the environment configures a proxy)."""
    with monkeypatch.context() as patched:
        patched.setattr(azure_blob, "uses_environment_settings", lambda: not short_way)
        client = blob_service_client(connection_string=service.connection_string, retries=1,
                                     timeout=1)
        store = AzureBlobStore(client, "faults")
        counts = _counting(patched)
        before = service.puts
        with pytest.raises(OutOfResources) as raised:
            store.put(KEY, [b"x" * 1000], _sha(b"x" * 1000))
        return str(raised.value), service.puts - before, dict(counts)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (lambda conn: time.sleep(3), "ServiceResponseTimeoutError"),
        (lambda conn: None, "ServiceResponseError"),
        (lambda conn: conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\nabc"),
         "IncompleteReadError"),
    ],
    ids=["never-answers", "closes-without-answer", "answer-cut-short"],
)
def test_a_failing_put_fails_and_is_retried_as_on_requests_way(
    fault: Callable[[socket.socket], None], error: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same fault, the same Azure error and the same retry (retries=1: two puts)."""
    service = _FaultyService(fault)
    try:
        started = time.monotonic()
        short = _outcome(service, True, monkeypatch)
        usual = _outcome(service, False, monkeypatch)
        # and one Delete Blob, tried once: the service may have kept the blob (requests' way)
        assert short == (f"blob store write failed: {error}", 2, {"direct": 2, "requests": 1})
        assert usual == (f"blob store write failed: {error}", 2, {"direct": 0, "requests": 3})
        assert time.monotonic() - started < 30
    finally:
        service.close()


def test_a_put_to_a_closed_port_is_a_request_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No service listening: the SDK's connection error, before anything was sent."""
    port = free_port()
    client = blob_service_client(
        connection_string=(f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};"
                           f"AccountKey={ACCOUNT_KEY};BlobEndpoint=http://{HOST}:{port}/{ACCOUNT};"),
        retries=0, timeout=2)
    store = AzureBlobStore.__new__(AzureBlobStore)
    store.block_size = 4 * 1024 * 1024
    store._container = client.get_container_client("gone")
    counts = _counting(monkeypatch)
    with pytest.raises(OutOfResources, match="ServiceRequestError"):
        store.put(KEY, [b"x"], _sha(b"x"))
    assert counts == {"direct": 1, "requests": 1}  # the put, then one try of a Delete Blob

