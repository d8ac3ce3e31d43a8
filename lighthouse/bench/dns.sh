#!/usr/bin/env bash
# DNS benchmark: Causeway's DNS server against Knot DNS serving the same
# records as a zone, on 127.0.0.1, in one run.
#
#   lighthouse/bench/dns.sh [SERVICES] [RATE] [SECONDS]
#
# SERVICES  imported services in the record set (default 1000)
# RATE      fixed query rate for the latency run, below saturation (default 5000)
# SECONDS   length of each dnsperf run (default 10)
#
# Needs the Debian packages dnsperf and knot (knotd). Prints a Markdown table:
# max QPS (dnsperf unthrottled, 4 clients, 100 outstanding) and latency
# percentiles at the fixed rate (dnsperf -Q RATE -v, per-query latencies).
set -euo pipefail

SERVICES=${1:-1000}
RATE=${2:-5000}
DURATION=${3:-10}

for tool in dnsperf knotd; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y dnsperf knot)" >&2; exit 1; }
done

root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/causeway-dns-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && cargo build --release -q -p causeway-lighthouse --example dns_bench_server)

port_causeway=$((20000 + RANDOM % 20000))
port_knot=$((port_causeway + 1))

"$root/target/release/examples/dns_bench_server" "127.0.0.1:$port_causeway" "$SERVICES" "$work" \
    >"$work/causeway.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q ready "$work/causeway.log" && break; sleep 0.1; done
grep -q ready "$work/causeway.log" || { cat "$work/causeway.log" >&2; exit 1; }

mkdir -p "$work/run" "$work/db"
cat >"$work/knot.conf" <<CONF
server:
    rundir: "$work/run"
    listen: 127.0.0.1@$port_knot
database:
    storage: "$work/db"
log:
  - target: stderr
    any: error
zone:
  - domain: clusterset.local
    storage: "$work"
    file: "clusterset.local.zone"
CONF
knotd -c "$work/knot.conf" >"$work/knot.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    dig +short +time=1 +tries=1 -p "$port_knot" @127.0.0.1 dns-version.clusterset.local TXT 2>/dev/null | grep -q 1.0.0 && break
    sleep 0.1
done

# Both must give the same answer before they are compared.
a=$(dig +short -p "$port_causeway" @127.0.0.1 svc-1.bench.svc.clusterset.local A)
b=$(dig +short -p "$port_knot" @127.0.0.1 svc-1.bench.svc.clusterset.local A)
[ -n "$a" ] && [ "$a" = "$b" ] || { echo "answers differ: causeway '$a', knot '$b'" >&2; cat "$work/knot.log" >&2; exit 1; }

queries="$work/queries.txt"
echo "| server | max QPS | p50 ms at $RATE qps | p99 ms | max ms | lost |"
echo "|---|---|---|---|---|---|"
for target in causeway:$port_causeway knot:$port_knot; do
    name=${target%%:*}
    port=${target##*:}
    qps=$(dnsperf -s 127.0.0.1 -p "$port" -d "$queries" -l "$DURATION" -c 4 -q 100 2>&1 |
        awk '/Queries per second/ {printf "%d", $4}')
    dnsperf -s 127.0.0.1 -p "$port" -d "$queries" -l "$DURATION" -Q "$RATE" -v >"$work/$name.lat" 2>&1
    lost=$(awk '/Queries lost:/ {print $3}' "$work/$name.lat")
    grep '^> ' "$work/$name.lat" | awk '{print $NF * 1000}' | sort -n >"$work/$name.sorted"
    n=$(wc -l <"$work/$name.sorted")
    pct() { sed -n "$(( ($1 * n + 99) / 100 ))p" "$work/$name.sorted"; }
    printf "| %s | %s | %.3f | %.3f | %.3f | %s |\n" "$name" "$qps" "$(pct 50)" "$(pct 99)" "$(tail -1 "$work/$name.sorted")" "$lost"
done
echo
echo "records: $SERVICES services ($(grep -c . "$queries") distinct queries), $(nproc) CPUs, dnsperf $(dnsperf -h 2>&1 | awk '/^Version/ {print $2}' || true), $(knotd --version)"
