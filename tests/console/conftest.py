"""The console tests' shared fixture: a loopback OIDC issuer that signs in an operator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.console.harness import OPERATOR
from tests.oidc_double import OidcIssuerDouble


@pytest.fixture(scope="module")
def operator_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcIssuerDouble]:
    """One issuer per test module, whose next sign-in is an operator's."""
    double = OidcIssuerDouble(tmp_path_factory.mktemp("oidc")).start()
    double.sign_in_as("operator-1", roles=[OPERATOR])
    yield double
    double.stop()
