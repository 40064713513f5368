#!/usr/bin/env bash
# Cluster benchmark: leader failover time, and host loss → VM answering HTTP on another host, each the median of
# KUMO_BENCH_ROUNDS (default 5) runs with default settings (grace 20s, fencing 20s), on a real three-member etcd,
# two replicas and three hosts (network namespaces) on this machine. Run as root. JSON in target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --all-targets
mkdir -p target/bench
for t in leader_failover_with_default_settings host_loss_to_serving_elsewhere_with_default_settings; do
  out="target/bench/cluster-${t%%_with*}.json"
  KUMO_BENCH_OUT="$PWD/$out" cargo nextest run -p kumo-e2e --run-ignored only --no-capture -E "binary(cluster_bench) & test($t)"
  echo "bench: $out"; cat "$out"
done
