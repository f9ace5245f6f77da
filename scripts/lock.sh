#!/usr/bin/env bash
# Regenerate constraints.txt: the exact version of every runtime, test and bench dependency, as
# installed in a fresh virtual environment from pyproject.toml's ranges (scripts/test.sh and
# scripts/serve.sh install with -c constraints.txt, so every install gets these versions).
#
#   scripts/lock.sh            keep every version already pinned; add the dependencies that
#                              pyproject.toml gained, drop the ones it lost (after a merge)
#   scripts/lock.sh --upgrade  resolve everything anew: the newest versions within the ranges
#
# Afterwards run scripts/test.sh: tests/unit/test_patches.py fails when a library call site
# MIMIC patches (mimic_server/patches.py) has changed in a new version.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}

pins=(-c constraints.txt)
if [ "${1:-}" = "--upgrade" ] || [ ! -f constraints.txt ]; then
  pins=()
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
if ! "$work/venv/bin/python" -m pip install --quiet "${pins[@]}" -e ".[test,bench]"; then
  echo "a pinned version no longer fits pyproject.toml: run scripts/lock.sh --upgrade" >&2
  exit 1
fi

{
  echo "# Exact versions of MIMIC's runtime and test dependencies, verified by the test suite"
  echo "# on $("$work/venv/bin/python" --version). Installed with: pip install -c constraints.txt ..."
  echo "# Regenerate with scripts/lock.sh (see docs/operator-guide.md); do not edit by hand."
  "$work/venv/bin/python" -m pip freeze --exclude-editable
} > "$work/constraints.txt"
mv "$work/constraints.txt" constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pinned distributions"
