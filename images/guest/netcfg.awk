# netcfg.awk FILE: reads a NoCloud network-config (version 1 or 2, YAML) and prints what the first
# interface should get, as lines "addr A.B.C.D[/N]", "mask A.B.C.D", "gw A.B.C.D", "dns A.B.C.D", "dhcp".
# Only IPv4 is handled; the shell takes the first addr/gw. It tracks the YAML key path by indentation.
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t\r]+$/, "", s); return s }
function unq(s) {
	s = trim(s); sub(/[ \t]+#.*$/, "", s)
	if (s ~ /^".*"$/ || s ~ /^'.*'$/) s = substr(s, 2, length(s) - 2)
	return s
}
function ipv4(s) { return s ~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+(\/[0-9]+)?$/ }
function emit(k, v, path,    n, a, i) {
	if (v ~ /^\[.*\]$/) {
		v = substr(v, 2, length(v) - 2); n = split(v, a, ",")
		for (i = 1; i <= n; i++) emit(k, unq(a[i]), path)
		return
	}
	v = unq(v)
	if (v == "") return
	if (path ~ /(nameservers|dns)/ || k ~ /dns/ || nsind >= 0) { if (ipv4(v)) print "dns " v; return }
	if ((k == "addresses" || k == "address") && ipv4(v)) { print "addr " v; return }
	if (k == "netmask" && ipv4(v)) { print "mask " v; return }
	if ((k == "gateway4" || k == "gateway" || k == "via") && ipv4(v)) { print "gw " v; return }
	if (k == "dhcp4" && v ~ /^(true|yes|on)$/) { print "dhcp"; return }
	if (k == "type" && v ~ /^dhcp4?$/) { print "dhcp"; return }
}
BEGIN { depth = 0; nsind = -1 }
{
	sub(/\r$/, "")
	if ($0 ~ /^[ \t]*(#.*)?$/) next
	match($0, /^[ \t]*/); ind = RLENGTH
	line = substr($0, ind + 1)
	if (line ~ /^-[ \t]*/) {                             # list item: its content sits 2 deeper
		match(line, /^-[ \t]*/); ind += RLENGTH; line = substr(line, RLENGTH + 1)
		if (nsind >= 0 && ind <= nsind) nsind = -1       # a new item ends a v1 "type: nameserver" entry
		if (line !~ /^[A-Za-z0-9_-]+:/) {                # scalar item of the enclosing key
			while (depth > 0 && kind[depth] >= ind) depth--
			if (depth > 0) emit(key[depth], line, pathstr())
			next
		}
	}
	if (match(line, /^[A-Za-z0-9_.-]+:/)) {
		k = substr(line, 1, RLENGTH - 1); v = trim(substr(line, RLENGTH + 1))
		while (depth > 0 && kind[depth] >= ind) depth--
		depth++; key[depth] = k; kind[depth] = ind
		if (nsind >= 0 && ind < nsind) nsind = -1
		if (k == "type" && unq(v) == "nameserver") nsind = ind
		emit(k, v, pathstr())
	}
}
function pathstr(    i, s) { s = ""; for (i = 1; i < depth; i++) s = s key[i] "."; return s }
