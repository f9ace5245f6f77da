"""KeyVaultSource against the Key Vault double, through the real azure-keyvault clients."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.identity import DefaultAzureCredential
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mimic_server.certs import CertBundle
from mimic_server.certs.keyvault import KeyVaultSource
from mimic_server.certs.watcher import CertificateWatcher, warn_expiring
from mimic_server.errors import ConfigurationError
from mimic_server.net.tls import server_context
from tests.keyvault.conftest import Pki, pem
from tests.keyvault_double import PEM, PKCS12, KeyVaultDouble
from tests.support import free_port

CLIENT = {"mimic-trust": "client"}


def _source(vault: KeyVaultDouble, server: str = "mimic-server") -> KeyVaultSource:
    return KeyVaultSource(
        vault.url, DefaultAzureCredential(), server, verify_challenge_resource=False
    )


def _with_server(vault: KeyVaultDouble, pki: Pki, content_type: str = PKCS12) -> str:
    _, _, cert, key = pki.issue("server")
    return vault.import_certificate("mimic-server", cert, key, chain=[pki.ca],
                                    content_type=content_type)


def _a_and_b_trusted(vault: KeyVaultDouble, pki: Pki) -> tuple[KeyVaultSource, Any]:
    """A source whose first load trusted entries a and b; and a's certificate."""
    _with_server(vault, pki)
    a = pki.issue("a")[2]
    vault.set_secret("a", pem(a), tags=CLIENT)
    vault.set_secret("b", pem(pki.issue("b")[2]), tags=CLIENT)
    source = _source(vault)
    assert _names(source.load()) == {"a", "b"}
    return source, a


def _names(bundle: CertBundle) -> set[str]:
    return {t.name for t in bundle.trusted}


def test_lists_every_page_and_trusts_only_tagged_entries(vault: KeyVaultDouble, pki: Pki) -> None:
    _with_server(vault, pki)
    for i in range(5):  # page size 2: three pages of secrets
        tags = {**CLIENT, "mimic-ae-titles": f"CT{i}, MR{i}"} if i % 2 == 0 else None
        vault.set_secret(f"client{i}", pem(pki.issue(f"client{i}")[2]), tags=tags)
    vault.set_secret("db-password", "not a certificate")
    vault.set_secret("partner-ca", pem(pki.ca), tags={"mimic-trust": "ca"})
    _, _, cert, key = pki.issue("kvcert")  # a client imported as a Key Vault certificate
    vault.import_certificate("kv-client", cert, key, tags={"mimic-trust": "Client"})
    vault.set_secret("typo", pem(pki.issue("typo")[2]), tags={"mimic-trust": "clients"})

    bundle = _source(vault).load()

    assert _names(bundle) == {"client0", "client2", "client4", "partner-ca", "kv-client"}
    by_name = {t.name: t for t in bundle.trusted}
    assert by_name["client2"].ae_titles == {"CT2", "MR2"}
    assert by_name["client2"].kind == "client" and by_name["partner-ca"].kind == "ca"
    assert by_name["kv-client"].certificate == cert
    assert vault.count(prefix="/secrets") - vault.count(prefix="/secrets/") >= 3  # paged
    assert vault.count(prefix="/secrets/db-password") == 0  # untagged secrets are never read


def test_disabled_expired_and_not_yet_valid_are_not_trusted(
    vault: KeyVaultDouble, pki: Pki
) -> None:
    _with_server(vault, pki)
    now = datetime.now(UTC)
    vault.set_secret("good", pem(pki.issue("good")[2]), tags=CLIENT)
    vault.set_secret("off", pem(pki.issue("off")[2]), tags=CLIENT, enabled=False)
    vault.set_secret("over", pem(pki.issue("over")[2]), tags=CLIENT,
                     expires=now - timedelta(hours=1))
    vault.set_secret("early", pem(pki.issue("early")[2]), tags=CLIENT,
                     not_before=now + timedelta(hours=1))
    expired = pki.issue("x509old", not_before=now - timedelta(days=10),
                        not_after=now - timedelta(days=1))[2]
    vault.set_secret("x509old", pem(expired), tags=CLIENT)
    _, _, cert, key = pki.issue("kvoff")
    vault.import_certificate("kv-off", cert, key, tags=CLIENT, enabled=False)

    bundle = _source(vault).load()

    assert _names(bundle) == {"good", "x509old"}
    assert {t.name for t in bundle.currently_valid()} == {"good"}  # the x509 window too


