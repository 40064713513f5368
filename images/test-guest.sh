#!/usr/bin/env bash
# shellcheck disable=SC2054 # commas separate QEMU option values, not array elements
# Boots kumo's cached test guest under QEMU/TCG and checks what it promises.
#
#   images/test-guest.sh [--image PATH] [--direct] [--timeout SEC] [--keep] [SCENARIO...]
#
# Scenarios (default: nocloud; "all" runs every one):
#   nocloud       NoCloud seed (virtio disk, label cidata) with a shell-script user-data that writes a
#                 marker into the web root; meta-data local-hostname; DHCP; qemu-guest-agent checks.
#   cloud-config  NoCloud #cloud-config: hostname + runcmd; network-config v2 with a static address.
#   netv1         NoCloud shell user-data; network-config v1 with a static address.
#   configdrive   ConfigDrive (label config-2) on a virtio-scsi CD-ROM: meta_data.json hostname,
#                 #cloud-config runcmd user_data, network_data.json with a static address.
# Every scenario checks: the "KUMO-GUEST: ip=" marker, the HTTP answer on port 8080 (forwarded to a
# free port on 127.0.0.1) carrying the user-data marker, the host name, a command typed on the serial
# console, and that QMP system_powerdown makes QEMU exit in time. It prints the timings from QEMU's
# start to "KUMO-GUEST: ready" and to the first HTTP answer.
#
# --direct boots guest.vmlinuz + guest.initrd.img (beside the image) with -kernel/-initrd instead of
# through GRUB from the disk: what KubeVirt's kernelBoot does, and ~2-3x faster to "ready" under TCG.
# QEMU runs with -accel tcg (KVM is not usable on these machines), user-mode networking with
# restrict=on, QMP and the guest agent on 127.0.0.1 TCP ports: nothing leaves the machine.
# The guest disk is a qcow2 overlay in a temporary directory; the cached image is never written.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGE=
TIMEOUT=${KUMO_TEST_TIMEOUT:-120}
POWERDOWN_TIMEOUT=${KUMO_POWERDOWN_TIMEOUT:-30}
KEEP=0
DIRECT=0
SCENARIOS=()
while [ $# -gt 0 ]; do
	case "$1" in
	--image)
		IMAGE=$2
		shift 2
		;;
	--timeout)
		TIMEOUT=$2
		shift 2
		;;
	--keep)
		KEEP=1
		shift
		;;
	--direct)
		DIRECT=1
		shift
		;;
	-h | --help)
		sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
		exit 0
		;;
	all)
		SCENARIOS+=(nocloud cloud-config netv1 configdrive)
		shift
		;;
	nocloud | cloud-config | netv1 | configdrive)
		SCENARIOS+=("$1")
		shift
		;;
	*)
		echo "test-guest: unknown argument '$1' (try --help)" >&2
		exit 2
		;;
	esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(nocloud)

say() { echo "test-guest: $*" >&2; }
die() {
	echo "test-guest: error: $*" >&2
	exit 1
}

# ---------------------------------------------------------------- prerequisites
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v xorriso >/dev/null || need+=(xorriso)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing ${need[*]}; install with: sudo apt-get install --no-install-recommends ${need[*]}"
	say "installing (apt): ${need[*]}"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
		die "apt-get install ${need[*]} failed"
fi
if [ -z "$IMAGE" ]; then
	IMAGE=$("$HERE/build-guest.sh") || die "build-guest.sh failed; run it alone to see why"
