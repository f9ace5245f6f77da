"""The deployment script that makes the first server certificate in Key Vault, run with a
stand-in ``az``: it makes the certificate once, leaves an existing one alone, and waits out
the vault's refusals while its identity's role is on its way (Key Vault's refusal says
"Assignment: (not found)", which is not the certificate's absence)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.infra.deployment import INFRA, bicep_parsed, needs_tools

pytestmark = needs_tools
MODULE = INFRA / "modules" / "server-certificate.bicep"

FAKE_AZ = r"""#!/bin/sh
echo "$*" >> "$FAKE_VAULT/calls"
refused=$(cat "$FAKE_VAULT/refusals" 2>/dev/null || echo 0)
if [ "$refused" -gt 0 ]; then
  echo $((refused - 1)) > "$FAKE_VAULT/refusals"
  echo "ERROR: (Forbidden) Caller is not authorized to perform action on resource." >&2
  echo "Action: 'Microsoft.KeyVault/vaults/certificates/read'" >&2
  echo "Assignment: (not found)" >&2
  echo "Code: Forbidden" >&2
  echo 'Inner error: {"code": "ForbiddenByRbac"}' >&2
  exit 1
fi
case "$1 $2 $3" in
  "keyvault certificate show")
    if [ -f "$FAKE_VAULT/certificate" ]; then
      echo "https://kv.vault.azure.net/certificates/$CERT/v1"; exit 0
    fi
    echo "ERROR: (CertificateNotFound) A certificate with (name/id) $CERT" \
      "was not found in this key vault." >&2
    exit 3 ;;
  "keyvault certificate create")
    echo "v$(ls "$FAKE_VAULT" | grep -c '^issued')" >> "$FAKE_VAULT/certificate"
    touch "$FAKE_VAULT/issued-$(date +%s%N)"
    exit 0 ;;
esac
echo "unexpected az call: $*" >&2
exit 2
"""


def _run(tmp: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        for name, body in (("az", FAKE_AZ),
                           ("sleep", '#!/bin/sh\necho "sleep $*" >> "$FAKE_VAULT/pauses"\n')):
            tool = bin_dir / name
            tool.write_text(body)
            tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    config = bicep_parsed(MODULE)["resources"]["script"]["config"]
    script = config["properties"]["scriptContent"]
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_VAULT": str(tmp),
           "VAULT": "kv-test", "CERT": "mimic-server", "POLICY": "{}"}
    return subprocess.run(["sh", "-c", script], cwd=work, env=env, capture_output=True,
                          text=True, timeout=60)


def _calls(tmp: Path) -> list[list[str]]:
    return [c.split()[:3] for c in (tmp / "calls").read_text().splitlines()]


def test_a_refusal_while_the_role_is_on_its_way_is_waited_out(tmp_path: Path) -> None:
    """Refused twice (the role not yet at the vault): the script waits, then issues the
    certificate once; it did take the refusal for an absent certificate, and its create,
    refused too, failed the deployment."""
    (tmp_path / "refusals").write_text("2")
    first = _run(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _calls(tmp_path) == [["keyvault", "certificate", "show"]] * 3 + [
        ["keyvault", "certificate", "create"]]
    assert len((tmp_path / "pauses").read_text().splitlines()) == 2

    # Provisioned again, refused again meanwhile: the certificate (its CA's, perhaps) is
    # left alone, no second one issued over it.
    (tmp_path / "calls").unlink()
    (tmp_path / "refusals").write_text("2")
    again = _run(tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _calls(tmp_path) == [["keyvault", "certificate", "show"]] * 3
    assert (tmp_path / "certificate").read_text().splitlines() == ["v0"]
