#!/usr/bin/env bash
# Storage benchmark: DataVolume import vs qemu-img convert of the same URL, the importer's memory, and guest
# disk throughput on a local claim vs the same image on a bare qemu-system (see scripts/bench_storage.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The baseline reads the URL with QEMU's curl block driver.
if ! ls /usr/lib/x86_64-linux-gnu/qemu/block-curl.so >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-block-extra
fi
command -v genisoimage >/dev/null || { apt-get update -qq && apt-get install -y -qq genisoimage; }
cargo build --release -p kumo
echo "bench-storage: python3 scripts/bench_storage.py $*"
exec python3 scripts/bench_storage.py "$@"
