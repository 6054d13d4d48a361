#!/usr/bin/env bash
# podman, runc and debootstrap from Debian: the image tests build the real image and run pods
# with them (crun, podman's default runtime, fails on these machines; runc works).
# Idempotent: when every tool is present this only checks (no apt-get at all).
set -euo pipefail
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing+=(runc)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "10-podman.sh: missing ${missing[*]} and not root: the image tests will skip (fail under CI=true)" >&2
  exit 0
fi
echo "10-podman.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
