#!/usr/bin/env bash
# libfaketime from Debian (package faketime): the credential tests move the clock of the agent
# and of moto's server (LD_PRELOAD, FAKETIME_TIMESTAMP_FILE) to reach a credential refresh
# deterministically, instead of waiting out an STS session or racing a test-only setting.
# Idempotent: when the library is present this only checks (no apt-get at all).
set -euo pipefail
for lib in /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketimeMT.so.1; do
  [ -e "$lib" ] && exit 0
done
if [ "$(id -u)" != 0 ]; then
  echo "40-faketime.sh: libfaketime missing and not root: the credential refresh tests will skip (fail under CI=true)" >&2
  exit 0
fi
echo "40-faketime.sh: installing faketime" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq faketime >/dev/null
