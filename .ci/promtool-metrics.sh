#!/usr/bin/env bash
# Starts one standalone node (the binary given, loopback, a port the kernel picks, a temporary
# data directory), takes one write so every figure has a value, and runs
# `promtool check metrics` on its /metrics. Stops the node by its PID.
set -euo pipefail
bin="$1"
dir="$(mktemp -d)"
# A clean environment: CI settings such as MERIDIAN_SKIP_DOCKER_TESTS are not node settings,
# and the node refuses MERIDIAN_* variables it does not know.
env -i MERIDIAN_HTTP_ADDR=127.0.0.1:0 MERIDIAN_DATA_DIR="$dir/data" MERIDIAN_LOG_FORMAT=text "$bin" 2>"$dir/log" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
addr=""
for _ in $(seq 1 100); do  # up to 10 s
  addr="$(sed -n 's/.*meridian is serving HTTP.*addr=\([0-9.:]*\).*/\1/p' "$dir/log" | head -n1)"
  [ -n "$addr" ] && break
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "promtool-metrics: the node did not start; its log:" >&2
  cat "$dir/log" >&2
  exit 1
fi
curl -sf -X PUT "http://$addr/v1/kv/ci" -d x >/dev/null
curl -sf "http://$addr/metrics" >"$dir/metrics"
echo "promtool check metrics on a live node's /metrics ($(grep -c '^meridian_' "$dir/metrics") samples):"
promtool check metrics <"$dir/metrics"
