#!/usr/bin/env bash
# Before/after for the multi-region benchmark: builds REV (a commit) in a worktree and runs
# `region_benchmark` (tests/multi_region.rs) with that build and with this checkout's,
# alternating, RUNS times each, then prints each run's `async` / one-group figures side by
# side. This host's speed drifts by more than a small change moves the ratio (2026-12-02:
# three runs of each of two builds, 0.83-0.90x both), so a change is judged only beside its
# base, in the same session.
# Usage: [RUNS=3] [REGION_BENCH_*=...] bench/region_ab.sh REV   (root for the CPU budgets;
#        REGION_BENCH_QUOTA=1 REGION_BENCH_SECS=6 REGION_BENCH_SLICES=6 unless set)
# Cost: a release build of REV (about 5 min on 2 cores, in $AB_TARGET, kept for reuse) and
# about 2 min per run. Binds to 127.0.0.1 only, through the benchmark itself.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: bench/region_ab.sh REV}
RUNS=${RUNS:-3}
export REGION_BENCH_QUOTA=${REGION_BENCH_QUOTA:-1} REGION_BENCH_SECS=${REGION_BENCH_SECS:-6} REGION_BENCH_SLICES=${REGION_BENCH_SLICES:-6}
AB_TARGET=${AB_TARGET:-$PWD/target/region-ab}
WT=$(mktemp -d)
trap 'git worktree remove --force "$WT" 2>/dev/null || rm -rf "$WT"' EXIT
git worktree add -q --detach "$WT" "$REV"
testbin() { # dir target-dir -> path of the multi_region test binary built there
  (cd "$1" && CARGO_TARGET_DIR=$2 cargo test --release --quiet --test multi_region --no-run --message-format=json 2>/dev/null) |
    python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "multi_region" and m.get("executable"): print(m["executable"])' | tail -1
}
OLD=$(testbin "$WT" "$AB_TARGET"); NEW=$(testbin "$PWD" "${CARGO_TARGET_DIR:-$PWD/target}")
[ -x "$OLD" ] && [ -x "$NEW" ] || { echo "region_ab: a build failed"; exit 1; }
declare -a ROWS
for r in $(seq 1 "$RUNS"); do
  for side in base new; do
    bin=$NEW; [ "$side" = base ] && bin=$OLD
    line=$("$bin" --ignored --nocapture region_benchmark 2>&1 | grep "x of the totals" || echo "no result")
    echo "run $r $side: $line"
    ROWS+=("$side $(sed -E 's/.*: ([0-9.]+)x of the totals.*\(median ([0-9.]+)x\).*/\2 \1/' <<<"$line")")
  done
done
echo
echo "async / one group (median of pair ratios, of totals), per run:"
for side in base new; do
  printf "%-5s" "$side"; for row in "${ROWS[@]}"; do [[ $row == "$side "* ]] && printf "  %s" "${row#* }"; done; echo
done
