#!/usr/bin/env bash
# Packages the test guest as a KubeVirt containerDisk (an ordinary OCI image) and pushes it to a local
# registry over plain HTTP with the registry's HTTP API (curl only; no Docker, skopeo or umoci needed).
#
#   images/package-containerdisk.sh [--image PATH] [--registry HOST:PORT] [--repo NAME] [--tag TAG]
#                                   [--no-kernel] [--no-push]
#
# Defaults: the cached image from build-guest.sh, registry 127.0.0.1:5000 (started with
# start-registry.sh when it is not answering), repo kumo/test-guest, tag latest.
#
# The image has one gzip'd tar layer holding
#   disk/guest.qcow2     uid/gid 107 (KubeVirt's qemu user), what a containerDisk volume boots
#   boot/vmlinuz         the guest kernel and initramfs, for KubeVirt's
#   boot/initrd.img      spec.domain.firmware.kernelBoot (kernelPath/initrdPath); --no-kernel leaves them out
# plus an OCI config and an OCI manifest. The image is also written as an OCI image layout in
# ${KUMO_CACHE:-$HOME/.cache/kumo}/images/containerdisk/ (usable offline, e.g. skopeo copy oci:...).
# After the push it reads the manifest back (GET /v2/<repo>/manifests/<tag>, OCI Accept header),
# checks its digest and the layer digest, and downloads the layer blob to check its sha256.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${KUMO_CACHE:-$HOME/.cache/kumo}
IMAGE=
REGISTRY=${KUMO_REGISTRY_ADDR:-127.0.0.1:5000}
REPO=kumo/test-guest
TAG=latest
WITH_KERNEL=1
PUSH=1
while [ $# -gt 0 ]; do
	case "$1" in
	--image) IMAGE=$2; shift 2 ;;
	--registry) REGISTRY=$2; shift 2 ;;
	--repo) REPO=$2; shift 2 ;;
	--tag) TAG=$2; shift 2 ;;
	--no-kernel) WITH_KERNEL=0; shift ;;
	--no-push) PUSH=0; shift ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
		exit 0
		;;
	*) echo "package-containerdisk: unknown argument '$1' (try --help)" >&2; exit 2 ;;
	esac
done

say() { echo "package-containerdisk: $*" >&2; }
die() {
	echo "package-containerdisk: error: $*" >&2
	exit 1
}
for t in curl tar gzip sha256sum; do command -v "$t" >/dev/null || die "$t is missing (apt-get install $t)"; done

if [ -z "$IMAGE" ]; then
	IMAGE=$("$HERE/build-guest.sh") || die "build-guest.sh failed; run it alone to see why"
fi
[ -s "$IMAGE" ] || die "no guest image at $IMAGE; run images/build-guest.sh"
IMGDIR=$(dirname "$IMAGE")
if [ "$WITH_KERNEL" = 1 ] && { [ ! -s "$IMGDIR/guest.vmlinuz" ] || [ ! -s "$IMGDIR/guest.initrd.img" ]; }; then
	die "no guest.vmlinuz/guest.initrd.img beside $IMAGE; rebuild with images/build-guest.sh or use --no-kernel"
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/kumo-containerdisk.XXXXXX")
trap 'rm -rf "$W"' EXIT
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# ---------------------------------------------------------------- layer
say "building the layer from $IMAGE"
mkdir -p "$W/rootfs/disk"
cp "$IMAGE" "$W/rootfs/disk/guest.qcow2"
if [ "$WITH_KERNEL" = 1 ]; then
	mkdir -p "$W/rootfs/boot"
	cp "$IMGDIR/guest.vmlinuz" "$W/rootfs/boot/vmlinuz"
	cp "$IMGDIR/guest.initrd.img" "$W/rootfs/boot/initrd.img"
