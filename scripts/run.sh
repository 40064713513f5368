#!/usr/bin/env bash
# Sets up this machine, builds kumo and runs the all-in-one control plane + node agent (run as root).
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
echo "run: then: kubectl apply -f examples/vm.yaml"
echo "run: web console: https://$listen/ui/ (log in with: kubectl config view --raw -o jsonpath='{.users[0].user.token}')"
exec target/release/kumo server --data-dir "$data" --listen "$listen" \
  --insecure-registry 127.0.0.1:5000 --registry-mirror quay.io=127.0.0.1:5000
