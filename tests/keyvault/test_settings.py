"""The Key Vault settings: environment, validation, and their generated CLI flags."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from mimic_server.cli import main
from mimic_server.config import Settings


def test_keyvault_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIMIC_KEYVAULT_URL", "https://clinic.vault.azure.net")
    monkeypatch.setenv("MIMIC_KEYVAULT_SERVER_CERT", "archive-tls")
    settings = Settings()
    assert settings.keyvault_url == "https://clinic.vault.azure.net"
    assert settings.keyvault_server_cert == "archive-tls"
    assert settings.keyvault_verify_challenge_resource is True  # production default


def test_defaults_keep_the_directory_source() -> None:
    assert Settings().keyvault_url is None


def test_a_plain_http_vault_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="https://"):
        Settings(keyvault_url="http://clinic.vault.azure.net")


def test_every_keyvault_setting_is_a_serve_flag() -> None:
    text = CliRunner().invoke(main, ["serve", "--help"]).output
    for flag in ("--keyvault-url", "--keyvault-server-cert",
                 "--keyvault-verify-challenge-resource"):
        assert flag in text
