"""The operator console end to end in headless Chromium (Debian's ``chromium`` driven by
``playwright-core`` from npm): a real ``mimic serve`` (its ops port serving the live
associations) and a real ``mimic web`` over the same data directory, signed in at the loopback
OIDC issuer. A study stored over DIMSE is found, opened and shown; the image the browser
decoded is compared pixel by pixel with pydicom's pixel data put through the PS3.3 LINEAR
window; the modality, the open association and the audit records are on their pages; and no
patient data appears in any URL the browser requested.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from PIL import Image
from pydicom.pixels import apply_modality_lut

from tests.data import ct_small
from tests.oidc_double import OidcIssuerDouble
from tests.support import HOST, MimicProcess, associate, client_context, wait_for
from tests.web_support import WebProcess

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "e2e" / "console" / "console.mjs"
CHROMIUM = Path("/usr/bin/chromium")
CLIENT_ID = "mimic-console"
STUDY = "1.2.826.0.1.3680043.8.498.77001"
PATIENT_NAME, PATIENT_ID = "Console^Testpatient", "CONSOLE-4711"
#: DICOMweb's rule (and so the console's searches and images): the operator role may query
#: and retrieve.
POLICY = """
[certificates.dicomweb]
services = ["find", "get"]
roles = { MimicOperator = ["find", "get"] }
"""



def _browser_installed() -> None:
    assert CHROMIUM.exists(), "Debian's chromium is not installed (scripts/test.sh installs it)"
    assert (ROOT / "node_modules" / "playwright-core").is_dir(), \
        "playwright-core is not installed: npm ci (scripts/test.sh runs it)"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcIssuerDouble]:
    double = OidcIssuerDouble(tmp_path_factory.mktemp("oidc")).start()
    double.register_client(CLIENT_ID)  # a public client: PKCE only
    double.sign_in_as("operator-1", roles=["MimicOperator"])
    yield double
    double.stop()


def _spki(certificate: Path) -> str:
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


def _instances(directory: Path) -> list[Path]:
    """Two images of the study, and one of another study (stored by the held association)."""
    paths = []
    for number in (1, 2, 3):
        study = STUDY if number < 3 else f"{STUDY}.9"
        ds = pydicom.dcmread(ct_small())
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = f"{study}.1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study}.1.{number}"
        ds.InstanceNumber = number
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.AccessionNumber = "ACC-77001"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        if number == 2:  # another image: the scrolled-to frame must differ
            ds.PixelData = (ds.pixel_array[::-1].copy()).tobytes()
        path = directory / f"{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _transferred_record(path: Path) -> bool:
    lines = path.read_text().splitlines() if path.exists() else []
    return any('"DICOM Instances Transferred"' in line and STUDY in line for line in lines)


def _windowed(path: Path, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR, computed here from pydicom's pixel data."""
    ds = pydicom.dcmread(path)
    x = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.rint(np.clip(y, 0, 255)).astype(np.int16)


def _gray(image: dict) -> np.ndarray:
    return np.array(image["gray"], dtype=np.int16).reshape(image["height"], image["width"])


