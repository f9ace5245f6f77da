"""The console's session key in Azure: every replica of the web app signs and accepts console
sessions with one key, a Key Vault secret made once in Azure, which reaches the container as
a secret reference and is never a value in a template, parameters file, output or log.

Without it each replica (each process) drew its own random key: a session signed by one
replica was refused by the next, and every restart or scale event signed everybody out."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

from mimic_server.web.console.sessions import Signer
from tests.infra.deployment import INFRA, bicep_parsed, needs_tools

pytestmark = needs_tools
APP = INFRA / "mimic.bicep"
MAIN = INFRA / "main.bicep"
KEY_MODULE = INFRA / "modules" / "web-session-key.bicep"


def _resource(parsed: dict, name: str) -> dict:
    """A resource's body (``properties`` and the rest), through pycep's condition wrapper."""
    config = parsed["resources"][name]["config"]
    return config["config"] if "condition" in config else config


def _web_env(web: dict) -> list[dict]:
    """The mimic web container's environment entries (the concat's literal arrays)."""
    env = web["properties"]["template"]["containers"][0]["env"]
    if isinstance(env, list):
        return env
    args = env["function"]["parameters"].values()
    return [entry for arg in args if isinstance(arg, list) for entry in arg]


def test_every_web_replica_gets_the_session_key_from_a_key_vault_reference() -> None:
    web = _resource(bicep_parsed(APP), "web")
    entries = [e for e in _web_env(web) if e.get("name") == "MIMIC_WEB_SESSION_KEY"]
    assert len(entries) == 1, "the web container does not set MIMIC_WEB_SESSION_KEY"
    entry = entries[0]
    assert set(entry) == {"name", "secretRef"}, entry  # never a value
    secrets = {s["name"]: s for s in web["properties"]["configuration"].get("secrets", [])}
    secret = secrets[entry["secretRef"]]
    # A Key Vault reference read with the app's identity (Key Vault Secrets User), no
    # version: the latest. No literal value in the template.
    assert set(secret) == {"name", "keyVaultUrl", "identity"}, secret
    assert secret["keyVaultUrl"] == "${keyVaultUri}secrets/${webSessionKeySecretName}"
    assert secret["identity"] == "identityId"
    # Set there only (comments aside): no second, literal value elsewhere in the template.
    assert re.sub(r"//.*", "", APP.read_text()).count("MIMIC_WEB_SESSION_KEY") == 1


def test_the_secret_name_goes_from_provision_to_the_app_and_no_value_does() -> None:
    module = bicep_parsed(MAIN)["modules"]["webSessionKey"]
    assert module["detail"]["path"] == "modules/web-session-key.bicep"
    # Made by every provision, whether or not the web app is deployed (it is a no-op once
    # made), so the app's Key Vault reference always finds it.
    assert "condition" not in module["config"]
    assert module["config"]["params"]["secretName"] == "webSessionKeySecretName"
    text = MAIN.read_text()
    assert re.search(r"^output AZURE_KEY_VAULT_WEB_SESSION_KEY_NAME string = "
                     r"webSessionKey\.outputs\.secretName$", text, re.MULTILINE)
    given = json.loads((INFRA / "mimic.parameters.json").read_text())["parameters"]
    assert given["webSessionKeySecretName"]["value"] == (
        "${AZURE_KEY_VAULT_WEB_SESSION_KEY_NAME=mimic-web-session-key}")
    # Nothing carries the key's value: no parameter that could hold it, no output of it.
    for path in [*INFRA.rglob("*.bicep"), *INFRA.glob("*.parameters.json")]:
        body = path.read_text()
        assert not re.search(r"(?i)param\s+\w*session\w*key\w*\s+string\s*=\s*newGuid",
                             body), path
        assert "listSecrets" not in body and "getSecret" not in body, path
        assert "secretOrRandomPassword" not in body, path


def _fake_az(tmp: Path) -> Path:
    """An ``az`` that keeps one secret in ``tmp/vault`` and, as the real one, prints a secret
    it sets (its value included) unless told ``-o none``; every call is logged."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text(r"""#!/bin/sh
echo "$*" >> "$FAKE_VAULT/calls"
# Until the script identity's role has reached Key Vault: every call refused, as the vault
# words it (its refusal says "(not found)" of the role assignment, not of the secret).
refused=$(cat "$FAKE_VAULT/refusals" 2>/dev/null || echo 0)
if [ "$refused" -gt 0 ]; then
  echo $((refused - 1)) > "$FAKE_VAULT/refusals"
  echo "ERROR: (Forbidden) Caller is not authorized to perform action on resource." >&2
  echo "If role assignments, deny assignments or role definitions were changed" \
    "recently, please observe propagation time." >&2
  echo "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'" >&2
  echo "Assignment: (not found)" >&2
  echo "Code: Forbidden" >&2
  echo 'Inner error: {"code": "ForbiddenByRbac"}' >&2
  exit 1
