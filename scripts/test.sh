#!/usr/bin/env bash
# Sets up the machine and runs every test: unit tests and end-to-end tests against the real kumo binary, then
# the API end-to-end tests once more with each server storing into an etcd of its own (KUMO_E2E_STORE=etcd).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "test: building"
cargo build --workspace --all-targets
echo "test: running"
cargo nextest run --workspace --no-fail-fast "$@"
echo "test: the API tests again, on the etcd backend"
KUMO_E2E_STORE=etcd cargo nextest run -p kumo-e2e --no-fail-fast -E \
  'binary(kubectl_basics) | binary(kubectl_lifecycle) | binary(kube_rs_clients) | binary(python_client) | binary(kubevirt_api) | binary(vm_controllers) | binary(storage_api)' "$@"
