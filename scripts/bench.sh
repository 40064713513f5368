#!/usr/bin/env bash
# Benchmarks kumo: API writes next to raw etcd puts (1 KiB, 1 and 16 connections; kumo on its embedded store
# and kumo on that etcd), store growth to 100,000
# objects, watch delivery to 1,000 watchers, resident memory. Prints a Markdown report; JSON goes to
# target/bench/results.json. Arguments pass through to kumo-bench, e.g. `scripts/bench.sh --quick`
# (`scripts/bench.sh --help` lists them). Installs etcd-server (apt) if etcd is missing; needs root for that.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null; then
  echo "bench: installing etcd-server (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq etcd-server >/dev/null
  # Debian's package only ships a systemd unit; without systemd nothing is started. Just use the binary.
fi

echo "bench: building kumo and kumo-bench (release)"
cargo build --release -p kumo -p kumo-bench

# One TCP connection per watcher, on both ends; kumo and etcd inherit the limit from kumo-bench.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "bench: open-files limit $(ulimit -n)"

mkdir -p target/bench
echo "bench: source $(git describe --always --dirty 2>/dev/null || echo unknown)"
cmd=(target/release/kumo-bench --kumo-bin target/release/kumo --out target/bench/results.json "$@")
echo "bench: ${cmd[*]}"
exec "${cmd[@]}"
