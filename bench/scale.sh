#!/usr/bin/env bash
# Scale benchmark (opt-in; run by hand, never in CI): KEYS keys (default 10 million, 256-byte
# values: ~3 GB of state) in an ha_standby primary, then what an operator meets at that size.
# Prints, phase by phase:
#   - this disk's sequential write bandwidth (dd, fdatasync: 2 GiB before the load, and the
#     state's own size after it — a host cache can absorb the first) — the anchors for catch-up;
#   - load rate (/v1/txn, 256 puts per txn, LOADERS connections), the primary's peak RSS;
#   - /admin/digest time over the whole state;
#   - snapshot creation (GET /admin/backup to a file): time, size, MiB/s, peak RSS;
#   - snapshot install (meridian restore into an empty dir): time, MiB/s, peak RSS;
#   - catch-up of a standby that starts empty (re-seeded by snapshot: WAL retention is kept
#     small): time until it streams at the primary's position, MiB/s of state, ratio to the
#     disk's bandwidth (goal >= 0.5), peak RSS of both sides;
#   - start-up after kill -9 of the primary (WAL replay): time until /health answers,
#     records replayed.
# Peak RSS is sampled from /proc every 100 ms within each phase (VmRSS), so each phase's
# figure is its own. Nothing may hold the whole state in memory: compare with the state size.
# Usage: [KEYS=10000000] [VALUE_BYTES=256] [LOADERS=4] [SKIP_BUILD=1] bench/scale.sh
# Needs python3, curl, dd; ~4x the state size free on the disk of $TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-10000000}
VALUE_BYTES=${VALUE_BYTES:-256}
LOADERS=${LOADERS:-4}
for v in KEYS VALUE_BYTES LOADERS; do [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer"; exit 2; }; done
source bench/lib.sh
echo "bench/scale.sh: $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, KEYS=$KEYS VALUE_BYTES=$VALUE_BYTES LOADERS=$LOADERS, scratch $TMP"

now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }

# Peak VmRSS of the given PIDs while a phase runs: start_rss pid..., then stop_rss -> "MiB MiB ..."
start_rss() {
  RSS_PIDS=("$@"); RSS_FILE=$TMP/rss.$RANDOM
  ( declare -A peak; while :; do
      for p in "${RSS_PIDS[@]}"; do
        r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0); r=${r:-0}
        [ "${peak[$p]:-0}" -ge "$r" ] || peak[$p]=$r
      done
      out=""; for p in "${RSS_PIDS[@]}"; do out+="$(( ${peak[$p]:-0} / 1024 )) "; done; echo "$out" >"$RSS_FILE.tmp"; mv "$RSS_FILE.tmp" "$RSS_FILE"
      sleep 0.1
    done ) &
  RSS_SAMPLER=$!
}
stop_rss() { kill "$RSS_SAMPLER" 2>/dev/null; wait "$RSS_SAMPLER" 2>/dev/null || true; cat "$RSS_FILE" 2>/dev/null || echo "?"; }

applied() { curl -s "localhost:$1/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["replication"]["applied_index"])' 2>/dev/null || echo 0; }

# --- 0. the disk ------------------------------------------------------------------------
dd_out=$(dd if=/dev/zero of="$TMP/dd" bs=1M count=2048 conv=fdatasync 2>&1 | tail -1); rm -f "$TMP/dd"
DISK_MIBS=$(echo "$dd_out" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^[GM]B\/s$/) { v = $(i-1); if ($i == "GB/s") v *= 1000; print v * 1000000 / 1048576 } }')
echo "disk: sequential write, 2 GiB with fdatasync: ${DISK_MIBS:-?} MiB/s ($dd_out)"

# --- 1. load ------------------------------------------------------------------------------
HA=(MERIDIAN_CLUSTER_MODE=ha_standby MERIDIAN_CLUSTER_HA_SYNC_MODE=async MERIDIAN_CLUSTER_HA_WAL_RETENTION=1000)
start_primary() {
  start a 18301 "${HA[@]}" MERIDIAN_CLUSTER_NODE_ID=a MERIDIAN_CLUSTER_BIND_ADDR=127.0.0.1:18401 \
    MERIDIAN_CLUSTER_HA_ROLE=primary MERIDIAN_CLUSTER_HA_PEER_ADDR=127.0.0.1:18402 MERIDIAN_LOG_LEVEL=info
  PA=$LAST_PID
}
start_primary; wait_http 18301
start_rss "$PA"
load=$(python3 bench/scale_load.py 18301 "$KEYS" "$VALUE_BYTES" "$LOADERS")
rss=$(stop_rss)
read -r _ load_s load_rate load_mibs <<<"$load"
STATE_BYTES=$(du -sb "$TMP/a/state.redb" | cut -f1)
echo "load: $KEYS keys in $load_s s = $load_rate keys/s ($load_mibs MiB/s of values); state.redb $(mib "$STATE_BYTES") MiB, WAL $(du -sm "$TMP/a/wal" | cut -f1) MiB; primary peak RSS $rss MiB"