fi
[ -s "$IMAGE" ] || die "no guest image at $IMAGE; run images/build-guest.sh"
IMGDIR=$(dirname "$IMAGE")
# what the build put in (guest.manifest beside the image): the guest agent, the kernel command line
QGA_EXPECTED=$(awk '$1=="guest_agent"{print $2}' "$IMGDIR/guest.manifest" 2>/dev/null || true)
QGA_EXPECTED=${QGA_EXPECTED:-1}
CMDLINE=$(sed -n 's/^cmdline //p' "$IMGDIR/guest.manifest" 2>/dev/null || true)
CMDLINE=${CMDLINE:-console=ttyS0 quiet}
BOOT_ARGS=()
if [ "$DIRECT" = 1 ]; then
	[ -s "$IMGDIR/guest.vmlinuz" ] && [ -s "$IMGDIR/guest.initrd.img" ] ||
		die "--direct needs guest.vmlinuz and guest.initrd.img beside $IMAGE; rebuild with images/build-guest.sh"
	BOOT_ARGS=(-kernel "$IMGDIR/guest.vmlinuz" -initrd "$IMGDIR/guest.initrd.img" -append "$CMDLINE")
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/kumo-test-guest.XXXXXX")
QEMU_PID='' CAT_PID='' HTTP_PID=''
cleanup() {
	[ -z "$HTTP_PID" ] || kill "$HTTP_PID" 2>/dev/null || true
	if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
		kill "$QEMU_PID" 2>/dev/null || true
		for _ in $(seq 1 30); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$QEMU_PID" 2>/dev/null || true
	fi
	[ -z "$CAT_PID" ] || kill "$CAT_PID" 2>/dev/null || true
	exec 3>&- 2>/dev/null || true
	if [ "$KEEP" = 1 ]; then say "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); } # ms -> s.mmm

port_busy() { (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
	local p
	for _ in $(seq 1 50); do
		p=$((20000 + RANDOM % 40000))
		port_busy "$p" || {
			echo "$p"
			return
		}
	done
	die "no free TCP port found on 127.0.0.1"
}

mkiso() { # mkiso DIR LABEL OUT
	xorriso -as mkisofs -quiet -o "$3" -volid "$2" -joliet -rock "$1" 2>"$W/xorriso.err" ||
		die "xorriso failed: $(cat "$W/xorriso.err")"
}

# qmp PORT COMMAND... : sends each command (after qmp_capabilities), prints the replies (events skipped)
qmp() {
	local port=$1 line
	shift
	exec 4<>"/dev/tcp/127.0.0.1/$port" || return 1
	read -r -t 5 line <&4 || return 1 # greeting
	for cmd in '{"execute":"qmp_capabilities"}' "$@"; do
		printf '%s\n' "$cmd" >&4
		while read -r -t 10 line <&4; do
			case "$line" in *'"return"'* | *'"error"'*)
				[ "$cmd" = '{"execute":"qmp_capabilities"}' ] || echo "$line"
				break
				;;
			esac
		done
	done
	exec 4>&-
}

# qga PORT COMMAND: one guest agent command after a guest-sync handshake; prints the reply
qga() {
	local port=$1 cmd=$2 line id=$RANDOM
	exec 4<>"/dev/tcp/127.0.0.1/$port" || return 1
	printf '{"execute":"guest-sync","arguments":{"id":%d}}\n' "$id" >&4
	while read -r -t 10 line <&4; do
		case "$line" in *"\"return\": $id"* | *"\"return\":$id"*) break ;; esac
	done || {
		exec 4>&-
		return 1
	}
	printf '%s\n' "$cmd" >&4
	read -r -t 10 line <&4 && echo "$line"
	exec 4>&-
}

FAILED=()
REPORT=()

