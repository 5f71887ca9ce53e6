#!/usr/bin/env bash
# Raft vs etcd 3.4, 3 members each on this machine (issue requirement 7), in one run:
#   - PUT/s and p50/p99 at 1/16/64 wrk connections, sent to the leader;
#   - linearizable GET/s and p50/p99 at 1/16/64 connections on the leader (Meridian
#     `GET /v1/kv/{key}?consistency=linearizable`, etcd `POST /v3/kv/range`, whose default is
#     linearizable), and the same on a follower (printed separately, no goal);
#   - failover: kill -9 of the leader -> first successful write on a survivor, ROUNDS rounds.
# Both systems get the same election timeout and heartbeat (ELECTION_MS, HEARTBEAT_MS:
# Meridian MERIDIAN_CLUSTER_RAFT_ELECTION_TIMEOUT / _HEARTBEAT_TIMEOUT, etcd
# --election-timeout / --heartbeat-interval; etcd campaigns after [T, 2T), Meridian's followers
# honour a leader lease of T and pre-vote after [T/2, T)), the same
# wrk Lua workload (bench/raft.lua: 16-byte keys, 256-byte values) and fsync every
# acknowledged write. Each cluster runs alone while it is measured (the other is stopped);
# every pass measures both back to back, alternating which goes first, and the table shows
# medians over PASSES passes (ratios: median of the per-pass ratios).
# Everything binds to 127.0.0.1; every process is stopped by PID on exit.
#
# Usage: [PASSES=1] [ROUNDS=5] [ELECTION_MS=1000] [HEARTBEAT_MS=100] [KEYS=1024] \
#        bench/raft.sh [seconds-per-step]        (default 10; DURATION=... works too)
# Needs: etcd 3.4 (apt-get install etcd-server), wrk, curl. Honors CARGO_TARGET_DIR and
# SKIP_BUILD (bench/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-${DURATION:-10}}
PASSES=${PASSES:-1}
ROUNDS=${ROUNDS:-5}
ELECTION_MS=${ELECTION_MS:-1000}
HEARTBEAT_MS=${HEARTBEAT_MS:-100}
KEYS=${KEYS:-1024}
FO_ATTEMPT_S=${FO_ATTEMPT_S:-0.5}                        # curl -m of one failover write attempt
FO_LIMIT_S=${FO_LIMIT_S:-$(( ELECTION_MS * 20 / 1000 + 10 ))} # give up on a failover round after this
CLIENTS=(1 16 64)
for v in DUR PASSES ROUNDS ELECTION_MS HEARTBEAT_MS KEYS FO_LIMIT_S; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer, not '${!v}'"; exit 2; }
done
[ "$HEARTBEAT_MS" -lt "$ELECTION_MS" ] || { echo "HEARTBEAT_MS must be below ELECTION_MS"; exit 2; }
[ "$KEYS" -le 9999 ] || { echo "KEYS must be at most 9999"; exit 2; }
for c in etcd wrk curl timeout; do command -v $c >/dev/null || { echo "$c missing (apt-get install etcd-server wrk curl)"; exit 1; }; done
ETCD_VERSION=$(etcd --version 2>&1 | sed -n 's/^etcd Version: //p')
[[ $ETCD_VERSION == 3.4.* ]] || echo "warning: not etcd 3.4: '$ETCD_VERSION'"

MH=(18601 18602 18603); MC=(18611 18612 18613)  # Meridian HTTP, cluster
EC=(12601 12602 12603); EP=(12611 12612 12613)  # etcd client, peer
for p in "${MH[@]}" "${MC[@]}" "${EC[@]}" "${EP[@]}"; do
  [ -z "$(ss -ltnH "sport = :$p" 2>/dev/null)" ] || { echo "port $p is in use; is another bench/raft.sh running?"; exit 1; }
done

source bench/lib.sh   # build, $TMP, PIDS, start()
[ -x "$BIN" ] || { echo "no binary at $BIN"; exit 1; }
# The target directory may be shared with other worktrees' builds: run a private copy of the
# binary just built, so every cluster in this run is the same code.
cp "$BIN" "$TMP/meridian"; BIN=$TMP/meridian

