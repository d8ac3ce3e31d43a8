#!/usr/bin/env bash
# The main job: builds Causeway and runs `causeway lab demo`, two clusters
# with identical CIDRs in network namespaces on this machine. Installs what
# it needs. Extra arguments go to `causeway lab demo` (e.g. --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh

require_root
ensure_packages "${RUNTIME_PACKAGES[@]}" build-essential pkg-config protobuf-compiler
ensure_rust

echo "==> building causeway (release)"
cargo build --release -p causeway-cli
exec target/release/causeway lab demo "$@"
