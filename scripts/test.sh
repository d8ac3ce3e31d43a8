#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests, and the
# end-to-end tests in network namespaces (root). Installs what it needs.
# The end-to-end tests never skip: where they cannot run, this fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh

require_root
ensure_packages "${RUNTIME_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
ensure_rust
# A clean run gains nothing from incremental artifacts; they only fill the disk.
export CARGO_INCREMENTAL=0

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> build"
cargo build --workspace --all-targets
echo "==> Helm charts (lint, render, schema validation, drift against the binary)"
CAUSEWAY_BIN="$PWD/target/debug/causeway" helm/test.sh
echo "==> unit and component tests"
cargo test --workspace --exclude causeway-tests
echo "==> end-to-end tests (one at a time)"
CAUSEWAY_BIN="$PWD/target/debug/causeway" cargo test -p causeway-tests -- --test-threads=1
