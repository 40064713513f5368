#!/usr/bin/env bash
# VM benchmark: kumo VMI create -> guest HTTP answer vs a bare qemu-system command, and agent RSS per VM.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p kumo
echo "bench-vm: python3 scripts/bench_vm.py $*"
exec python3 scripts/bench_vm.py "$@"
