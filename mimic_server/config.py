"""The one place that reads configuration: ``MIMIC_*`` environment variables and CLI flags.

Every default is the embedded mode, so ``mimic serve`` with nothing set runs a complete
archive on one machine. Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from mimic_server.ae_titles import sendable_ae_title

#: The longest wait a setting may ask for: poll() and select() take a C int of milliseconds
#: (24.8 days); a little less.
MAX_SECONDS = 2_000_000.0


class MoveDestination(BaseModel):
    """Where a C-MOVE destination AE title is reached."""

    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = True
    #: The name to check the destination's certificate against (default: host).
    server_name: str | None = None
    #: PEM file of extra CAs to trust for this destination's certificate.
    ca_file: Path | None = None

    @field_validator("ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        """PEM certificates, read now: beside the server's own CAs a file without any was
        taken silently, and every C-MOVE to the destination then failed its handshake."""
        if value is None:
            return value
        if not value.is_file():
            raise ValueError(f"CA file {value} does not exist")
        from cryptography import x509  # here: the supervisor reads settings, not certificates

        try:
            x509.load_pem_x509_certificates(value.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"CA file {value} holds no PEM certificate") from exc
        return value


def origin_of(url: str | None) -> str | None:
    """The origin a browser sends (RFC 6454: scheme and host lower case, default port
    left out) of a configured URL; None when it has no scheme or host. The console's own
    origins (base URL, redirect URI) and ``MIMIC_WEB_CORS_ORIGINS`` are written this way."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if not scheme or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


