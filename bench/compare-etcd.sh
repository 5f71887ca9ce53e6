#!/usr/bin/env bash
# Side-by-side PUT benchmark: Meridian standalone vs etcd 3.4 single node, both driven by
# wrk with the same script shape (16-byte keys, 256-byte values), 1/16/64 connections; then
# GET at 64 connections of 1024 loaded keys: Meridian `?consistency=local` against etcd's
# serializable range (both serve from local state without a consensus round).
# Both fsync every acknowledged write. Needs: etcd (apt-get install etcd-server), wrk.
# Usage: bench/compare-etcd.sh [seconds-per-step]   (default 10; honors CARGO_TARGET_DIR, SKIP_BUILD)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
command -v etcd >/dev/null || { echo "etcd missing: apt-get install etcd-server"; exit 1; }
command -v wrk >/dev/null || { echo "wrk missing: apt-get install wrk"; exit 1; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-./target}/release/meridian
TMP=$(mktemp -d)
MPORT=17474; EPORT=12379
cleanup() { [ -n "${MPID:-}" ] && kill "$MPID" 2>/dev/null; [ -n "${EPID:-}" ] && kill "$EPID" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

start_meridian() {
  MERIDIAN_DATA_DIR=$TMP/meridian MERIDIAN_HTTP_ADDR=127.0.0.1:$MPORT MERIDIAN_LOG_LEVEL=warn \
    "$BIN" >"$TMP/meridian.log" 2>&1 & MPID=$!
  for i in $(seq 1 100); do curl -sf localhost:$MPORT/health >/dev/null && return; sleep 0.1; done
  echo "meridian did not start"; exit 1
}
start_etcd() {
  etcd --data-dir "$TMP/etcd" --listen-client-urls http://127.0.0.1:$EPORT \
    --advertise-client-urls http://127.0.0.1:$EPORT --listen-peer-urls http://127.0.0.1:12380 \
    --initial-advertise-peer-urls http://127.0.0.1:12380 --initial-cluster default=http://127.0.0.1:12380 \
    --log-level error >"$TMP/etcd.log" 2>&1 & EPID=$!
  for i in $(seq 1 100); do curl -sf localhost:$EPORT/health >/dev/null && return; sleep 0.1; done
  echo "etcd did not start"; exit 1
}

run() { # target port conns -> "rps p50ms p99ms errors"
  local t=$(( $3 < 2 ? 1 : 2 ))
  TARGET=$1 wrk -t$t -c$3 -d${DUR}s --latency -s bench/put.lua "http://127.0.0.1:$2" >"$TMP/wrk.out" 2>&1
  awk -v OFS=' ' '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 }
    / 50%/ { p50=ms($2) } / 99%/ { p99=ms($2) }
    /Non-2xx/ { err=$NF }
    END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, err }' "$TMP/wrk.out"
}

# Each server runs alone on the machine while it is measured (side by side, one disturbs the other).
VALUE=$(printf 'v%.0s' $(seq 1 256)); VALUE_B64=$(printf %s "$VALUE" | base64 -w0)
load_keys() { # target port: PUT r000000000000001..r000000000001024 (bench/raft.lua's read keys)
  local i k
  for i in $(seq 1 1024); do
    k=$(printf 'r%015d' "$i")
    if [ "$1" = etcd ]; then echo "url = \"http://127.0.0.1:$2/v3/kv/put\""; echo "data = \"{\\\"key\\\":\\\"$(printf %s "$k" | base64 -w0)\\\",\\\"value\\\":\\\"$VALUE_B64\\\"}\""
    else echo "url = \"http://127.0.0.1:$2/v1/kv/$k\""; echo "upload-file = \"$TMP/value\""; fi
    echo 'output = "/dev/null"'; echo 'write-out = "%{http_code}\n"'; [ "$i" = 1024 ] || echo next
  done >"$TMP/load.cfg"
  printf %s "$VALUE" >"$TMP/value"
  local ok; ok=$(curl -s -K "$TMP/load.cfg" | grep -c '^200$' || true)
  [ "$ok" = 1024 ] || { echo "$1: only $ok of 1024 keys loaded"; exit 1; }
}
get_run() { # target port -> "rps p50ms p99ms errors" (64 connections, local / serializable)
  TARGET=$1 OP=get READ=local KEYS=1024 wrk -t2 -c64 -d${DUR}s --latency -s bench/raft.lua "http://127.0.0.1:$2" >"$TMP/wrk.out" 2>&1
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 }
    / 50%/ { p50=ms($2) } / 99%/ { p99=ms($2) }
    /Non-2xx/ { err=$NF }
    END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, err }' "$TMP/wrk.out"
}

declare -A M E
start_meridian
for c in 1 16 64; do M[$c]=$(run meridian $MPORT $c); done
load_keys meridian $MPORT; MG=$(get_run meridian $MPORT)
kill "$MPID"; wait "$MPID" 2>/dev/null || true; MPID=
start_etcd
for c in 1 16 64; do E[$c]=$(run etcd $EPORT $c); done
load_keys etcd $EPORT; EG=$(get_run etcd $EPORT)
kill "$EPID"; wait "$EPID" 2>/dev/null || true; EPID=

printf "%-8s %12s %9s %9s | %12s %9s %9s | %9s %s\n" clients "meridian/s" "p50 ms" "p99 ms" "etcd/s" "p50 ms" "p99 ms" "ratio" "p99 ok?"
for c in 1 16 64; do
  read -r mr m50 m99 merr <<<"${M[$c]}"
  read -r er e50 e99 eerr <<<"${E[$c]}"
  ratio=$(awk -v a="$mr" -v b="$er" 'BEGIN { printf "%.2fx", (b>0)?a/b:0 }')
  ok=$(awk -v a="$m99" -v b="$e99" 'BEGIN { print (a<=b)?"yes":"no" }')
  printf "%-8s %12s %9s %9s | %12s %9s %9s | %9s %s\n" "$c" "$mr" "$m50" "$m99" "$er" "$e50" "$e99" "$ratio" "$ok"
  if [ "$merr" != "0" ] || [ "$eerr" != "0" ]; then echo "  (non-2xx: meridian $merr, etcd $eerr)"; fi
done
read -r mr m50 m99 merr <<<"$MG"
read -r er e50 e99 eerr <<<"$EG"
printf "%-8s %12s %9s %9s | %12s %9s %9s | %9s %s\n" "GET 64" "$mr" "$m50" "$m99" "$er" "$e50" "$e99" "$(awk -v a="$mr" -v b="$er" 'BEGIN { printf "%.2fx", (b>0)?a/b:0 }')" "$(awk -v a="$m99" -v b="$e99" 'BEGIN { print (a<=b)?"yes":"no" }')"
echo "(GET 64: Meridian consistency=local vs etcd serializable range, 1024 keys)"
if [ "$merr" != "0" ] || [ "$eerr" != "0" ]; then echo "  (non-2xx: meridian $merr, etcd $eerr)"; fi
