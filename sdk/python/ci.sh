#!/usr/bin/env bash
# The Python SDK's checks, run by .ci/run: a fresh virtualenv with the package installed from
# this directory (not editable, so the tests exercise what `pip install ./sdk/python` installs),
# then ruff, mypy --strict and pytest against the real audit-manager binary.
#
#   sdk/python/ci.sh                                  # builds target/debug/audit-manager first
#   AUDIT_MANAGER_BIN=/path/to/audit-manager sdk/python/ci.sh
#
# Needs python3 with venv, PyPI, and PostgreSQL on 127.0.0.1:5432 (user postgres, trust; or
# TEST_PG_URL).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

if [ -z "${AUDIT_MANAGER_BIN:-}" ]; then
  (cd "$repo" && cargo build --bin audit-manager)
  AUDIT_MANAGER_BIN="$repo/target/debug/audit-manager"
fi
export AUDIT_MANAGER_BIN

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check "$here[test]"

cd "$here"
echo "-- ruff (${SECONDS}s)"
"$py" -m ruff check --no-cache .
"$py" -m ruff format --no-cache --check .
echo "-- mypy --strict (${SECONDS}s)"
"$py" -m mypy --strict --cache-dir "$work/mypy-cache" src tests examples bench
echo "-- pytest (${SECONDS}s; audit-manager: $AUDIT_MANAGER_BIN)"
SDK_EXPECT_INSTALLED=1 "$py" -m pytest -q -p no:cacheprovider --durations=5
echo "-- Python SDK checks passed (${SECONDS}s)"
