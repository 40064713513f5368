#!/usr/bin/env bash
# Installs what kumo's tests and tools need on a fresh Debian machine (idempotent; run as root).
# Needs network access to the Debian and PyPI package registries.
set -euo pipefail

need_apt=()
command -v kubectl >/dev/null || echo "warning: kubectl not found; the end-to-end tests use it" >&2
if [ "${KUMO_SETUP_BENCH:-0}" = 1 ]; then
  command -v etcd >/dev/null || need_apt+=(etcd-server)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import kubernetes' 2>/dev/null; then
  echo "setup: installing the Python kubernetes client (pip)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kubernetes
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
echo "setup: done"
