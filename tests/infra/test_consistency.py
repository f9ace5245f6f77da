"""The deployment pieces agree: azure.yaml is valid for azd, every MIMIC_* variable the image
and infra set is a real setting, ports agree everywhere, names and parameters match up."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from mimic_server.config import Settings
from tests.infra.deployment import (
    INFRA,
    ROOT,
    TOOLS,
    bicep_int_var,
    bicep_mimic_variables,
    bicep_params,
    dockerfile_stages,
    needs_tools,
)

SCHEMA = Path(__file__).with_name("azure.yaml.schema.json")
APP = INFRA / "mimic.bicep"
MAIN = INFRA / "main.bicep"


def _setting_names() -> set[str]:
    return {f"MIMIC_{name.upper()}" for name in Settings.model_fields}


def _runtime_env() -> dict[str, str]:
    return dockerfile_stages()[-1].env


@pytest.fixture(scope="module")
def azure_yaml() -> dict:
    """azure.yaml as JSON, validated against the azd v1.0 rules in azure.yaml.schema.json."""
    script = (
        "import json, sys, yaml, jsonschema\n"
        "doc = yaml.safe_load(open(sys.argv[1]))\n"
        "jsonschema.Draft201909Validator(json.load(open(sys.argv[2]))).validate(doc)\n"
        "print(json.dumps(doc))\n"
    )
    result = subprocess.run(
        [str(TOOLS / "python"), "-c", script, str(ROOT / "azure.yaml"), str(SCHEMA)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@needs_tools
def test_azure_yaml_builds_the_dockerfile_into_a_container_app(azure_yaml: dict) -> None:
    service = azure_yaml["services"]["mimic"]
    assert service["host"] == "containerapp"
    assert (ROOT / service["project"] / service["docker"]["path"]).resolve() == ROOT / "Dockerfile"
    infra = ROOT / azure_yaml["infra"]["path"]
    assert (infra / f"{azure_yaml['infra']['module']}.bicep").is_file()
    assert (infra / f"{service['module']}.bicep").is_file()
    assert (infra / f"{service['module']}.parameters.json").is_file()
    for hook in azure_yaml["hooks"].values():
        for platform in hook.values():
            assert (ROOT / platform["run"]).is_file(), platform["run"]


@needs_tools
def test_the_azd_service_tag_names_the_azure_yaml_service(azure_yaml: dict) -> None:
    tags = re.findall(r"'azd-service-name':\s*'([^']+)'", APP.read_text())
    assert tags == list(azure_yaml["services"])


def test_every_mimic_variable_the_image_sets_is_a_setting() -> None:
    names = {k for k in _runtime_env() if k.startswith("MIMIC_")}
    assert {"MIMIC_HOST", "MIMIC_OPS_HOST", "MIMIC_DATA_DIR"} <= names
    assert names - _setting_names() == set()


def test_every_mimic_variable_infra_sets_is_a_setting() -> None:
    names = set().union(*(bicep_mimic_variables(p) for p in INFRA.rglob("*.bicep")))
    assert {"MIMIC_DATABASE_URL", "MIMIC_DATABASE_AUTH", "MIMIC_BLOB_ACCOUNT_URL",
            "MIMIC_KEYVAULT_URL"} <= names
    assert names - _setting_names() == set()
    # No azd output or parameter value is named MIMIC_*: it would land in the azd
    # environment, where nothing checks it against the settings.
    for path in INFRA.rglob("*"):
        if path.suffix in {".bicep", ".json"}:
            assert not re.search(r"(output\s+|\$\{)MIMIC_", path.read_text()), path


def test_ports_agree_in_settings_dockerfile_and_bicep() -> None:
    fields = Settings.model_fields
    dicom, ops = fields["port"].default, fields["ops_port"].default
    env = _runtime_env()
    web = fields["web_port"].default
    exposed = {int(p) for p in dockerfile_stages()[-1].all("EXPOSE")[0].split()}
    assert (int(env["MIMIC_PORT"]), int(env["MIMIC_OPS_PORT"])) == (dicom, ops)
    assert int(env["MIMIC_WEB_PORT"]) == web
    assert exposed == {dicom, ops, web}
    assert bicep_int_var(APP, "dicomPort") == bicep_int_var(MAIN, "dicomPort") == dicom
    assert bicep_int_var(APP, "opsPort") == ops
    assert bicep_int_var(APP, "webPort") == web
    text = APP.read_text()
    assert "targetPort: dicomPort" in text and "exposedPort: dicomPort" in text
    assert "targetPort: webPort" in text  # mimic web: HTTP ingress
    # The three probes of each app: mimic serve's on the ops port, mimic web's on its own.
    assert re.findall(r"port:\s*(\w+)", text) == ["opsPort"] * 3 + ["webPort"] * 3


def test_the_grace_period_outlasts_the_drain() -> None:
    text = APP.read_text()
    assert "terminationGracePeriodSeconds: drainSeconds + " in text
    assert "{ name: 'MIMIC_DRAIN_SECONDS', value: string(drainSeconds) }" in text


@pytest.mark.parametrize("name", ["main", "mimic"])
def test_every_parameter_in_the_parameters_file_is_declared(name: str) -> None:
    given = json.loads((INFRA / f"{name}.parameters.json").read_text())["parameters"]
    assert set(given) <= bicep_params(INFRA / f"{name}.bicep")


def test_main_parameters_come_from_azd() -> None:
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    values = {k: v["value"] for k, v in given.items()}
    assert values["environmentName"] == "${AZURE_ENV_NAME}"
    assert values["location"] == "${AZURE_LOCATION}"
    assert values["principalId"] == "${AZURE_PRINCIPAL_ID}"


def test_the_app_parameters_are_main_outputs_or_azd_variables() -> None:
    outputs = set(re.findall(r"^output\s+(\w+)\s", MAIN.read_text(), re.MULTILINE))
    azd = {"AZURE_ENV_NAME", "AZURE_LOCATION", "SERVICE_MIMIC_IMAGE_NAME"}
    given = json.loads((INFRA / "mimic.parameters.json").read_text())["parameters"]
    for param in given.values():
        for variable, default in re.findall(r"\$\{(\w+)(=[^}]*)?\}", param["value"]):
            assert variable in outputs | azd or default, variable
    assert {"ARCHIVE_HOST_NAME", "ARCHIVE_PORT", "AZURE_KEY_VAULT_NAME",
            "AZURE_CONTAINER_REGISTRY_ENDPOINT"} <= outputs


def _bicep_int_param(path: Path, name: str) -> int:
    match = re.search(rf"^param\s+{name}\s+int\s*=\s*(\d+)\s*$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} declares no int param {name} with a default"
    return int(match.group(1))


def _user_connections_by_sku() -> dict[str, int]:
    text = MAIN.read_text()
    block = re.search(r"var postgresUserConnectionsBySku = \{(.*?)\n\}", text, re.DOTALL)
    assert block
    return {k: int(v) for k, v in re.findall(r"^\s*(\w+):\s*(\d+)\s*$", block.group(1),
                                              re.MULTILINE)}


def test_the_database_connections_are_budgeted_for_every_process() -> None:
    """Every process of both apps at their maximum scale holds a pool of its own: together
    with the connections kept for migrations and maintenance they must stay within what
    PostgreSQL allows its users, or connections past it are refused with their C-STOREs.
    The template's arithmetic, done again here with its own numbers for each listed size."""
    by_sku = _user_connections_by_sku()
    default_sku = re.search(r"^param postgresSkuName string = '(\w+)'", MAIN.read_text(),
                            re.MULTILINE)
    assert default_sku and by_sku[default_sku.group(1)] == 35 == min(by_sku.values())
    # A size not listed counts as the smallest.
    assert "postgresUserConnectionsBySku[postgresSkuName] : 35\n" in MAIN.read_text()
    # The app's default, for an environment provisioned before the output existed: the smallest.
    given = json.loads((INFRA / "mimic.parameters.json").read_text())["parameters"]
    assert given["postgresUserConnections"]["value"] == "${AZURE_POSTGRES_USER_CONNECTIONS=35}"
    assert _bicep_int_param(APP, "postgresUserConnections") == 35

    text = APP.read_text()
    reserved = bicep_int_var(APP, "reservedConnections")
    processes = (_bicep_int_param(APP, "maxReplicas") * bicep_int_var(APP, "archiveWorkers")
                 + _bicep_int_param(APP, "webMaxReplicas") * bicep_int_var(APP, "webWorkers"))
    assert ("var databaseProcesses = maxReplicas * archiveWorkers + (webEnabled ? "
            "webMaxReplicas * webWorkers : 0)") in text
    assert ("var databasePoolSize = min(32, max(2, (postgresUserConnections - "
            "reservedConnections) / databaseProcesses))") in text
    assert "{ name: 'MIMIC_DATABASE_POOL_SIZE', value: string(databasePoolSize) }" in text
    pool_field = Settings.model_fields["database_pool_size"]
    for sku, connections in by_sku.items():
        for apps in (processes, _bicep_int_param(APP, "maxReplicas")):  # web app on, off
            for scale in range(1, apps + 1):  # any smaller maxima too
                pool = min(32, max(2, (connections - reserved) // scale))
                assert scale * pool + reserved <= connections, (sku, scale)
                # A value the setting takes: a refused one stopped every replica at start.
                Settings(database_pool_size=pool)
    assert pool_field.default == 32
    assert min(32, max(2, (35 - reserved) // processes)) == 3  # B1ms, 6 + 4 replicas
    # One worker per replica is MIMIC_WORKERS' default at the containers' 1.0 vCPU.
    assert re.findall(r"resources: \{ cpu: json\('([\d.]+)'\)", text) == [
        "0.5", "1.0", "0.5", "1.0"]
    assert bicep_int_var(APP, "archiveWorkers") == bicep_int_var(APP, "webWorkers") == 1
