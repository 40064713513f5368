#!/usr/bin/env bash
# Sets up the machine and runs every test: unit tests and end-to-end tests against the real kumo binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "test: building"
cargo build --workspace --all-targets
echo "test: running"
cargo nextest run --workspace --no-fail-fast "$@"
