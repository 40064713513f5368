#!/usr/bin/env bash
# Installs what kumo, its tests and its tools need on a fresh Debian machine, builds the test guest, and
# starts the local registry holding it as a containerDisk. Idempotent; run as root. Needs only the Debian and
# PyPI package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: QEMU and qemu-img (guests), iproute2 + nftables (per-VMI networking), docker-registry
# (containerDisks), busybox/xorriso/genisoimage (network and ISO tests), etcd-server (the etcd store backend's
# tests start a real etcd; benchmark), etcd-client (etcdctl: `kumo store snapshot` reads and restores etcd's
# snapshots with it), protobuf-compiler + libprotobuf-dev (the etcd-client crate generates its
# gRPC code with protoc at build time and imports protobuf's well-known types, so both before any cargo build),
# openssh-client (`kumo ssh` and `kumo scp` run it; the guest tools test uses them), prometheus (the metrics
# test scrapes kumo with a real one), chromium (the web console's browser test).
pkgs=(qemu-system-x86 qemu-utils iproute2 nftables docker-registry busybox xorriso genisoimage curl ca-certificates
  etcd-server etcd-client protobuf-compiler libprotobuf-dev openssh-client prometheus chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Keep packages (docker-registry) from starting system-wide services: kumo's scripts start what tests need.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT # also when the install fails: later service starts must not stay blocked
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Nor start it at the next boot: images/start-registry.sh runs the registry the tests use on :5000.
  # Likewise etcd: its tests and the benchmark start their own on free ports.
  if command -v systemctl >/dev/null; then systemctl disable docker-registry etcd prometheus >/dev/null 2>&1 || true; fi
fi
command -v kubectl >/dev/null || echo "setup: warning: kubectl not found; the end-to-end tests use it" >&2

if ! python3 -c 'import kubernetes' 2>/dev/null; then
  echo "setup: installing the Python kubernetes client (pip)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kubernetes
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

# The web console (ui/dist), which kumo embeds when it is built next.
scripts/build-ui.sh

# Kernel pieces the per-VMI network uses (already built in on most kernels; failures are harmless).
for m in tun bridge veth nf_tables nft_chain_nat nft_masq isofs; do modprobe -q "$m" 2>/dev/null || true; done

echo "setup: test guest (cached under ${KUMO_CACHE:-$HOME/.cache/kumo})"
images/build-guest.sh >/dev/null
images/start-registry.sh >/dev/null
# Repackaged only when the registry's copy is not of this guest build.
hash=$(cat "${KUMO_CACHE:-$HOME/.cache/kumo}/images/guest.hash")
manifest=$(curl --noproxy '*' -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "http://${KUMO_REGISTRY_ADDR:-127.0.0.1:5000}/v2/kumo/test-guest/manifests/latest" || true)
if [[ "$manifest" != *"\"io.kumo.guest.build\":\"$hash\""* ]]; then
  images/package-containerdisk.sh >/dev/null
fi
echo "setup: done"
