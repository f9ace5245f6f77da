"""WADO-RS frames of a large object through ``mimic web``, one request after another: the
object was stored over DIMSE (pynetdicom to ``mimic serve``), each frame comes back as
stored, and the process holds one verified copy of it (an anonymous file in the spool
directory), not one per request (``web/dicomweb/kept_copies.py``; the store reads are counted
in ``tests/unit/test_kept_copies.py``)."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore

from tests.large_objects import large_image
from tests.oidc_double import OidcIssuerDouble
from tests.support import MimicProcess, associate, client_context
from tests.web_support import AUDIENCE, WebProcess

FRAMES = 'multipart/related; type="application/octet-stream"'


def _copies_held(pid: int, spool: Path) -> int:
    """The files of ``spool`` the process holds open: its anonymous copies."""
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        held += target.startswith(str(spool.resolve()) + "/")
    return held


def test_frames_of_a_large_object_come_from_one_kept_copy(tmp_path: Path) -> None:
    data, ds = large_image(512, 512, 24, ExplicitVRLittleEndian)  # 12 MiB: over 8 MiB
    path = tmp_path / "large.dcm"
    path.write_bytes(data)
    issuer = OidcIssuerDouble(tmp_path / "oidc").start()
    server = MimicProcess(tmp_path / "data").start()
    web = WebProcess(tmp_path / "data", issuer)
    try:
        web.start()
        assoc = associate(server.port, client_context(server.client_cert, server.client_key,
                                                      server.ca_cert),
                          contexts=[SecondaryCaptureImageStorage],
                          transfer_syntaxes=[ExplicitVRLittleEndian])
        assert assoc.send_c_store(path).Status == 0
        assoc.release()
        client = web_client(web, issuer)
        frame = 512 * 512 * 2
        for number in (1, 24, 7, 2):
            got = client.retrieve_instance_frames(
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                frame_numbers=[number], media_types=("application/octet-stream",))
            assert got == [ds.PixelData[(number - 1) * frame:number * frame]]
        assert web.proc is not None
        assert _copies_held(web.proc.pid, tmp_path / "data" / "spool") == 1
    finally:
        assert web.stop() == 0, web.log()
        assert server.stop() == 0, server.log()
        issuer.stop()


def web_client(web: WebProcess, issuer: OidcIssuerDouble):  # type: ignore[no-untyped-def]
    from dicomweb_client.api import DICOMwebClient

    token = issuer.mint(audience=AUDIENCE, roles=["Radiologist"])
    return DICOMwebClient(web.url, headers={"Authorization": f"Bearer {token}"})
