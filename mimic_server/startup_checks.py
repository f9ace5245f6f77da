"""The local things the settings name, checked before a server listens.

A directory, a file or a URL that a setting names wrongly must stop ``mimic serve`` and
``mimic web`` at once with one line naming the setting (exit code 2), not surface as a
traceback, nor at the first clinician's request. Only what is on this machine is looked at:
an issuer or an audit repository that cannot be reached at start is a runtime condition
(readiness, metrics), since it may come back.

Light on purpose: the supervisor of workers runs these checks, and must not import the
DICOM stack or the archive (``tests/unit/test_start_imports.py``).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from mimic_server.config import Settings
from mimic_server.errors import ConfigurationError


def check_data_dir(settings: Settings) -> None:
    """``MIMIC_DATA_DIR`` exists as a directory (made when missing): everything embedded
    lives under it, and each front door creates it first."""
    _usable_directory(settings.data_dir, "MIMIC_DATA_DIR")


def check_oidc(settings: Settings) -> None:
    """The OIDC issuer's local settings, when one is set (its keys are fetched later)."""
    if settings.oidc_issuer:
        oidc_ca_context(settings)


def oidc_ca_context(settings: Settings) -> ssl.SSLContext | None:
    """The trust anchors for the issuer's HTTPS (``MIMIC_OIDC_CA_FILE``), else None (the
    system's). Here rather than beside the validator so that the supervisor can check it."""
    path = settings.oidc_ca_file
    if path is None:
        return None
    _readable_file(path, "MIMIC_OIDC_CA_FILE")
    try:
        return ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"MIMIC_OIDC_CA_FILE {path}: not PEM CA certificates ({exc.reason or exc})"
        ) from exc
    except OSError as exc:
        raise ConfigurationError(
            f"MIMIC_OIDC_CA_FILE {path}: cannot be read ({_reason(exc)})"
        ) from exc


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
