#!/usr/bin/env bash
# Read benchmark for ha_standby: GET throughput and p50/p99 at 1/16/64 clients, `local` and
# `linearizable`, on the primary and on the standby of one async pair, and on a standalone
# node for reference; ratios to the standalone local read, measured in the same run.
# Usage: bench/ha-reads.sh [seconds-per-step]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
source bench/lib.sh
bench() { "$BIN" bench --url "http://127.0.0.1:$1" --clients 1,16,64 --duration "${DUR}s" --reads "$2" | tail -3; }

declare -A R  # R[case,clients] = "ops p50 p99"
run() { # case port consistency
  echo "== $1"; local out; out=$(bench "$2" "$3"); echo "$out"
  while read -r c ops p50 p99 err; do R[$1,$c]="$ops $p50 $p99"; done <<<"$out"
}

start standalone 18300; wait_http 18300
run "standalone local" 18300 local
kill "${PIDS[0]}"; wait 2>/dev/null || true; PIDS=()

common=(MERIDIAN_CLUSTER_MODE=ha_standby MERIDIAN_CLUSTER_HA_SYNC_MODE=async)
start a 18301 "${common[@]}" MERIDIAN_CLUSTER_NODE_ID=a MERIDIAN_CLUSTER_BIND_ADDR=127.0.0.1:18401 MERIDIAN_CLUSTER_HA_ROLE=primary MERIDIAN_CLUSTER_HA_PEER_ADDR=127.0.0.1:18402
start b 18302 "${common[@]}" MERIDIAN_CLUSTER_NODE_ID=b MERIDIAN_CLUSTER_BIND_ADDR=127.0.0.1:18402 MERIDIAN_CLUSTER_HA_ROLE=standby MERIDIAN_CLUSTER_HA_PEER_ADDR=127.0.0.1:18401
wait_http 18301; wait_http 18302; wait_streaming 18302
run "primary local" 18301 local
run "primary linearizable" 18301 linearizable
run "standby local" 18302 local
run "standby linearizable" 18302 linearizable

echo
echo "GET/s (p50 ms / p99 ms) and the ratio to standalone local reads"
printf "%-22s %-30s %-30s %-30s\n" case "1 client" "16 clients" "64 clients"
for case in "standalone local" "primary local" "primary linearizable" "standby local" "standby linearizable"; do
  printf "%-22s" "$case"
  for c in 1 16 64; do
    read -r ops p50 p99 <<<"${R[$case,$c]}"
    base=${R[standalone local,$c]%% *}
    printf " %-30s" "$(printf "%.0f (%.2f / %.2f) %.2fx" "$ops" "$p50" "$p99" "$(awk -v a="$ops" -v b="$base" 'BEGIN { print a/b }')")"
  done
  echo
done
