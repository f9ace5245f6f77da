"""What ``mimic serve`` prints when it has just made the development PKI.

Apart from the server (``app.py``) so that the supervisor of worker processes, which prints
it, does not import the DICOM stack only for these lines.
"""

from __future__ import annotations

from pathlib import Path

from mimic_server.certs import devpki


def describe_first_start(pki: devpki.DevPki, port: int, ae_title: str) -> str:
    """The operator's first view: where the PKI is and dcmtk commands that work."""
    client = pki.first_client
    lines = [
        f"Development PKI created in {pki.directory}",
        f"  CA certificate (give to clients): {pki.ca_cert}",
        f"  server certificate:               {pki.server_cert}",
    ]
    if client is not None:
        lines += [
            f"  first client certificate:         {client.cert}",
            f"  first client key:                 {client.key}",
            "",
            "Try it with dcmtk:",
            "  " + dcmtk_command("echoscu", client.cert, client.key, pki.ca_cert, port, ae_title),
            "  " + dcmtk_command(
                "storescu", client.cert, client.key, pki.ca_cert, port, ae_title, "FILE.dcm"
            ),
        ]
    return "\n".join(lines)


def dcmtk_command(
    tool: str, cert: Path, key: Path, ca: Path, port: int, ae_title: str, *extra: str
) -> str:
    parts = [
        tool, "+tls", str(key), str(cert), "+cf", str(ca),
        "-aet", "MODALITY1", "-aec", ae_title, "localhost", str(port), *extra,
    ]
    return " ".join(parts)
