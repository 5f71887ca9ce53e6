#!/usr/bin/env bash
# Builds the `meridian:dev` image (or the tag in $1): a statically linked release binary
# in a FROM scratch image. Static with the gnu toolchain (musl is not installed here):
# crt-static needs an explicit --target, or it would apply to proc-macros too.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-meridian:dev}"
target=x86_64-unknown-linux-gnu

RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$target" --bin meridian
bin="${CARGO_TARGET_DIR:-target}/$target/release/meridian"
if command -v file >/dev/null && ! file "$bin" | grep -q "static"; then
  echo "build-image: $bin is not statically linked: $(file "$bin")" >&2
  exit 1
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$bin" "$stage/meridian"
mkdir "$stage/empty"
docker build --quiet -f Dockerfile -t "$tag" "$stage"
docker image ls "$tag" --format '{{.Repository}}:{{.Tag}} {{.Size}}'