@pytest.mark.parametrize("content_type", [PKCS12, PEM])
def test_server_identity_from_the_certificate_secret(
    vault: KeyVaultDouble, pki: Pki, content_type: str
) -> None:
    _, _, cert, key = pki.issue("server")
    vault.import_certificate("mimic-server", cert, key, chain=[pki.ca], content_type=content_type)

    bundle = _source(vault).load()

    chain = bundle.server_chain_pem.decode()
    assert chain.index(pem(cert)) == 0 and pem(pki.ca) in chain  # leaf first, chain included
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert spki in _public_keys(bundle)
    server_context(bundle)  # key and chain are usable by the listener


def _public_keys(bundle: CertBundle) -> set[bytes]:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(bundle.server_key_pem, None)
    return {key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)}


def test_version_lists_only_and_load_fetches_only_what_changed(
    vault: KeyVaultDouble, pki: Pki
) -> None:
    _with_server(vault, pki)
    for name in ("a", "b", "c"):
        vault.set_secret(name, pem(pki.issue(name)[2]), tags=CLIENT)
    source = _source(vault)
    first = source.version()
    source.load()
    gets = vault.count(prefix="/secrets/") + vault.count(prefix="/certificates/")

    assert source.version() == first  # nothing changed: same token...
    assert vault.count(prefix="/secrets/") + vault.count(prefix="/certificates/") == gets

    vault.set_secret("b", pem(pki.issue("b2")[2]), tags=CLIENT)  # a new version of b
    assert source.version() != first
    bundle = source.load()
    # ...and a change costs one read: b's new version; not a, c or the server certificate.
    assert vault.count(prefix="/secrets/") + vault.count(prefix="/certificates/") == gets + 1
    assert vault.count(prefix="/secrets/b/") == 2
    assert {t.common_name for t in bundle.trusted} == {"a", "b2", "c"}


def test_tag_and_enabled_edits_change_the_version(vault: KeyVaultDouble, pki: Pki) -> None:
    _with_server(vault, pki)
    vault.set_secret("a", pem(pki.issue("a")[2]), tags=CLIENT)
    source = _source(vault)
    v1 = source.version()
    vault.update("secrets", "a", tags={**CLIENT, "mimic-ae-titles": "CT1"})
    v2 = source.version()
    assert v2 != v1
    assert next(iter(source.load().trusted)).ae_titles == {"CT1"}
    vault.update("secrets", "a", enabled=False)
    assert source.version() != v2
    assert source.load().trusted == ()


def test_throttling_is_retried_briefly_then_given_up(vault: KeyVaultDouble, pki: Pki) -> None:
    _with_server(vault, pki)
    source = _source(vault)
    source.version()  # past the challenge

    vault.fail_next(429, times=1, retry_after=1)
    started = time.monotonic()
    source.version()  # the SDK waited Retry-After once and succeeded
    assert 0.9 <= time.monotonic() - started < 10

    vault.fail_next(429, times=3, retry_after=3600)  # more than the retry budget
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=r"Key Vault https://127\.0\.0\.1.*429"):
        source.version()
    assert time.monotonic() - started < 20  # Retry-After is capped: no hour-long hang
    source.version()  # and the vault is usable again once it stops throttling


def test_outage_keeps_the_last_good_set_via_the_watcher(vault: KeyVaultDouble, pki: Pki) -> None:
    _with_server(vault, pki)
    vault.set_secret("a", pem(pki.issue("a")[2]), tags=CLIENT)
    applied: list[CertBundle] = []
    watcher = CertificateWatcher(_source(vault), 3600, applied.append)
    assert watcher.poll() and _names(applied[-1]) == {"a"}

    vault.down = True  # every request 503
    vault.set_secret("b", pem(pki.issue("b")[2]), tags=CLIENT)
    assert not watcher.poll() and not watcher.poll()
    assert watcher.failures == 2 and len(applied) == 1  # nothing applied, last good stays

    vault.fail_next(500, times=1)  # one more 5xx: the SDK retry absorbs it
    vault.down = False
    assert watcher.poll() and _names(applied[-1]) == {"a", "b"}


def test_missing_or_disabled_server_certificate_is_a_configuration_error(
    vault: KeyVaultDouble, pki: Pki
) -> None:
    with pytest.raises(ConfigurationError, match="no certificate named 'mimic-server'"):
        _source(vault).load()
    _with_server(vault, pki)
    vault.update("certificates", "mimic-server", enabled=False)
    with pytest.raises(ConfigurationError, match="disabled"):
        _source(vault).load()


