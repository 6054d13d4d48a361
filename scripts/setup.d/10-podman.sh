#!/usr/bin/env bash
# podman, runc and debootstrap from Debian: the image tests build the real image and run pods
# with them (crun, podman's default runtime, fails on these machines; runc works).
# Idempotent: when every tool is present this only checks (no apt-get at all).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/debian-packages.bash"
want podman podman
want runc runc /usr/sbin/runc
want debootstrap debootstrap /usr/sbin/debootstrap
install_wanted "the image tests will skip (fail under CI=true)" \
  || { [ $? = 1 ] && exit 0; exit 2; }
