#!/bin/sh
# Programming-at-scale benchmark of Globalnet's nftables table against the
# iptables ways, inside a throwaway network namespace (deleted on exit).
#   globalnet/bench/run.sh [--exports 10000] [--endpoints 3] [--per-rule N]
# Needs root, nft, iptables (iptables-legacy optional).
set -eu
cd "$(dirname "$0")/../.."
cargo build --release -q -p causeway-globalnet --example bench_nat
NS="cwbench-$$-$(date +%s)"
ip netns add "$NS"
trap 'ip netns del "$NS"' EXIT INT TERM
ip netns exec "$NS" ./target/release/examples/bench_nat "$@"
