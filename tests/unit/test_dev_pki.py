"""The development PKI and the ``mimic certs`` commands as an operator meets them: what is
written (and never overwritten), what is trusted with which rule, and the exit code with
its one line when a command is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mimic_server.certs import devpki
from mimic_server.certs.directory import DirectorySource
from mimic_server.cli import main


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki") / "certs"
    devpki.init(directory)
    return directory


@pytest.fixture
def certs(pki: Path, tmp_path: Path) -> Path:
    """A copy of the module's PKI (keys take long to make) for one test to change."""
    return Path(shutil.copytree(pki, tmp_path / "certs"))


def certs_command(*args: str) -> Result:
    return CliRunner().invoke(main, ["certs", *args])


def _rules(directory: Path) -> dict[str, tuple[frozenset[str], object]]:
    return {t.name: (t.ae_titles, t.rule) for t in DirectorySource(directory).load().trusted}


def test_issue_client_never_adopts_a_binding_left_by_a_removed_trust_file(certs: Path) -> None:
    # Section 4: trusted by hand with a wide rule; section 5: its .pem deleted, the .json left.
    (certs / "trusted" / "us-room-1.json").write_text(json.dumps(
        {"ae_titles": ["US01"], "services": ["all"], "move_destinations": ["*"]}))

    result = certs_command("issue-client", "us-room-1", "--cert-dir", str(certs))

    assert result.exit_code == 0, result.output
    assert _rules(certs)["us-room-1"] == (frozenset(), None)  # echo and store, any AE title
    assert not (certs / "trusted" / "us-room-1.json").exists()

    (certs / "trusted" / "ct-2.json").write_text(json.dumps({"services": ["all"]}))
    devpki.issue_client(certs, "ct-2", ["CT02"], rule={"services": ["find"]})
    titles, rule = _rules(certs)["ct-2"]
    assert titles == {"CT02"} and rule is not None
    assert json.loads((certs / "trusted" / "ct-2.json").read_text()) == {
        "ae_titles": ["CT02"], "services": ["find"]}
