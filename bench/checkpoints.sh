#!/usr/bin/env bash
# The checkpoint tail (issue 11): PUT at 64 wrk connections against a standalone node with
# checkpoints every 1s and every 1h (by time; since a1169f3 a node also checkpoints after every
# 50,000 writes, so 1h means "by volume only", no longer "off"), beside etcd 3.4 single
# node, same workload as bench/compare-etcd.sh (bench/put.lua: 16-byte keys, 256-byte values,
# every acknowledged write fsynced). With BASE_BIN=path/to/an/older/meridian the older build
# is measured the same way in the same rounds (before/after). Each server runs alone while
# measured; every round measures every configuration back to back; the table shows the
# median over ROUNDS rounds, and the ratios are medians of per-round ratios.
#
# Usage: [ROUNDS=3] [CLIENTS=64] [INTERVALS="1s 1h"] [BASE_BIN=...] bench/checkpoints.sh [seconds-per-run]
#        (default 8 s; INTERVALS: the checkpoint intervals measured, the first is the one the
#        last line compares with the last)
# Needs: etcd (apt-get install etcd-server), wrk, curl. Honors CARGO_TARGET_DIR, SKIP_BUILD.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-8}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-64}
for v in DUR ROUNDS CLIENTS; do [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer, not '${!v}'"; exit 2; }; done
for c in etcd wrk curl; do command -v $c >/dev/null || { echo "$c missing (apt-get install etcd-server wrk curl)"; exit 1; }; done
source bench/lib.sh   # build, $BIN, $TMP, PIDS, start(), wait_http
cp "$BIN" "$TMP/meridian-new"
read -r -a IV <<<"${INTERVALS:-1s 1h}"
CONFIGS=(); for i in "${IV[@]}"; do CONFIGS+=("new:$i"); done
if [ -n "${BASE_BIN:-}" ]; then cp "$BASE_BIN" "$TMP/meridian-base"; for i in "${IV[@]}"; do CONFIGS+=("base:$i"); done; fi
CONFIGS+=(etcd)
PORT=17475; EPORT=12479

run() { # target port -> "rps p50ms p99ms non2xx"
  TARGET=$1 wrk -t2 -c"$CLIENTS" -d"${DUR}"s --latency -s bench/put.lua "http://127.0.0.1:$2" >"$TMP/wrk.out" 2>&1
  awk 'function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 } / 50%/ { p50=ms($2) } / 99%/ { p99=ms($2) } /Non-2xx/ { err=$NF }
    END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, err }' "$TMP/wrk.out"
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

measure() { # config round -> figures
  local cfg=$1 r=$2 pid out
  if [ "$cfg" = etcd ]; then
    etcd --data-dir "$TMP/etcd-$r" --listen-client-urls http://127.0.0.1:$EPORT --advertise-client-urls http://127.0.0.1:$EPORT \
      --listen-peer-urls http://127.0.0.1:12480 --initial-advertise-peer-urls http://127.0.0.1:12480 \
      --initial-cluster default=http://127.0.0.1:12480 --log-level error >"$TMP/etcd.log" 2>&1 &
    pid=$!; PIDS+=("$pid")
    for _ in $(seq 1 100); do curl -sf localhost:$EPORT/health >/dev/null && break; sleep 0.1; done
    out=$(run etcd $EPORT)
  else
    local build=${cfg%%:*} every=${cfg#*:}
    env -i MERIDIAN_DATA_DIR="$TMP/$build-$every-$r" MERIDIAN_HTTP_ADDR=127.0.0.1:$PORT MERIDIAN_LOG_LEVEL=warn \
      MERIDIAN_CHECKPOINT_INTERVAL="$every" "$TMP/meridian-$build" >"$TMP/$build.log" 2>&1 &
    pid=$!; PIDS+=("$pid")
    wait_http $PORT
    out=$(run meridian $PORT)
  fi
  stop "$pid"
  echo "$out"
}

declare -A RES
for r in $(seq 1 "$ROUNDS"); do
  for cfg in "${CONFIGS[@]}"; do
    RES[$cfg:$r]=$(measure "$cfg" "$r")
    echo "round $r $cfg: ${RES[$cfg:$r]}" >&2
  done
done

median() { sort -g | awk '{ a[NR]=$1 } END { if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
col() { # cfg field(1=rps,2=p50,3=p99) -> median
  for r in $(seq 1 "$ROUNDS"); do echo "${RES[$1:$r]}" | awk -v f="$2" '{ print $f }'; done | median
}
ratio() { # cfgA cfgB field -> median of per-round A/B
  for r in $(seq 1 "$ROUNDS"); do
    a=$(echo "${RES[$1:$r]}" | awk -v f="$3" '{ print $f }'); b=$(echo "${RES[$2:$r]}" | awk -v f="$3" '{ print $f }')
    awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f\n", (b>0)?a/b:0 }'
  done | median
}
echo
echo "PUT at $CLIENTS connections, ${DUR}s per run, median of $ROUNDS rounds (build:checkpoint interval)"
printf "%-10s %10s %9s %9s | %14s %14s\n" config "PUT/s" "p50 ms" "p99 ms" "PUT/s vs etcd" "p99 vs etcd"
for cfg in "${CONFIGS[@]}"; do
  printf "%-10s %10s %9s %9s | %14s %14s\n" "$cfg" "$(col "$cfg" 1)" "$(col "$cfg" 2)" "$(col "$cfg" 3)" "$(ratio "$cfg" etcd 1)x" "$(ratio "$cfg" etcd 3)x"
done
first=${IV[0]}; last=${IV[${#IV[@]}-1]}
echo "p99 with checkpoints every $first / every $last: new $(ratio "new:$first" "new:$last" 3)x${BASE_BIN:+, base $(ratio "base:$first" "base:$last" 3)x}"
