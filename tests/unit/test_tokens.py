"""The JWT validator against a loopback OIDC issuer: every refusal, and what a valid token gives."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mimic_server.security.tokens import InvalidToken, TokenValidator
from tests.oidc_double import OidcIssuerDouble

AUDIENCE = "api://mimic"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcIssuerDouble]:
    double = OidcIssuerDouble(tmp_path_factory.mktemp("oidc")).start()
    yield double
    double.stop()


@pytest.fixture()
def validator(issuer: OidcIssuerDouble) -> TokenValidator:
    return TokenValidator(issuer.issuer, AUDIENCE, ssl_context=issuer.client_context(),
                          leeway_seconds=30)


def test_valid_rsa_and_ec_tokens(issuer: OidcIssuerDouble, validator: TokenValidator) -> None:
    user = validator.validate(issuer.mint(roles=["Radiologist", "Archive.Query"]))
    assert user.subject == "user-1" and user.name == "user-1@example.org"
    assert user.roles == {"Radiologist", "Archive.Query"}
    ec = validator.validate(issuer.mint(kid="ec-1", algorithm="ES256", subject="user-2"))
    assert ec.subject == "user-2" and ec.roles == frozenset()


@pytest.mark.parametrize(
    ("mint", "reason"),
    [
        ({"lifetime": -120}, "expired"),
        ({"not_before": 600}, "not valid yet"),  # seconds from now, when the test runs
        ({"audience": "api://other"}, "another audience"),
        ({"issuer": "https://127.0.0.1:1/other/v2.0"}, "another issuer"),
        ({"kid": "rsa-9"}, "unknown key"),
        ({"algorithm": "none"}, "not allowed"),
        ({"algorithm": "HS256", "key": b"k" * 32}, "not allowed"),
    ],
    ids=["expired", "not-before", "audience", "issuer", "unknown-key", "alg-none", "alg-hs256"],
)
def test_refusals(issuer: OidcIssuerDouble, validator: TokenValidator, mint: dict,
                  reason: str) -> None:
    if "not_before" in mint:
        mint = {**mint, "not_before": time.time() + mint["not_before"]}
    with pytest.raises(InvalidToken, match=reason):
        validator.validate(issuer.mint(**mint))


def test_small_clock_skew_is_tolerated(issuer: OidcIssuerDouble,
                                       validator: TokenValidator) -> None:
    assert validator.validate(issuer.mint(lifetime=-10)).subject == "user-1"
    assert validator.validate(issuer.mint(not_before=time.time() + 10)).subject == "user-1"


def test_tampered_signature_and_claims(issuer: OidcIssuerDouble,
                                       validator: TokenValidator) -> None:
    header, payload, signature = issuer.mint().split(".")
    flipped = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
    with pytest.raises(InvalidToken, match="signature"):
        validator.validate(f"{header}.{payload}.{flipped}")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["roles"] = ["Archive.Admin"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="signature"):
        validator.validate(f"{header}.{forged}.{signature}")


def test_signed_with_an_unpublished_key_under_a_known_key_id(
    issuer: OidcIssuerDouble, validator: TokenValidator
) -> None:
    with pytest.raises(InvalidToken, match="signature"):
        validator.validate(issuer.mint(key=issuer.unpublished_key))


def test_garbage_and_missing_claims(issuer: OidcIssuerDouble, validator: TokenValidator) -> None:
    with pytest.raises(InvalidToken, match="not a JWT"):
        validator.validate("not-a-token")
    with pytest.raises(InvalidToken, match="'sub'"):
        validator.validate(issuer.mint(subject=""))


def test_unknown_key_ids_do_not_hammer_the_issuer(issuer: OidcIssuerDouble,
                                                  validator: TokenValidator) -> None:
    validator.validate(issuer.mint())
    before = issuer.jwks_requests
    for n in range(20):
        with pytest.raises(InvalidToken, match="unknown key"):
            validator.validate(issuer.mint(kid=f"random-{n}"))
    assert issuer.jwks_requests - before <= 1


def test_issuer_that_cannot_be_reached_refuses(tmp_path: Path) -> None:
    validator = TokenValidator("https://127.0.0.1:9/tenant/v2.0", AUDIENCE, timeout_seconds=1)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    import jwt

    token = jwt.encode({"sub": "x", "aud": AUDIENCE, "iss": "https://127.0.0.1:9/tenant/v2.0",
                        "exp": int(time.time()) + 60}, key, algorithm="RS256",
                       headers={"kid": "k"})
    with pytest.raises(InvalidToken, match="cannot be reached"):
        validator.validate(token)


def test_issuer_over_plain_http_is_refused() -> None:
    with pytest.raises(InvalidToken, match="HTTPS"):
        TokenValidator("http://127.0.0.1:9/t", AUDIENCE)._load_keys()


def test_symmetric_algorithms_cannot_be_configured() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        TokenValidator("https://issuer.example/v2.0", AUDIENCE, algorithms=["HS256"])


# -- the cache of validated tokens -----------------------------------------------------------


def test_a_token_used_again_is_not_verified_again(
    issuer: OidcIssuerDouble, validator: TokenValidator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jwt

    token = issuer.mint(roles=["Radiologist"])
    first = validator.validate(token)
    calls = []
    decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or decode(*a, **k))
    for _ in range(3):
        assert validator.validate(token) == first
    assert calls == []
    validator.validate(issuer.mint(subject="user-2"))  # another token: verified
    assert calls == [1]


def test_a_remembered_token_is_refused_once_it_expires(
    issuer: OidcIssuerDouble, validator: TokenValidator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mimic_server.security import tokens

    token = issuer.mint(lifetime=60)
    assert validator.validate(token).subject == "user-1"
    now = time.time()
    monkeypatch.setattr(tokens.time, "time", lambda: now + 60 + 25)  # within the 30 s leeway
    assert validator.validate(token).subject == "user-1"
    monkeypatch.setattr(tokens.time, "time", lambda: now + 60 + 31)
    with pytest.raises(InvalidToken, match="expired"):
        validator.validate(token)
    assert token not in validator._cache  # refused: validated from the start next time


def test_a_remembered_token_is_refused_when_the_clock_goes_back_before_nbf(
    issuer: OidcIssuerDouble, validator: TokenValidator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mimic_server.security import tokens

    now = time.time()
    token = issuer.mint(not_before=now)
    validator.validate(token)
    monkeypatch.setattr(tokens.time, "time", lambda: now - 120)
    with pytest.raises(InvalidToken, match="not valid yet"):
        validator.validate(token)


@pytest.mark.parametrize("published", ["replaced", "withdrawn"])
def test_a_remembered_token_follows_the_issuers_keys(
    issuer: OidcIssuerDouble, validator: TokenValidator, monkeypatch: pytest.MonkeyPatch,
    published: str,
) -> None:
    """When the issuer stops publishing the key that verified a token, the token's next use
    after the JWKS refresh is judged by the keys published then, not by the cache."""
    import jwt

    from mimic_server.security import tokens

    token = issuer.mint()
    validator.validate(token)
    jwks = issuer.jwks()
    if published == "replaced":  # same key id, another key
        other = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.unpublished_key.public_key()))
        other.update(kid="rsa-1", use="sig")
        keys = [other if k["kid"] == "rsa-1" else k for k in jwks["keys"]]
    else:
        keys = [k for k in jwks["keys"] if k["kid"] != "rsa-1"]
    monkeypatch.setattr(issuer, "jwks", lambda: {"keys": keys})
    assert validator.validate(token).subject == "user-1"  # keys not refreshed yet (1 h)
    later = time.monotonic() + 3600 + 1
    monkeypatch.setattr(tokens.time, "monotonic", lambda: later)
    with pytest.raises(InvalidToken, match="signature" if published == "replaced" else
                       "unknown key"):
        validator.validate(token)


def test_the_cache_is_bounded(issuer: OidcIssuerDouble) -> None:
    validator = TokenValidator(issuer.issuer, AUDIENCE, ssl_context=issuer.client_context(),
                               cache_size=2)
    tokens_ = [issuer.mint(subject=f"user-{n}") for n in range(5)]
    for token in tokens_:
        validator.validate(token)
    assert len(validator._cache) == 2
    assert list(validator._cache) == tokens_[-2:]


def test_an_eddsa_token_of_the_issuers_key_is_accepted() -> None:
    """EdDSA (RFC 8037) is an asymmetric algorithm an operator may allow: the check that a
    token's algorithm fits its key refused every one at first."""
    private = ed25519.Ed25519PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key()))
    jwk["kid"] = "ed-1"
    issuer = "https://issuer.example"
    validator = TokenValidator(issuer, AUDIENCE, algorithms=["EdDSA", "RS256"])
    validator._keys = {"ed-1": jwt.PyJWK.from_dict(jwk)}  # as the issuer's JWKS gave it
    validator._keys_at = time.monotonic()
    now = int(time.time())
    claims = {"iss": issuer, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
    token = jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": "ed-1"})
    assert validator.validate(token).subject == "alice"
    forged = jwt.encode(claims, rsa.generate_private_key(public_exponent=65537, key_size=2048),
                        algorithm="RS256", headers={"kid": "ed-1"})
    with pytest.raises(InvalidToken, match="does not fit its key"):
        validator.validate(forged)


@pytest.mark.parametrize("roles", [5, True, {"Radiologist": 1}, [["Radiologist"]], [1]])
def test_a_roles_claim_that_is_no_list_of_names_is_refused(
        issuer: OidcIssuerDouble, validator: TokenValidator, roles: object) -> None:
    """A number raised TypeError out of the validator (DICOMweb answered 500, an association
    was rejected as a transient failure, neither recorded as a refused token); an object
    or a nested list became role names (its keys, its repr)."""
    with pytest.raises(InvalidToken, match="'roles' claim is not a list of names"):
        validator.validate(issuer.mint(roles=roles))  # type: ignore[arg-type]


def test_roles_as_a_list_or_a_space_separated_string(
        issuer: OidcIssuerDouble, validator: TokenValidator) -> None:
    assert validator.validate(issuer.mint(roles=["A", "B"])).roles == {"A", "B"}
    assert validator.validate(issuer.mint(roles="A B")).roles == {"A", "B"}  # type: ignore[arg-type]
    assert validator.validate(issuer.mint()).roles == frozenset()