# The 2 GiB anchor above can be absorbed by a host's cache (this VM read 366-1,717 MiB/s from it
# within two hours); a write of the state's own size, as the re-seed must do, is the sustained
# figure. Both are printed, and the catch-up's ratio to each.
dd_out=$(dd if=/dev/zero of="$TMP/dd" bs=4M count=$(( (STATE_BYTES + 4194303) / 4194304 )) conv=fdatasync 2>&1 | tail -1); rm -f "$TMP/dd"
DISK_STATE_MIBS=$(echo "$dd_out" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^[GM]B\/s$/) { v = $(i-1); if ($i == "GB/s") v *= 1000; print v * 1000000 / 1048576 } }')
echo "disk: sequential write of the state's size ($(mib "$STATE_BYTES") MiB) with fdatasync: ${DISK_STATE_MIBS:-?} MiB/s ($dd_out)"

# --- 2. digest ----------------------------------------------------------------------------
t0=$(now); dig=$(curl -sf "localhost:18301/admin/digest"); t1=$(now)
echo "digest: $(secs "$t0" "$t1") s ($dig)"

# --- 3. snapshot creation -------------------------------------------------------------------
start_rss "$PA"
t0=$(now); curl -sf "localhost:18301/admin/backup" -o "$TMP/backup"; t1=$(now)
rss=$(stop_rss)
SNAP=$(stat -c %s "$TMP/backup"); s=$(secs "$t0" "$t1")
echo "snapshot creation (GET /admin/backup): $s s, $(mib "$SNAP") MiB, $(awk -v b="$SNAP" -v s="$s" 'BEGIN { printf "%.0f", b / 1048576 / s }') MiB/s; primary peak RSS $rss MiB"

# --- 4. snapshot install ------------------------------------------------------------------
t0=$(now)
"$BIN" restore --from "$TMP/backup" --data-dir "$TMP/restored" >"$TMP/restore.log" 2>&1 & RP=$!; PIDS+=("$RP")
start_rss "$RP"; wait "$RP"; rss=$(stop_rss); t1=$(now)
s=$(secs "$t0" "$t1")
echo "snapshot install (meridian restore): $s s, $(awk -v b="$SNAP" -v s="$s" 'BEGIN { printf "%.0f", b / 1048576 / s }') MiB/s; peak RSS $rss MiB ($(tail -1 "$TMP/restore.log"))"
rm -rf "$TMP/restored" "$TMP/backup"

# --- 5. catch-up of an empty standby ------------------------------------------------------
target=$(applied 18301)
t0=$(now)
start b 18302 "${HA[@]}" MERIDIAN_CLUSTER_NODE_ID=b MERIDIAN_CLUSTER_BIND_ADDR=127.0.0.1:18402 \
  MERIDIAN_CLUSTER_HA_ROLE=standby MERIDIAN_CLUSTER_HA_PEER_ADDR=127.0.0.1:18401 MERIDIAN_LOG_LEVEL=info
PB=$LAST_PID
start_rss "$PA" "$PB"
deadline=$(( $(date +%s) + 7200 ))
until [ "$(applied 18302)" -ge "$target" ] && curl -s localhost:18302/health | grep -q '"state":"streaming"'; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "the standby did not catch up within 2 h"; tail -20 "$TMP/b.log"; exit 1; }
  kill -0 "$PB" || { echo "the standby exited"; tail -20 "$TMP/b.log"; exit 1; }
  sleep 0.2
done
t1=$(now); rss=$(stop_rss)
s=$(secs "$t0" "$t1")
rate=$(awk -v b="$STATE_BYTES" -v s="$s" 'BEGIN { printf "%.0f", b / 1048576 / s }')
ratio() { awk -v r="$rate" -v d="${1:-0}" 'BEGIN { if (d > 0) printf "%.2f", r / d; else print "?" }'; }
echo "catch-up of an empty standby (snapshot re-seed + stream): $s s, $rate MiB/s of state = $(ratio "$DISK_MIBS")x the 2 GiB dd, $(ratio "$DISK_STATE_MIBS")x the state-sized dd (goal >= 0.5); peak RSS primary / standby $rss MiB"
grep -E "snapshot install (in progress|finished)|store image install finished|opened the received store image|catching up|caught up" "$TMP/b.log" | tail -3 | sed 's/^/  standby log: /' || true
d1=$(curl -sf localhost:18301/admin/digest); d2=$(curl -sf localhost:18302/admin/digest)
[ "$d1" = "$d2" ] && echo "digests equal after catch-up" || echo "DIGESTS DIFFER: $d1 / $d2"
kill "$PB"; wait "$PB" 2>/dev/null || true

# --- 6. start-up after kill -9 --------------------------------------------------------------
kill -9 "$PA"; wait "$PA" 2>/dev/null || true
t0=$(now); start_primary; wait_http 18301; t1=$(now)
echo "start-up after kill -9 of the primary: $(secs "$t0" "$t1") s to /health; $(grep -o 'replayed WAL[^}]*' "$TMP/a.log" | tail -1 || echo 'no WAL records to replay')"
[ "$(curl -sf localhost:18301/admin/digest | python3 -c 'import json,sys; print(json.load(sys.stdin)["keys"])')" = "$KEYS" ] && echo "all $KEYS keys present after the restart"
