"""What both composition roots open from the settings: the index, the audit trail, the OIDC
token validator and the policy file (the index's engine and the object store are opened by
:mod:`mimic_server.backends`, which ``mimic serve``'s supervisor uses too).

``mimic serve`` (app.py) and ``mimic web`` (webapp.py) are two front doors of one archive:
they must open the same index, the same objects, the same trail and the same rules, the
same way. Like app.py, this module knows concrete classes; nothing below it imports it.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from sqlalchemy import Engine

from mimic_server.backends import open_index_engine
from mimic_server.certs import CertBundle, CertificateSource
from mimic_server.config import Settings
from mimic_server.errors import ConfigurationError
from mimic_server.index.repository import SqlIndex
from mimic_server.net.tls import destination_context
from mimic_server.security.audit import AuditLog, AuditSink
from mimic_server.security.audit_records import Archive as AuditedArchive
from mimic_server.security.grants import RuleError
from mimic_server.security.policy import Policy
from mimic_server.security.policy_file import PolicyFile
from mimic_server.security.tokens import TokenValidator
from mimic_server.startup_checks import oidc_ca_context

log = logging.getLogger(__name__)


def open_audit_trail(
    settings: Settings, engine: Engine | None, bundle: CertBundle | None = None
) -> AuditLog:
    """The audit trail the settings call for: the ``audit_events`` table when the index is a
    server database (PostgreSQL: the replica's disk is not durable), else the JSON-lines file
    in DATA_DIR; and the audit repository over syslog/TLS when one is configured."""
    sinks: list[AuditSink] = []
    table = None
    if engine is not None and settings.audit_in_index:
        from mimic_server.index.audit_table import AuditTable

        # Also written in the index transaction of each C-STORE (dimse/store_audit.py).
        table = AuditTable(engine)
        sinks.append(table)
    repository = audit_repository(settings, bundle)
    if repository is not None:
        sinks.append(repository)
    archive = AuditedArchive(settings.ae_title, host=socket.gethostname())
    return AuditLog(None if table is not None else settings.audit_path, sinks=sinks,
                    archive=archive, transactional=table)


def audit_repository(settings: Settings, bundle: CertBundle | None = None) -> AuditSink | None:
    """The audit repository's sender (syslog/TLS), started, when one is configured: what
    ``open_audit_trail`` adds, and what ``mimic serve``'s supervisor sends the records it
    writes from a dead worker's journals through, with the same client certificate (its
    own setting, else the archive's server certificate, read now: a renewed one is the one
    shown). ConfigurationError when its TLS settings or that certificate are unusable."""
    if not settings.audit_syslog_host:
        return None
    return _syslog_sink(settings, bundle or _own_certificate(settings))


def _own_certificate(settings: Settings) -> CertBundle | None:
    """The archive's own certificate and key, read from where ``mimic serve`` reads them (the
    certificate directory or Key Vault), when the audit repository is to be shown them: its
    host set, no client certificate of its own, TLS on. ``mimic serve`` hands its bundle in;
    ``mimic web``, ``mimic audit`` and ``mimic reconcile`` have none at hand, and refused
    the documented default ("TLS is off": ``mimic web`` exit 2, ``mimic audit`` a
    traceback, its reading unrecorded and nothing listed)."""
    s = settings
    if not s.audit_syslog_host or s.audit_syslog_client_cert is not None or not s.tls:
        return None
    return certificate_source(s).load()  # ConfigurationError, naming what, when unreadable


def certificate_source(settings: Settings, credential: Any = None) -> CertificateSource:
    """Where ``mimic serve`` reads its certificates: Key Vault when a vault URL is set (signed
    with ``credential``, else a DefaultAzureCredential made here), else the certificate
    directory as it is (nothing is created: ``mimic serve`` makes the development PKI itself).
    ConfigurationError for a vault URL the SDK refuses."""
    s = settings
    if not s.keyvault_url:
        from mimic_server.certs.directory import DirectorySource

        return DirectorySource(s.certificate_dir)
    from mimic_server.certs.keyvault import KeyVaultSource

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    try:
        return KeyVaultSource(
            s.keyvault_url, credential, s.keyvault_server_cert,
            verify_challenge_resource=s.keyvault_verify_challenge_resource,
        )
    except (ValueError, NotImplementedError) as exc:
        raise ConfigurationError(f"Key Vault {s.keyvault_url}: {exc}") from exc


def _syslog_sink(settings: Settings, bundle: CertBundle | None) -> AuditSink:
    from mimic_server.security.syslog_tls import SyslogTlsSink

    s = settings
    assert s.audit_syslog_host is not None
    return SyslogTlsSink(
        s.audit_syslog_host, s.audit_syslog_port, syslog_context(s, bundle),
        server_name=s.audit_syslog_server_name, queue_size=s.audit_syslog_queue,
    ).start()


def syslog_context(settings: Settings, bundle: CertBundle | None) -> ssl.SSLContext:
    """The audit repository's TLS client context: its own client certificate when one is
    set, else the archive's own from ``bundle`` (``mimic serve`` builds it again from each
    new bundle, ``SyslogTlsSink.use_context``). ConfigurationError when it cannot be made."""
    s = settings
    try:
        if s.audit_syslog_client_cert is not None:
            context = ssl.create_default_context(
                cafile=str(s.audit_syslog_ca_file) if s.audit_syslog_ca_file else None
            )
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(
                str(s.audit_syslog_client_cert),
                str(s.audit_syslog_client_key) if s.audit_syslog_client_key else None,
            )
            return context
        if bundle is not None:
            # Read as OpenSSL reads the file (the start's check, ``cafile=``): the PEM blocks,
            # which are ASCII; a note beside them need not be. As UTF-8 text, a Latin-1 note
            # raised UnicodeDecodeError, and a UTF-8 one (``Zürich``) UnicodeEncodeError in
            # ``load_verify_locations(cadata=...)``: a traceback at start, and on each new
            # trust set a refresh that failed whole, its revocations held back.
            extra = (s.audit_syslog_ca_file.read_bytes().decode("ascii", "ignore")
                     if s.audit_syslog_ca_file else "")
            return destination_context(bundle, extra)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigurationError(f"audit repository TLS settings unusable: {exc}") from exc
    raise ConfigurationError(
        "the audit repository needs a client certificate: set "
        "MIMIC_AUDIT_SYSLOG_CLIENT_CERT (TLS is off, there is no server certificate)"
    )


def open_index(
    settings: Settings, credential: Any = None, schema_revision: str | None = None,
    *, deadlines: bool = False, writable: bool = True,
) -> tuple[Engine, SqlIndex]:
    """The index the settings name (:func:`~mimic_server.backends.open_index_engine`: SQLite
    migrated in place, PostgreSQL current, or at ``schema_revision`` in a worker of ``mimic
    serve``) with the archive's repository on it.

    Shared by the server and by maintenance commands (``mimic reconcile``); ``deadlines``
    for the servers only (``engine.LOCK_TIMEOUT_MS``).
    """
    engine = open_index_engine(settings, credential, schema_revision, deadlines=deadlines,
                               writable=writable)
    return engine, SqlIndex(engine, group_commit=settings.group_commit,
                            max_batch=settings.group_commit_max,
                            in_flight=settings.group_commit_in_flight,
                            pool_size=settings.database_pool_size)


def open_token_validator(settings: Settings) -> TokenValidator | None:
    """The OIDC bearer token validator (``MIMIC_OIDC_*``), or None when no issuer is set:
    one validator for User Identity Negotiation (type 5) and DICOMweb."""
    s = settings
    if not s.oidc_issuer:
        return None
    if not s.oidc_audience:
        raise ConfigurationError("MIMIC_OIDC_ISSUER needs MIMIC_OIDC_AUDIENCE")
    return oidc_validator(s, s.oidc_audience)


def oidc_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The trust anchors for the issuer's HTTPS (``MIMIC_OIDC_CA_FILE``), else the system's;
    ConfigurationError, naming the setting, when the file is not PEM CAs."""
    return oidc_ca_context(settings)


