#!/usr/bin/env bash
# The real magnus (magnus-extensions[aws] 0.2.13, magnus 0.4.22) for tests/test_magnus.py, in a
# virtual environment of its own at .tools/magnus-venv (git-ignored): its old pins (pydantic 1,
# ...) never touch the agent's .venv. Exact versions and hashes: tests/magnus/requirements.lock.
# Idempotent: fast when the lock is unchanged since the last install.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
VENV=.tools/magnus-venv
LOCK=tests/magnus/requirements.lock
STAMP="$VENV/.installed-$(sha256sum "$LOCK" | cut -c1-16)"
if [ -f "$STAMP" ] && [ -x "$VENV/bin/magnus" ]; then
  exit 0
fi
started=$(date +%s)
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
  --no-deps -r "$LOCK" 2> >(grep -v "^WARNING: Location" >&2)
"$VENV/bin/magnus" --help >/dev/null
touch "$STAMP"
echo "installed $("$VENV/bin/python" -m pip show magnus-extensions 2>/dev/null | grep '^Version' \
  | sed 's/Version: /magnus-extensions /') into $VENV in $(( $(date +%s) - started )) s"