fi
find "$W/rootfs" -type d -exec chmod 0555 {} +
find "$W/rootfs" -type f -exec chmod 0444 {} +
# reproducible: fixed order, owner 107:107, mtime 0, no gzip timestamp
# (entries are "disk/guest.qcow2", not "./disk/...", for simple extractors)
members=(disk)
[ "$WITH_KERNEL" = 1 ] && members+=(boot)
(cd "$W/rootfs" && tar --sort=name --owner=107 --group=107 --numeric-owner --mtime=@0 --format=gnu -cf "$W/layer.tar" "${members[@]}")
gzip -6n -c "$W/layer.tar" >"$W/layer.tar.gz"
DIFF_ID="sha256:$(sha "$W/layer.tar")"
LAYER_DIGEST="sha256:$(sha "$W/layer.tar.gz")"
LAYER_SIZE=$(size "$W/layer.tar.gz")
say "layer: $LAYER_DIGEST ($LAYER_SIZE bytes gzip, $(size "$W/layer.tar") bytes tar)"

# ---------------------------------------------------------------- config + manifest
BUILD_HASH=$(cat "$IMGDIR/guest.hash" 2>/dev/null || echo unknown)
KVER=$(awk '$1=="kernel_version"{print $2}' "$IMGDIR/guest.manifest" 2>/dev/null || true)
printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Labels":{"io.kumo.guest.build":"%s","io.kumo.guest.kernel":"%s"}},"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"kumo images/package-containerdisk.sh"}]}' \
	"$BUILD_HASH" "${KVER:-unknown}" "$DIFF_ID" >"$W/config.json"
CONFIG_DIGEST="sha256:$(sha "$W/config.json")"
CONFIG_SIZE=$(size "$W/config.json")
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}],"annotations":{"org.opencontainers.image.title":"kumo test guest","io.kumo.guest.build":"%s"}}' \
	"$MT_MANIFEST" "$CONFIG_DIGEST" "$CONFIG_SIZE" "$LAYER_DIGEST" "$LAYER_SIZE" "$BUILD_HASH" >"$W/manifest.json"
MANIFEST_DIGEST="sha256:$(sha "$W/manifest.json")"
MANIFEST_SIZE=$(size "$W/manifest.json")

# ---------------------------------------------------------------- OCI image layout in the cache
L="$CACHE/images/containerdisk"
rm -rf "$L.tmp"
mkdir -p "$L.tmp/blobs/sha256"
cp "$W/layer.tar.gz" "$L.tmp/blobs/sha256/${LAYER_DIGEST#sha256:}"
cp "$W/config.json" "$L.tmp/blobs/sha256/${CONFIG_DIGEST#sha256:}"
cp "$W/manifest.json" "$L.tmp/blobs/sha256/${MANIFEST_DIGEST#sha256:}"
printf '{"imageLayoutVersion":"1.0.0"}' >"$L.tmp/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"%s","digest":"%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
	"$MT_MANIFEST" "$MANIFEST_DIGEST" "$MANIFEST_SIZE" "$TAG" >"$L.tmp/index.json"
rm -rf "$L"
mv "$L.tmp" "$L"
say "OCI layout: $L (manifest $MANIFEST_DIGEST)"

[ "$PUSH" = 1 ] || {
	echo "$L:$TAG"
	exit 0
}

# ---------------------------------------------------------------- push
C=(curl --noproxy '*' -sS -m 120)
BASE="http://$REGISTRY/v2/$REPO"
if ! "${C[@]}" -f -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null; then
	if [ "$REGISTRY" = "${KUMO_REGISTRY_ADDR:-127.0.0.1:5000}" ]; then
		say "no registry answers on $REGISTRY; starting one with start-registry.sh"
		"$HERE/start-registry.sh" >/dev/null || die "start-registry.sh failed"
	else
		die "no registry answers on http://$REGISTRY/v2/; start one (images/start-registry.sh) or pass --registry"
	fi
fi

