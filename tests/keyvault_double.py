"""An Azure Key Vault test double: HTTPS on loopback, driven only through the real SDK clients.

It speaks the part of the Key Vault REST API that ``CertificateClient`` and ``SecretClient``
use for reading: the bearer challenge (401 + ``WWW-Authenticate``), paged lists of
certificates and secrets (``nextLink``), and gets by name and version, in the JSON shapes of
the SDK's generated models (``cer`` base64 DER, ``x5t`` base64url SHA-1, ``attributes`` with
unix times). A test plays the operator (import, tag, disable, rotate) through Python methods
and injects throttling (429 + Retry-After), server errors and outages.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import secrets as random
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
TENANT = "00000000-0000-0000-0000-00000000cafe"
CHALLENGE = (
    f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
    'resource="https://vault.azure.net"'
)
PKCS12 = "application/x-pkcs12"
PEM = "application/x-pem-file"


@dataclass
class _Version:
    version: str
    enabled: bool
    tags: dict[str, str]
    created: int
    updated: int
    not_before: int | None = None
    expires: int | None = None
    content_type: str | None = None
    value: str = ""  # secrets
    der: bytes = b""  # certificates
    managed: bool = False

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "enabled": self.enabled, "created": self.created, "updated": self.updated,
            "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90,
        }
        if self.not_before is not None:
            attrs["nbf"] = self.not_before
        if self.expires is not None:
            attrs["exp"] = self.expires
        return attrs


@dataclass
class _Fault:
    status: int
    retry_after: int | None
    times: int


@dataclass
class Request:
    method: str
    path: str
    authorized: bool
    status: int = 0


@dataclass
class KeyVaultDouble:
    """The vault's content plus the HTTPS server that serves it; see the module docstring."""

    tls_dir: Path
    token: str = "double-access-token"
    page_size: int = 2
    certificates: dict[str, list[_Version]] = field(default_factory=dict)
    secrets: dict[str, list[_Version]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    down: bool = False  # every request answers 503 while set

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._clock = 0
        self.ca_pem = loopback_tls(self.tls_dir)
        self._server = _make_server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifetime ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self._server.server_address[1]}"

    @property
    def ca_bundle(self) -> Path:
        """For ``REQUESTS_CA_BUNDLE``: the CA that signed the double's HTTPS certificate."""
        return self.tls_dir / "vault-ca.pem"

    def start(self) -> KeyVaultDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the operator's side ----------------------------------------------------------------

    def _now(self) -> int:
        # Strictly increasing, like two portal edits a second apart: 'updated' is in seconds.
        self._clock = max(int(time.time()), self._clock + 1)
        return self._clock

    def import_certificate(
        self,
        name: str,
        certificate: x509.Certificate,
        key: rsa.RSAPrivateKey,
        *,
        chain: Sequence[x509.Certificate] = (),
        content_type: str = PKCS12,
        tags: dict[str, str] | None = None,
        enabled: bool = True,
    ) -> str:
        """A new version of a certificate with its key, and the managed secret behind it."""
        if content_type == PKCS12:
            pfx = pkcs12.serialize_key_and_certificates(
                name.encode(), key, certificate, list(chain) or None,
                serialization.NoEncryption(),
            )
            value = base64.b64encode(pfx).decode()
        else:
            value = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode() + "".join(
                c.public_bytes(serialization.Encoding.PEM).decode()
                for c in [certificate, *chain]
            )
        with self._lock:
            now, version = self._now(), random.token_hex(16)
            nbf = int(certificate.not_valid_before_utc.timestamp())
            exp = int(certificate.not_valid_after_utc.timestamp())
            der = certificate.public_bytes(serialization.Encoding.DER)
            self.certificates.setdefault(name, []).append(_Version(
                version, enabled, dict(tags or {}), now, now, nbf, exp, content_type, der=der,
            ))
            self.secrets.setdefault(name, []).append(_Version(
                version, enabled, {}, now, now, nbf, exp, content_type, value=value, managed=True,
            ))
        return version

    def set_secret(
        self,
        name: str,
        value: str,
        *,
        tags: dict[str, str] | None = None,
        enabled: bool = True,
        not_before: datetime | None = None,
        expires: datetime | None = None,
        content_type: str | None = PEM,
    ) -> str:
        """A new version of a secret, e.g. a client certificate's PEM pasted in the portal."""
        with self._lock:
            now, version = self._now(), random.token_hex(16)
            self.secrets.setdefault(name, []).append(_Version(
                version, enabled, dict(tags or {}), now, now,
                int(not_before.timestamp()) if not_before else None,
                int(expires.timestamp()) if expires else None,
                content_type, value=value,
            ))
        return version

    def update(
        self,
        kind: str,
        name: str,
        *,
        enabled: bool | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Edit the latest version's properties (``kind``: certificates or secrets)."""
        with self._lock:
            latest = getattr(self, kind)[name][-1]
            if enabled is not None:
                latest.enabled = enabled
            if tags is not None:
                latest.tags = dict(tags)
            latest.updated = self._now()
            if kind == "certificates":  # the managed secret follows its certificate
                backing = self.secrets[name][-1]
                backing.enabled, backing.updated = latest.enabled, latest.updated

    def fail_next(self, status: int, times: int = 1, retry_after: int | None = None) -> None:
        """The next ``times`` requests answer ``status`` (with Retry-After if given)."""
        with self._lock:
            self._faults.append(_Fault(status, retry_after, times))

    def count(self, method: str = "GET", prefix: str = "") -> int:
        """Authorized requests served whose path starts with ``prefix``."""
        with self._lock:
            return sum(
                1 for r in self.requests
                if r.authorized and r.method == method and r.path.startswith(prefix)
            )

    # -- the service's side -----------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], auth: str | None
               ) -> tuple[int, dict[str, str], dict[str, Any] | None]:
        authorized = auth == f"Bearer {self.token}"
        record = Request(method, path, authorized)
        with self._lock:
            self.requests.append(record)
            fault = self._take_fault()
        status, headers, body = self._answer(method, path, query, authorized, fault)
        record.status = status
        return status, headers, body

    def _take_fault(self) -> _Fault | None:
        if self.down:
            return _Fault(503, None, 1)
        if not self._faults:
            return None
        fault = self._faults[0]
        fault.times -= 1
        if fault.times <= 0:
            self._faults.pop(0)
        return fault

    def _answer(self, method: str, path: str, query: dict[str, list[str]], authorized: bool,
                fault: _Fault | None) -> tuple[int, dict[str, str], dict[str, Any] | None]:
        if fault is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            code = "Throttled" if fault.status == 429 else "ServiceUnavailable"
            return fault.status, headers, _error(code, f"injected {fault.status}")
        if not authorized:
            return 401, {"WWW-Authenticate": CHALLENGE}, _error("Unauthorized", "no token")
        if "api-version" not in query:
            return 400, {}, _error("BadParameter", "api-version is required")
        if method != "GET":
            return 405, {}, _error("MethodNotAllowed", method)
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] not in ("certificates", "secrets"):
            return 404, {}, _error("NotFound", path)
        kind = parts[0]
        with self._lock:
            if len(parts) == 1:
                return 200, {}, self._page(kind, query)
            return self._get(kind, parts[1], parts[2] if len(parts) > 2 else "")

    def _page(self, kind: str, query: dict[str, list[str]]) -> dict[str, Any]:
        names = sorted(getattr(self, kind))
        size = min(int(query.get("maxresults", [self.page_size])[0]), self.page_size)
        start = int(query.get("$skiptoken", ["0"])[0])
        listed = [self._item(kind, n) for n in names[start:start + size]]
        page: dict[str, Any] = {"value": listed, "nextLink": None}
        if start + size < len(names):
            page["nextLink"] = (
                f"{self.url}/{kind}?api-version={query['api-version'][0]}"
                f"&$skiptoken={start + size}&maxresults={size}"
            )
        return page

    def _item(self, kind: str, name: str) -> dict[str, Any]:
        latest = getattr(self, kind)[name][-1]
        item: dict[str, Any] = {
            "id": f"{self.url}/{kind}/{name}", "attributes": latest.attributes(),
        }
        if latest.tags:
            item["tags"] = latest.tags
        if kind == "certificates":
            item["x5t"] = _x5t(latest.der)
        else:
            item["contentType"] = latest.content_type
            if latest.managed:
                item["managed"] = True
        return item

    def _get(self, kind: str, name: str, version: str
             ) -> tuple[int, dict[str, str], dict[str, Any] | None]:
        versions = getattr(self, kind).get(name)
        chosen = None
        if versions:
            chosen = versions[-1] if not version else next(
                (v for v in versions if v.version == version), None
            )
        if chosen is None:
            code = "CertificateNotFound" if kind == "certificates" else "SecretNotFound"
            return 404, {}, _error(code, f"{kind[:-1]} {name} ({version}) not found")
        base = f"{self.url}/{kind}/{name}/{chosen.version}"
        body: dict[str, Any] = {"id": base, "attributes": chosen.attributes()}
        if chosen.tags:
            body["tags"] = chosen.tags
        if kind == "certificates":
            body.update({
                "kid": f"{self.url}/keys/{name}/{chosen.version}",
                "sid": f"{self.url}/secrets/{name}/{chosen.version}",
                "x5t": _x5t(chosen.der),
                "cer": base64.b64encode(chosen.der).decode(),
                "policy": {
                    "id": f"{self.url}/certificates/{name}/policy",
                    "secret_props": {"contentType": chosen.content_type},
                },
            })
            return 200, {}, body
        if not chosen.enabled:
            return 403, {}, _error(
                "Forbidden", "Operation get is not allowed on a disabled secret.",
                inner="SecretDisabled",
            )
        body.update({"value": chosen.value, "contentType": chosen.content_type})
        if chosen.managed:
            body.update({"managed": True, "kid": f"{self.url}/keys/{name}/{chosen.version}"})
        return 200, {}, body


def _error(code: str, message: str, inner: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return {"error": error}


def _x5t(der: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()


def _make_server(double: KeyVaultDouble) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlparse(self.path)
            status, headers, body = double.handle(
                self.command, url.path, parse_qs(url.query), self.headers.get("Authorization")
            )
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(double.tls_dir / "vault.pem", double.tls_dir / "vault.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def loopback_tls(directory: Path) -> str:
    """A CA and an HTTPS certificate for 127.0.0.1/localhost; returns the CA's PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Key Vault double CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST)),
        ]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    (directory / "vault-ca.pem").write_text(ca_pem)
    (directory / "vault.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "vault.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return ca_pem
