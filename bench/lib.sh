# Shared by the bench scripts: build, a scratch directory, starting nodes and waiting for
# them, and stopping every node started (by PID) on exit. Source it after `cd` to the root.
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-./target}/release/meridian
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

start() { # name http_port env...  (sets LAST_PID; never call it in a subshell)
  local name=$1 port=$2; shift 2
  env -i MERIDIAN_DATA_DIR="$TMP/$name" MERIDIAN_HTTP_ADDR=127.0.0.1:$port MERIDIAN_LOG_LEVEL=warn "$@" \
    "$BIN" >"$TMP/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
wait_http() { for _ in $(seq 1 200); do curl -sf "localhost:$1/health" >/dev/null && return 0; sleep 0.05; done; echo "node on $1 never came up"; exit 1; }
wait_streaming() { for _ in $(seq 1 400); do curl -s "localhost:$1/health" | grep -q '"state":"streaming"' && return 0; sleep 0.05; done; echo "standby on $1 never streamed"; exit 1; }
