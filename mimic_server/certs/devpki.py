"""A development PKI in the certificate directory: a CA, the server's certificate, clients.

Layout of the directory (``MIMIC_CERT_DIR``, default ``DATA_DIR/certs``)::

    ca/ca.pem, ca/ca.key              the development CA (never trusted as a whole by default)
    server/server.pem, server.key     the server certificate (chain: server, CA) and key
    clients/NAME/client.pem, .key     credentials issued to a modality; hand them over
    trusted/NAME.pem [+ NAME.json]    one trusted client certificate [AE title binding and
                                      access rule: {"ae_titles": [...], "services": [...]}]
    trusted-ca/NAME.pem [+ .json]     a CA whose every certificate is trusted (explicit choice)
    revoked/                          trust entries taken out by ``mimic certs revoke``

Trust is per client certificate: issuing from the CA and trusting are two steps, and
revoking removes the trust entry, so other clients of the same CA keep working.

The binding file also carries the entry's access rule, with the keys of the policy file
(``services``, ``move_destinations``, ...; :mod:`mimic_server.security.grants`). The first
client (``modality1``) gets every service and every Move Destination, so that the quick start
can store, find and retrieve; every other client gets the rule it is issued with, by default
none (echo and store).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mimic_server.ae_titles import sendable_ae_title
from mimic_server.durable_files import replace_whole
from mimic_server.errors import ConfigurationError
from mimic_server.security.grants import Grants, RuleError, parse_rule

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: The longest validity a client may be issued for, in days (the development CA's own).
MAX_DAYS = 3650
#: The server certificate's validity in days, cut to what is left of the CA's.
SERVER_DAYS = 825
FIRST_CLIENT = "modality1"
#: The first client's rule: the quick start stores, finds, moves and gets with it.
FIRST_CLIENT_RULE: dict[str, object] = {"services": ["all"], "move_destinations": ["*"]}


@dataclass(frozen=True)
class IssuedClient:
    name: str
    cert: Path
    key: Path
    ae_titles: tuple[str, ...]


@dataclass(frozen=True)
class DevPki:
    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    first_client: IssuedClient | None
    created: bool


def _key() -> rsa.RSAPrivateKey:
    # RSA 2048: the BCP 195 minimum, and what dcmtk's non-downgrading profile negotiates.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # A new file (mkstemp: O_EXCL, mode 0600) renamed into place: opening an existing file
    # with O_TRUNC would keep its mode, and a key copied in at 0644 stay readable by all.
    _write_whole(path, data, 0o600)


def _write_certs(path: Path, *certs: x509.Certificate) -> None:
    # Public: readable by all, as a certificate handed to a modality's administrator is.
    _write_whole(path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs),
                 0o644)


def _write_whole(path: Path, data: bytes, mode: int) -> None:
    """``data`` as ``path``, whole or not at all (``durable_files``): written in place, a
    certificate cut short stayed behind beside its key, ``init`` took the pair as made, and
    the server could not start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_whole(path, data, mode)