# push_blob FILE DIGEST: POST an upload session, then PUT the whole blob with ?digest= (monolithic)
push_blob() {
	local file=$1 digest=$2 code loc sep
	code=$("${C[@]}" -o /dev/null -w '%{http_code}' -I "$BASE/blobs/$digest")
	if [ "$code" = 200 ]; then
		say "blob $digest already in the registry"
		return 0
	fi
	"${C[@]}" -D "$W/post.h" -o "$W/post.b" -X POST -H 'Content-Length: 0' "$BASE/blobs/uploads/" ||
		die "POST $BASE/blobs/uploads/ failed"
	code=$(awk 'NR==1{print $2}' "$W/post.h")
	[ "$code" = 202 ] || die "POST $BASE/blobs/uploads/ answered $code: $(cat "$W/post.b")"
	loc=$(tr -d '\r' <"$W/post.h" | awk 'tolower($1)=="location:"{print $2; exit}')
	[ -n "$loc" ] || die "the registry gave no upload Location"
	case "$loc" in /*) loc="http://$REGISTRY$loc" ;; esac
	case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
	code=$("${C[@]}" -o "$W/put.b" -w '%{http_code}' -X PUT -H 'Content-Type: application/octet-stream' \
		--data-binary "@$file" "$loc${sep}digest=$digest")
	[ "$code" = 201 ] || die "PUT blob $digest answered $code: $(cat "$W/put.b")"
	say "pushed blob $digest ($(size "$file") bytes)"
}
push_blob "$W/layer.tar.gz" "$LAYER_DIGEST"
push_blob "$W/config.json" "$CONFIG_DIGEST"
code=$("${C[@]}" -D "$W/man.h" -o "$W/man.b" -w '%{http_code}' -X PUT -H "Content-Type: $MT_MANIFEST" \
	--data-binary "@$W/manifest.json" "$BASE/manifests/$TAG")
[ "$code" = 201 ] || die "PUT manifest answered $code: $(cat "$W/man.b")"
got=$(tr -d '\r' <"$W/man.h" | awk 'tolower($1)=="docker-content-digest:"{print $2; exit}')
[ -z "$got" ] || [ "$got" = "$MANIFEST_DIGEST" ] || die "the registry stored the manifest as $got, expected $MANIFEST_DIGEST"
say "pushed manifest $REGISTRY/$REPO:$TAG ($MANIFEST_DIGEST)"

# ---------------------------------------------------------------- verify by pulling back
code=$("${C[@]}" -D "$W/get.h" -o "$W/get.json" -w '%{http_code}' -H "Accept: $MT_MANIFEST" "$BASE/manifests/$TAG")
[ "$code" = 200 ] || die "GET manifest answered $code"
ctype=$(tr -d '\r' <"$W/get.h" | awk 'tolower($1)=="content-type:"{print $2; exit}')
[ "$ctype" = "$MT_MANIFEST" ] || die "GET manifest returned Content-Type $ctype, expected $MT_MANIFEST"
[ "sha256:$(sha "$W/get.json")" = "$MANIFEST_DIGEST" ] || die "the manifest read back differs from the one pushed"
grep -q "\"digest\":\"$LAYER_DIGEST\"" "$W/get.json" || die "the manifest read back does not name layer $LAYER_DIGEST"
code=$("${C[@]}" -L -o "$W/blob" -w '%{http_code}' "$BASE/blobs/$LAYER_DIGEST")
[ "$code" = 200 ] || die "GET layer blob answered $code"
[ "sha256:$(sha "$W/blob")" = "$LAYER_DIGEST" ] || die "the layer blob read back has a different sha256"
tar -tvzf "$W/blob" >"$W/blob.list" || die "the layer blob read back is not a gzip'd tar"
grep -q ' 107/107 .* disk/guest\.qcow2$' "$W/blob.list" || die "the layer has no disk/guest.qcow2 owned by 107/107"
say "verified: manifest $MANIFEST_DIGEST, layer $LAYER_DIGEST ($LAYER_SIZE bytes), disk/guest.qcow2 owned by 107"
echo "$REGISTRY/$REPO:$TAG@$MANIFEST_DIGEST"
