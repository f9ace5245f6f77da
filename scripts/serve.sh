#!/usr/bin/env bash
# Install MIMIC into ./.venv (dependencies at the versions in constraints.txt) and start it
# on the embedded default (SQLite + files + dev CA).
# Any argument is passed to 'mimic serve' (see 'mimic serve --help').
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt .
exec .venv/bin/mimic serve "$@"