# --- processes -----------------------------------------------------------------------------
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ $s != Z* ]]; }
stop_pids() { # pid... : TERM, up to 10 s, then KILL; reap; forget them
  local p q any keep=()
  [ $# -gt 0 ] || return 0
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    any=0; for p in "$@"; do alive "$p" && any=1; done
    [ $any = 0 ] && break; sleep 0.1
  done
  for p in "$@"; do alive "$p" && kill -9 "$p" 2>/dev/null; { wait "$p"; } 2>/dev/null || true; done
  for q in "${PIDS[@]}"; do [[ " $* " == *" $q "* ]] || keep+=("$q"); done
  PIDS=("${keep[@]}")
}
cleanup() { stop_pids "${PIDS[@]}"; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
PIDS=()

SECRET=bench-raft-secret-$RANDOM$RANDOM$RANDOM$RANDOM
CPIDS=()   # the running cluster's PIDs, index = member
LEADER=    # the running cluster's leader, index into CPIDS
dump_logs() { for f in "$TMP"/*.log; do [ -e "$f" ] && { echo "--- $f"; tail -20 "$f"; }; done; }
die() { { echo "$*"; dump_logs; } >&2; exit 1; }   # also used inside $(...): stderr

start_meridian() { # tag
  local tag=$1 i peers="n1:127.0.0.1:${MC[0]},n2:127.0.0.1:${MC[1]},n3:127.0.0.1:${MC[2]}"
  CPIDS=()
  for i in 0 1 2; do
    start "$tag-n$((i + 1))" "${MH[$i]}" MERIDIAN_CLUSTER_MODE=raft MERIDIAN_CLUSTER_NODE_ID=n$((i + 1)) \
      MERIDIAN_CLUSTER_BIND_ADDR=127.0.0.1:${MC[$i]} MERIDIAN_CLUSTER_RAFT_PEERS=$peers \
      MERIDIAN_CLUSTER_RAFT_BOOTSTRAP=$([ $i = 0 ] && echo true || echo false) MERIDIAN_CLUSTER_SECRET=$SECRET \
      MERIDIAN_CLUSTER_HTTP_ADVERTISE_ADDR=http://127.0.0.1:${MH[$i]} \
      MERIDIAN_CLUSTER_RAFT_ELECTION_TIMEOUT=${ELECTION_MS}ms MERIDIAN_CLUSTER_RAFT_HEARTBEAT_TIMEOUT=${HEARTBEAT_MS}ms
    CPIDS[$i]=$LAST_PID
  done
}
start_etcd() { # tag
  local tag=$1 i cluster="e1=http://127.0.0.1:${EP[0]},e2=http://127.0.0.1:${EP[1]},e3=http://127.0.0.1:${EP[2]}"
  CPIDS=()
  for i in 0 1 2; do
    etcd --name e$((i + 1)) --data-dir "$TMP/$tag-e$((i + 1))" \
      --listen-client-urls http://127.0.0.1:${EC[$i]} --advertise-client-urls http://127.0.0.1:${EC[$i]} \
      --listen-peer-urls http://127.0.0.1:${EP[$i]} --initial-advertise-peer-urls http://127.0.0.1:${EP[$i]} \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "$tag-$SECRET" \
      --election-timeout "$ELECTION_MS" --heartbeat-interval "$HEARTBEAT_MS" --log-level error \
      >"$TMP/$tag-e$((i + 1)).log" 2>&1 &
    CPIDS[$i]=$!; PIDS+=("$!")
  done
}
port() { # sys member -> HTTP port
  if [ "$1" = meridian ]; then echo "${MH[$2]}"; else echo "${EC[$2]}"; fi
}
leader_of() { # sys member -> "leader" | "follower" | "" (no leader known / no answer)
  local out
  if [ "$1" = meridian ]; then
    out=$(curl -s -m 1 -w '\n%{http_code}' "127.0.0.1:${MH[$2]}/health" 2>/dev/null) || return 0
    [ "${out##*$'\n'}" = 200 ] || return 0
    if grep -q '"is_leader":true' <<<"$out"; then echo leader; else echo follower; fi
  else
    out=$(curl -s -m 1 -X POST "127.0.0.1:${EC[$2]}/v3/maintenance/status" -d '{}' 2>/dev/null) || return 0
    local me lead
    me=$(grep -o '"member_id":"[0-9]*"' <<<"$out" | grep -o '[0-9][0-9]*') || return 0
    lead=$(grep -o '"leader":"[0-9]*"' <<<"$out" | grep -o '[0-9][0-9]*') || return 0
    [ "$lead" != 0 ] || return 0
    if [ "$me" = "$lead" ]; then echo leader; else echo follower; fi
  fi
}
wait_leader() { # sys (uses CPIDS) -> sets LEADER once every member knows a leader and exactly one leads; 30 s
  local sys=$1 i r leaders n
  for _ in $(seq 1 300); do
    for i in "${!CPIDS[@]}"; do alive "${CPIDS[$i]}" || die "$sys member $((i + 1)) exited"; done
    leaders=(); n=0
    for i in "${!CPIDS[@]}"; do
      r=$(leader_of "$sys" "$i")
      [ -n "$r" ] && n=$((n + 1))
      [ "$r" = leader ] && leaders+=("$i")
    done
    if [ "$n" = "${#CPIDS[@]}" ] && [ "${#leaders[@]}" = 1 ]; then LEADER=${leaders[0]}; return 0; fi
    sleep 0.1
  done
  die "$sys: no single leader known to every member within 30 s"
}
stop_cluster() { stop_pids "${CPIDS[@]}"; CPIDS=(); LEADER=; }

# --- requests ------------------------------------------------------------------------------
b64() { printf %s "$1" | base64 -w0; }
put_once() { # sys member key timeout_s -> prints the HTTP code (000: no answer)
  local p; p=$(port "$1" "$2")
  if [ "$1" = meridian ]; then
    curl -s -o /dev/null -w '%{http_code}' -m "$4" -X PUT --data-binary v "127.0.0.1:$p/v1/kv/$3" 2>/dev/null || true
  else
    curl -s -o /dev/null -w '%{http_code}' -m "$4" -X POST "127.0.0.1:$p/v3/kv/put" -d "{\"key\":\"$(b64 "$3")\",\"value\":\"dg==\"}" 2>/dev/null || true
  fi
}
VALUE=$(printf 'v%.0s' $(seq 1 256)); VALUE_B64=$(b64 "$VALUE")
make_load_cfg() { # sys -> curl config that PUTs the KEYS keys bench/raft.lua reads, to the leader's port (filled in later)
  local i key out=$TMP/load-$1.cfg
  : >"$out"
  for i in $(seq 1 "$KEYS"); do
    key=$(printf 'r%015d' "$i")
    if [ "$1" = meridian ]; then
      printf 'url = "http://127.0.0.1:PORT/v1/kv/%s"\nrequest = "PUT"\ndata-binary = "%s"\n' "$key" "$VALUE" >>"$out"
    else
      printf 'url = "http://127.0.0.1:PORT/v3/kv/put"\nrequest = "POST"\ndata = "{\\"key\\":\\"%s\\",\\"value\\":\\"%s\\"}"\n' "$(b64 "$key")" "$VALUE_B64" >>"$out"
    fi
    printf 'output = "/dev/null"\nwrite-out = "%%{http_code}\\n"\nmax-time = 10\n' >>"$out"
    [ "$i" = "$KEYS" ] || echo next >>"$out"
  done
}
load_keys() { # sys: PUT the KEYS keys on the leader, then check one reads back linearizably
  local sys=$1 p ok body; p=$(port "$sys" "$LEADER")
  ok=$(sed "s/PORT/$p/" "$TMP/load-$sys.cfg" | timeout 120 curl -s -K - | grep -c '^200$' || true)
  [ "$ok" = "$KEYS" ] || die "$sys: only $ok of $KEYS keys loaded"
  if [ "$sys" = meridian ]; then
    body=$(curl -sf -m 5 "127.0.0.1:$p/v1/kv/r$(printf '%015d' "$KEYS")?consistency=linearizable") || die "meridian: linearizable read of a loaded key failed"
    [ "$body" = "$VALUE" ] || die "meridian: a loaded key read back wrong"
  else
    body=$(curl -sf -m 5 -X POST "127.0.0.1:$p/v3/kv/range" -d "{\"key\":\"$(b64 "r$(printf '%015d' "$KEYS")")\"}") || die "etcd: range of a loaded key failed"
    grep -q "\"value\":\"$VALUE_B64\"" <<<"$body" || die "etcd: a loaded key read back wrong: $body"
  fi
}

# wrk: one step -> "good_per_s p50_ms p99_ms errors" (errors: non-2xx + socket errors; good/s
# counts only 2xx answers).
run_wrk() { # sys member op conns
  local sys=$1 m=$2 op=$3 c=$4 t out=$TMP/wrk.out
  t=$(( c < 2 ? 1 : 2 ))
  TARGET=$sys OP=$op KEYS=$KEYS timeout $((DUR + 60)) wrk -t$t -c"$c" -d"${DUR}s" --latency -s bench/raft.lua \
    "http://127.0.0.1:$(port "$sys" "$m")" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed ($sys $op $c)"; }
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /m$/) return v * 60000; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ { rps = $2 }
    / requests in / { total = $1 }
    / 50%/ { p50 = ms($2) } / 99%/ { p99 = ms($2) }
    /Non-2xx/ { bad += $NF }
    /Socket errors/ { gsub(/,/, ""); bad += $4 + $6 + $8 + $10 }
    END { good = (total > 0) ? rps * (total - bad) / total : 0; if (good < 0) good = 0
          printf "%.0f %.3f %.3f %d\n", good, p50, p99, bad }' "$out"
}

# --- throughput passes ---------------------------------------------------------------------
declare -A R  # R[pass,sys,metric] = "good/s p50 p99 errors"; metric: put<c>, get<c>, fget<c>
measure() { # pass sys
  local pass=$1 sys=$2 c f
  echo "== pass $pass: $sys (3 members, leader = member $((LEADER + 1)))"
  for c in "${CLIENTS[@]}"; do R[$pass,$sys,put$c]=$(run_wrk "$sys" "$LEADER" put "$c"); echo "  PUT        $c: ${R[$pass,$sys,put$c]}"; done
  load_keys "$sys"
  for c in "${CLIENTS[@]}"; do R[$pass,$sys,get$c]=$(run_wrk "$sys" "$LEADER" get "$c"); echo "  GET leader $c: ${R[$pass,$sys,get$c]}"; done
  f=$(( (LEADER + 1) % 3 ))
  for c in "${CLIENTS[@]}"; do R[$pass,$sys,fget$c]=$(run_wrk "$sys" "$f" get "$c"); echo "  GET follwr $c: ${R[$pass,$sys,fget$c]}"; done
}
echo "bench/raft.sh: $(git rev-parse --short HEAD 2>/dev/null || echo '?'), etcd $ETCD_VERSION, $(nproc) cores, ${DUR}s per step, PASSES=$PASSES ROUNDS=$ROUNDS, election timeout ${ELECTION_MS} ms, heartbeat ${HEARTBEAT_MS} ms"
make_load_cfg meridian; make_load_cfg etcd
for pass in $(seq 1 "$PASSES"); do
  order=(meridian etcd); [ $((pass % 2)) = 0 ] && order=(etcd meridian)
  for sys in "${order[@]}"; do
    if [ "$sys" = meridian ]; then start_meridian "p$pass"; else start_etcd "p$pass"; fi
    wait_leader "$sys"
    measure "$pass" "$sys"
    stop_cluster; rm -rf "$TMP"/p"$pass"-*
  done
done

# --- failover ------------------------------------------------------------------------------
declare -A F  # F[round,sys] = seconds, or "none"
writer() { # sys member deadline_ns out : PUT until one succeeds (or the deadline); write the time of success to out
  local n=0 code
  while [ $n -lt 100000 ] && [ "$(date +%s%N)" -lt "$3" ]; do
    n=$((n + 1))
    code=$(put_once "$1" "$2" "failover-$2" "$FO_ATTEMPT_S")
    if [ "$code" = 200 ]; then date +%s%N >"$4.tmp"; mv "$4.tmp" "$4"; return 0; fi
    sleep 0.01
  done
}
failover_round() { # round sys
  local round=$1 sys=$2 i t0 t1 first deadline wp=() out=$TMP/fo
  if [ "$sys" = meridian ]; then start_meridian "fo$round"; else start_etcd "fo$round"; fi
  wait_leader "$sys"
  [ "$(put_once "$sys" "$LEADER" warmup 5)" = 200 ] || die "$sys: a write to the leader failed before the kill"
  sleep 1   # let the followers settle on the leader's heartbeats
  wait_leader "$sys"
  rm -f "$out".*
  t0=$(date +%s%N); deadline=$(( t0 + FO_LIMIT_S * 1000000000 ))
  kill -9 "${CPIDS[$LEADER]}"
  for i in "${!CPIDS[@]}"; do
    [ "$i" = "$LEADER" ] && continue
    writer "$sys" "$i" "$deadline" "$out.$i" & wp+=("$!"); PIDS+=("$!")
  done
  while [ "$(date +%s%N)" -lt $((deadline + 1000000000)) ] && ! ls "$out".[0-9] >/dev/null 2>&1; do sleep 0.005; done
  stop_pids "${wp[@]}"
  first=$(cat "$out".[0-9] 2>/dev/null | sort -n | head -1)
  if [ -n "$first" ]; then F[$round,$sys]=$(awk -v a="$t0" -v b="$first" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  else F[$round,$sys]=none; fi
  echo "  round $round: $sys leader (member $((LEADER + 1))) killed -> first write on a survivor: ${F[$round,$sys]} s"
  stop_cluster; rm -rf "$TMP"/fo"$round"-*
}
echo "== failover: kill -9 of the leader -> first successful PUT on a survivor (writers on both survivors, ${FO_ATTEMPT_S}s per attempt)"
for round in $(seq 1 "$ROUNDS"); do
  order=(meridian etcd); [ $((round % 2)) = 0 ] && order=(etcd meridian)
  for sys in "${order[@]}"; do failover_round "$round" "$sys"; done
done

# --- table ---------------------------------------------------------------------------------
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "none"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { local i=$1 sys=$2 m=$3 p; for p in $(seq 1 "$PASSES"); do awk -v i="$i" '{ printf "%s ", $i }' <<<"${R[$p,$sys,$m]}"; done; }
cell() { printf "%.0f/s (%.2f / %.2f ms)" "$(field 1 "$1" "$2" | median)" "$(field 2 "$1" "$2" | median)" "$(field 3 "$1" "$2" | median)"; }
ratio() { local p rs=""; for p in $(seq 1 "$PASSES"); do rs+="$(awk -v a="${R[$p,meridian,$1]%% *}" -v b="${R[$p,etcd,$1]%% *}" 'BEGIN { printf "%.4f ", (b > 0) ? a / b : 0 }')"; done; echo "$rs" | median; }
echo
echo "Meridian raft vs etcd, 3 members each: throughput/s (p50 / p99 ms), medians of $PASSES pass(es) of ${DUR}s steps; ratio = Meridian / etcd"
echo
echo "| metric | Meridian | etcd | ratio | goal | met? |"
echo "|---|---|---|---|---|---|"
errs=0
for m in put get fget; do
  for c in "${CLIENTS[@]}"; do
    cl="$c clients"; [ "$c" = 1 ] && cl="1 client"
    case $m in put) name="PUT, $cl" ;; get) name="linearizable GET on the leader, $cl" ;; fget) name="linearizable GET on a follower, $cl" ;; esac
    r=$(ratio "$m$c"); goal=""; met=""
    mp99=$(field 3 meridian "$m$c" | median); ep99=$(field 3 etcd "$m$c" | median)
    if [ "$m$c" = put64 ]; then
      goal="≥ 2×, p99 ≤ etcd"; met=$(awk -v r="$r" -v a="$mp99" -v b="$ep99" 'BEGIN { print (r >= 2 && a <= b) ? "yes" : "no" }')
    elif [ "$m$c" = get64 ]; then
      goal="≥ 3×"; met=$(awk -v r="$r" 'BEGIN { print (r >= 3) ? "yes" : "no" }')
    fi
    printf "| %s | %s | %s | %.2f× | %s | %s |\n" "$name" "$(cell meridian "$m$c")" "$(cell etcd "$m$c")" "$r" "$goal" "$met"
    for p in $(seq 1 "$PASSES"); do for s in meridian etcd; do
      e=$(awk '{ print $4 }' <<<"${R[$p,$s,$m$c]}"); [ "$e" = 0 ] || { echo "  ^ pass $p: $s had $e failed requests (not counted in /s)"; errs=1; }
    done; done
  done
done
fo() { local r; for r in $(seq 1 "$ROUNDS"); do echo -n "${F[$r,$1]} "; done; }
mfo=$(fo meridian | tr ' ' '\n' | grep -v none | tr '\n' ' ' | median); efo=$(fo etcd | tr ' ' '\n' | grep -v none | tr '\n' ' ' | median)
if [ "$mfo" != none ] && [ "$efo" != none ] && ! fo meridian | grep -q none; then
  fr=$(awk -v a="$mfo" -v b="$efo" 'BEGIN { printf "%.2f×", a / b }'); fmet=$(awk -v a="$mfo" -v b="$efo" 'BEGIN { print (a <= b) ? "yes" : "no" }')
else fr="-"; fmet=no; fi
echo "| failover: leader kill -9 → first write (median of $ROUNDS) | $mfo s | $efo s | $fr | ≤ etcd | $fmet |"
echo
echo "failover rounds (s): Meridian $(fo meridian)| etcd $(fo etcd)"
echo "(election timeout ${ELECTION_MS} ms, heartbeat ${HEARTBEAT_MS} ms on both; 'none' = no write within ${FO_LIMIT_S} s)"
[ "$errs" = 0 ] || echo "some steps had failed requests: see the lines marked ^ above"