def test_unreachable_vault_fails_fast_naming_the_vault(vault: KeyVaultDouble) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    source = KeyVaultSource(url, DefaultAzureCredential(), "mimic-server",
                            verify_challenge_resource=False)
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=f"Key Vault {url}"):
        source.version()
    assert time.monotonic() - started < 15


def test_challenge_resource_check_is_on_by_default(vault: KeyVaultDouble, pki: Pki) -> None:
    _with_server(vault, pki)
    source = KeyVaultSource(vault.url, DefaultAzureCredential(), "mimic-server")
    with pytest.raises(ConfigurationError, match="challenge resource"):
        source.version()


def test_expiring_server_certificate_is_logged(
    vault: KeyVaultDouble, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, cert, key = pki.issue("server", not_after=datetime.now(UTC) + timedelta(days=5))
    vault.import_certificate("mimic-server", cert, key)
    soon = pki.issue("soon", not_after=datetime.now(UTC) + timedelta(days=3))[2]
    vault.set_secret("soon", pem(soon), tags=CLIENT)
    with caplog.at_level(logging.WARNING):
        warn_expiring(_source(vault).load())
    messages = [r.getMessage() for r in caplog.records]
    assert "server certificate expires soon" in messages
    assert "trusted certificate expires soon" in messages


def test_an_unusable_trusted_entry_is_skipped_not_fatal(vault: KeyVaultDouble, pki: Pki) -> None:
    _with_server(vault, pki)
    vault.set_secret("good", pem(pki.issue("good")[2]), tags=CLIENT)
    vault.set_secret("garbage", "-----BEGIN NONSENSE-----", tags=CLIENT)
    assert _names(_source(vault).load()) == {"good"}


def test_a_server_secret_without_a_key_names_vault_and_certificate(
    vault: KeyVaultDouble, pki: Pki
) -> None:
    version = _with_server(vault, pki, content_type=PEM)
    backing = next(v for v in vault.secrets["mimic-server"] if v.version == version)
    backing.value = pem(pki.ca)  # a chain but no private key
    with pytest.raises(ConfigurationError, match=r"Key Vault https://.*'mimic-server'.*not PEM"):
        _source(vault).load()


def test_revoked_entries_for_the_console(vault: KeyVaultDouble, pki: Pki) -> None:
    """Disabled certificates give their public part; a disabled secret is shown only when the
    source read it while it was trusted (Key Vault answers 403 to reading it now)."""
    _with_server(vault, pki)
    _, _, kv_cert, kv_key = pki.issue("kvcert")
    vault.import_certificate("kv-client", kv_cert, kv_key, tags={**CLIENT,
                                                                 "mimic-ae-titles": "CT1"})
    seen = pki.issue("seen")[2]
    vault.set_secret("seen-client", pem(seen), tags=CLIENT)
    vault.set_secret("never-seen", pem(pki.issue("never")[2]), tags=CLIENT, enabled=False)
    vault.set_secret("active", pem(pki.issue("active")[2]), tags=CLIENT)
    source = _source(vault)
    assert source.revoked() == ()  # nothing disabled yet that this source could show
    assert _names(source.load()) == {"kv-client", "seen-client", "active"}

    vault.update("certificates", "kv-client", enabled=False)
    vault.update("secrets", "seen-client", enabled=False)
    revoked = {t.name: t for t in source.revoked()}

    assert set(revoked) == {"kv-client", "seen-client"}
    assert revoked["kv-client"].certificate == kv_cert
    assert revoked["kv-client"].ae_titles == {"CT1"}
    assert revoked["seen-client"].certificate == seen
    assert _names(source.load()) == {"active"}  # revoked entries never join a bundle


@pytest.mark.parametrize("binding", [" , ", "", "CT1,", "A-TITLE-LONGER-THAN-16",
                                     "CT\u00e9", "\uff23\uff34\uff11", "CT\t1"])
def test_an_ae_title_binding_that_cannot_be_read_trusts_nothing(
    vault: KeyVaultDouble, pki: Pki, caplog: pytest.LogCaptureFixture, binding: str
) -> None:
    """Read as no binding, a mistyped tag let the certificate use any calling AE title: the
    entry is not trusted, and that is said at ERROR; the others are."""
    _with_server(vault, pki)
    vault.set_secret("a", pem(pki.issue("a")[2]), tags={**CLIENT, "mimic-ae-titles": binding})
    vault.set_secret("b", pem(pki.issue("b")[2]), tags={**CLIENT, "mimic-ae-titles": "CT1, MR1"})
    with caplog.at_level(logging.ERROR, logger="mimic_server.certs.keyvault"):
        bundle = _source(vault).load()
    assert [(t.name, t.ae_titles) for t in bundle.trusted] == [("b", {"CT1", "MR1"})]
    refused = [r for r in caplog.records if "binding tags" in r.getMessage()]
    assert [r.entry for r in refused] == ["a"]  # type: ignore[attr-defined]


def test_a_server_certificate_that_cannot_be_loaded_holds_no_revocation_back(
    vault: KeyVaultDouble, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """The server certificate disabled after a good load: the pair in service stays, said at
    ERROR, and the trusted set follows the vault all the same (a client revoked, one added)."""
    _with_server(vault, pki)
    vault.set_secret("a", pem(pki.issue("a")[2]), tags=CLIENT)
    source = _source(vault)
    first = source.load()
    vault.update("certificates", "mimic-server", enabled=False)
    vault.update("secrets", "a", enabled=False)  # the operator revokes a meanwhile
    vault.set_secret("b", pem(pki.issue("b")[2]), tags=CLIENT)
    with caplog.at_level(logging.ERROR, logger="mimic_server.certs.keyvault"):
        bundle = source.load()
    assert (bundle.server_chain_pem, bundle.server_key_pem) == (
        first.server_chain_pem, first.server_key_pem)
    assert _names(bundle) == {"b"}
    kept = [r for r in caplog.records if r.getMessage().startswith("server certificate cannot")]
    assert [r.certificate for r in kept] == ["mimic-server"]  # type: ignore[attr-defined]


def test_an_entry_that_cannot_be_read_keeps_its_last_certificates_while_listed_active(
    vault: KeyVaultDouble, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Access granted per secret: one tagged entry answers 403. It keeps what was last read
    of it while the listing shows it active; one never read is not trusted; and the rest of
    the listing, a revocation included, is applied."""
    source, a = _a_and_b_trusted(vault, pki)
    original = vault._get

    def scoped_access(kind: str, name: str, version: str) -> Any:
        if name in ("a", "c"):
            return 403, {}, {"error": {"code": "Forbidden", "message": "not authorized"}}
        return original(kind, name, version)

    vault._get = scoped_access  # type: ignore[method-assign]
    vault.set_secret("a", pem(pki.issue("a2")[2]), tags=CLIENT)  # a new version, unreadable
    vault.set_secret("c", pem(pki.issue("c")[2]), tags=CLIENT)  # never readable
    vault.update("secrets", "b", enabled=False)  # revoked
    with caplog.at_level(logging.ERROR, logger="mimic_server.certs.keyvault"):
        bundle = source.load()
    assert [(t.name, t.certificate) for t in bundle.trusted] == [("a", a)]
    unread = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert sorted(r.entry for r in unread) == ["a", "c"]  # type: ignore[attr-defined]

    vault.update("secrets", "a", enabled=False)  # disabled: its last certificates go too
    assert _names(source.load()) == set()


def test_an_entry_in_force_whose_new_version_holds_no_certificate_keeps_its_last(
    vault: KeyVaultDouble, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A new version that holds no usable certificate (DER pasted as text, a cut PEM) is an
    entry that cannot be read: in force, it keeps its last certificates; new, it is not
    trusted; both at ERROR naming the entry; a revocation in the same load applies."""
    source, a = _a_and_b_trusted(vault, pki)
    vault.set_secret("a", pem(pki.issue("a2")[2])[:200], tags=CLIENT)
    vault.set_secret("c", "-----BEGIN NONSENSE-----", tags=CLIENT)
    vault.update("secrets", "b", enabled=False)
    with caplog.at_level(logging.WARNING, logger="mimic_server.certs.keyvault"):
        bundle = source.load()
    assert [(t.name, t.certificate) for t in bundle.trusted] == [("a", a)]
    unread = [(r.levelno, r.entry) for r in caplog.records  # type: ignore[attr-defined]
              if "cannot be read" in r.getMessage()]
    assert sorted(unread) == [(logging.ERROR, "a"), (logging.ERROR, "c")]


@pytest.mark.parametrize("unreadable", ["no certificate", "403"])
def test_only_an_entry_in_force_keeps_its_last_certificates(
    vault: KeyVaultDouble, pki: Pki, unreadable: str
) -> None:
    """Disabled (revoked), then enabled again with a version that cannot be read: what
    was revoked is not trusted again."""
    _with_server(vault, pki)
    vault.set_secret("a", pem(pki.issue("a")[2]), tags=CLIENT)
    source = _source(vault)
    assert _names(source.load()) == {"a"}
    vault.update("secrets", "a", enabled=False)
    assert _names(source.load()) == set()
    if unreadable == "403":
        vault._get = lambda kind, name, version: (  # type: ignore[method-assign]
            403, {}, {"error": {"code": "Forbidden", "message": "not authorized"}})
        vault.set_secret("a", pem(pki.issue("a2")[2]), tags=CLIENT)
    else:
        vault.set_secret("a", "-----BEGIN NONSENSE-----", tags=CLIENT)
    assert _names(source.load()) == set()


@pytest.mark.parametrize("window", ["expired", "not yet valid"])
def test_a_server_certificate_outside_its_validity_period_is_not_put_in_service(
    vault: KeyVaultDouble, pki: Pki, window: str
) -> None:
    """Every handshake would fail on it (the peers check it): ``server_context`` refuses it
    as a new identity; as the one in service (built again for a trust change) it is kept."""
    now = datetime.now(UTC)
    valid = ((now - timedelta(days=30), now - timedelta(days=1)) if window == "expired"
             else (now + timedelta(days=1), now + timedelta(days=30)))
    _, _, cert, key = pki.issue("server", server=True, not_before=valid[0], not_after=valid[1])
    vault.import_certificate("mimic-server", cert, key, chain=[pki.ca])
    bundle = _source(vault).load()
    with pytest.raises(ConfigurationError, match="server certificate not valid now"):
        server_context(bundle)
    server_context(bundle, new_identity=False)


def test_an_entry_that_cannot_be_read_leaves_the_server_key_as_it_is(
    vault: KeyVaultDouble, pki: Pki
) -> None:
    """The load named the entry it could not read with the variable that held the server's
    private key: the bundle then carried a (kind, name) pair as the server key, and the
    listener refused a server certificate it should have served."""
    _with_server(vault, pki)
    vault.set_secret("a", pem(pki.issue("a")[2]), tags=CLIENT)
    source = _source(vault)
    first = source.load()
    vault.set_secret("a", "-----BEGIN NONSENSE-----", tags=CLIENT)
    bundle = source.load()
    assert _names(bundle) == {"a"}
    assert bundle.server_key_pem == first.server_key_pem
    server_context(bundle)  # served as it is


@pytest.mark.parametrize("tags", [
    {"mimic-services": "echo, fnd"},  # a typo in the portal
    {"mimic-user": "requird"},
    {"mimic-max-find-results": "many"},
])
def test_binding_tags_that_cannot_be_read_never_widen_an_entry(
    vault: KeyVaultDouble, pki: Pki, caplog: pytest.LogCaptureFixture, tags: dict[str, str]
) -> None:
    """A rule tag that could not be read made the entry a modality (echo and store): it
    could grant store, or drop `user = required`, that the entry's own rule withheld. In
    force, the entry keeps its last binding (titles and rule); new, it is not trusted; both
    at ERROR naming it; the rest of the listing applies."""
    _with_server(vault, pki)
    rule = {"mimic-services": "echo, find", "mimic-user": "required",
            "mimic-ae-titles": "WS1"}
    vault.set_secret("a", pem(pki.issue("a")[2]), tags={**CLIENT, **rule})
    vault.set_secret("b", pem(pki.issue("b")[2]), tags=CLIENT)
    source = _source(vault)
    [before] = [t for t in source.load().trusted if t.name == "a"]
    vault.set_secret("a", pem(pki.issue("a")[2]), tags={**CLIENT, **rule, **tags})
    vault.set_secret("c", pem(pki.issue("c")[2]), tags={**CLIENT, **tags})
    vault.update("secrets", "b", enabled=False)  # revoked meanwhile
    with caplog.at_level(logging.ERROR, logger="mimic_server.certs.keyvault"):
        bundle = source.load()
    assert _names(bundle) == {"a"}
    [after] = bundle.trusted
    assert (after.ae_titles, after.rule) == (before.ae_titles, before.rule)
    assert after.rule is not None and after.rule.user.name == "REQUIRED"
    said = sorted((r.levelno, r.entry) for r in caplog.records  # type: ignore[attr-defined]
                  if "binding tags" in r.getMessage())
    assert said == [(logging.ERROR, "a"), (logging.ERROR, "c")]
