#!/usr/bin/env bash
# Builds kumo's small bootable test guest, offline from Debian packages, and caches it.
#
#   images/build-guest.sh [--force]      -> prints the path of the cached guest.qcow2 on stdout
#
# The guest is Debian's cloud kernel plus a busybox initramfs (the guest's programs live in
# images/guest/), made into a hybrid ISO by grub-mkrescue and converted to qcow2, so it boots from a
# virtio disk (or a CD-ROM). It prints "KUMO-GUEST: ..." markers on the serial console (ttyS0), takes
# cloud-init config from NoCloud (label cidata) or ConfigDrive (label config-2), gets an address by
# DHCP (or static from network-config), serves HTTP on port 8080, powers off on the ACPI power button
# and runs qemu-guest-agent and an SSH server (dropbear) when a virtio-serial port org.qemu.guest_agent.0
# exists.
#
# Output, in ${KUMO_CACHE:-$HOME/.cache/kumo}/images/:
#   guest.qcow2        the bootable disk (what a containerDisk carries)
#   guest.vmlinuz      the kernel and
#   guest.initrd.img   the initramfs (with qemu-ga), for direct kernel boot:
#                      -kernel guest.vmlinuz -initrd guest.initrd.img -append "console=ttyS0 quiet"
#   guest.hash         sha256 of this script + images/guest/* + options; the image is rebuilt when it changes
#   guest.manifest     package versions, kernel version, sizes, kernel command line
# Downloaded .deb files are kept in ${KUMO_CACHE}/debs/.
#
# Environment:
#   KUMO_CACHE                 cache root (default $HOME/.cache/kumo)
#   KUMO_GUEST_KERNEL_PKG      kernel package (default linux-image-cloud-amd64, a metapackage)
#   KUMO_GUEST_AGENT=0         leave qemu-guest-agent and dropbear out (they add ~3 MiB to the disk, none to
#                              boot time: they sit on the disk as /kumo/qga.img and are unpacked only when
#                              the VM has the org.qemu.guest_agent.0 port)
# Needs root for apt-get (only when a tool is missing) and for mknod /dev/console in the initramfs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
GUEST_SRC="$HERE/guest"
CACHE=${KUMO_CACHE:-$HOME/.cache/kumo}
OUT="$CACHE/images"
DEBS="$CACHE/debs"
KERNEL_PKG=${KUMO_GUEST_KERNEL_PKG:-linux-image-cloud-amd64}
WITH_QGA=${KUMO_GUEST_AGENT:-1}
# cryptomgr.notests saves ~0.5 s of crypto self-tests under TCG; scsi_mod.scan=sync makes a SCSI CD-ROM
# visible as soon as virtio_scsi is loaded.
CMDLINE="console=tty0 console=ttyS0,115200 quiet cryptomgr.notests scsi_mod.scan=sync"
ISO_LABEL=KUMO_GUEST
# Kernel modules the guest loads at boot (with their dependencies, in order). Debian's cloud kernel has
# virtio, SCSI, CD-ROM, ISO 9660 and FAT as modules. It has no AHCI driver, so a SATA CD-ROM on q35
# stays invisible: "ahci" is skipped there, and only used with a kernel that has it (for instance
# KUMO_GUEST_KERNEL_PKG=linux-image-amd64). ata_piix (i440fx IDE) is left out.
MODULES=(
	virtio_pci virtio_blk virtio_net virtio_scsi virtio_console virtio_rng virtio_balloon
	sd_mod sr_mod cdrom isofs vfat nls_cp437 nls_iso8859_1 nls_utf8
	button evdev vmw_vsock_virtio_transport ahci
)

FORCE=0
for arg in "$@"; do
	case "$arg" in
	--force | -f) FORCE=1 ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$SELF" | sed -e '$d' -e 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "build-guest: unknown argument '$arg' (try --help)" >&2
		exit 2
		;;
	esac
done

