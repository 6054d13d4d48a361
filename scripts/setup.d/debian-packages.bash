# Sourced by the scripts/setup.d/*.sh steps that need Debian packages (not a step itself: the
# name does not end in .sh, so scripts/bootstrap does not run it). Usage:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/debian-packages.bash"
#   want podman podman                   # package, then what proves it installed: a command
#   want runc runc /usr/sbin/runc        # on PATH, or an absolute path (globs allowed)
#   install_wanted "the image tests will skip (fail under CI=true)" || { [ $? = 1 ] && exit 0; exit 2; }
#
# install_wanted does nothing when every wanted package is present (no apt-get at all, so a
# second bootstrap only checks); otherwise, as root, it runs `apt-get update` once and installs
# the missing packages in one `apt-get install`. It returns 1 when not root (it names the
# missing packages and what will skip: the step ends there, successfully) and 2 when apt-get
# fails (one line on stderr names the packages and the failing command: the step must fail, so
# that scripts/bootstrap stops instead of going on as if they were installed). It does not rely
# on `set -e`, which bash ignores inside a function called left of `||`.

_wanted_missing=()

# want PACKAGE PROOF...: PACKAGE is missing unless one PROOF holds.
want() {
  local package=$1 proof
  shift
  for proof in "$@"; do
    if [[ $proof == /* ]]; then
      compgen -G "$proof" >/dev/null && return 0
    elif command -v "$proof" >/dev/null 2>&1; then
      return 0
    fi
  done
  _wanted_missing+=("$package")
}

# install_wanted CONSEQUENCE: install what want found missing; CONSEQUENCE says what skips if not.
install_wanted() {
  local step
  step=$(basename "${BASH_SOURCE[1]:-$0}")
  if [ "${#_wanted_missing[@]}" -eq 0 ]; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "$step: missing ${_wanted_missing[*]} and not root: $1" >&2
    return 1
  fi
  echo "$step: installing ${_wanted_missing[*]}" >&2
  local status=0
  DEBIAN_FRONTEND=noninteractive apt-get update -qq || status=$?
  if [ "$status" != 0 ]; then
    echo "$step: could not install ${_wanted_missing[*]}: apt-get update -qq failed (exit $status)" >&2
    return 2
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${_wanted_missing[@]}" >/dev/null \
    || status=$?
  if [ "$status" != 0 ]; then
    echo "$step: could not install ${_wanted_missing[*]}: apt-get install -y -qq ${_wanted_missing[*]} failed (exit $status)" >&2
    return 2
  fi
  _wanted_missing=()
}
