#!/usr/bin/env bash
# libfaketime from Debian (package faketime): the credential tests move the clock of the agent
# and of moto's server (LD_PRELOAD, FAKETIME_TIMESTAMP_FILE) to reach a credential refresh
# deterministically, instead of waiting out an STS session or racing a test-only setting.
# Idempotent: when the library is present this only checks (no apt-get at all).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/debian-packages.bash"
want faketime '/usr/lib/*/faketime/libfaketimeMT.so.1' /usr/lib/faketime/libfaketimeMT.so.1
install_wanted "the credential refresh tests will skip (fail under CI=true)" \
  || { [ $? = 1 ] && exit 0; exit 2; }
