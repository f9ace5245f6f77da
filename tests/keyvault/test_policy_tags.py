"""Access rules carried by Key Vault tags (``mimic-services`` ...), read through the Key Vault
HTTPS double by a real ``mimic serve``: a tagged entry gets its services, an untagged one is a
modality, and a tag that cannot be read makes that entry a modality (ERROR naming it) without
taking the trust set down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from tests.identity_double import IdentityDouble
from tests.keyvault.conftest import Pki, pem
from tests.keyvault_double import KeyVaultDouble
from tests.support import MimicProcess, associate, client_context, wait_for

FIND = StudyRootQueryRetrieveInformationModelFind
CLIENT = {"mimic-trust": "client"}
#: name -> (certificate, key) files of the clients a test issued.
PATHS: dict[str, tuple[Path, Path]] = {}


@pytest.fixture
def live(
    tmp_path: Path, vault: KeyVaultDouble, identity: IdentityDouble, pki: Pki
) -> Iterator[MimicProcess]:
    _, _, cert, key = pki.issue("server", server=True)
    vault.import_certificate("mimic-server", cert, key, chain=[pki.ca])
    process = MimicProcess(
        tmp_path / "data",
        env={**identity.env(), "REQUESTS_CA_BUNDLE": str(vault.ca_bundle)},
        keyvault_url=vault.url,
        keyvault_server_cert="mimic-server",
        keyvault_verify_challenge_resource="false",
        cert_refresh_seconds="1",
    ).start()
    yield process
    assert process.stop() == 0, process.log()


def _contexts(server: MimicProcess, pki: Pki, name: str) -> tuple[set[str], set[str]] | None:
    """(accepted, refused) abstract syntaxes of an association of ``name``; None if refused."""
    cert, key = PATHS[name]
    ctx = client_context(cert, key, pki.ca_path)
    assoc = associate(server.port, ctx, calling=name.upper(), contexts=[Verification, FIND])
    if not assoc.is_established:
        return None
    result = ({str(cx.abstract_syntax) for cx in assoc.accepted_contexts},
              {str(cx.abstract_syntax) for cx in assoc.rejected_contexts if cx.result == 1})
    assoc.release()
    return result


def test_tags_carry_the_rule(live: MimicProcess, vault: KeyVaultDouble, pki: Pki) -> None:
    tags = {"reading": {**CLIENT, "mimic-services": "echo, find", "mimic-max-find-results": "5"},
            "typo": {**CLIENT, "mimic-services": "echo,fly"},
            "plain": CLIENT}
    for name, entry_tags in tags.items():
        cert_path, key_path, cert, _ = pki.issue(name)
        PATHS[name] = (cert_path, key_path)
        vault.set_secret(name, pem(cert), tags=entry_tags)
    assert wait_for(lambda: _contexts(live, pki, "plain") is not None, timeout=30)
    # The worker that saw the vault first has the others look at once (a relayed SIGHUP),
    # but an association may reach one of them within that reload: each rule is waited for.
    assert wait_for(lambda: _contexts(live, pki, "reading") == ({Verification, FIND}, set()),
                    timeout=10)
    assert wait_for(lambda: _contexts(live, pki, "plain") == ({Verification}, {FIND}),
                    timeout=10)
    # A tag that cannot be read: a new entry is not trusted (read as the default rule, it
    # could grant what the entry's own withheld).
    assert _contexts(live, pki, "typo") is None
    assert any(e.get("level") == "ERROR" and e.get("entry") == "typo"
               for e in live.log_entries())
    # A tag changed in the vault applies within the refresh period, without restart.
    vault.update("secrets", "plain", tags={**CLIENT, "mimic-services": "find"})
    assert wait_for(lambda: _contexts(live, pki, "plain") == ({FIND}, {Verification}),
                    timeout=30)
