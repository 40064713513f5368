#!/usr/bin/env bash
# The cluster benchmark: one kumo server, SIMULATED nodes (kumo agent --simulate) grown 1k → 2k → 5k → 10k,
# then VMs up to 300,000 through VirtualMachines and VirtualMachineInstanceReplicaSets, and an event flood.
# Writes target/bench/cluster.json and target/bench/cluster.png. Arguments pass through to
# `kumo-bench cluster` (`--help` lists them), e.g. `scripts/bench-scale.sh --nodes 100 --vms 300`, or
# `--etcd --nodes 1000,2000,5000 --vms 50000,150000` for the 3-member etcd run. Takes hours at full size.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ " $* " == *" --etcd "* ]] && ! command -v etcd >/dev/null; then
  echo "bench-scale: installing etcd-server (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq etcd-server >/dev/null
fi
if ! python3 -c "import matplotlib" 2>/dev/null; then
  echo "bench-scale: installing matplotlib (pip) for the plot"
  python3 -m pip install -q matplotlib
fi

echo "bench-scale: building kumo and kumo-bench (release)"
cargo build --release -p kumo -p kumo-bench
# Every simulated node holds connections to the server.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p target/bench
echo "bench-scale: source $(git describe --always --dirty 2>/dev/null || echo unknown)"
cmd=(target/release/kumo-bench cluster --kumo-bin target/release/kumo "$@")
echo "bench-scale: ${cmd[*]}"
exec "${cmd[@]}"