say() { echo "build-guest: $*" >&2; }
die() {
	echo "build-guest: error: $*" >&2
	exit 1
}

[ -d "$GUEST_SRC" ] || die "missing $GUEST_SRC (the guest's /init and scripts); run this script from a kumo checkout"

input_hash() {
	{
		cat "$SELF"
		for f in $(cd "$GUEST_SRC" && LC_ALL=C ls); do
			echo "== $f"
			cat "$GUEST_SRC/$f"
		done
		echo "== options kernel=$KERNEL_PKG qga=$WITH_QGA"
	} | sha256sum | cut -d' ' -f1
}
HASH=$(input_hash)

mkdir -p "$OUT" "$DEBS"
exec 9>"$OUT/.build.lock"
if ! flock -w 1200 9; then
	die "another build holds $OUT/.build.lock for over 20 minutes; check for a stuck build-guest.sh"
fi

if [ "$FORCE" = 0 ] && [ -s "$OUT/guest.qcow2" ] && [ "$(cat "$OUT/guest.hash" 2>/dev/null)" = "$HASH" ]; then
	say "up to date: $OUT/guest.qcow2 (hash ${HASH:0:12}; use --force to rebuild)"
	echo "$OUT/guest.qcow2"
	exit 0
fi
T0=$(date +%s)
say "building the test guest (hash ${HASH:0:12}) into $OUT"

# ---------------------------------------------------------------- host tools (idempotent apt installs)
APT_UPDATED=0
apt_update() {
	if [ "$APT_UPDATED" = 0 ]; then
		say "apt-get update"
		apt-get update -qq || die "apt-get update failed; check network access to the Debian mirror"
		APT_UPDATED=1
	fi
}
apt_install() {
	[ "$(id -u)" = 0 ] || die "need root to install: $* (run: sudo apt-get install --no-install-recommends $*)"
	apt_update
	say "installing (apt): $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
		die "apt-get install $* failed"
}
need=()
command -v grub-mkrescue >/dev/null || need+=(grub-common)
[ -f /usr/lib/grub/i386-pc/modinfo.sh ] || need+=(grub-pc-bin)
command -v xorriso >/dev/null || need+=(xorriso)
command -v mformat >/dev/null || need+=(mtools)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v depmod >/dev/null && command -v modprobe >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
command -v dpkg-deb >/dev/null || die "dpkg-deb not found: this script needs a Debian (bookworm) host"
if [ "$WITH_QGA" = 1 ]; then
	# qemu-ga and dropbear are copied with the shared libraries they link against, resolved on this host
	for lib in libglib2.0-0 libnuma1 liburing2 libudev1 libtomcrypt1 libtommath1; do
		[ "$(dpkg-query -W -f='${Status}' "$lib" 2>/dev/null)" = "install ok installed" ] || need+=("$lib")
	done
fi
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