# run_scenario NAME
run_scenario() {
	local name=$1 S="$W/$1" token hn guest_ip seed_args=() expect_host expect_via
	mkdir -p "$S/seed"
	token="kumo-userdata-marker-$RANDOM$RANDOM"
	hn="kumo-$name-$RANDOM"
	expect_host=$hn expect_via=dhcp guest_ip=
	case "$name" in
	nocloud)
		printf '#!/bin/sh\necho "%s" > /www/userdata.txt\necho "user-data ran as $(id -u) on $(hostname)"\n' "$token" >"$S/seed/user-data"
		printf 'instance-id: iid-%s\nlocal-hostname: %s\n' "$name" "$hn" >"$S/seed/meta-data"
		;;
	cloud-config)
		guest_ip=10.0.2.50 expect_via=static
		printf 'instance-id: iid-%s\nlocal-hostname: not-this-one\n' "$name" >"$S/seed/meta-data"
		cat >"$S/seed/user-data" <<-EOF
			#cloud-config
			hostname: $hn
			runcmd:
			  - echo "$token" > /www/userdata.txt
			  - [ sh, -c, "echo runcmd-argv-form >> /www/userdata.txt" ]
			  - |
			    echo block-item-1 >> /www/userdata.txt
		EOF
		cat >"$S/seed/network-config" <<-EOF
			version: 2
			ethernets:
			  eth0:
			    dhcp4: false
			    addresses: [$guest_ip/24]
			    gateway4: 10.0.2.2
			    nameservers:
			      addresses: [10.0.2.3]
		EOF
		;;
	netv1)
		guest_ip=10.0.2.60 expect_via=static
		printf '#!/bin/bash\necho "%s" > /www/userdata.txt\n' "$token" >"$S/seed/user-data"
		printf 'instance-id: iid-%s\nlocal-hostname: %s\n' "$name" "$hn" >"$S/seed/meta-data"
		cat >"$S/seed/network-config" <<-EOF
			version: 1
			config:
			  - type: physical
			    name: eth0
			    subnets:
			      - type: static
			        address: $guest_ip
			        netmask: 255.255.255.0
			        gateway: 10.0.2.2
			        dns_nameservers: [10.0.2.3]
		EOF
		;;
	configdrive)
		guest_ip=10.0.2.70 expect_via=static
		mkdir -p "$S/seed/openstack/latest"
		printf '{"uuid": "iid-%s", "hostname": "%s", "name": "%s"}\n' "$name" "$hn" "$hn" >"$S/seed/openstack/latest/meta_data.json"
		printf '#cloud-config\nruncmd:\n  - echo "%s" > /www/userdata.txt\n' "$token" >"$S/seed/openstack/latest/user_data"
		cat >"$S/seed/openstack/latest/network_data.json" <<-EOF
			{"links": [{"id": "interface0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56"}],
			 "networks": [{"id": "network0", "type": "ipv4", "link": "interface0", "ip_address": "$guest_ip",
			   "netmask": "255.255.255.0", "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.2.2"}]}],
			 "services": [{"type": "dns", "address": "10.0.2.3"}]}
		EOF
		;;
	esac
	if [ "$name" = configdrive ]; then
		mkiso "$S/seed" config-2 "$S/seed.iso"
		seed_args=(-device virtio-scsi-pci,id=scsi0
			-drive "file=$S/seed.iso,if=none,id=cd0,media=cdrom,readonly=on,format=raw"
			-device scsi-cd,drive=cd0,bus=scsi0.0)
	else
		mkiso "$S/seed" cidata "$S/seed.iso"
		seed_args=(-drive "file=$S/seed.iso,if=none,id=seed0,format=raw,readonly=on" -device virtio-blk-pci,drive=seed0)
	fi
	qemu-img create -q -f qcow2 -F qcow2 -b "$IMAGE" "$S/disk.qcow2" || die "qemu-img create overlay failed"

	local http_port qmp_port qga_port fwd
	http_port=$(free_port)
	qmp_port=$(free_port)
	qga_port=$(free_port)
	fwd="tcp:127.0.0.1:$http_port-${guest_ip}:8080"
	mkfifo "$S/serial.in" "$S/serial.out"
	: >"$S/serial.log"
	cat <>"$S/serial.out" >>"$S/serial.log" &
	CAT_PID=$!
	exec 3<>"$S/serial.in"

	say "[$name] booting $IMAGE ($([ "$DIRECT" = 1 ] && echo 'direct kernel boot' || echo 'from the disk via GRUB'), TCG; http on 127.0.0.1:$http_port)"
	local t0 t_ready='' t_http='' t_ip='' deadline ip_line
	t0=$(now_ms)
	qemu-system-x86_64 -name "kumo-test-$name" -machine q35 -accel tcg -m 256 -smp 1 -nographic -no-reboot \
		-serial "pipe:$S/serial" -monitor none \
		-qmp "tcp:127.0.0.1:$qmp_port,server=on,wait=off" \
		-drive "file=$S/disk.qcow2,if=none,id=disk0,format=qcow2" -device "virtio-blk-pci,drive=disk0$([ "$DIRECT" = 1 ] || echo ,bootindex=0)" \
		"${BOOT_ARGS[@]}" "${seed_args[@]}" \
		-netdev "user,id=net0,restrict=on,hostfwd=$fwd" -device virtio-net-pci,netdev=net0,romfile= \
		-device virtio-rng-pci \
		-device virtio-serial-pci -chardev "socket,id=qga0,host=127.0.0.1,port=$qga_port,server=on,wait=off" \
		-device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
		</dev/null >"$S/qemu.log" 2>&1 &
	QEMU_PID=$!

	local fail=''
	deadline=$((t0 + TIMEOUT * 1000))
	# HTTP poller, in the background so that a request hanging in slirp (sent before the guest has its
	# address) cannot delay noticing the serial markers; it starts once the guest printed its address.
	(
		while [ "$(now_ms)" -lt "$deadline" ]; do
			if grep -q 'KUMO-GUEST: ip=[0-9]' "$S/serial.log" &&
				curl --noproxy '*' -fsS -m 2 -o "$S/http.first" "http://127.0.0.1:$http_port/" 2>/dev/null; then
				now_ms >"$S/t_http"
				exit 0
			fi
			sleep 0.05
		done
	) &
	HTTP_PID=$!
	while :; do
		if ! kill -0 "$QEMU_PID" 2>/dev/null; then
			fail="QEMU exited early: $(tail -n 3 "$S/qemu.log" | tr '\n' ' ')"
			break
		fi
		[ -n "$t_ip" ] || ! grep -q 'KUMO-GUEST: ip=[0-9]' "$S/serial.log" || t_ip=$(now_ms)
		[ -n "$t_ready" ] || ! grep -q 'KUMO-GUEST: ready' "$S/serial.log" || t_ready=$(now_ms)
		[ -n "$t_http" ] || [ ! -s "$S/t_http" ] || t_http=$(cat "$S/t_http")
		[ -z "$t_ready" ] || [ -z "$t_http" ] || break
		if [ "$(now_ms)" -gt "$deadline" ]; then
			fail="timed out after ${TIMEOUT}s (ip=${t_ip:+yes} ready=${t_ready:+yes} http=${t_http:+yes})"
			break
		fi
		sleep 0.05
	done
	kill "$HTTP_PID" 2>/dev/null || true
	wait "$HTTP_PID" 2>/dev/null || true
	HTTP_PID=''

	local checks=()
	check() { # check DESCRIPTION COMMAND...
		local d=$1
		shift
		if "$@"; then checks+=("ok   $d"); else
			checks+=("FAIL $d")
			fail=${fail:-$d}
		fi
	}
	if [ -z "$fail" ]; then
		ip_line=$(grep -o 'KUMO-GUEST: ip=[^ ]* dev=[^ ]* via=[^ ]*' "$S/serial.log" | head -n 1)
		check "ip marker ($ip_line)" test -n "$ip_line"
		if [ "$expect_via" = static ]; then
			check "static address $guest_ip" grep -q "KUMO-GUEST: ip=$guest_ip dev=eth0 via=static" "$S/serial.log"
		else
			check "DHCP address" grep -q 'KUMO-GUEST: ip=10\.0\.2\.[0-9]* dev=eth0 via=dhcp' "$S/serial.log"
		fi
		check "hostname marker = $expect_host" grep -q "KUMO-GUEST: hostname=$expect_host " "$S/serial.log"
		check "userdata-done rc=0" grep -q 'KUMO-GUEST: userdata-done rc=0' "$S/serial.log"
		# the page may have been fetched before the user-data ran: fetch it again (bounded)
		local body=
		for _ in $(seq 1 50); do
			body=$(curl --noproxy '*' -fsS -m 3 "http://127.0.0.1:$http_port/" 2>/dev/null || true)
			case "$body" in *"$token"*) break ;; esac
			sleep 0.2
		done
		echo "$body" >"$S/http.body"
		check "HTTP answer carries the user-data marker" grep -q "$token" "$S/http.body"
		check "HTTP answer names the host" grep -q "hostname=$expect_host " "$S/http.body"
		case "$name" in
		cloud-config) check "runcmd argv and block items ran" grep -q 'block-item-1' "$S/http.body" ;;
		esac
		# interactive serial console: type a command, expect its output
		printf 'echo kumo-console-$((6*7))\n' >&3
		for _ in $(seq 1 50); do grep -q 'kumo-console-42' "$S/serial.log" && break; sleep 0.1; done
		check "serial console shell answers" grep -q 'kumo-console-42' "$S/serial.log"
		# guest agent
		local r
		if [ "$QGA_EXPECTED" = 1 ]; then
			for _ in $(seq 1 100); do grep -q 'KUMO-GUEST: guest-agent=' "$S/serial.log" && break; sleep 0.1; done
			check "guest agent started" grep -q 'KUMO-GUEST: guest-agent=started' "$S/serial.log"
			r=$(qga "$qga_port" '{"execute":"guest-get-host-name"}' 2>/dev/null || true)
			echo "$r" >"$S/qga.hostname"
			check "guest agent guest-get-host-name" grep -q "\"host-name\": *\"$expect_host\"" "$S/qga.hostname"
		else
			checks+=("skip guest agent (image built with KUMO_GUEST_AGENT=0)")
		fi
		# ACPI power button through QMP
		local t_pd t_exit=
		t_pd=$(now_ms)
		r=$(qmp "$qmp_port" '{"execute":"system_powerdown"}' 2>/dev/null || true)
		check "QMP system_powerdown accepted" test "${r//[[:space:]]/}" = '{"return":{}}'
		while kill -0 "$QEMU_PID" 2>/dev/null; do
			[ $(($(now_ms) - t_pd)) -lt $((POWERDOWN_TIMEOUT * 1000)) ] || break
			sleep 0.1
		done
		if ! kill -0 "$QEMU_PID" 2>/dev/null; then
			t_exit=$(now_ms)
			wait "$QEMU_PID" 2>/dev/null || true
		fi
		check "QEMU exited within ${POWERDOWN_TIMEOUT}s of system_powerdown" test -n "$t_exit"
		check "guest logged its shutdown" grep -q 'KUMO-GUEST: shutdown' "$S/serial.log"
		local pd=timeout
		[ -z "$t_exit" ] || pd="$(secs $((t_exit - t_pd))) s"
		REPORT+=("$name: start->ip $(secs $((t_ip - t0))) s, start->ready $(secs $((t_ready - t0))) s, start->HTTP $(secs $((t_http - t0))) s, system_powerdown->exit $pd; guest uptime at ready $(grep -a -o 'KUMO-GUEST: ready t=[0-9.]*s' "$S/serial.log" | head -n 1 | sed 's/.*t=//')")
	fi
	for c in "${checks[@]}"; do say "[$name]   $c"; done
	if [ -n "$fail" ]; then
		say "[$name] FAILED: $fail"
		say "[$name] serial console (last 40 lines):"
		tail -n 40 "$S/serial.log" | tr -d '\r' | sed 's/^/    | /' >&2
		FAILED+=("$name")
		REPORT+=("$name: FAILED ($fail)")
	else
		say "[$name] passed"
	fi
	# stop this scenario's QEMU and serial reader before the next one
	if kill -0 "$QEMU_PID" 2>/dev/null; then
		kill "$QEMU_PID" 2>/dev/null || true
		wait "$QEMU_PID" 2>/dev/null || true
	fi
	QEMU_PID=
	kill "$CAT_PID" 2>/dev/null || true
	wait "$CAT_PID" 2>/dev/null || true
	CAT_PID=
	exec 3>&-
}

for s in "${SCENARIOS[@]}"; do run_scenario "$s"; done

echo "test-guest: image $IMAGE ($(($(stat -c %s "$IMAGE") / 1024)) KiB), $([ "$DIRECT" = 1 ] && echo 'direct kernel boot' || echo 'disk boot via GRUB'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
for r in "${REPORT[@]}"; do echo "test-guest: $r"; done
passed=$((${#SCENARIOS[@]} - ${#FAILED[@]}))
echo "test-guest: $passed passed, ${#FAILED[@]} failed"
[ ${#FAILED[@]} -eq 0 ] || exit 1
