#!/usr/bin/env bash
# Builds kumo and runs the all-in-one control plane on this machine.
#   KUMO_DATA   data directory (default ~/.local/share/kumo)
#   KUMO_LISTEN address to serve on (default 127.0.0.1:6443)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "run: building kumo (release)"
cargo build --release -p kumo
data="${KUMO_DATA:-$HOME/.local/share/kumo}"
listen="${KUMO_LISTEN:-127.0.0.1:6443}"
echo "run: starting kumo server; in another shell: export KUBECONFIG=$data/kubeconfig"
exec target/release/kumo server --data-dir "$data" --listen "$listen"
