# Shared by the bench scripts: build, a scratch directory, starting nodes and waiting for
# them, and stopping every node started (by PID) on exit. Source it after `cd` to the root.
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-./target}/release/meridian
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; budget_cleanup; rm -rf "$TMP"; }
trap cleanup EXIT

start() { # name http_port env...  (sets LAST_PID; never call it in a subshell)
  local name=$1 port=$2; shift 2
  env -i MERIDIAN_DATA_DIR="$TMP/$name" MERIDIAN_HTTP_ADDR=127.0.0.1:$port MERIDIAN_LOG_LEVEL=warn "$@" \
    "$BIN" >"$TMP/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
wait_http() { for _ in $(seq 1 200); do curl -sf "localhost:$1/health" >/dev/null && return 0; sleep 0.05; done; echo "node on $1 never came up"; exit 1; }
ha_start() { # tag sync_mode heartbeat_ms failover_timeout [standby env...] -> primary on 18101 ($PA), standby on 18102 ($PB)
  local tag=$1 mode=$2 hb=$3 to=$4; shift 4
  local common=(MERIDIAN_CLUSTER_MODE=ha_standby MERIDIAN_CLUSTER_HA_SYNC_MODE=$mode MERIDIAN_CLUSTER_HA_HEARTBEAT_MS=$hb MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT=$to)
  start "$tag-a" 18101 "${common[@]}" MERIDIAN_CLUSTER_NODE_ID=a MERIDIAN_CLUSTER_BIND_ADDR=127.0.0.1:18201 MERIDIAN_CLUSTER_HA_ROLE=primary MERIDIAN_CLUSTER_HA_PEER_ADDR=127.0.0.1:18202
  PA=$LAST_PID
  start "$tag-b" 18102 "${common[@]}" "$@" MERIDIAN_CLUSTER_NODE_ID=b MERIDIAN_CLUSTER_BIND_ADDR=127.0.0.1:18202 MERIDIAN_CLUSTER_HA_ROLE=standby MERIDIAN_CLUSTER_HA_PEER_ADDR=127.0.0.1:18201
  PB=$LAST_PID
}
wait_streaming() { for _ in $(seq 1 400); do curl -s "localhost:$1/health" | grep -q '"state":"streaming"' && return 0; sleep 0.05; done; echo "standby on $1 never streamed"; exit 1; }

# BUDGET=1 (root, cgroup v1 cpu controller): CPU budgets standing in for machines of their
# own on this shared host: `budget NAME CORES` makes one, `budget_add NAME PID` moves a
# process (all its threads) in. This shell joins the "load" budget (0.6 core) so the load
# generators it starts follow it; a node started from it is moved out by budget_add.
BUDGETS=()
budget() {
  local d=/sys/fs/cgroup/cpu/meridian-bench-$1
  mkdir -p "$d" || { echo "BUDGET=1 needs root and cgroup v1 at /sys/fs/cgroup/cpu"; exit 1; }
  echo 100000 >"$d/cpu.cfs_period_us"; awk -v c="$2" 'BEGIN { printf "%d\n", c * 100000 }' >"$d/cpu.cfs_quota_us"
  BUDGETS+=("$d")
}
budget_add() { echo "$2" >"/sys/fs/cgroup/cpu/meridian-bench-$1/cgroup.procs"; }
budget_cleanup() {
  for d in "${BUDGETS[@]:-}"; do
    [ -n "$d" ] || continue
    for p in $(cat "$d/cgroup.procs" 2>/dev/null); do echo "$p" >/sys/fs/cgroup/cpu/cgroup.procs 2>/dev/null || true; done
    rmdir "$d" 2>/dev/null || true
  done
}
# BUDGET_CORES=node,peer,load (default 0.8,0.6,0.6) sets other budgets. They stand in for
# machines only if the host can always give them: on a VM whose steal time takes part of a
# core, keep their sum under what is left (e.g. 0.5,0.4,0.3), or the peer's budget is taken
# from the node's only in the rounds that have a peer (see docs/benchmarks.md, 2026-12-02).
if [ "${BUDGET:-}" = 1 ]; then
  IFS=, read -r B_NODE B_PEER B_LOAD <<<"${BUDGET_CORES:-0.8,0.6,0.6}"
  budget load "$B_LOAD"; budget node "$B_NODE"; budget peer "$B_PEER"
  budget_add load $$
fi