class Settings(BaseSettings):
    """All settings of a MIMIC server; each field is ``MIMIC_<NAME>`` and ``--<name>``."""

    model_config = SettingsConfigDict(env_prefix="MIMIC_", extra="ignore")

    config_file: Path | None = Field(
        None,
        description="A TOML file of settings (same names, lower case); flags and MIMIC_* "
        "variables override it.",
    )

    host: str = Field("0.0.0.0", description="Address the DICOM listener binds to.")
    port: int = Field(11112, ge=0, le=65535, description="DICOM listener port (0 = any free).")
    ae_title: str = Field("MIMIC", description="The archive's own AE title.")
    data_dir: Path = Field(
        Path("./mimic-data"), description="Where the embedded index, objects and PKI live."
    )
    tls: bool = Field(
        True, description="Require mutual TLS. 'off' opens a plain-TCP listener (lab only)."
    )
    cert_dir: Path | None = Field(
        None, description="PEM certificate directory (default: DATA_DIR/certs)."
    )
    cert_refresh_seconds: float = Field(
        30.0, gt=0, description="How often the trusted certificate set is re-read."
    )
    keyvault_url: str | None = Field(
        None,
        description="Azure Key Vault URL (https://NAME.vault.azure.net); set = certificates"
        " come from the vault instead of CERT_DIR.",
    )
    keyvault_server_cert: str = Field(
        "mimic-server", description="Name of the Key Vault certificate the server presents."
    )
    keyvault_verify_challenge_resource: bool = Field(
        True,
        description="Check that Key Vault's auth challenge names the vault's own domain."
        " Turn off ONLY for a Key Vault emulator or test double on loopback.",
    )
    abort_revoked: bool = Field(
        True, description="Abort open associations whose certificate was revoked."
    )
    require_called_ae_title: bool = Field(
        True, description="Reject associations addressed to another AE title."
    )
    database_url: str | None = Field(
        None, repr=False,  # its password, where it has one
        description="SQLAlchemy URL of the index (default: SQLite in DATA_DIR).",
    )
    database_auth: Literal["password", "entra"] = Field(
        "password",
        description="PostgreSQL login: the URL's password, or a Microsoft Entra token.",
    )
    database_pool_size: int = Field(
        32, ge=2, le=1000,
        description="PostgreSQL connections each server process (each worker of 'mimic "
        "serve' and of 'mimic web') may hold at once; a C-STORE or request beyond them waits "
        "for one. Budget it: processes x this, plus a few for migrations and maintenance, "
        "must stay below the server's connection limit (Azure B1ms: 35).",
    )
    blob_account_url: str | None = Field(
        None,
        description="Blob Storage account URL (https://<account>.blob.core.windows.net); "
        "objects go to Blob Storage with DefaultAzureCredential (managed identity).",
    )
    blob_connection_string: str | None = Field(
        None, description="Blob Storage connection string (Azurite, development); "
        "selects Blob Storage like BLOB_ACCOUNT_URL.",
        repr=False,
    )
    blob_container: str = Field("dicom", description="Blob container that holds the objects.")
    blob_create_container: bool = Field(
        True, description="Create the blob container on start if it is missing."
    )
    blob_retries: int = Field(
        2, ge=0, le=10, description="Retries of a failed Blob Storage request (exponential)."
    )
    blob_timeout: float = Field(
        10.0, gt=0, description="Seconds a Blob Storage request may wait for the service."
    )
    blob_connections: int | None = Field(
        None, ge=1, le=1024, description="Keep-alive connections to Blob Storage kept for "
        "reuse per process (default: MAX_ASSOCIATIONS, so every association can put an "
        "object at once without opening a new connection).",
    )
    max_associations: int = Field(
        32, ge=1, description="Simultaneous associations allowed (a total for the server, "
        "shared by its worker processes).",
    )
    workers: int | None = Field(
        None, ge=1, description="Worker processes that serve the DICOM port (default: the "
        "number of CPUs available to the process); 1 = a single process, no supervisor.",
    )
    group_commit: bool = Field(
        True, description="Concurrent C-STOREs share index transactions (one commit, one "
        "fsync, for all that arrived while the previous commit was in flight); each is "
        "answered only once its own row has committed. 'false' gives each its own.",
    )
    group_commit_max: int = Field(
        64, ge=1, le=1000, description="Instances one shared index transaction may take."
    )
    group_commit_in_flight: int | None = Field(
        None, ge=1, le=32, description="Shared index transactions that may be committing at "
        "once (default: 1 on SQLite, which has one writer; 8 on PostgreSQL, which shares WAL "
        "flushes itself: there batches form only beyond 8 concurrent C-STOREs).",
    )
    max_pdu_size: int = Field(
        262144, ge=131072, le=0xFFFFFFFF,  # the A-ASSOCIATE-AC's field is 32 bits
        description="Maximum PDU length we receive, in bytes.",
    )
    handshake_timeout: float = Field(10.0, gt=0, description="Seconds for a TLS handshake.")
    tls_session_tickets: int = Field(
        0, ge=0, le=8, description="TLS 1.3 session tickets sent after each full handshake, "
        "with which a peer that keeps them may resume its next connection (a handshake "
        "without the certificate signature and chain check; the certificate is still "
        "checked against the trust set). 0: none, and no TLS 1.2 tickets either (a TLS 1.2 "
        "peer may still resume by session ID): dcmtk and "
        "pynetdicom peers never resume, and each ticket costs the server about 0.2 ms of CPU "
        "per handshake.",
    )
    max_object_bytes: int = Field(
        4 << 30, ge=1, description="Largest data set a C-STORE may send, in bytes (default "
        "4 GiB); a larger one is refused 0xA700 and nothing is stored. With Blob Storage at most "
        "209714151424 (50,000 blocks of 4 MiB).",
    )
    spool_dir: Path | None = Field(
        None, description="Where data sets too large to hold in memory are spooled while "
        "they arrive, as anonymous files (default: DATA_DIR/spool).",
    )
    max_pending_handshakes: int = Field(
        1024, ge=1, description="TLS handshakes in progress at once; when full, a new "
        "connection evicts the oldest one still waiting (no thread each: only a socket). "
        "Clamped at start to what the file descriptor limit leaves.",
    )
    listen_backlog: int = Field(
        512, ge=16, le=65535, description="Connections the kernel queues before accept (the listen "
        "backlog; capped by net.core.somaxconn).",
    )
    audit_refusal_interval: float = Field(
        60.0, gt=0, description="Seconds over which refused connections are counted into "
        "one audit record and one log line per source and reason.",
    )
    audit_syslog_host: str | None = Field(
        None, description="Audit repository (IHE ATNA) host: audit messages also go there "
        "over syslog/TLS (RFC 5424/5425), from a bounded queue that never blocks DICOM.",
    )
    audit_syslog_port: int = Field(
        6514, ge=1, le=65535, description="Audit repository syslog/TLS port."
    )
    audit_syslog_ca_file: Path | None = Field(
        None, description="PEM CA certificates that verify the audit repository "
        "(default: the system's trust store).",
    )
    audit_syslog_client_cert: Path | None = Field(
        None, description="PEM client certificate (with its chain) presented to the audit "
        "repository (default: the archive's own server certificate and key).",
    )
    audit_syslog_client_key: Path | None = Field(
        None, description="PEM private key of AUDIT_SYSLOG_CLIENT_CERT."
    )
    audit_syslog_server_name: str | None = Field(
        None, description="Name the audit repository's certificate is checked against "
        "(default: AUDIT_SYSLOG_HOST).",
    )
    audit_syslog_queue: int = Field(
        10000, ge=1, description="Audit messages held for the repository while it is "
        "unreachable; beyond that the oldest are dropped (and counted).",
    )
    network_timeout: float = Field(
        60.0, gt=0, description="Seconds a connection may stay silent before it is dropped "
        "(a STOW-RS body too: its request is given up, 408).",
    )
    acse_timeout: float = Field(30.0, gt=0, description="Seconds to wait for association PDUs.")
    dimse_timeout: float = Field(60.0, gt=0, description="Seconds to wait for DIMSE messages.")
    drain_seconds: float = Field(
        25.0, ge=0, description="On SIGTERM, how long open associations may finish before "
        "they are aborted (keep it below the platform's termination grace period)."
    )
    ops_host: str = Field(
        "127.0.0.1",
        description="Address of the operations HTTP listener (/healthz, /readyz, /metrics); "
        "0.0.0.0 in a container, where the platform's probes come from outside.",
    )
    ops_port: int = Field(
        8080, ge=0, le=65535, description="Operations HTTP port (0 = no operations listener)."
    )
    max_find_results: int = Field(
        10000, ge=1, description="Matches a C-FIND may return before it is refused."
    )
    policy_file: Path | None = Field(
        None, description="TOML access policy (services, move destinations, query limits per "
        "trust entry); re-read like the certificates. Unset: each entry's own rule, else "
        "echo and store only.",
    )
    users_file: Path | None = Field(
        None, description="TOML user file for User Identity Negotiation type 2 (username and "
        "passcode, Argon2id hashes; 'mimic users add').",
    )
    oidc_issuer: str | None = Field(
        None, description="OpenID Connect issuer whose JWTs are accepted as User Identity "
        "type 5 (e.g. https://login.microsoftonline.com/TENANT/v2.0). Unset: no JWT users.",
    )
    oidc_audience: str | None = Field(
        None, description="The audience (aud) a JWT must carry; required with OIDC_ISSUER."
    )
    oidc_algorithms: str = Field(
        "RS256,RS384,RS512,PS256,PS384,PS512,ES256,ES384",
        description="Signature algorithms a JWT may use, comma-separated (asymmetric only).",
    )
    oidc_leeway_seconds: float = Field(
        60.0, ge=0, le=300, description="Clock skew allowed on a JWT's exp and nbf."
    )
    oidc_roles_claim: str = Field("roles", description="The JWT claim that lists roles.")
    oidc_ca_file: Path | None = Field(
        None, description="PEM CAs to trust for the issuer's HTTPS (default: system roots)."
    )
    find_time_limit_seconds: float = Field(
        30.0, gt=0, description="Seconds of work (index reads, matching) one C-FIND may "
        "spend before it ends with 0xA700; the peer's reading time does not count.",
    )
    move_destinations: dict[str, MoveDestination] = Field(
        default_factory=dict,
        description='C-MOVE destinations as JSON: {"AE": {"host": h, "port": p, "tls": true}}.',
    )
    web_host: str = Field(
        "127.0.0.1", description="Address the DICOMweb and console listener ('mimic web') "
        "binds to; 0.0.0.0 in a container behind the platform's HTTPS ingress.",
    )
    web_port: int = Field(
        8042, ge=0, le=65535, description="DICOMweb and console HTTP port (0 = any free)."
    )
    web_workers: int | None = Field(
        None, ge=1, description="Worker processes of 'mimic web' on its one listening socket "
        "(default: the number of CPUs available to the process, as WORKERS); 1 = a single "
        "process, no supervisor.",
    )
    web_auth: Literal["oidc", "none"] = Field(
        "oidc", description="DICOMweb authentication: OAuth 2.0 bearer tokens of OIDC_ISSUER, "
        "or 'none' (development only: refused unless WEB_HOST is a loopback address).",
    )
    web_policy_entry: str = Field(
        "dicomweb", description="The policy file's [certificates.NAME] table whose rule "
        "(services, roles, query limits) applies to DICOMweb requests; without one, "
        "DICOMweb grants nothing.",
    )
    web_roles: dict[str, list[str]] = Field(
        default_factory=dict,
        description='DICOMweb token roles and their services as JSON, e.g. {"Radiologist": '
        '["find", "get", "store"], "Clerk": ["find"]}: the rule of WEB_POLICY_ENTRY when the '
        "policy file has no table for it (as a Key Vault entry's tags are a certificate's).",
    )
    web_cors_origins: str = Field(
        "", description="Origins (comma-separated, e.g. https://viewer.example.org) whose "
        "browser scripts may call DICOMweb (CORS); empty: none.",
    )
    web_proxy_hops: int = Field(
        0, ge=0, le=16, description="HTTP proxies in front of 'mimic web' that append the "
        "client's address to X-Forwarded-For (1 behind Container Apps' ingress): the "
        "client is that many entries from the right, for the console's per-address limits "
        "and the audit trail; 0: the connection's own address.",
    )
    web_base_url: str | None = Field(
        None, description="The public URL of 'mimic web' (https://host), used in the bulk "
        "data URIs of metadata answers (default: the request's own).",
    )
    web_kept_copies_bytes: int = Field(
        512 * 1024 * 1024, ge=0, description="Disk (in SPOOL_DIR) each 'mimic web' process "
        "may give to verified copies of large or Deflated objects, kept five minutes after "
        "their last use so that a viewer's next frames of the same object are not read and "
        "checked from the store again; 0: every request makes its own copy.",
    )
    web_stow_memory_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="Memory that the parts of all STOW-RS requests "
        "of one 'mimic web' process may hold together (each part up to 8 MiB); past it, "
        "a part is spooled to SPOOL_DIR from its data set's first byte. 0: every part is "
        "spooled.",
    )
    # -- the operator console of `mimic web` (web/console/) ---------------------------------
    web_oidc_client_id: str | None = Field(
        None, description="The console's application (client) ID at the OIDC issuer "
        "(MIMIC_OIDC_ISSUER, e.g. Entra ID); ID tokens must name it as audience. Unset: "
        "no console sign-in (the console answers 503).",
    )
    web_oidc_client_secret: str | None = Field(
        None, description="Client secret for the token endpoint (a confidential client); "
        "unset: a public client, protected by PKCE alone.", repr=False,
    )
    web_oidc_redirect_uri: str | None = Field(
        None, description="The redirect URI registered at the issuer "
        "(https://HOST/auth/callback); unset: derived from the request's own URL.",
    )
    web_oidc_scopes: str = Field(
        "openid profile", description="Scopes the console asks for at sign-in."
    )
    web_operator_roles: str = Field(
        "MimicOperator", description="Token roles (comma-separated) that make a console "
        "user an operator: studies, modalities, live associations, audit trail.",
    )
    web_viewer_roles: str = Field(
        "MimicViewer", description="Token roles (comma-separated) that may use the console's "
        "study pages only.",
    )
    web_session_key: str | None = Field(
        None, description="Secret that signs console session cookies (32+ characters); "
        "unset: a random key per process, so sessions end when it restarts and do not "
        "span replicas.", repr=False,
    )
    web_session_seconds: float = Field(
        8 * 3600.0, gt=0, le=7 * 86400, description="How long a console session lasts."
    )
    web_serve_status_url: str = Field(
        "http://127.0.0.1:8080", description="The ops listener of `mimic serve` whose "
        "/status/associations the console's 'now' page shows.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level; patient data appears only at DEBUG."
    )
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then ``MIMIC_*`` variables, then the settings file, then the defaults."""
        path = getattr(init_settings, "init_kwargs", {}).get("config_file") or os.environ.get(
            "MIMIC_CONFIG_FILE"
        )
        if not path:
            return init_settings, env_settings
        if not Path(path).is_file():
            raise ValueError(f"settings file {path} does not exist")
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, Path(path))

    @field_validator("*", mode="after")
    @classmethod
    def _finite_and_waitable(cls, value: Any, info: ValidationInfo) -> Any:
        """Every number of seconds (and every float) finite and within what poll() and
        select() take (a C int of milliseconds): past it, the watcher's thread died at its
        first wait (revocations unseen, SIGHUP included) or every handshake and association
        failed while the server said it was ready."""
        if isinstance(value, float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"{info.field_name} must be a finite number")
            if value > MAX_SECONDS:
                raise ValueError(f"{info.field_name} must be at most {MAX_SECONDS:g} seconds")
        return value

    @field_validator("database_url")
    @classmethod
    def _usable_database_url(cls, value: str | None) -> str | None:
        """A URL the engine can be made from; a password with an '@' not percent-encoded
        made its tail the host name, which the driver's error then printed (a secret on
        stderr). The value is never quoted back."""
        if not value:
            return None  # empty (an env file's MIMIC_DATABASE_URL=): unset, as before
        from sqlalchemy.engine import make_url  # not at import: the supervisor never needs it

        try:
            url = make_url(value)
        except Exception:  # never quote the value: it may hold a password
            raise ValueError("the database URL cannot be read (a password with '@', ':' "
                             "or '/' must be percent-encoded)") from None
        if url.host is not None and "@" in url.host:
            raise ValueError("the database URL's host holds an '@': percent-encode the "
                             "password ('@' is %40)")
        return value

    @model_validator(mode="after")
    def _batches_within_the_pool(self) -> Settings:
        """On PostgreSQL each group-commit batch in flight holds one of the process's pooled
        connections: as many batches as connections left none for a C-STORE's own
        transaction, a C-FIND or an audit record, which then waited for a batch's."""
        in_flight = self.group_commit_in_flight
        if (in_flight is not None and self.database_url
                and self.database_url.startswith("postgresql")
                and in_flight >= self.database_pool_size):
            raise ValueError(
                f"group_commit_in_flight ({in_flight}) must be below database_pool_size "
                f"({self.database_pool_size}): each batch in flight holds a connection")
        return self

    @field_validator("ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        sendable = sendable_ae_title(value)
        if sendable is None:
            raise ValueError("an AE title is 1 to 16 ASCII characters, no backslash")
        return sendable

    @field_validator("web_base_url", "web_oidc_redirect_uri", "web_serve_status_url")
    @classmethod
    def _absolute_web_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        """An absolute http(s) URL with a host, checked at start: ``viewer.example.org``
        made bulk data URIs relative to the viewer's own page, ``127.0.0.1:8080`` a console
        page that failed on every load ("unknown url type"), and ``/auth/callback`` a
        sign-in the issuer refused, each with no word at start."""
        if value is None or (not value.strip() and info.field_name != "web_serve_status_url"):
            return None
        value = value.strip()
        parts = urllib.parse.urlsplit(value)
        try:
            _ = parts.port  # raises for a port that is not one
        except ValueError:
            raise ValueError(f"{info.field_name}: the port of {value!r} is not a port "
                             "number") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{info.field_name} must be an absolute URL: http:// or "
                             f"https://, then the host (got {value!r})")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{info.field_name} must not carry a user name or password")
        if parts.fragment or (parts.query and info.field_name != "web_oidc_redirect_uri"):
            raise ValueError(f"{info.field_name} must have no "
                             f"{'fragment (#)' if parts.fragment else 'query (?)'}")
        return value

    @field_validator("web_cors_origins")
    @classmethod
    def _cors_origins(cls, value: str) -> str:
        """Each origin as a browser sends it in ``Origin`` (RFC 6454: scheme://host[:port],
        nothing after), or ``*``: the CORS middleware compares the header with each entry
        as text, and ``https://viewer.example.org/`` or a path after the host matched no
        request, every viewer's call refused with no word of why. Scheme and host are put
        in lower case, a final ``/`` and a default port dropped, as a browser sends them;
        any other path, a query or a user name is refused, as is a pattern
        (``https://*.example.org``), which no Origin equals either.

        A scheme other than http(s) is kept, its host as written: an app's web view sends
        its own (``capacitor://localhost``, ``tauri://localhost``), as an extension does
        (``chrome-extension://ID``), and those frameworks tell the server to allow exactly
        that text."""
        origins = []
        for entry in (e.strip() for e in value.split(",")):
            if not entry or entry == "*":
                if entry:
                    origins.append(entry)
                continue
            if "*" in entry:  # no Origin is a pattern: each entry is compared as text
                raise ValueError(f"web_cors_origins: {entry!r} is a pattern, which no "
                                 "browser's Origin equals: name each origin (or *)")
            parts = urllib.parse.urlsplit(entry)
            try:
                port = parts.port
            except ValueError:
                port = -1
            scheme, host = parts.scheme.lower(), parts.hostname
            if (not scheme or not host or port == -1
                    or parts.path not in ("", "/") or parts.query or parts.fragment
                    or parts.username is not None or parts.password is not None):
                raise ValueError(f"web_cors_origins: {entry!r} is not an origin: "
                                 "scheme://host[:port], nothing after the host (or *)")
            origins.append(origin_of(entry) or entry if scheme in ("http", "https")
                           else f"{scheme}://{parts.netloc}")
        return ",".join(origins)

    @field_validator("keyvault_url")
    @classmethod
    def _https_vault(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith("https://"):
            raise ValueError("the Key Vault URL must start with https://")
        return value or None

    @property
    def web_cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.web_cors_origins.split(",") if o.strip()]

    @property
    def certificate_dir(self) -> Path:
        return (self.cert_dir or self.data_dir / "certs").resolve()

    @property
    def index_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @property
    def audit_in_index(self) -> bool:
        """Whether the audit trail is the index's ``audit_events`` table (a server database:
        a replica's disk is not durable), written in each C-STORE's index transaction,
        rather than the JSON-lines file in DATA_DIR (a SQLite index), which keeps journals
        for the records of associations whose end never comes. One decision for every
        process: the archive, ``mimic web``, the supervisor's recovery, ``mimic audit``."""
        return not self.index_url.startswith("sqlite")

    @property
    def uses_blob_storage(self) -> bool:
        return bool(self.blob_account_url or self.blob_connection_string)

    @property
    def objects_dir(self) -> Path:
        return (self.data_dir / "objects").resolve()

    @property
    def spool_path(self) -> Path:
        return (self.spool_dir or self.data_dir / "spool").resolve()

    @property
    def audit_path(self) -> Path:
        return (self.data_dir / "audit.jsonl").resolve()

    @property
    def audit_journal_path(self) -> Path:
        """The journals of the open associations' received instances, beside the file
        trail whose records they stand in for (``security/audit_journal.py``)."""
        return (self.data_dir / "audit-journal").resolve()
