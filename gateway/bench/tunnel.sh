#!/usr/bin/env bash
# Tunnel throughput: routed veth (no tunnel), embedded boringtun and
# wireguard-go, side by side in one run, each between two fresh network
# namespaces, iperf3 TCP. Prints a Markdown table (progress on stderr).
# Needs root, iperf3, wireguard-go and iproute2.
#
#   gateway/bench/tunnel.sh [--seconds N] [--rounds N] [--parallel N] [--wireguard-go PATH]
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in iperf3 wireguard-go ip ping; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y iperf3 wireguard-go iproute2 iputils-ping)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run as root: it builds network namespaces" >&2; exit 1; }
cargo build --release -p causeway-gateway --example tunnel_bench >&2
exec target/release/examples/tunnel_bench "$@"
