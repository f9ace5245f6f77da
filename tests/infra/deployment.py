"""What the deployment files say, read without Docker, Bicep CLI or Azure: the Dockerfile's
instructions, the Bicep files' parameters and MIMIC_* variables, and the linters' venv.

The linters (checkov, hadolint, pycep-parser) live in ``.venv-tools`` (scripts/test.sh makes
it from scripts/infra-tools.txt): checkov pins many packages of its own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
INFRA = ROOT / "infra"
TOOLS = ROOT / ".venv-tools" / "bin"

# Skipped only in a developer's partial run; in CI (CI=true, .ci/run) a missing linter fails,
# so a broken install in scripts/test.sh cannot pass as a skip.
needs_tools = pytest.mark.skipif(
    not (TOOLS / "checkov").exists() and os.environ.get("CI") != "true",
    reason="infra linters missing: scripts/test.sh installs them into .venv-tools",
)


@dataclass
class Stage:
    """One ``FROM`` stage of the Dockerfile: its instructions in order."""

    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    @property
    def env(self) -> dict[str, str]:
        """``ENV`` key=value pairs (the form the Dockerfile uses)."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The Dockerfile's stages, continuation lines joined and comments dropped."""
    stages: list[Stage] = []
    logical, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            stages.append(Stage(parts[-1] if len(parts) >= 3 else parts[0]))
        stages[-1].instructions.append((keyword, args))
    return stages


def copy_sources(stage: Stage) -> list[str]:
    """Sources of the stage's ``COPY`` lines that come from the build context."""
    sources: list[str] = []
    for args in stage.all("COPY"):
        words = args.split()
        if any(w.startswith("--from=") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


def bicep_params(path: Path) -> set[str]:
    return set(re.findall(r"^param\s+(\w+)\s", path.read_text(), re.MULTILINE))


def bicep_int_var(path: Path, name: str) -> int:
    match = re.search(rf"^var\s+{name}\s*=\s*(\d+)\s*$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} declares no var {name}"
    return int(match.group(1))


def bicep_mimic_variables(path: Path) -> set[str]:
    """Names of the MIMIC_* variables a Bicep file sets in a container's environment."""
    return set(re.findall(r"name:\s*'(MIMIC_\w+)'", path.read_text()))


def bicep_parsed(path: Path) -> dict:
    """A Bicep file as pycep-parser reads it (the parser checkov uses), as plain JSON.

    pycep lives in ``.venv-tools`` (see the module docstring), so it runs there; the test
    reads its result. Identifiers and literals both come back as strings."""
    script = (
        "import json, sys; from pathlib import Path; from pycep import BicepParser\n"
        "print(json.dumps(BicepParser().parse(file_path=Path(sys.argv[1])), default=str))\n"
    )
    result = subprocess.run([str(TOOLS / "python"), "-c", script, str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)
