#!/usr/bin/env bash
# VM groups benchmark: a pool's surge rollout vs stopping and starting the same VMs one by one, and the node
# agent's CPU and memory probing guests every second vs the same guests unprobed (see scripts/bench_groups.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p kumo
echo "bench-groups: python3 scripts/bench_groups.py $*"
exec python3 scripts/bench_groups.py "$@"
