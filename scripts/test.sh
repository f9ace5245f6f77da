#!/usr/bin/env bash
# Install everything the test suite needs, then run it: ruff, then pytest.
#   system: dcmtk (DICOM peers), socat (TLS tunnel for dcmtk tools without TLS),
#           PostgreSQL (the index tests run on SQLite and PostgreSQL)
#   python: the project with its [test] extra, in ./.venv
#   node:   Azurite (Azure Storage emulator), pinned in package-lock.json, in ./node_modules
#   tools:  checkov, hadolint, pycep-parser (Dockerfile and infra/ checks), pinned in
#           scripts/infra-tools.txt, in ./.venv-tools (checkov pins packages of its own)
# Extra arguments go to pytest (e.g. scripts/test.sh -k store -x).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}

need=()
for tool in storescu:dcmtk socat:socat npm:npm runuser:util-linux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
# PostgreSQL: the tests use the server on 127.0.0.1:5432 when one answers, otherwise they
# start their own cluster from the installed binaries.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

if ! cmp -s scripts/infra-tools.txt .venv-tools/infra-tools.txt; then
  rm -rf .venv-tools
  "$PYTHON" -m venv .venv-tools
  .venv-tools/bin/python -m pip install --quiet -r scripts/infra-tools.txt
  cp scripts/infra-tools.txt .venv-tools/infra-tools.txt
fi

if [ ! -x node_modules/.bin/azurite-blob ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

.venv/bin/ruff check mimic_server tests bench
exec .venv/bin/python -m pytest "$@"