# ---------------------------------------------------------------- guest packages (.deb, cached)
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}'; }
resolve_kernel_pkg() {
	local dep
	dep=$(apt-cache depends "$1" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
	echo "${dep:-$1}"
}
# fetch PKG -> prints the path of the cached .deb of PKG's candidate version
fetch() {
	local pkg=$1 ver file
	ver=$(candidate "$pkg")
	if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
		apt_update
		ver=$(candidate "$pkg")
	fi
	[ -n "$ver" ] && [ "$ver" != "(none)" ] || die "Debian package $pkg not found (apt-cache policy $pkg); check /etc/apt/sources.list"
	file=$(ls "$DEBS/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n 1 || true)
	if [ -z "$file" ]; then
		say "downloading $pkg $ver"
		(cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >/dev/null) ||
			die "apt-get download $pkg=$ver failed"
		file=$(ls "$DEBS/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n 1 || true)
		[ -n "$file" ] || die "downloaded $pkg but cannot find it in $DEBS"
	fi
	echo "$file"
}

W=$(mktemp -d "${TMPDIR:-/tmp}/kumo-guest-build.XXXXXX")
trap 'rm -rf "$W"' EXIT

KPKG=$(resolve_kernel_pkg "$KERNEL_PKG")
if [ "$KPKG" = "$KERNEL_PKG" ] && ! apt-cache show "$KPKG" >/dev/null 2>&1; then
	apt_update
	KPKG=$(resolve_kernel_pkg "$KERNEL_PKG")
fi
PKGS=("$KPKG" busybox-static)
[ "$WITH_QGA" = 1 ] && PKGS+=(qemu-guest-agent dropbear-bin openssh-client)
: >"$W/packages"
for p in "${PKGS[@]}"; do
	deb=$(fetch "$p")
	mkdir -p "$W/x/$p"
	dpkg-deb -x "$deb" "$W/x/$p"
	echo "$p $(dpkg-deb -f "$deb" Version)" >>"$W/packages"
done
KX="$W/x/$KPKG"
KVER=$(ls "$KX/lib/modules" | head -n 1)
[ -n "$KVER" ] && [ -f "$KX/boot/vmlinuz-$KVER" ] || die "no kernel found in $KPKG"
say "kernel $KVER, busybox $(awk '$1=="busybox-static"{print $2}' "$W/packages")"

# ---------------------------------------------------------------- initramfs tree
R="$W/root"
mkdir -p "$R"/{bin,dev,proc,sys,run,tmp,etc/kumo,etc/acpi/PWRF,www/cgi-bin,root,var/log,mnt,lib/modules,usr/lib}
ln -s bin "$R/sbin"
ln -s ../bin "$R/usr/bin"
ln -s ../bin "$R/usr/sbin"
ln -s ../run "$R/var/run"
chmod 1777 "$R/tmp"
chmod 0700 "$R/root"

cp "$W/x/busybox-static/bin/busybox" "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do
	[ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"
done

# /dev/console must exist before devtmpfs is mounted, or /init starts without stdio
if [ "$(id -u)" = 0 ]; then
	mknod -m 600 "$R/dev/console" c 5 1
	mknod -m 666 "$R/dev/null" c 1 3
else
	say "warning: not root, so no /dev/console in the initramfs; early /init output may be lost"
fi

# kernel modules: dependency closure in load order, computed with the host's kmod
depmod -b "$KX" "$KVER"
: >"$W/insmods"
for m in "${MODULES[@]}"; do
	if ! modprobe -d "$KX" -S "$KVER" --show-depends "$m" >>"$W/insmods" 2>"$W/modprobe.err"; then
		say "note: module $m is not in $KVER; skipping it"
	fi
done
MDIR="$KX/lib/modules/$KVER"
# strip_sig FILE: drop the appended module signature. Checking ~30 RSA signatures costs a few tenths of
# a second under TCG; unsigned modules still load (the kernel does not enforce signatures; it only
# notes a taint). Layout: module | signature | 12-byte struct (sig_len: last 4 bytes, big-endian) | magic.
strip_sig() {
	local f=$1 magic='~Module signature appended~' len
	[ "$(tail -c 28 "$f" | head -c 27)" = "$magic" ] || return 0
	len=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{print $1 * 16777216 + $2 * 65536 + $3 * 256 + $4}')
	truncate -s $(($(stat -c %s "$f") - 40 - len)) "$f"
}
awk '$1 == "insmod" && !seen[$2]++ {print $2}' "$W/insmods" | while read -r ko; do
	rel=${ko#"$MDIR"/}
	mkdir -p "$R/lib/modules/$KVER/$(dirname "$rel")"
	cp "$ko" "$R/lib/modules/$KVER/$rel"
	strip_sig "$R/lib/modules/$KVER/$rel"
	echo "$rel" >>"$R/etc/kumo/modules.order"
done
cp "$MDIR"/modules.builtin* "$MDIR/modules.order" "$R/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$R" "$KVER" # so that busybox modprobe works in the guest shell
say "modules: $(wc -l <"$R/etc/kumo/modules.order") files, $(du -sk "$R/lib/modules" | cut -f1) KiB"

# qemu-guest-agent, dropbear (the SSH server `kumo ssh` and `virtctl ssh` reach) and the shared libraries they
# need (resolved with the host's loader). They go into a second archive, qga.img: GRUB reads the boot files
# through BIOS calls at ~5 MB/s under TCG, so the boot initramfs stays small and the guest unpacks qga.img
# from its boot disk only when it has the agent's virtio-serial port. For direct kernel boot,
# guest.initrd.img is initrd + qga.img concatenated.
Q="$W/qga"
# with_libs BIN: copies BIN's shared libraries into $Q at their paths.
with_libs() {
	local bin=$1 name
	name=$(basename "$bin")
	ldd "$bin" >"$W/ldd" 2>&1 || die "ldd $name failed: $(cat "$W/ldd")"
	if grep -q 'not found' "$W/ldd"; then
		die "$name needs libraries missing on this host: $(grep 'not found' "$W/ldd" | tr -s ' \t' ' '); install them with apt-get or set KUMO_GUEST_AGENT=0"
	fi
	awk '/=> \// {print $3} /^[ \t]*\/[^ ]*ld-linux/ {print $1}' "$W/ldd" | sort -u | while read -r lib; do
		mkdir -p "$Q$(dirname "$lib")"
		cp -L "$lib" "$Q$lib"
	done
	say "$name: $(awk '/=> \//' "$W/ldd" | wc -l) shared libraries"
}
if [ "$WITH_QGA" = 1 ]; then
	mkdir -p "$Q/bin"
	cp "$W/x/qemu-guest-agent/usr/sbin/qemu-ga" "$Q/bin/qemu-ga"
	cp "$W/x/dropbear-bin/usr/sbin/dropbear" "$Q/bin/dropbear"
	# The remote end of `scp -O` (dropbear runs `scp -t|-f`); OpenSSH's scp needs only libc.
	cp "$W/x/openssh-client/usr/bin/scp" "$Q/bin/scp"
	with_libs "$Q/bin/qemu-ga"
	with_libs "$Q/bin/dropbear"
	with_libs "$Q/bin/scp"
fi

# the guest's own files (images/guest/)
install -m 0755 "$GUEST_SRC/init" "$R/init"
install -m 0644 "$GUEST_SRC/inittab" "$R/etc/inittab"
install -m 0644 "$GUEST_SRC/profile" "$R/etc/profile"
for f in lib.sh netjson.sh cmdlist.awk netcfg.awk; do install -m 0644 "$GUEST_SRC/$f" "$R/etc/kumo/$f"; done
for f in rcS final udhcpc.script; do install -m 0755 "$GUEST_SRC/$f" "$R/etc/kumo/$f"; done
install -m 0755 "$GUEST_SRC/shutdown-hook" "$R/etc/kumo/shutdown"
install -m 0755 "$GUEST_SRC/index.cgi" "$R/www/cgi-bin/index.cgi"
install -m 0755 "$GUEST_SRC/power-button" "$R/etc/acpi/PWRF/00000080"
install -m 0755 "$GUEST_SRC/shutdown" "$R/bin/shutdown"
install -m 0755 "$GUEST_SRC/bash" "$R/bin/bash"
printf 'root:x:0:0:root:/root:/bin/sh\nkumo:x:1000:1000:kumo:/home/kumo:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\ntty:x:5:\nkumo:x:1000:\n' >"$R/etc/group"
mkdir -p "$R/home/kumo"
# What the guest agent's guest-get-osinfo reports (and so a VMI's status.guestOSInfo).
printf '%s\n' 'NAME="Kumo Test Guest"' 'ID=kumo' 'VERSION="1"' 'VERSION_ID=1' \
	'PRETTY_NAME="Kumo Test Guest 1 (busybox)"' >"$R/etc/os-release"
echo kumo-guest >"$R/etc/hostname"
printf 'hosts: files dns\n' >"$R/etc/nsswitch.conf"
: >"$R/etc/resolv.conf"
{
	echo "kumo test guest, build ${HASH:0:12}"
	echo "kernel $KVER"
	cat "$W/packages"
} >"$R/etc/kumo/release"

echo "$ISO_LABEL" >"$R/etc/kumo/boot-label"
mkcpio() { (cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -9n; }
mkcpio "$R" >"$W/initrd.img"
say "initramfs: $(du -k "$W/initrd.img" | cut -f1) KiB (gzip)"
if [ "$WITH_QGA" = 1 ]; then
	mkcpio "$Q" >"$W/qga.img"
	say "qga.img: $(du -k "$W/qga.img" | cut -f1) KiB (gzip)"
fi

# ---------------------------------------------------------------- hybrid ISO -> qcow2
I="$W/iso"
mkdir -p "$I/boot/grub"
cp "$KX/boot/vmlinuz-$KVER" "$I/boot/vmlinuz"
cp "$W/initrd.img" "$I/boot/initrd.img"
if [ "$WITH_QGA" = 1 ]; then
	mkdir -p "$I/kumo"
	cp "$W/qga.img" "$I/kumo/qga.img"
fi
cat >"$I/boot/grub/grub.cfg" <<EOF
set timeout=0
set default=0
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
menuentry "kumo test guest ($KVER)" {
	linux /boot/vmlinuz $CMDLINE
	initrd /boot/initrd.img
}
EOF
say "grub-mkrescue (BIOS, hybrid ISO)"
grub-mkrescue -o "$W/guest.iso" --locales= --fonts= --themes= --compress=xz \
	--install-modules="linux normal iso9660 biosdisk part_msdos part_gpt serial terminal echo test configfile" \
	"$I" -- -volid "$ISO_LABEL" >"$W/mkrescue.log" 2>&1 ||
	die "grub-mkrescue failed: $(tail -n 5 "$W/mkrescue.log")"
qemu-img convert -f raw -O qcow2 "$W/guest.iso" "$W/guest.qcow2" || die "qemu-img convert failed"

{
	echo "hash $HASH"
	echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "kernel_version $KVER"
	echo "cmdline $CMDLINE"
	sed 's/^/package /' "$W/packages"
	echo "guest_agent $WITH_QGA"
	echo "initrd_bytes $(stat -c %s "$W/initrd.img")"
	if [ "$WITH_QGA" = 1 ]; then echo "qga_img_bytes $(stat -c %s "$W/qga.img")"; fi
	echo "iso_bytes $(stat -c %s "$W/guest.iso")"
	echo "qcow2_bytes $(stat -c %s "$W/guest.qcow2")"
} >"$W/guest.manifest"

# publish: the hash goes last, so a half-written image is never taken for a good one
rm -f "$OUT/guest.hash"
cp "$KX/boot/vmlinuz-$KVER" "$OUT/guest.vmlinuz.tmp" && mv -f "$OUT/guest.vmlinuz.tmp" "$OUT/guest.vmlinuz"
if [ "$WITH_QGA" = 1 ]; then
	cat "$W/initrd.img" "$W/qga.img" >"$OUT/guest.initrd.img"
else
	cp "$W/initrd.img" "$OUT/guest.initrd.img"
fi
mv -f "$W/guest.qcow2" "$OUT/guest.qcow2"
mv -f "$W/guest.manifest" "$OUT/guest.manifest"
echo "$HASH" >"$OUT/guest.hash"
say "done in $(($(date +%s) - T0)) s: $OUT/guest.qcow2 ($(du -k "$OUT/guest.qcow2" | cut -f1) KiB)"
echo "$OUT/guest.qcow2"
