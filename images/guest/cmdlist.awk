# cmdlist.awk -v key=runcmd FILE: turns the cloud-config list KEY (runcmd, bootcmd) into a shell script
# on stdout, one command per item, as cloud-init does. Supported item forms:
#   - plain string            -> run by sh as written
#   - [argv, "with space"]    -> each element single-quoted (commas inside elements are not supported)
#   - | (block scalar)        -> the indented lines below, as written
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t\r]+$/, "", s); return s }
function unq(s) {
	s = trim(s)
	if (s ~ /^".*"$/ || s ~ /^'.*'$/) s = substr(s, 2, length(s) - 2)
	return s
}
function sq(s) { gsub(/'/, "'\\''", s); return "'" s "'" }
function flow(s,    n, a, i, out) {
	s = trim(s); s = substr(s, 2, length(s) - 2)
	n = split(s, a, ","); out = ""
	for (i = 1; i <= n; i++) out = out (i > 1 ? " " : "") sq(unq(a[i]))
	return out
}
BEGIN { inlist = 0; blk = 0 }
{
	sub(/\r$/, "")
	if (blk) {
		if ($0 ~ /^[ \t]*$/) { print ""; next }
		match($0, /^[ \t]*/)
		if (RLENGTH > dashind) {
			if (bstrip < 0) bstrip = RLENGTH
			print substr($0, bstrip + 1)
			next
		}
		blk = 0
	}
	if ($0 ~ ("^" key ":[ \t]*$")) { inlist = 1; next }
	if (!inlist) next
	if ($0 ~ /^[^ \t#-]/) { inlist = 0; next }          # next top-level key
	if ($0 ~ /^[ \t]*(#.*)?$/) next                       # blank or comment
	if (match($0, /^[ \t]*-[ \t]*/)) {
		dashind = index($0, "-") - 1
		item = trim(substr($0, RLENGTH + 1))
		if (item ~ /^[|>][-+]?$/) { blk = 1; bstrip = -1; next }
		if (item ~ /^\[.*\]$/) print flow(item)
		else print unq(item)
	}
}
