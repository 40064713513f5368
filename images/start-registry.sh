#!/usr/bin/env bash
# Starts a local OCI registry (Debian's docker-registry, i.e. CNCF Distribution) in the background,
# serving plain HTTP on 127.0.0.1:5000. Idempotent: a registry already started here is left running.
#
#   images/start-registry.sh            start (or confirm it runs); prints the address on stdout
#   images/start-registry.sh --status   exit 0 if it answers, 1 if not
#   images/start-registry.sh --stop     stop the registry this script started
#
# State lives in ${KUMO_CACHE:-$HOME/.cache/kumo}/registry/: config.yml, data/ (the blobs),
# registry.pid, registry.log. The address can be changed with KUMO_REGISTRY_ADDR (default
# 127.0.0.1:5000).
#
# The binary: docker-registry on PATH if there is one; otherwise Debian's docker-registry package is
# fetched with apt-get download and unpacked into the cache dir. It is deliberately not installed with
# apt-get install: the package's postinst starts a system-wide registry on *:5000 with its own config,
# which would take the port (and listen on every interface).
set -euo pipefail

CACHE=${KUMO_CACHE:-$HOME/.cache/kumo}
ADDR=${KUMO_REGISTRY_ADDR:-127.0.0.1:5000}
D="$CACHE/registry"
PIDFILE="$D/registry.pid"
LOG="$D/registry.log"

say() { echo "start-registry: $*" >&2; }
die() {
	echo "start-registry: error: $*" >&2
	exit 1
}

answers() { curl --noproxy '*' -fsS -m 2 -o /dev/null "http://$ADDR/v2/" 2>/dev/null; }
our_pid() { # prints the PID from the pid file if that process is a running docker-registry
	local pid
	pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
	case "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" in *docker-registry*) ;; *) return 1 ;; esac
	echo "$pid"
}

case "${1:-}" in
--status)
	if answers; then
		say "answering on http://$ADDR (pid $(our_pid || echo 'not ours'))"
		exit 0
	fi
	say "not answering on http://$ADDR"
	exit 1
	;;
--stop)
	if pid=$(our_pid); then
		kill "$pid"
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
		rm -f "$PIDFILE"
		say "stopped (pid $pid)"
	else
		say "no registry started by this script is running"
	fi
	exit 0
	;;
"") ;;
-h | --help)
	sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
	exit 0
	;;
*) die "unknown argument '$1' (try --help)" ;;
esac

command -v curl >/dev/null || die "curl is missing: apt-get install curl"
mkdir -p "$D/data"
exec 9>"$D/.lock"
flock -w 60 9 || die "another start-registry.sh holds $D/.lock"

if pid=$(our_pid); then
	if answers; then
		say "already running (pid $pid) on http://$ADDR"
		echo "$ADDR"
		exit 0
	fi
	say "pid $pid does not answer on http://$ADDR yet; waiting"
else
	if answers; then
		die "something else already answers on http://$ADDR (not started by this script; see 'ss -ltnp'). Use it as is, stop it, or set KUMO_REGISTRY_ADDR=127.0.0.1:<port>"
	fi
	host=${ADDR%:*} port=${ADDR##*:}
	if (exec 8<>"/dev/tcp/$host/$port") 2>/dev/null; then
		die "port $port on $host is taken by another program (see 'ss -ltnp'); set KUMO_REGISTRY_ADDR=127.0.0.1:<free port>"
	fi

	# the binary
	BIN=$(command -v docker-registry || true)
	if [ -z "$BIN" ]; then
		BIN="$D/pkg/usr/bin/docker-registry"
		if [ ! -x "$BIN" ]; then
			command -v apt-get >/dev/null || die "docker-registry is missing and this is not a Debian host; install CNCF Distribution's registry binary as docker-registry on PATH"
			mkdir -p "$CACHE/debs" "$D/pkg"
			say "fetching Debian's docker-registry package"
			if ! (cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root docker-registry >/dev/null 2>&1); then
				[ "$(id -u)" = 0 ] || die "apt-get download docker-registry failed; as root run: apt-get update"
				apt-get update -qq || die "apt-get update failed"
				(cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root docker-registry >/dev/null) ||
					die "apt-get download docker-registry failed; check the Debian sources in /etc/apt"
			fi
			deb=$(ls -t "$CACHE"/debs/docker-registry_*.deb | head -n 1)
			dpkg-deb -x "$deb" "$D/pkg" || die "dpkg-deb -x $deb failed"
			[ -x "$BIN" ] || die "no usr/bin/docker-registry in $deb"
		fi
	fi

	cat >"$D/config.yml" <<-EOF
		version: 0.1
		storage:
		  filesystem:
		    rootdirectory: $D/data
		  delete:
		    enabled: true
		http:
		  addr: $ADDR
	EOF
	say "starting $BIN on http://$ADDR (log: $LOG)"
	# OTEL_TRACES_EXPORTER=none: newer Distribution builds otherwise try to reach a tracing collector
	OTEL_TRACES_EXPORTER=none setsid "$BIN" serve "$D/config.yml" </dev/null >>"$LOG" 2>&1 9>&- &
	echo $! >"$PIDFILE"
	pid=$!
fi

for _ in $(seq 1 100); do
	if answers; then
		say "running (pid $pid) on http://$ADDR; data in $D/data"
		echo "$ADDR"
		exit 0
	fi
	kill -0 "$pid" 2>/dev/null || die "the registry exited at once; last log lines: $(tail -n 5 "$LOG")"
	sleep 0.1
done
die "the registry (pid $pid) does not answer on http://$ADDR after 10 s; see $LOG"
