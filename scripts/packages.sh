# Debian packages Causeway's scripts need, installed only when missing.
# Sourced by scripts/demo.sh and scripts/test.sh.

# What the lab and the daemons run: nft, ip, curl in pods, etcd as the
# broker, conntrack, ping.
RUNTIME_PACKAGES=(iproute2 nftables iptables conntrack curl iputils-ping etcd-server etcd-client procps)
# What building and the tests need on top: protoc for etcd-client, dig,
# nc (the MCS conformance mirrors probe with it, as the upstream suite does),
# iperf3, wireguard-go to compare against, dnsperf and knot for the DNS
# benchmarks, a C toolchain for -sys crates.
TEST_PACKAGES=(build-essential pkg-config protobuf-compiler bind9-dnsutils netcat-openbsd iperf3 wireguard-tools wireguard-go dnsperf knot)

require_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: $0 must run as root: the lab builds network namespaces and nftables rules" >&2
    exit 1
  fi
}

ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || {
    echo "error: cargo is missing: install Rust with rustup (https://rustup.rs)" >&2
    exit 1
  }
  if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  fi
}