def _write_pair(key_path: Path, key: rsa.RSAPrivateKey, cert_path: Path,
                *certs: x509.Certificate) -> None:
    """The key, then its certificate; the key removed again if the certificate cannot be
    written, so that the next ``init`` makes the pair anew instead of refusing a key
    without its certificate (only a crash between the two leaves that, and is said)."""
    _write_key(key_path, key)
    try:
        _write_certs(cert_path, *certs)
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: object, days: int
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MIMIC development PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _load_ca(directory: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The development CA; ConfigurationError naming the file that is missing or unusable
    (with no CA at all, 'run mimic certs init')."""
    ca_pem = directory / "ca" / "ca.pem"
    ca_key = directory / "ca" / "ca.key"
    if not ca_pem.exists() and not ca_key.exists():
        raise ConfigurationError(
            f"no development CA in {directory / 'ca'}: run 'mimic certs init'"
        )
    try:
        cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"cannot read {ca_pem}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigurationError(f"{ca_pem} is not a PEM certificate") from exc
    try:
        key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {ca_key}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:  # TypeError: encrypted
        raise ConfigurationError(f"{ca_key} is not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigurationError(f"{ca_key} is not an RSA key")
    return cert, key


def _create_ca(directory: Path) -> None:
    key = _key()
    name = _name("MIMIC development CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(name, name, key.public_key(), 3650)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_pair(directory / "ca" / "ca.key", key, directory / "ca" / "ca.pem", cert)


def _leaf(
    ca: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    cn: str,
    usages: list[x509.ObjectIdentifier],
    days: int,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    builder = (
        _builder(_name(cn), ca.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def server_names(extra: list[str] | None = None) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    for host in [socket.gethostname(), *(extra or [])]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    unique: list[x509.GeneralName] = []
    for name in names:
        if name not in unique:
            unique.append(name)
    return unique


def _missing_pair(cert: Path, key: Path) -> bool:
    """True when neither file exists (make both); ConfigurationError when one exists alone.

    A key is never replaced: a certificate deleted by mistake, a key restored from a backup,
    the CA's key (which every issued certificate depends on) must not be overwritten by a
    new one. Renewing is deleting both, on purpose.
    """
    if cert.exists() and key.exists():
        return False
    if key.exists() or cert.exists():
        there, missing = (key, cert) if key.exists() else (cert, key)
        raise ConfigurationError(
            f"{there} exists without {missing}; nothing replaced: "
            f"restore {missing.name}, or delete both to make a new pair"
        )
    return True


def init(directory: Path, *, first_client: bool = True) -> DevPki:
    """Create whatever of the development PKI is missing; never overwrite what exists.

    The first client (``modality1``, every service) is made with the CA only: renewing the
    server certificate by deleting it and running init again issues no client.
    """
    created = new_ca = False
    if _missing_pair(directory / "ca" / "ca.pem", directory / "ca" / "ca.key"):
        _create_ca(directory)
        created = new_ca = True
    ca, ca_key = _load_ca(directory)
    server_cert = directory / "server" / "server.pem"
    server_key = directory / "server" / "server.key"
    if _missing_pair(server_cert, server_key):
        cert, key = _leaf(
            ca,
            ca_key,
            "MIMIC server",
            # clientAuth too: the server is a TLS client toward C-MOVE destinations.
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            _server_days(ca, directory / "ca"),
            server_names(),
        )
        _write_pair(server_key, key, server_cert, cert, ca)
        created = True
    client = None
    if first_client:
        existing = directory / "clients" / FIRST_CLIENT
        trusted = directory / "trusted" / f"{FIRST_CLIENT}.pem"
        if (new_ca or _nothing_issued(directory)) and not existing.exists() \
                and not trusted.exists():
            # Only with a new CA or one that never issued a client (a first start, or one
            # cut short after the CA was written): a later init renews what is missing, and
            # must not bring back, with every right, a first client the operator retired.
            client = issue_client(directory, FIRST_CLIENT, rule=FIRST_CLIENT_RULE)
        elif existing.exists() and trusted.exists():
            client = IssuedClient(
                FIRST_CLIENT, existing / "client.pem", existing / "client.key",
                tuple(read_binding(directory / "trusted" / f"{FIRST_CLIENT}.json")),
            )
    return DevPki(directory, directory / "ca" / "ca.pem", server_cert, server_key, client, created)


def _server_days(ca: x509.Certificate, ca_dir: Path) -> int:
    """The server certificate's validity: ``SERVER_DAYS``, or less where the CA ends
    sooner. A server certificate renewed under a CA some years old outlived it by up to
    825 days, as if valid, while every peer refused the chain once the CA had expired. A CA
    with less than a day left is refused: a certificate it issues is of no use."""
    left = ca.not_valid_after_utc - datetime.now(UTC)
    if left < timedelta(days=1):
        raise ConfigurationError(
            f"the development CA ({ca_dir / 'ca.pem'}) is valid only until "
            f"{ca.not_valid_after_utc.isoformat(timespec='minutes')}: make a new one (delete "
            "ca.pem and ca.key there and run `mimic certs init` again; every client must "
            "then be issued again)"
        )
    return min(SERVER_DAYS, left.days)


def _nothing_issued(directory: Path) -> bool:
    """No client was ever issued, trusted or revoked under ``directory``: a first start that
    ended after the CA was written (a full disk, a kill) gets its first client next time."""
    return not any(
        any(folder.iterdir()) for folder in
        (directory / "clients", directory / "trusted", directory / "trusted-ca",
         directory / "revoked") if folder.is_dir()
    )


def issue_client(
    directory: Path,
    name: str,
    ae_titles: list[str] | None = None,
    days: int = 730,
    rule: Mapping[str, object] | None = None,
) -> IssuedClient:
    """Issue a client certificate from the development CA and trust it, with its access
    ``rule`` (policy file keys) in the binding; None: no rule (echo and store)."""
    _check_name(name)
    titles = tuple(_check_ae_title(t) for t in (ae_titles or []))
    if rule:
        try:
            parse_rule(rule, name)
        except RuleError as exc:
            raise ConfigurationError(str(exc)) from exc
    if not 1 <= days <= MAX_DAYS:
        raise ConfigurationError(f"{days} days: a client is valid for 1 to {MAX_DAYS} days")
    target = directory / "clients" / name
    if target.exists() or (directory / "trusted" / f"{name}.pem").exists():
        raise ConfigurationError(f"a client named {name!r} already exists in {directory}")
    if (directory / "trusted-ca" / f"{name}.pem").exists():
        # One name, one entry: revoke NAME must never have to guess between the two.
        raise ConfigurationError(
            f"{name!r} is the name of a trusted CA (trusted-ca/{name}.pem): choose another name"
        )
    ca, ca_key = _load_ca(directory)
    last = datetime.now(UTC) + timedelta(days=days)
    if last > ca.not_valid_after_utc:
        # Refused, not cut short: the operator learns the CA's end now, not from a modality
        # whose certificate stopped working earlier than asked.
        left = (ca.not_valid_after_utc - datetime.now(UTC)).days
        raise ConfigurationError(
            f"{days} days outlive the development CA (valid until "
            f"{ca.not_valid_after_utc.date().isoformat()}): at most {left} days"
        )
    cert, key = _leaf(ca, ca_key, name, [ExtendedKeyUsageOID.CLIENT_AUTH], days)
    try:
        _write_pair(target / "client.key", key, target / "client.pem", cert)
    except BaseException:
        with contextlib.suppress(OSError):
            target.rmdir()  # made for this client, empty again: the name stays free
        raise
    trust(directory, name, cert, titles, rule)
    return IssuedClient(name, target / "client.pem", target / "client.key", titles)


def trust(
    directory: Path,
    name: str,
    cert: x509.Certificate,
    ae_titles: tuple[str, ...] = (),
    rule: Mapping[str, object] | None = None,
) -> Path:
    """Add one client certificate to the trusted set: the binding, then the entry.

    The binding is always the one asked for: a ``NAME.json`` left behind when an operator
    deleted only ``NAME.pem`` (section 5 of the operator guide: the same as revoking) is
    replaced, or removed when no AE title or rule is asked, so a new certificate never
    inherits the old entry's rule. It is in place before the ``.pem``: the watcher never
    trusts the certificate with another binding.
    """
    _check_name(name)
    trusted = directory / "trusted"
    trusted.mkdir(parents=True, exist_ok=True)
    binding = trusted / f"{name}.json"
    if ae_titles or rule:
        _write_whole(binding, json.dumps(
            {"ae_titles": list(ae_titles), **(rule or {})}, indent=2).encode(), 0o644)
    else:
        binding.unlink(missing_ok=True)
    path = trusted / f"{name}.pem"
    _write_certs(path, cert)  # renamed into place: the watcher never sees half a file
    return path


def revoke(directory: Path, name: str) -> list[Path]:
    """Take a trust entry (client or CA) out of the trusted set; keep it under revoked/.

    A name in both ``trusted/`` and ``trusted-ca/`` (copied in by hand) is refused, nothing
    moved: revoking a modality must not cut off a whole CA, nor the reverse. The ``.pem``
    moves first (that is the revocation), then its binding, both under one stamp that no
    file of ``revoked/`` holds yet: an earlier revocation is never overwritten.
    """
    _check_name(name)
    folders = [f for f in ("trusted", "trusted-ca") if (directory / f / f"{name}.pem").exists()]
    if not folders:  # a binding left without its certificate
        folders = [
            f for f in ("trusted", "trusted-ca") if (directory / f / f"{name}.json").exists()
        ]
    if not folders:
        raise ConfigurationError(f"no trusted certificate named {name!r} in {directory}")
    if len(folders) > 1:
        raise ConfigurationError(
            f"{name!r} names both trusted/{name}.pem and trusted-ca/{name}.pem; nothing revoked: "
            f"move the one to revoke out of its folder by hand, then rename the other"
        )
    sources = [
        directory / folders[0] / f"{name}{suffix}"
        for suffix in (".pem", ".json")
        if (directory / folders[0] / f"{name}{suffix}").exists()
    ]
    revoked = directory / "revoked"
    revoked.mkdir(parents=True, exist_ok=True)
    targets = _reserve(revoked, name, [s.suffix for s in sources])
    moved = []
    for source, target in zip(sources, targets, strict=True):
        try:
            shutil.move(source, target)  # over the empty file _reserve made
        except FileNotFoundError:
            target.unlink(missing_ok=True)  # removed meanwhile by someone else
            continue
        moved.append(target)
    if not moved:
        raise ConfigurationError(f"no trusted certificate named {name!r} in {directory}")
    return moved


def _reserve(revoked: Path, name: str, suffixes: list[str]) -> list[Path]:
    """New empty files ``NAME.STAMP.SUFFIX``, one per suffix, all of one stamp that no file
    of ``revoked/`` had: the time, then ``_2``, ``_3``... within one second.

    The stamp has no dot, so :meth:`DirectorySource.revoked` reads the name back as all
    before the last dot of the stem; ``_N`` sorts after the plain stamp, newest first."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for count in itertools.count(1):
        candidate = stamp if count == 1 else f"{stamp}_{count}"
        made: list[Path] = []
        try:
            for suffix in suffixes:
                path = revoked / f"{name}.{candidate}{suffix}"
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                made.append(path)
        except FileExistsError:
            for path in made:
                path.unlink()
            continue
        return made
    raise AssertionError("unreachable")


def read_binding(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        return [_check_ae_title(t) for t in data.get("ae_titles", [])]
    except (ValueError, AttributeError, TypeError) as exc:
        raise ConfigurationError(f"{path} is not a valid AE title binding") from exc


def read_entry_binding(path: Path) -> tuple[frozenset[str], Grants | None]:
    """The AE titles and access rule of a trust entry's binding file; none of either
    without one.

    ConfigurationError for a file that cannot be read or parsed, whatever part of it:
    titles read as none would admit any calling AE title, and a rule read as the default
    could grant what the entry's own rule withheld (store, associations without a user), so
    the whole entry is the caller's to decide (:class:`~.directory.DirectorySource`).
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return frozenset(), None
    except OSError as exc:
        raise ConfigurationError(exc.strerror or type(exc).__name__) from exc
    except ValueError as exc:
        raise ConfigurationError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("ae_titles", []), list) \
            or not all(isinstance(t, str) for t in data.get("ae_titles", [])):
        raise ConfigurationError('not a binding: {"ae_titles": [...], "services": [...]}')
    titles = frozenset(_check_ae_title(t) for t in data.get("ae_titles", []))
    raw = {k: v for k, v in data.items() if k != "ae_titles"}
    try:
        return titles, parse_rule(raw, path.name) if raw else None
    except RuleError as exc:
        raise ConfigurationError(str(exc)) from exc


def _check_name(name: str) -> None:
    # fullmatch: re's "$" also matches before a final newline, which made trusted/evil\n.pem.
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"{name!r} is not a usable name: letters, digits, '.', '_' and '-', up to 64"
        )


def _check_ae_title(title: str) -> str:
    """An AE title a peer can send (PS3.5 AE VR): the default character repertoire without
    control characters or backslash, 1 to 16 of them once the leading and trailing spaces,
    which are not significant, are taken off. Another title (CT\u00e9, full-width letters)
    could never match a calling AE title, and would only look like a binding."""
    sendable = sendable_ae_title(title)
    if sendable is None:
        raise ConfigurationError(f"{str(title).strip(' ')!r} is not a valid AE title")
    return sendable
