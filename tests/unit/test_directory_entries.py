"""The PEM directory source reads each trust entry on its own: a file that cannot be read
or parsed fails that entry alone, logged at ERROR with its file name. An entry in force
keeps its last good content (a copy being written, not atomically); a new one is not
trusted; everything else in the directory applies, revocations first."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mimic_server.certs import CertBundle, devpki
from mimic_server.certs.directory import DirectorySource
from mimic_server.security.grants import Service


def _pem(path: Path) -> bytes:
    """The entry's certificate, or for a new entry any certificate."""
    return (path if path.exists() else path.parent.parent / "ca" / "ca.pem").read_bytes()


def _der_named_pem(path: Path) -> None:
    path.write_bytes(x509.load_pem_x509_certificate(_pem(path)).public_bytes(Encoding.DER))


def _truncated(path: Path) -> None:
    pem = _pem(path)
    path.write_bytes(pem[: len(pem) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _unreadable(path: Path) -> None:
    """An OSError on read (a directory under the entry's name: root reads a mode 000 file)."""
    path.unlink(missing_ok=True)
    path.mkdir()


BAD_FILES = pytest.mark.parametrize(
    "spoil", [_der_named_pem, _truncated, _empty, _unreadable],
    ids=["DER named .pem", "truncated", "empty", "unreadable"])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki") / "certs"
    devpki.init(directory)  # modality1: every service
    devpki.issue_client(directory, "ct-room", ["CT_ROOM"], rule={"services": ["echo"]})
    return directory


@pytest.fixture
def certs(pki: Path, tmp_path: Path) -> Path:
    """A copy of the module's PKI (keys take long to make) for one test to spoil."""
    return Path(shutil.copytree(pki, tmp_path / "certs"))


def _entries(bundle: CertBundle) -> dict[str, tuple[frozenset[str], frozenset[Service] | None]]:
    return {t.name: (t.ae_titles, t.rule.services if t.rule else None) for t in bundle.trusted}


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(r, "file", "") for r in caplog.records if r.levelno == logging.ERROR]


@BAD_FILES
def test_a_bad_new_file_is_not_trusted_and_holds_nothing_back(
    certs: Path, caplog: pytest.LogCaptureFixture, spoil: Callable[[Path], None]
) -> None:
    source = DirectorySource(certs)
    source.load()
    spoil(certs / "trusted" / "stray.pem")
    devpki.revoke(certs, "modality1")
    with caplog.at_level(logging.ERROR, logger="mimic_server.certs.directory"):
        bundle = source.load()
    assert set(_entries(bundle)) == {"ct-room"}  # the revocation applied, stray not trusted
    assert _errors(caplog) == ["trusted/stray.pem"]


@BAD_FILES
def test_a_bad_ca_file_holds_nothing_back(
    certs: Path, caplog: pytest.LogCaptureFixture, spoil: Callable[[Path], None]
) -> None:
    (certs / "trusted-ca").mkdir()
    spoil(certs / "trusted-ca" / "partner.pem")
    devpki.revoke(certs, "modality1")
    with caplog.at_level(logging.ERROR, logger="mimic_server.certs.directory"):
        bundle = DirectorySource(certs).load()
    assert set(_entries(bundle)) == {"ct-room"}
    assert _errors(caplog) == ["trusted-ca/partner.pem"]


@BAD_FILES
def test_an_entry_in_force_keeps_its_last_content_until_it_reads_again_or_is_removed(
    certs: Path, caplog: pytest.LogCaptureFixture, spoil: Callable[[Path], None]
) -> None:
    source = DirectorySource(certs)
    before = source.load()
    good = (certs / "trusted" / "ct-room.pem").read_bytes()
    spoil(certs / "trusted" / "ct-room.pem")
    devpki.revoke(certs, "modality1")
    with caplog.at_level(logging.ERROR, logger="mimic_server.certs.directory"):
        bundle = source.load()
    assert [t for t in bundle.trusted] == [t for t in before.trusted if t.name == "ct-room"]
    assert _errors(caplog) == ["trusted/ct-room.pem"]
    path = certs / "trusted" / "ct-room.pem"
    if path.is_dir():
        path.rmdir()
    path.write_bytes(good)
    assert source.load().trusted == bundle.trusted  # it reads again
    spoil(path)
    source.load()
    if path.is_dir():
        path.rmdir()
    else:
        path.unlink()
    assert source.load().trusted == ()  # removed while unreadable: gone


BAD_BINDINGS = pytest.mark.parametrize("binding", [
    "{\"ae_titles\": [\"CT_RO", "", json.dumps({"ae_titles": ["A\\B"]}),
    json.dumps({"ae_titles": ["CT_ROOM"], "services": ["fnid"]}),
    json.dumps({"ae_titles": ["CT_ROOM"], "user": "requird"}), None,
    # Past what the parsers catch: OverflowError and RecursionError failed the whole load,
    # the revocations in it included.
    '{"ae_titles": ["CT_ROOM"], "max_find_results": Infinity}',
    '{"ae_titles": ["CT_ROOM"], "max_find_results": 1e400}',
    '{"ae_titles": ["CT_ROOM"], "services": ' + "[" * 100_000 + "]" * 100_000 + "}",
    json.dumps({"ae_titles": [None]}), json.dumps({"ae_titles": ["CT_ROOM"],
                                                   "max_find_results": 2.5}),
], ids=["half written", "empty", "bad AE title", "unknown service", "bad user", "unreadable",
        "Infinity", "1e400", "nested past the recursion limit", "a title not text",
        "not a whole number"])


@BAD_BINDINGS
def test_a_binding_that_cannot_be_read_widens_nothing(
    certs: Path, caplog: pytest.LogCaptureFixture, binding: str | None
) -> None:
    """In force, the entry keeps the AE titles and rule it had (neither any calling AE
    title nor the default services); new, it is not trusted."""
    source = DirectorySource(certs)
    before = _entries(source.load())
    assert before["ct-room"] == (frozenset({"CT_ROOM"}), frozenset({Service.ECHO}))
    devpki.issue_client(certs, "mr-room", ["MR_ROOM"])
    for name in ("ct-room", "mr-room"):
        path = certs / "trusted" / f"{name}.json"
        if binding is None:
            path.unlink()
            path.mkdir()
        else:
            path.write_text(binding)
    with caplog.at_level(logging.ERROR, logger="mimic_server.certs.directory"):
        after = _entries(source.load())
    assert after == before
    assert sorted(_errors(caplog)) == ["trusted/ct-room.json", "trusted/mr-room.json"]


def test_a_change_of_mode_is_a_new_version(certs: Path) -> None:
    """A file made readable again (chmod) is read at the next poll, not at the next edit."""
    source = DirectorySource(certs)
    version = source.version()
    (certs / "trusted" / "ct-room.pem").chmod(0)
    assert source.version() != version