def oidc_validator(settings: Settings, audience: str) -> TokenValidator:
    """A validator of the configured issuer's tokens for ``audience``: access tokens name
    MIMIC's API (``MIMIC_OIDC_AUDIENCE``), the console's ID tokens its client id."""
    s = settings
    assert s.oidc_issuer is not None
    algorithms = [a.strip() for a in s.oidc_algorithms.split(",") if a.strip()]
    try:
        return TokenValidator(
            s.oidc_issuer, audience, algorithms=algorithms,
            leeway_seconds=s.oidc_leeway_seconds, ssl_context=oidc_ssl_context(s),
            roles_claim=s.oidc_roles_claim,
        )
    except ValueError as exc:
        raise ConfigurationError(f"MIMIC_OIDC_ALGORITHMS: {exc}") from exc


def load_policy_file(settings: Settings, policy: Policy) -> tuple[PolicyFile, str] | None:
    """Load ``MIMIC_POLICY_FILE`` into ``policy``; (source, version) to watch, or None.

    At start there is no last good policy to keep: a missing or broken file is a
    configuration error."""
    path = settings.policy_file
    if path is None:
        return None
    source = PolicyFile(path)
    if not path.is_file():
        raise ConfigurationError(f"policy file {path} does not exist (MIMIC_POLICY_FILE)")
    version = source.version()
    try:
        policy.rules = source.load()
    except RuleError as exc:
        raise ConfigurationError(str(exc)) from exc
    log.info("access policy loaded", extra={
        "file": str(path), "certificates": len(policy.rules.certificates)})
    return source, version
