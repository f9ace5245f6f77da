"""The local things the settings name, checked before a server listens.

A directory, a file or a URL that a setting names wrongly must stop ``mimic serve`` and
``mimic web`` at once with one line naming the setting (exit code 2), not surface as a
traceback, nor at the first clinician's request or the first audit message. Only what is on
this machine is looked at: an issuer or an audit repository that cannot be reached at start
is a runtime condition (readiness, metrics), since it may come back.

Light on purpose: the supervisor of workers runs these checks, and must not import the
DICOM stack or the archive (``tests/unit/test_start_imports.py``).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import urlsplit

from mimic_server.config import Settings
from mimic_server.errors import ConfigurationError
from mimic_server.storage.anonymous import open_anonymous


def check_serve(settings: Settings) -> None:
    """What ``mimic serve`` reads from this machine: everything of :func:`check_web`, and
    the user file of User Identity Negotiation."""
    check_web(settings)
    check_users_file(settings)


def check_web(settings: Settings) -> None:
    """What ``mimic web`` reads from this machine."""
    check_data_dir(settings)
    check_spool_dir(settings)
    check_oidc(settings)
    check_audit_repository(settings)


def check_data_dir(settings: Settings) -> None:
    """``MIMIC_DATA_DIR`` exists as a directory (made when missing, for its owner alone):
    everything embedded lives under it, and each front door creates it first."""
    try:
        make_data_dir(settings.data_dir)
    except OSError as exc:
        raise ConfigurationError(
            f"MIMIC_DATA_DIR {settings.data_dir}: cannot be created ({_reason(exc)})"
        ) from exc


#: The mode of a data directory MIMIC makes: its owner's alone.
DATA_DIR_MODE = 0o700


def make_data_dir(path: Path) -> None:
    """Make ``MIMIC_DATA_DIR`` when missing, readable by its owner alone. Objects, the
    SQLite index and the audit trail under it hold patient data, and their files follow
    the umask (0644 under the usual 022, so that a group or a backup account may be given
    them): a directory made 0755 under that umask let every local account read every
    image and name. One that exists is left as its operator made it."""
    path.mkdir(parents=True, exist_ok=True, mode=DATA_DIR_MODE)


def check_spool_dir(settings: Settings) -> None:
    """``MIMIC_SPOOL_DIR`` (default DATA_DIR/spool) takes an anonymous file, as a large
    C-STORE or STOW-RS part makes one there: otherwise the first large object was refused
    (0xA700, 503) while the server said it was ready."""
    path = settings.spool_path
    _usable_directory(path, "MIMIC_SPOOL_DIR")
    try:
        probe, _ = open_anonymous(path)
    except OSError as exc:
        raise ConfigurationError(
            f"MIMIC_SPOOL_DIR {path}: cannot be written ({_reason(exc)})"
        ) from exc
    probe.close()


def check_users_file(settings: Settings) -> None:
    """``MIMIC_USERS_FILE`` reads as a user file: it was first read at the first username
    and passcode, whose association a typo then rejected."""
    path = settings.users_file
    if path is None:
        return
    from mimic_server.security.users import UsersFileError, parse_users

    _readable_file(path, "MIMIC_USERS_FILE")
    try:
        parse_users(path.read_text(encoding="utf-8"), str(path))
    except UsersFileError as exc:  # names the file and the place, never a hash
        raise ConfigurationError(f"MIMIC_USERS_FILE {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"MIMIC_USERS_FILE {path}: not UTF-8 text") from exc
    except OSError as exc:
        raise ConfigurationError(
            f"MIMIC_USERS_FILE {path}: cannot be read ({_reason(exc)})"
        ) from exc


def check_oidc(settings: Settings) -> None:
    """The OIDC issuer's local settings, when one is set (its keys are fetched later): an
    issuer that is not an https URL refused every token, at the first one."""
    if not settings.oidc_issuer:
        return
    value = settings.oidc_issuer
    try:
        issuer = urlsplit(value)
        usable = (issuer.scheme == "https" and bool(issuer.hostname)
                  and not any(c.isspace() for c in value))
        issuer.port  # noqa: B018  # a port that is not a number raises
    except ValueError:
        usable = False
    if not usable:  # not quoted back: the line names the setting, the operator has it
        raise ConfigurationError(
            "MIMIC_OIDC_ISSUER must be an https:// URL with a host name "
            "(e.g. https://login.microsoftonline.com/TENANT/v2.0)"
        )
    oidc_ca_context(settings)


def oidc_ca_context(settings: Settings) -> ssl.SSLContext | None:
    """The trust anchors for the issuer's HTTPS (``MIMIC_OIDC_CA_FILE``), else None (the
    system's). Here rather than beside the validator so that the supervisor can check it."""
    path = settings.oidc_ca_file
    return None if path is None else _ca_context(path, "MIMIC_OIDC_CA_FILE")


def check_audit_repository(settings: Settings) -> None:
    """``MIMIC_AUDIT_SYSLOG_CA_FILE`` holds PEM CAs. Beside the server's own CAs a file
    without any was taken silently, and every audit message then failed the repository's
    certificate check and waited in the queue until dropped."""
    path = settings.audit_syslog_ca_file
    if settings.audit_syslog_host and path is not None:
        _ca_context(path, "MIMIC_AUDIT_SYSLOG_CA_FILE")


def _ca_context(path: Path, variable: str) -> ssl.SSLContext:
    _readable_file(path, variable)
    try:
        return ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"{variable} {path}: not PEM CA certificates ({exc.reason or exc})"
        ) from exc
    except OSError as exc:
        raise ConfigurationError(f"{variable} {path}: cannot be read ({_reason(exc)})") from exc


def _readable_file(path: Path, variable: str) -> None:
    if not path.exists():
        raise ConfigurationError(f"{variable} {path}: does not exist")
    if not path.is_file():
        raise ConfigurationError(f"{variable} {path}: is not a file")


def _usable_directory(path: Path, variable: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"{variable} {path}: cannot be created ({_reason(exc)})"
        ) from exc


def _reason(exc: OSError) -> str:
    """The error without the path (the line names it once) nor a traceback."""
    return exc.strerror or type(exc).__name__
