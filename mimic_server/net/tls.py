"""``SSLContext`` construction for the Basic TLS Secure Transport Connection Profile.

PS3.15 B.1 with the BCP 195 profiles (B.9 / B.11): TLS 1.2 at least, TLS 1.3 allowed, forward
secret AEAD cipher suites only, and a client certificate that is REQUIRED. Trust anchors are the
trusted client certificates themselves (``VERIFY_X509_PARTIAL_CHAIN`` lets a pinned leaf stand
as its own anchor) plus any CA trusted as a whole: a certificate merely issued by our CA is not
enough. Each trust change builds a new context; open connections keep the one they began with.
"""

from __future__ import annotations

import logging
import os
import ssl
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mimic_server.certs import CertBundle, TrustedCertificate
from mimic_server.errors import ConfigurationError

log = logging.getLogger(__name__)

#: TLS 1.2 suites of BCP 195 (RFC 9325 4.2); TLS 1.3 suites are OpenSSL's defaults (all AEAD).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!SHA1"
_WHEN = "%Y-%m-%d %H:%M:%SZ"


def _base(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def _no_pass_phrase() -> bytes:
    """Called by OpenSSL for an encrypted key only. Without a callback OpenSSL asks for the
    pass phrase on /dev/tty: under a terminal the calling thread (the certificate watcher)
    waited there for ever, every later trust change unseen."""
    raise ConfigurationError("server key is encrypted: MIMIC reads it without a pass phrase")


def _load_identity(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Load our chain and key from memory: the key never touches a filesystem.

    ``load_cert_chain`` only takes paths. A memfd is an anonymous file in RAM with no name
    in any directory; OpenSSL opens it as ``/proc/self/fd/N`` (a fresh open reads from the
    start, so the same "file" serves both the chain and the key), and it is gone when the
    descriptor is closed. Where memfd is missing (not Linux) the server refuses to start
    rather than write its key to a temporary file.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None or not os.path.isdir("/proc/self/fd"):
        raise ConfigurationError(
            "loading the server key from memory needs Linux (memfd_create, /proc)"
        )
    fd = memfd_create("mimic-server-identity", os.MFD_CLOEXEC)
    try:
        view = memoryview(key_pem + b"\n" + chain_pem)
        while view:
            view = view[os.write(fd, view):]
        ctx.load_cert_chain(f"/proc/self/fd/{fd}", password=_no_pass_phrase)
    except ssl.SSLError as exc:
        raise ConfigurationError(f"server certificate or key unusable: {exc.reason}") from exc
    except OSError as exc:  # OpenSSL's error without an SSL reason: Python's OSError
        raise ConfigurationError(f"server certificate or key unusable: {exc}") from exc
    finally:
        os.close(fd)


def _check_valid_now(chain_pem: bytes) -> None:
    """Refuse a server certificate outside its validity period: put in service, every
    handshake would fail (the peers check it) while the log said the trust set was updated."""
    try:
        leaf = x509.load_pem_x509_certificate(chain_pem)
    except ValueError:
        return  # load_cert_chain reports an unusable chain
    now = datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise ConfigurationError(
            f"server certificate not valid now: valid from {leaf.not_valid_before_utc:{_WHEN}}"
            f" to {leaf.not_valid_after_utc:{_WHEN}}"
        )


def server_context(
    bundle: CertBundle, session_tickets: int = 0, *, new_identity: bool = True
) -> ssl.SSLContext:
    """The listener's context: our chain and key, the currently valid trusted certificates.

    ``new_identity``: the server certificate is to be put in service, and must be valid now.
    False for the one already in service, built again for a trust change: it is not refused
    once it expires (the readiness check says so), as that would hold every revocation back.

    ``session_tickets``: TLS 1.3 tickets sent after each full handshake (OpenSSL sends two
    unless told). DICOM peers built on dcmtk or pynetdicom open every association with a
    new session and never resume, so by default none is sent (and no TLS 1.2 ticket): the
    two cost a full handshake 1.4 against 1.0 ms of server CPU here. (A TLS 1.2 peer may
    still resume by session ID from OpenSSL's server session cache, which Python's ``ssl``
    has no switch for.) A resumed session skips the certificate's signature and chain
    check only; each association's identity is still checked against the trust set
    (``TrustIndex.identify``), and a trust change builds a new context, whose new ticket
    keys and session cache resume nothing from before.
    """
    if new_identity:
        _check_valid_now(bundle.server_chain_pem)
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    _load_identity(ctx, bundle.server_chain_pem, bundle.server_key_pem)
    ctx.num_tickets = session_tickets
    if not session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    trusted = bundle.currently_valid()
    anchors = "".join(t.pem for t in trusted)
    if anchors:
        ctx.load_verify_locations(cadata=anchors)
    _warn_below_security_level(trusted)
    return ctx


#: OpenSSL's refusals of a certificate for the context's security level that the verification
#: of a peer's chain makes too: the key's size (a trusted entry is a trust anchor, whose key
#: is checked). Not CA_MD_TOO_WEAK, the signature its issuer made: an anchor's is never
#: checked, and a pinned modality certificate or a trusted intermediate CA signed with SHA-1
#: handshakes, yet was warned of as one that would not.
_TOO_WEAK = frozenset({"EE_KEY_TOO_SMALL", "CA_KEY_TOO_SMALL"})


def _warn_below_security_level(trusted: tuple[TrustedCertificate, ...]) -> None:
    """One WARNING per trusted entry whose certificate is below OpenSSL's security level (an
    RSA key under 2048 bits, a curve under 224 bits, at Debian's level 2): it is in the
    trust set, yet every handshake with it, or with what a CA entry issued, fails
    ("EE certificate key too weak"), and the operator learnt so only from refused
    connections. Names the entry, never the certificate's subject.

    Asked of OpenSSL itself, not a table of key sizes: a context like the listener's takes
    the certificate as its own, which OpenSSL refuses for the same level (then the missing
    key fails the load, which says nothing here). Runs on each new trust set, not per
    connection."""
    if not trusted or not hasattr(os, "memfd_create"):
        return
    probe = _base(ssl.PROTOCOL_TLS_SERVER)
    for entry in trusted:
        fd = os.memfd_create("mimic-trust-probe", os.MFD_CLOEXEC)
        try:
            os.write(fd, entry.certificate.public_bytes(Encoding.PEM))
            path = f"/proc/self/fd/{fd}"
            probe.load_cert_chain(path, path)
        except ssl.SSLError as exc:
            if exc.reason in _TOO_WEAK:
                log.warning(
                    "trusted certificate below OpenSSL's security level: its handshakes "
                    "will fail",
                    extra={"certificate": entry.name, "kind": entry.kind,
                           "reason": str(exc.reason).lower()},
                )
        except OSError:  # an unusual file system: the probe says nothing
            pass
        finally:
            os.close(fd)


def destination_context(bundle: CertBundle, extra_ca_pem: str = "") -> ssl.SSLContext:
    """The server as a TLS client (C-MOVE sub-associations), presenting its own certificate.

    The destination's certificate is verified against the CAs in our own chain, the CAs
    trusted as a whole, and any extra CA configured for that destination.
    """
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    _load_identity(ctx, bundle.server_chain_pem, bundle.server_key_pem)
    chain = x509.load_pem_x509_certificates(bundle.server_chain_pem)
    anchors = [c.public_bytes(Encoding.PEM).decode("ascii") for c in chain[1:]]
    anchors += [t.pem for t in bundle.currently_valid() if t.kind == "ca"]
    anchors.append(extra_ca_pem)
    cadata = "".join(anchors).strip()
    if not cadata:
        raise ConfigurationError("no CA to verify a move destination's certificate")
    ctx.load_verify_locations(cadata=cadata)
    return ctx
