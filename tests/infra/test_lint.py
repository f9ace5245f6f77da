"""The Dockerfile and infra/ pass hadolint and checkov, and every Bicep file parses.

checkov's skipped checks live in .checkov.yaml, each with its reason.
"""

from __future__ import annotations

import json
import re
import subprocess

from tests.infra.deployment import DOCKERFILE, INFRA, ROOT, TOOLS, bicep_files, needs_tools

pytestmark = needs_tools
CHECKOV_CONFIG = ROOT / ".checkov.yaml"


def _checkov(*args: str) -> dict:
    result = subprocess.run(
        [str(TOOLS / "checkov"), "--config-file", str(CHECKOV_CONFIG), "--skip-download",
         "--output", "json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def _failures(report: dict) -> list[str]:
    return [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range']})"
        for c in report["results"]["failed_checks"]
    ]


def test_hadolint_passes_the_dockerfile() -> None:
    result = subprocess.run(
        [str(TOOLS / "hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_passes_the_dockerfile() -> None:
    report = _checkov("--framework", "dockerfile", "--file", str(DOCKERFILE))
    assert report["summary"]["passed"] > 0
    assert _failures(report) == []


def test_checkov_passes_infra() -> None:
    report = _checkov("--framework", "bicep", "--directory", str(INFRA))
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 0
    assert _failures(report) == []


def test_every_skipped_check_says_why() -> None:
    lines = CHECKOV_CONFIG.read_text().splitlines()
    start = lines.index("skip-check:")
    skipped = 0
    for number, line in enumerate(lines[start + 1 :], start + 1):
        if re.match(r"\s+-\s", line):
            skipped += 1
            assert lines[number - 1].strip().startswith("#"), f"no reason above: {line.strip()}"
    assert skipped > 0


def test_every_bicep_file_parses() -> None:
    """pycep-parser, the parser checkov reads Bicep with (no Bicep CLI here)."""
    script = (
        "import sys; from pathlib import Path; from pycep import BicepParser\n"
        "for p in sys.argv[1:]: BicepParser().parse(file_path=Path(p))\n"
    )
    files = [str(p) for p in bicep_files()]
    assert len(files) >= 10
    result = subprocess.run(
        [str(TOOLS / "python"), "-c", script, *files], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