fi
case "$1 $2 $3" in
  "keyvault secret show")
    if [ -f "$FAKE_VAULT/value" ]; then
      echo "https://kv.vault.azure.net/secrets/$SECRET/v1"; exit 0
    fi
    echo "ERROR: (SecretNotFound) A secret with (name/id) $SECRET was not found." >&2
    exit 3 ;;
  "keyvault secret set")
    file=""; quiet=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --file|-f) file="$2"; shift ;;
        -o|--output) [ "$2" = none ] && quiet=1; shift ;;
      esac
      shift
    done
    cp "$file" "$FAKE_VAULT/value"
    [ -n "$quiet" ] || echo "{\"value\": \"$(cat "$file")\"}"
    exit 0 ;;
esac
echo "unexpected az call: $*" >&2
exit 2
""")
    az.chmod(az.stat().st_mode | stat.S_IXUSR)
    # The script's pause between two tries, counted and not waited.
    pause = bin_dir / "sleep"
    pause.write_text('#!/bin/sh\necho "sleep $*" >> "$FAKE_VAULT/pauses"\n')
    pause.chmod(pause.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _run_script(tmp: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    script = _resource(bicep_parsed(KEY_MODULE), "script")["properties"]
    env_vars = {e["name"]: e["value"] for e in script["environmentVariables"]}
    assert env_vars == {"VAULT": "vaultName", "SECRET": "secretName"}
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_VAULT": str(tmp),
           "VAULT": "kv-test", "SECRET": "mimic-web-session-key"}
    return subprocess.run(["sh", "-c", script["scriptContent"]], cwd=work, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_deployment_makes_one_key_once_and_never_prints_it(tmp_path: Path) -> None:
    bin_dir = _fake_az(tmp_path)
    first = _run_script(tmp_path, bin_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    key = (tmp_path / "value").read_text()
    # What MIMIC_WEB_SESSION_KEY needs (32+ characters), with room: 48 random bytes.
    assert len(key) >= 64 and key.strip() == key and key.isascii()
    # Not in the script's log (kept with the deployment), nor on a command line, nor left
    # behind in the script's working directory.
    assert key not in first.stdout + first.stderr
    assert key not in (tmp_path / "calls").read_text()
    assert list((tmp_path / "work").iterdir()) == []

    # `azd up` again: the script runs again and leaves the key as it is (a new key would
    # sign everybody out).
    (tmp_path / "calls").unlink()
    again = _run_script(tmp_path, bin_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / "value").read_text() == key
    assert [c.split()[:3] for c in (tmp_path / "calls").read_text().splitlines()] == [
        ["keyvault", "secret", "show"]]
    assert key not in again.stdout + again.stderr

    # Two replicas with that key accept each other's console sessions.
    replica_a, replica_b = Signer(key), Signer(key)
    cookie = replica_a.seal("session", {"sub": "operator", "sid": "s" * 16}, 3600)
    assert replica_b.open("session", cookie) is not None


def test_a_second_key_drawn_is_another(tmp_path: Path) -> None:
    """The key is drawn at random, not derived from anything the deployment knows."""
    keys = []
    for run in range(2):
        state = tmp_path / str(run)
        state.mkdir()
        bin_dir = _fake_az(state)
        result = _run_script(state, bin_dir)
        assert result.returncode == 0, result.stderr
        keys.append((state / "value").read_text())
    assert keys[0] != keys[1]


def test_a_refusal_while_the_role_is_on_its_way_is_waited_out(tmp_path: Path) -> None:
    """The script identity's role takes minutes to reach Key Vault, whose refusal meanwhile
    says "Assignment: (not found)". Taken for an absent secret, the script wrote a new key
    (over an existing one: everybody signed out) or, refused that too, failed the
    deployment; it waits, then makes the key once, or leaves the existing one alone."""
    bin_dir = _fake_az(tmp_path)
    (tmp_path / "refusals").write_text("2")
    first = _run_script(tmp_path, bin_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    key = (tmp_path / "value").read_text()
    assert len(key) >= 64 and key not in first.stdout + first.stderr
    assert len((tmp_path / "pauses").read_text().splitlines()) == 2
    calls = [c.split()[:3] for c in (tmp_path / "calls").read_text().splitlines()]
    assert calls == [["keyvault", "secret", "show"]] * 3 + [["keyvault", "secret", "set"]]
    assert list((tmp_path / "work").iterdir()) == []

    # Again, the key made, the role not yet seen by every front end of the vault: the key
    # stays as it is.
    (tmp_path / "calls").unlink()
    (tmp_path / "refusals").write_text("2")
    again = _run_script(tmp_path, bin_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / "value").read_text() == key
    calls = [c.split()[:3] for c in (tmp_path / "calls").read_text().splitlines()]
    assert calls == [["keyvault", "secret", "show"]] * 3
