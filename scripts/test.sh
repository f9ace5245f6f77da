#!/usr/bin/env bash
# Install everything the test suite needs, then run it: ruff, then pytest.
#   system: dcmtk (DICOM peers), socat (TLS tunnel for dcmtk tools without TLS)
#   python: the project with its [test] extra, in ./.venv
#   node:   Azurite (Azure Storage emulator), pinned in package-lock.json, in ./node_modules
# Extra arguments go to pytest (e.g. scripts/test.sh -k store -x).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}

need=()
for tool in storescu:dcmtk socat:socat; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

if [ ! -x node_modules/.bin/azurite-blob ]; then
  command -v npm >/dev/null 2>&1 || { echo "npm is needed for Azurite (install Node.js)"; exit 1; }
  npm ci --no-audit --no-fund --loglevel=error
fi

.venv/bin/ruff check mimic_server tests bench
exec .venv/bin/python -m pytest "$@"
