# Shared helpers of the kumo test guest (sourced by rcS, final, udhcpc.script, ...).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
KUMO=/run/kumo

uptime_s() { read -r up _ </proc/uptime; echo "$up"; }

# log MESSAGE: print a "KUMO-GUEST: MESSAGE t=<uptime>s" marker on the console and keep it in boot.log.
log() {
	_l="KUMO-GUEST: $* t=$(uptime_s)s"
	echo "$_l" >/dev/console
	echo "$_l" >>"$KUMO/boot.log"
}

# unquote: strip blanks and one pair of surrounding quotes.
unquote() {
	sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/"
}

# yaml_get FILE KEY: value of a top-level "KEY: value" line (first one), unquoted.
yaml_get() {
	[ -f "$1" ] || return 0
	sed -n "s/^$2:[[:space:]]*//p" "$1" | head -n 1 | sed 's/[[:space:]]#.*$//' | unquote
}

# json_get FILE KEY: first string value of "KEY": "value" anywhere in FILE.
json_get() {
	[ -f "$1" ] || return 0
	tr -d '\n\r' <"$1" | grep -o "\"$2\"[[:space:]]*:[[:space:]]*\"[^\"]*\"" | head -n 1 |
		sed -e 's/^.*:[[:space:]]*"//' -e 's/"$//'
}

# meta_get FILE KEY: a meta-data value whether the file is YAML or JSON.
meta_get() {
	_v=$(yaml_get "$1" "$2")
	[ -n "$_v" ] || _v=$(json_get "$1" "$2")
	echo "$_v"
}

# first_nic: name of the first non-loopback network interface (eth0 if present).
first_nic() {
	if [ -e /sys/class/net/eth0 ]; then echo eth0; return; fi
	for _n in /sys/class/net/*; do
		_n=${_n##*/}
		case "$_n" in lo | sit* | tunl* | ip6tnl* | dummy*) continue ;; esac
		echo "$_n"
		return
	done
}

# prefix_to_mask N -> dotted netmask
prefix_to_mask() {
	_p=$1 _m='' _i=0
	while [ $_i -lt 4 ]; do
		if [ "$_p" -ge 8 ]; then _o=255; _p=$((_p - 8)); else _o=$((256 - (1 << (8 - _p)))); [ "$_p" -eq 0 ] && _o=0; _p=0; fi
		_m="$_m${_m:+.}$_o"
		_i=$((_i + 1))
	done
	echo "$_m"
}

# mask_to_prefix A.B.C.D -> N
mask_to_prefix() {
	_n=0
	for _o in $(echo "$1" | tr . ' '); do
		case "$_o" in
		255) _n=$((_n + 8)) ;; 254) _n=$((_n + 7)) ;; 252) _n=$((_n + 6)) ;; 248) _n=$((_n + 5)) ;;
		240) _n=$((_n + 4)) ;; 224) _n=$((_n + 3)) ;; 192) _n=$((_n + 2)) ;; 128) _n=$((_n + 1)) ;;
		esac
	done
	echo "$_n"
}

# set_hostname NAME: sets the (short) host name; a FQDN's first label becomes the host name.
set_hostname() {
	_f=$(echo "$1" | tr -cd 'A-Za-z0-9.-' | cut -c1-253)
	_h=${_f%%.*}
	_h=$(echo "$_h" | cut -c1-63)
	[ -n "$_h" ] || return 0
	hostname "$_h"
	echo "$_h" >/etc/hostname
	if [ "$_f" != "$_h" ]; then _a="$_f $_h"; else _a=$_h; fi
	printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost\n' "$_a" >/etc/hosts
	echo "$_h" >"$KUMO/hostname"
}

# kumo_cleanup: what runs before power-off or reboot (busybox init's ::shutdown: action and the ACPI
# power-button handler): stop the services, SIGTERM every other process and give it a moment, then
# sync and unmount (or remount read-only) every real file system that the user mounted.
kumo_cleanup() {
	trap '' TERM
	[ -f /run/qemu-ga.pid ] && kill "$(cat /run/qemu-ga.pid)" 2>/dev/null
	killall httpd acpid udhcpc 2>/dev/null
	kill -TERM -1 2>/dev/null # every process but init and this one
	sleep 0.3
	sync
	awk '$3 !~ /^(rootfs|proc|sysfs|devtmpfs|devpts|tmpfs|ramfs|cgroup2?|securityfs|debugfs|tracefs|bpf|mqueue|pstore|configfs|hugetlbfs|fusectl|binfmt_misc)$/ {print $2}' /proc/mounts |
		sort -r | while read -r _m; do umount "$_m" 2>/dev/null || mount -o remount,ro "$_m" 2>/dev/null; done
	sync
}
