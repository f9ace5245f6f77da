"""A syslog-over-TLS receiver (RFC 5425) on loopback, as an audit repository: it requires a
client certificate and collects the RFC 5424 messages it is sent."""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from pathlib import Path

from tests.support import HOST, free_port, write_cert


class SyslogTlsReceiver:
    """``close_after``: the first connection is closed once it has carried that many
    messages, as a repository (or a load balancer before it) closes a connection it finds
    idle; later ones stay open. ``client_cas``: more CA files whose client certificates it
    accepts (the archive's own CA, for its server certificate as the client's)."""

    def __init__(self, directory: Path, port: int | None = None,
                 close_after: int | None = None,
                 client_cas: tuple[Path, ...] = ()) -> None:
        self.ca = write_cert(directory, "audit-ca", ca=True)
        self.server_cert = write_cert(directory, "audit-repository", server=True,
                                      issuer=(self.ca[2], self.ca[3]))
        self.client_cert = write_cert(directory, "mimic-audit-client",
                                      issuer=(self.ca[2], self.ca[3]))
        self.port = port or free_port()
        self.messages: list[bytes] = []
        self.peers: list[str] = []
        #: SHA-256 of each connection's client certificate (DER), in connection order.
        self.fingerprints: list[str] = []
        #: Raised by ``drop``: connections of an older generation close themselves.
        self._generation = 0
        self.close_after = close_after
        self.client_cas = client_cas
        #: Connections this receiver closed on its own (``close_after``).
        self.closed = 0
        self._server: socket.socket | None = None
        self._stop = threading.Event()

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca[0]))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.client_cert[0]), str(self.client_cert[1]))
        return context

    def start(self) -> SyslogTlsReceiver:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.server_cert[0]), str(self.server_cert[1]))
        context.load_verify_locations(cafile=str(self.ca[0]))
        for ca in self.client_cas:
            context.load_verify_locations(cafile=str(ca))
        context.verify_mode = ssl.CERT_REQUIRED
        self._stop.clear()
        server = socket.create_server((HOST, self.port))
        server.settimeout(0.2)
        self._server = server
        threading.Thread(target=self._accept, args=(server, context), daemon=True).start()
        return self

    def drop(self) -> None:
        """Close the connections open now, as a repository closes idle ones; new ones are
        accepted as before."""
        self._generation += 1

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
            self._server = None

    def _accept(self, server: socket.socket, context: ssl.SSLContext) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._read, args=(raw, context), daemon=True).start()

    def _read(self, raw: socket.socket, context: ssl.SSLContext) -> None:
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        cert = conn.getpeercert() or {}
        self.peers.append(str(dict(x[0] for x in cert.get("subject", ())).get("commonName")))
        self.fingerprints.append(hashlib.sha256(conn.getpeercert(True) or b"").hexdigest())
        generation = self._generation
        buffer = b""
        carried = 0
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set() and generation == self._generation:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self.messages.append(rest[: int(length)])
                    buffer = rest[int(length):]
                    carried += 1
                if self.close_after is not None and carried >= self.close_after \
                        and self.closed == 0:
                    conn.close()
                    self.closed += 1
                    return
