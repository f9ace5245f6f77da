"""User Identity Negotiation (PS3.7 D.3.3.7) through the network: JWT from the OIDC issuer
double, username and passcode from the user file, the user required by the policy, roles
narrowing the services, the positive response, and the audit records (issue 13, "User
identity")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from mimic_server.certs import devpki
from mimic_server.security.users import add_user
from tests.data import ct_small
from tests.oidc_double import OidcIssuerDouble
from tests.support import HOST, MimicProcess, client_context, wait_for

FIND = StudyRootQueryRetrieveInformationModelFind
AUDIENCE = "api://mimic"
POLICY = """
[certificates.reader]
services = ["all"]
user = "required"
roles = { Radiologist = ["echo", "find"], Clerk = ["echo"] }
"""


class Setup:
    def __init__(self, server: MimicProcess, issuer: OidcIssuerDouble) -> None:
        self.server, self.issuer = server, issuer

    def associate(self, name: str, item: UserIdentityNegotiation | None,
                  contexts: tuple[str, ...] = (Verification, FIND, CTImageStorage)) -> Any:
        certs = self.server.certs
        ctx = client_context(certs / "clients" / name / "client.pem",
                             certs / "clients" / name / "client.key", certs / "ca" / "ca.pem")
        ae = AE(ae_title=name.upper())
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        for uid in contexts:
            ae.add_requested_context(uid)
        return ae.associate(HOST, self.server.port, ae_title="MIMIC",
                            tls_args=(ctx, "localhost"), ext_neg=[item] if item else None)

    def audit(self) -> list[dict[str, Any]]:
        path = self.server.data_dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line]


def jwt_item(token: str, response: bool = False) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = 5
    item.primary_field = token.encode()
    item.positive_response_requested = response
    return item


def passcode_item(name: str, passcode: str, response: bool = False) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = name.encode()
    item.secondary_field = passcode.encode()
    item.positive_response_requested = response
    return item


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("users")
    issuer = OidcIssuerDouble(root / "oidc").start()
    certs = root / "data" / "certs"
    devpki.init(certs)
    devpki.issue_client(certs, "reader")
    devpki.issue_client(certs, "ct")
    (root / "policy.toml").write_text(POLICY)
    add_user(root / "users.toml", "jdoe", "correct horse battery", ["Radiologist"])
    server = MimicProcess(
        root / "data", policy_file=str(root / "policy.toml"), users_file=str(root / "users.toml"),
        oidc_issuer=issuer.issuer, oidc_audience=AUDIENCE, oidc_ca_file=str(issuer.ca_file),
    ).start()
    yield Setup(server, issuer)
    assert server.stop() == 0, server.log()
    issuer.stop()


def _accepted(assoc: Any) -> set[str]:
    return {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}


def test_valid_token_user_and_roles(setup: Setup) -> None:
    token = setup.issuer.mint(roles=["Radiologist"], subject="dr-who")
    assoc = setup.associate("reader", jwt_item(token, response=True))
    assert assoc.is_established
    # Roles narrow the identity's services: Radiologist may echo and find, not store.
    assert _accepted(assoc) == {Verification, FIND}
    # Positive response: a User Identity item with a zero-length server response.
    response = assoc.acceptor.user_identity
    assert response is not None and response.server_response == b""
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    logins = [r for r in setup.audit() if r.get("event_type") == "login"
              and r.get("user") == "dr-who@example.org"]
    assert logins and logins[-1]["EventOutcomeIndicator"] == 0
    assert logins[-1]["trust_name"] == "reader"
    text = (setup.server.data_dir / "audit.jsonl").read_text() + setup.server.log()
    assert token not in text and token.split(".")[2] not in text


def test_no_response_unless_asked(setup: Setup) -> None:
    assoc = setup.associate("reader", jwt_item(setup.issuer.mint(roles=["Clerk"])))
    assert assoc.is_established
    assert assoc.acceptor.user_identity is None
    assert _accepted(assoc) == {Verification}
    assoc.release()


def _tampered(issuer: OidcIssuerDouble) -> str:
    header, payload, signature = issuer.mint(roles=["Radiologist"]).split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    return ".".join((header, payload, flipped))


BAD_TOKENS = {
    "expired": lambda i: i.mint(lifetime=-600, issued=__import__("time").time() - 1200),
    "wrong audience": lambda i: i.mint(audience="api://other"),
    "wrong issuer": lambda i: i.mint(issuer="https://127.0.0.1:1/other/v2.0"),
    "unknown key": lambda i: i.mint(kid="rsa-unknown", key=i.unpublished_key),
    "alg none": lambda i: i.mint(algorithm="none"),
    "other key": lambda i: i.mint(key=rsa.generate_private_key(public_exponent=65537,
                                                               key_size=2048)),
    "tampered": _tampered,
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
@pytest.mark.parametrize("name", ["reader", "ct"])  # user required / optional
def test_invalid_token_is_rejected(setup: Setup, case: str, name: str) -> None:
    before = setup.server.instance_count()
    assoc = setup.associate(name, jwt_item(BAD_TOKENS[case](setup.issuer)))
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x02, 0x01)
    assert setup.server.instance_count() == before
    failures = [r for r in setup.audit() if r.get("event_type") == "login"
                and r["EventOutcomeIndicator"] == 4 and r.get("trust_name") == name]
    assert failures and "token refused" in failures[-1]["reason"]


def test_missing_user_when_required(setup: Setup) -> None:
    assoc = setup.associate("reader", None)
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x02, 0x01)
    assert any(r.get("reason") == "a user identity is required for this certificate"
               for r in setup.audit())


def test_missing_user_when_optional(setup: Setup) -> None:
    assoc = setup.associate("ct", None, contexts=(Verification, CTImageStorage))
    assert assoc.is_established
    assert assoc.send_c_store(ct_small()).Status == 0
    assoc.release()


def test_username_and_passcode(setup: Setup) -> None:
    assoc = setup.associate("reader", passcode_item("jdoe", "correct horse battery", True))
    assert assoc.is_established
    assert _accepted(assoc) == {Verification, FIND}
    response = assoc.acceptor.user_identity
    assert response is not None and response.server_response == b""
    assoc.release()

    def events() -> list[str]:
        return [r["event_type"] for r in setup.audit() if r.get("user") == "jdoe"]

    # login, the refused storage context (a Security Alert naming the user), and the logout
    # the server records when it has closed the association (after the peer saw the release)
    assert wait_for(lambda: events()[-1:] == ["logout"])
    assert events()[-3:] == ["login", "use-of-restricted-function", "logout"]
    text = (setup.server.data_dir / "audit.jsonl").read_text() + setup.server.log()
    assert "correct horse battery" not in text and "$argon2" not in text


@pytest.mark.parametrize(("user", "passcode"), [("jdoe", "Tr0ub4dor-x"), ("nobody", "Zebra-77-q")])
def test_username_and_passcode_refused(setup: Setup, user: str, passcode: str) -> None:
    assoc = setup.associate("reader", passcode_item(user, passcode))
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x02, 0x01)
    [record] = [r for r in setup.audit() if r.get("user") == user
                and r.get("event_type") == "login" and r["EventOutcomeIndicator"] == 4]
    assert record["reason"] == "unknown user or wrong passcode"
    assert passcode not in (setup.server.data_dir / "audit.jsonl").read_text()


def test_username_only_is_refused(setup: Setup, tmp_path: Path) -> None:
    item = UserIdentityNegotiation()
    item.user_identity_type = 1
    item.primary_field = b"jdoe"
    assoc = setup.associate("ct", item)
    assert assoc.is_rejected


def test_a_user_s_query_names_the_user(setup: Setup) -> None:
    """The Query record of a user's C-FIND names the user as the login did: ``jdoe``. It
    named ``AssociationUser(name='jdoe', roles=frozenset({'Radiologist'}), ...)``, in its
    user field and in the message's UserID (and so did C-MOVE and C-GET records)."""
    from pydicom.dataset import Dataset

    assoc = setup.associate("reader", passcode_item("jdoe", "correct horse battery"))
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3.4.5.6.7.8.9.11"
    assert [status.Status for status, _ in assoc.send_c_find(identifier, FIND)] == [0]
    assoc.release()
    queries = [r for r in setup.audit() if r["event"] == "110112"]
    assert queries and queries[-1]["user"] == "jdoe"
    assert 'UserID="jdoe"' in queries[-1]["xml"] and "AssociationUser" not in queries[-1]["xml"]
