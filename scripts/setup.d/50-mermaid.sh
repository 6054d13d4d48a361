#!/usr/bin/env bash
# The real mermaid parser (npm mermaid and jsdom, exact versions in tests/mermaid/package-lock.json)
# into .tools/mermaid (git-ignored): tests/test_docs.py parses every ```mermaid block of the README
# and docs/ with it, so a diagram that GitHub could not draw fails a test.
# Idempotent: fast when the lock is unchanged since the last install.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.d/debian-packages.bash
LOCK=tests/mermaid/package-lock.json
TARGET=.tools/mermaid
STAMP="$TARGET/.installed-$(sha256sum "$LOCK" | cut -c1-16)"
if [ -f "$STAMP" ] && [ -d "$TARGET/node_modules/mermaid" ]; then
  exit 0
fi
want npm npm
install_wanted "the diagram check will skip (fail under CI=true)" \
  || { [ $? = 1 ] && exit 0; exit 2; }
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "50-mermaid.sh: jsdom needs node 20 or later, found $(node --version): the diagram check will skip (fail under CI=true)" >&2
  exit 0
fi
started=$(date +%s)
rm -rf "$TARGET"
mkdir -p "$TARGET"
cp tests/mermaid/package.json "$LOCK" "$TARGET/"
( cd "$TARGET" && npm ci --silent --no-audit --no-fund >/dev/null )
touch "$STAMP"
echo "installed mermaid $(node -p "require('./$TARGET/node_modules/mermaid/package.json').version") into $TARGET in $(( $(date +%s) - started )) s"