def test_console_in_chromium(issuer: OidcIssuerDouble, tmp_path: Path) -> None:
    _browser_installed()
    data = tmp_path / "data"
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    serve = MimicProcess(data, policy_file=str(policy), network_timeout="600").start()
    web = None
    held = None
    try:
        files = _instances(tmp_path)
        tls = client_context(serve.client_cert, serve.client_key, serve.ca_cert)
        stores = associate(serve.port, tls)
        assert stores.is_established
        for path in files[:2]:
            assert stores.send_c_store(path).Status == 0x0000
        stores.release()  # its DICOM Instances Transferred is written at the release
        assert wait_for(lambda: _transferred_record(data / "audit.jsonl"))
        # Another association stays open while the browser looks at the 'now' page.
        held = associate(serve.port, tls, calling="HOLDER")
        assert held.is_established and held.send_c_store(files[2]).Status == 0x0000
        held.network_timeout = 600  # idle while the browser works, however slow the machine
        status, body = serve.ops("/status/associations")
        assert status == 200 and json.loads(body)["associations"][0]["calling_ae"] == "HOLDER"
        for secret in (PATIENT_NAME, PATIENT_ID, STUDY):  # no patient data on the ops port
            assert secret.encode() not in body
        web = WebProcess(data, issuer, policy=POLICY, web_oidc_client_id=CLIENT_ID,
                         web_serve_status_url=f"http://{HOST}:{serve.ops_port}").start()
        base = f"http://{HOST}:{web.port}"
        out = tmp_path / "browser"
        out.mkdir()
        run = subprocess.run(
            ["node", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=240,
            env={**os.environ, "CONSOLE_URL": base, "CONSOLE_PATIENT_NAME": PATIENT_NAME,
                 "CONSOLE_STUDY": STUDY, "CONSOLE_OUT": str(out),
                 "CONSOLE_ISSUER_SPKI": _spki(issuer.ca_file)},
        )
        assert run.returncode == 0, run.stderr
        result = json.loads((out / "result.json").read_text())
        assert "error" not in result, f"{result['error']}\n{web.log()[-4000:]}"
    finally:
        if held is not None:
            held.release()
        if web is not None:
            web_exit = web.stop()
        serve_exit = serve.stop()
    assert web_exit == 0 and serve_exit == 0

    # Signed in through the issuer (PKCE) and back on the console.
    assert result["signed_in_as"] == "operator-1@example.org"
    assert result["final_url"] == f"{base}/"
    assert any(u.startswith(f"{issuer.issuer}/authorize?") and "code_challenge_method=S256" in u
               for u in result["urls"])
    # Found by name (sent in a POST body), with a thumbnail.
    assert result["study_row"][1] == "Console Testpatient" and PATIENT_ID in result["study_row"]
    assert result["thumbnail"][0] > 0
    # The first image, with the object's window: exactly the windowed pixel data.
    first = _gray(result["first"])
    assert result["first"]["instance"] == f"{STUDY}.1.1"
    assert result["first"]["window"] == "40,400,linear"
    expected = _windowed(files[0], 40, 400)
    assert first.shape == expected.shape == (128, 128)
    assert int(np.abs(first - expected).max()) <= 1
    # ... and so is the screenshot of the image element, as the page shows it.
    with Image.open(tmp_path / "browser" / "first.png") as shot:
        shown = np.asarray(shot.convert("RGB"), dtype=np.int16)
    # (An element at a fractional position is captured one pixel larger: try both offsets.)
    rows, columns = expected.shape
    assert rows <= shown.shape[0] <= rows + 1 and columns <= shown.shape[1] <= columns + 1
    differences = [
        int(np.abs(shown[dy:dy + rows, dx:dx + columns, 0] - expected).max())
        for dy in range(shown.shape[0] - rows + 1) for dx in range(shown.shape[1] - columns + 1)
    ]
    assert min(differences) <= 1, differences
    assert int(np.abs(shown[..., 0] - shown[..., 2]).max()) == 0  # gray
    # Window/level changed in the page: the image follows.
    windowed = _gray(result["windowed"])
    assert int(np.abs(windowed - _windowed(files[0], 100, 1000)).max()) <= 1
    assert int(np.abs(windowed - first).max()) > 10
    # Scrolled to the next image, same window.
    second = _gray(result["second"])
    assert result["second"]["instance"] == f"{STUDY}.1.2" and result["position"] == "2 / 2"
    assert result["study_partial_hidden"] is True  # the whole study: no "not all images"
    assert int(np.abs(second - _windowed(files[1], 100, 1000)).max()) <= 1
    assert result["back_to_search"] == 2 and result["study_fragment"] == "studies"
    # The modality that stored it: its AE titles, services, objects, last association.
    rows = {m["name"]: m for m in result["modalities"]}
    modality = rows["modality1"]
    assert not modality["revoked"] and modality["warn"] == []
    cells = modality["cells"]
    assert "C-STORE" in cells[3] and cells[6] == "3" and cells[5] != "never"
    # The association the test held open (peer, AE, identity, service, objects, bytes), and
    # the per-minute charts.
    (held_row,) = [row for row in result["associations"] if row[1:2] == ["HOLDER"]]
    assert held_row[0].startswith("127.0.0.1:") and held_row[2].startswith("modality1 (")
    assert held_row[4] == "idle" and held_row[5] == "1" and held_row[6].endswith("KB")
    charts = {c["name"]: c for c in result["charts"]}
    assert set(charts) == {"stores", "queries", "failures"}
    assert charts["stores"]["bars"] == 60 and "total 3" in charts["stores"]["caption"]
    assert "total 0" in charts["failures"]["caption"]
    # The audit trail names the study: the C-STORE of the modality, the console's reads.
    assert all(STUDY in row[7] for row in result["audit"])
    stored = [row for row in result["audit"] if row[5] == "MODALITY1"]
    assert [row[1] for row in stored] == ["DICOM Instances Transferred"]
    assert stored[0][4].startswith("modality1 (") and stored[0][3] == "success"
    reads = [row for row in result["audit"] if row[6] == "operator-1@example.org"]
    assert reads and all(row[4] == "DICOMweb" for row in reads)
    assert result["after_sign_out"] == 401
    # Sign-out went on to the issuer's end_session_endpoint (RP-Initiated Logout), which
    # sent the browser back to /signed-out; the console's form-action 'self' let it.
    assert issuer.end_session_requests[-1]["client_id"] == CLIENT_ID
    assert issuer.end_session_requests[-1]["post_logout_redirect_uri"].endswith("/signed-out")
    # Nothing the page did put patient data in a URL, and nothing was blocked by the CSP.
    for url in map(unquote, result["urls"]):
        for secret in (PATIENT_NAME, "Console", PATIENT_ID, "Testpatient"):
            assert secret not in url, url
    assert result["csp_violations"] == []
    # The one failed load: /console/api/me after signing out (401).
    assert [e for e in result["console_errors"] if "401" not in e] == []


def test_playwright_core_is_pinned() -> None:
    """An exact version in package.json and the lock: never a browser download of its own
    (playwright-core has none; the script names /usr/bin/chromium)."""
    version = json.loads((ROOT / "package.json").read_text())["devDependencies"]["playwright-core"]
    assert version[0].isdigit()
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/playwright-core"]["version"] == version
    assert "executablePath: '/usr/bin/chromium'" in SCRIPT.read_text()
