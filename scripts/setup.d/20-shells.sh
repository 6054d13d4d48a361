#!/usr/bin/env bash
# dash and busybox from Debian: the entrypoint wrapper is tested under each POSIX shell it
# promises to support (dash, bash, busybox ash), not only the one that happens to be /bin/sh.
# Idempotent: when both are present this only checks (no apt-get at all).
set -euo pipefail
missing=()
command -v dash >/dev/null 2>&1 || [ -x /usr/bin/dash ] || missing+=(dash)
command -v busybox >/dev/null 2>&1 || [ -x /bin/busybox ] || missing+=(busybox)
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "20-shells.sh: missing ${missing[*]} and not root: the wrapper tests will skip (fail under CI=true)" >&2
  exit 0
fi
echo "20-shells.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
