"""The index engine's PostgreSQL login with Microsoft Entra tokens (fake credential)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import text

from mimic_server.index.engine import ENTRA_SCOPE, create_index_engine
from tests import database


@dataclass
class _Token:
    token: str
    expires_on: int = 2**31


class FakeCredential:
    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **_: object) -> _Token:
        self.scopes.extend(scopes)
        return _Token(f"token-{len(self.scopes)}")


def test_every_new_connection_gets_a_fresh_token(postgres_server: str) -> None:
    with database.fresh_database(postgres_server) as url:
        credential = FakeCredential()
        # The local test server has no TLS: say so in the URL, as an operator could.
        engine = create_index_engine(url + "?sslmode=disable", credential)
        seen: list[str] = []
        from sqlalchemy import event

        @event.listens_for(engine, "do_connect")
        def _capture(_d, _r, _a, cparams):  # type: ignore[no-untyped-def]
            seen.append(cparams.get("password"))

        with engine.connect() as first, engine.connect() as second:
            assert first.execute(text("select 1")).scalar() == 1
            assert second.execute(text("select 1")).scalar() == 1
        engine.dispose()
        assert credential.scopes == [ENTRA_SCOPE, ENTRA_SCOPE]
        assert seen == ["token-1", "token-2"]


def test_entra_requires_tls_unless_the_url_says_otherwise() -> None:
    from sqlalchemy import event

    engine = create_index_engine("postgresql+psycopg://mimic@127.0.0.1:9/index", FakeCredential())
    captured: dict[str, object] = {}

    @event.listens_for(engine, "do_connect")
    def _capture(_d, _r, _a, cparams):  # type: ignore[no-untyped-def]
        captured.update(cparams)
        raise RuntimeError("captured; do not connect")

    with pytest.raises(Exception, match="captured"):
        engine.connect()
    assert captured["sslmode"] == "require"
    assert captured["password"] == "token-1"
