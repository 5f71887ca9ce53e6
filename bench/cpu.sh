#!/usr/bin/env bash
# CPU per write: what each node process spends on a PUT, for comparing two builds where
# throughput on this shared machine is too noisy to tell them apart (±15–20 % between
# identical runs). Each pair runs the same wrk load (64 connections, bench/put.lua) against
# build A, then build B; per node process it reads from /proc, over the whole wrk run, the CPU
# time (user + system) and the context switches (all threads), and divides by the writes
# wrk completed. It also prints each node's WAL fsyncs (count and mean, from /metrics).
# The table at the end gives the median per build; compare medians of several pairs, never
# single runs.
#
# Usage: [PAIRS=5] [MODE=standalone|async|semi_sync|sync|remote_apply] [CLIENTS=64]
#        bench/cpu.sh BIN_A BIN_B [seconds-per-run]   (default 8 s)
#        MODE other than standalone runs an ha_standby pair in that sync mode (primary on
#        18101, standby on 18102) and reports both nodes.
# Needs: wrk, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,15p "$0"; exit 2; }
A=$1; B=$2; DUR=${3:-8}
PAIRS=${PAIRS:-5}; MODE=${MODE:-standalone}; CLIENTS=${CLIENTS:-64}
for v in DUR PAIRS CLIENTS; do [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer, not '${!v}'"; exit 2; }; done
case $MODE in standalone|async|semi_sync|sync|remote_apply) ;; *) echo "MODE must be standalone, async, semi_sync, sync or remote_apply, not '$MODE'"; exit 2;; esac
for b in "$A" "$B"; do [ -x "$b" ] || { echo "$b is not an executable"; exit 2; }; done
command -v wrk >/dev/null || { echo "wrk missing (apt-get install wrk)"; exit 1; }
SKIP_BUILD=1 source bench/lib.sh   # $TMP, PIDS, start(), wait_http, wait_streaming, cleanup

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s }'; }
fsyncs() { curl -s "localhost:$1/metrics" | awk '/^meridian_wal_fsync_duration_seconds_sum/ { s = $2 } /^meridian_wal_fsync_duration_seconds_count/ { c = $2 } END { printf "%d x %.3f ms", c, c ? s / c * 1000 : 0 }'; }

one() { # bin -> RESULT="PUT/s, then per node: µs per write, switches per write, [fsyncs]" (no subshell: start() must add to PIDS here)
  local bin=$1 nodes=() ports=()
  rm -rf "$TMP/a" "$TMP/ha-a" "$TMP/ha-b"
  if [ "$MODE" = standalone ]; then
    BIN=$bin start a 18100; nodes=("$LAST_PID"); ports=(18100)
  else
    BIN=$bin ha_start ha "$MODE" 1000 3s
    nodes=("$PA" "$PB"); ports=(18101 18102)
  fi
  for p in "${ports[@]}"; do wait_http "$p"; done
  [ "$MODE" = standalone ] || wait_streaming 18102
  local c0=() s0=() i
  for i in "${!nodes[@]}"; do c0+=("$(cpu_ticks "${nodes[$i]}")"); s0+=("$(switches "${nodes[$i]}")"); done
  wrk -t"$(( CLIENTS < 2 ? 1 : 2 ))" -c"$CLIENTS" -d"${DUR}"s -s bench/put.lua "http://127.0.0.1:${ports[0]}" >"$TMP/wrk.out" 2>&1
  local n rps line
  n=$(awk '/requests in/ { print $1 }' "$TMP/wrk.out"); rps=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' "$TMP/wrk.out")
  [ -n "$n" ] && [ "$n" -gt 0 ] || { echo "wrk completed no request:"; cat "$TMP/wrk.out"; exit 1; }
  line="$rps"
  for i in "${!nodes[@]}"; do
    line+=" $(awk -v a="${c0[$i]}" -v b="$(cpu_ticks "${nodes[$i]}")" -v n="$n" -v t="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (b - a) / t * 1e6 / n }')"
    line+=" $(awk -v a="${s0[$i]}" -v b="$(switches "${nodes[$i]}")" -v n="$n" 'BEGIN { printf "%.2f", (b - a) / n }')"
    line+=" [$(fsyncs "${ports[$i]}")]"
  done
  for p in "${nodes[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  PIDS=()
  RESULT=$line
}

declare -A R
echo "MODE=$MODE, $CLIENTS connections, ${DUR}s per run; per node: CPU µs per write, context switches per write, [WAL fsyncs]"
for pair in $(seq 1 "$PAIRS"); do
  for side in A B; do
    bin=$A; [ "$side" = B ] && bin=$B
    one "$bin"; R[$pair,$side]=$RESULT
    echo "pair $pair $side: ${R[$pair,$side]}"
  done
done
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { for pair in $(seq 1 "$PAIRS"); do echo "${R[$pair,$1]}" | sed 's/\[[^]]*\]//g' | awk -v i="$2" '{ print $i }'; done; }
echo
echo "medians of $PAIRS pairs: PUT/s, then per node CPU µs and context switches per write"
for side in A B; do
  bin=$A; [ "$side" = B ] && bin=$B
  out="$side ($bin): $(col $side 1 | median) PUT/s"
  nodes=1; [ "$MODE" = standalone ] || nodes=2
  for k in $(seq 1 $nodes); do
    out+=", node $k $(col $side $((2 * k)) | median) µs $(col $side $((2 * k + 1)) | median) csw"
  done
  echo "$out"
done
