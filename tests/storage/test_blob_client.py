"""The Blob Storage client's connections: a pool as large as the concurrency it serves, and the
environment read once instead of on every request (same answers as ``requests`` would give).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from mimic_server.config import Settings
from mimic_server.errors import ConfigurationError
from mimic_server.storage import azure_blob
from mimic_server.storage.azure_blob import (
    AzureBlobStore,
    blob_service_client,
    ca_bundle,
    uses_environment_settings,
)
from tests.azurite import Azurite


def _pool(service: Any, url: str) -> Any:
    """The urllib3 pool the SDK's requests session uses for ``url``."""
    session = service._pipeline._transport.session
    return session.get_adapter(url).poolmanager.connection_from_url(url)


def test_concurrent_puts_reuse_a_pool_as_large_as_the_concurrency(azurite: Azurite) -> None:
    """16 puts at once, twice: 16 connections at most, all kept and reused. (The SDK's own
    pool keeps 10: the 11th concurrent put opened a connection and threw it away.)"""
    service = blob_service_client(connection_string=azurite.connection_string, retries=0,
                                  timeout=10, connections=16)
    store = AzureBlobStore(service, f"c{uuid.uuid4().hex[:20]}")
    data = b"x" * 40_000
    sha = hashlib.sha256(data).hexdigest()
    start = threading.Barrier(16)
    errors: list[BaseException] = []

    def put(i: int, round_: int) -> None:
        try:
            start.wait(10)
            store.put(f"k/{round_}/{i}.dcm", [data], sha)
        except BaseException as exc:  # reported below
            errors.append(exc)

    for round_ in range(2):
        threads = [threading.Thread(target=put, args=(i, round_)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors
    assert sorted(store.iter_keys()) == sorted(f"k/{r}/{i}.dcm" for r in range(2)
                                               for i in range(16))
    pool = _pool(service, f"http://127.0.0.1:{azurite.port}/")
    assert pool.num_connections <= 16
    assert pool.pool.qsize() == 16  # every connection went back to the pool


def test_connections_must_be_positive() -> None:
    with pytest.raises(Exception, match="at least 1"):
        blob_service_client(connection_string="UseDevelopmentStorage=true", connections=0)


def test_pool_size_defaults_to_max_associations(monkeypatch: pytest.MonkeyPatch) -> None:
    """``MIMIC_BLOB_CONNECTIONS`` unset: one connection per association the server allows."""
    from mimic_server import backends

    seen: list[int] = []

    def fake_client(**kwargs: Any) -> Any:
        seen.append(kwargs["connections"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(azure_blob, "blob_service_client", fake_client)
    for settings, expected in (
        (Settings(blob_connection_string="x", max_associations=7), 7),
        (Settings(blob_connection_string="x", max_associations=7, blob_connections=50), 50),
    ):
        with pytest.raises(RuntimeError, match="stop here"):
            backends._blob_store(settings)
        assert seen.pop() == expected


def test_a_limit_past_what_one_blob_holds_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A blob commits at most 50,000 blocks, 4 MiB each here: a ``MIMIC_MAX_OBJECT_BYTES``
    above that let a C-STORE run some 195 GiB into its upload before the service refused
    a block (0xA700). Refused at start, one line; a store that only reads (``mimic
    reconcile``) stores nothing and opens as before."""
    from mimic_server import backends
    from mimic_server.errors import ConfigurationError
    from mimic_server.storage.azure_blob import MAX_BLOCKS, largest_data_set

    def fake_client(**kwargs: Any) -> Any:
        raise RuntimeError("went on to open the store")

    monkeypatch.setattr(azure_blob, "blob_service_client", fake_client)
    largest = largest_data_set()
    assert largest == MAX_BLOCKS * 4 * 1024 * 1024 - 1024 * 1024
    with pytest.raises(RuntimeError, match="went on"):
        backends._blob_store(Settings(blob_connection_string="x", max_object_bytes=largest))
    too_large = Settings(blob_connection_string="x", max_object_bytes=largest + 1)
    with pytest.raises(ConfigurationError, match=r"MIMIC_MAX_OBJECT_BYTES \(\d+\) is larger "
                       r"than one blob holds \(50,000 blocks of 4 MiB"):
        backends._blob_store(too_large)
    with pytest.raises(RuntimeError, match="went on"):
        backends._blob_store(too_large, writable=False)


@pytest.mark.parametrize("env", [
    {"MIMIC_BLOB_CONNECTION_STRING": "SharedAccessSignature=sv=2022&sig=TAILSECRET"},
    {"MIMIC_BLOB_ACCOUNT_URL": "https://[TAILSECRET"},
], ids=["connection-string", "account-url"])
@pytest.mark.parametrize("command", ["serve", "reconcile"])
def test_a_malformed_blob_setting_is_one_line(
        tmp_path: Path, command: str, env: dict[str, str]) -> None:
    """The SDK's ValueError for a connection string it cannot parse, or an account URL it
    cannot split, went up as a traceback: ``serve`` exit 1, ``reconcile`` 1 (which means
    drift). Now the one line of any other unusable setting, exit 2, the value (which may
    hold a SAS token or account key) not quoted."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MIMIC_")}
    clean.update({"MIMIC_OPS_PORT": "0", "MIMIC_PORT": "0", "MIMIC_HOST": "127.0.0.1",
                  "MIMIC_WORKERS": "1", "MIMIC_DATA_DIR": str(tmp_path), **env})
    result = subprocess.run([sys.executable, "-m", "mimic_server", command],
                            capture_output=True, text=True, timeout=60, env=clean)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert lines in (["mimic: blob connection string unusable: malformed or missing the "
                      "account's endpoint or name"],
                     ["mimic: blob account URL unusable: expected "
                      "https://<account>.blob.core.windows.net"]), result.stderr
    assert "Traceback" not in result.stderr
    assert "TAILSECRET" not in result.stderr + result.stdout


def test_blob_connections_setting_is_validated() -> None:
    assert Settings().blob_connections is None
    with pytest.raises(ValueError):
        Settings(blob_connections=0)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"PATH": "/bin", "REQUESTS_CA_BUNDLE": "/etc/ca.pem"}, False),
        ({"HTTPS_PROXY": "http://proxy:3128"}, True),
        ({"http_proxy": "http://proxy:3128"}, True),
        ({"no_proxy": "localhost"}, True),
        ({"ALL_PROXY": ""}, False),
        ({"NETRC": "/run/secrets/netrc"}, True),
    ],
)
def test_environment_is_consulted_only_when_it_configures_something(
    environ: dict[str, str], expected: bool, tmp_path: Path
) -> None:
    assert uses_environment_settings(environ, home=tmp_path) is expected


def test_a_netrc_file_keeps_the_environment_settings(tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text("machine example login a password b\n")
    assert uses_environment_settings({}, home=tmp_path) is True


def test_ca_bundle_is_chosen_as_requests_chooses_it() -> None:
    assert ca_bundle({}) is True
    assert ca_bundle({"CURL_CA_BUNDLE": "/c.pem"}) == "/c.pem"
    assert ca_bundle({"REQUESTS_CA_BUNDLE": "/r.pem", "CURL_CA_BUNDLE": "/c.pem"}) == "/r.pem"


def test_client_verifies_against_the_bundle_of_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Reading the environment once must not lose the CA bundle it names."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy", "NO_PROXY", "no_proxy", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    service = blob_service_client(connection_string="UseDevelopmentStorage=true")
    transport = service._pipeline._transport
    assert transport.session.trust_env is False
    assert transport.connection_config.verify == "/etc/ssl/certs/ca-certificates.crt"


def test_a_store_that_only_reads_opens_with_a_read_and_list_credential(azurite: Azurite) -> None:
    """``mimic reconcile`` without ``--fix`` only reads: with an identity that may read and
    list (Storage Blob Data Reader; an account SAS ``rl`` here) it opens the container. The
    store tried to create the container first, and the service's 403 ended it (exit 2,
    'blob container unusable')."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    from mimic_server.backends import open_object_store
    from mimic_server.errors import ConfigurationError
    from tests.azurite import ACCOUNT, ACCOUNT_KEY

    container = f"ro{uuid.uuid4().hex[:12]}"
    AzureBlobStore(blob_service_client(connection_string=azurite.connection_string),
                   container).put("ab/1.2/1.3/1.4.0000000000000000.dcm", [b"x"], "00")
    sas = generate_account_sas(
        ACCOUNT, ACCOUNT_KEY, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, list=True), datetime.now(UTC) + timedelta(hours=1))
    reader = Settings(blob_connection_string=(
        f"DefaultEndpointsProtocol=http;BlobEndpoint=http://127.0.0.1:{azurite.port}/"
        f"{ACCOUNT};SharedAccessSignature={sas}"), blob_container=container)

    store = open_object_store(reader, writable=False)

    assert list(store.iter_keys()) == ["ab/1.2/1.3/1.4.0000000000000000.dcm"]
    with pytest.raises(ConfigurationError):  # a store that writes still creates it
        open_object_store(reader)


def test_a_refused_start_is_one_line_with_the_service_error_code(azurite: Azurite) -> None:
    """A wrong account key at start: the SDK's text of the 403 (request id, time, the XML
    body repeated) made the start's one-line answer a dozen lines. Now one line: the
    service's error code and the first line of its message."""
    from tests.azurite import ACCOUNT_KEY

    wrong = azurite.connection_string.replace(ACCOUNT_KEY, "AAAA" + ACCOUNT_KEY[4:])
    service = blob_service_client(connection_string=wrong, retries=0)
    with pytest.raises(ConfigurationError) as caught:
        AzureBlobStore(service, f"c{uuid.uuid4().hex}")
    said = str(caught.value)
    assert "\n" not in said, said
    assert said.startswith("blob container 'c"), said
    assert ": AuthorizationFailure (Server failed to authenticate the request." in said, said
