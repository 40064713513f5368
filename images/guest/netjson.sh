# netjson FILE: reads an OpenStack network_data.json (ConfigDrive) and prints, like netcfg.awk,
# "addr", "mask", "gw", "dns" and "dhcp" lines for the first IPv4 network. Sourced by rcS.
netjson() {
	_flat=$(tr -d '\n\r' <"$1")
	echo "$_flat" | grep -o '"[A-Za-z_]*"[[:space:]]*:[[:space:]]*"[^"]*"' |
		sed -e 's/^"\([A-Za-z_]*\)"[[:space:]]*:[[:space:]]*"\([^"]*\)"$/\1 \2/' |
		awk '
		$1 == "type" && ($2 == "ipv4_dhcp" || $2 == "dhcp4" || $2 == "dhcp") { if (!seenaddr) print "dhcp" }
		$1 == "type" { lasttype = $2 }
		$1 == "ip_address" && $2 ~ /^[0-9.]+(\/[0-9]+)?$/ && !seenaddr { print "addr " $2; seenaddr = 1 }
		$1 == "netmask" && seenaddr && !seenmask && $2 != "0.0.0.0" { print "mask " $2; seenmask = 1 }
		$1 == "gateway" && $2 ~ /^[0-9.]+$/ { print "gw " $2 }
		$1 == "address" && lasttype == "dns" && $2 ~ /^[0-9.]+$/ { print "dns " $2 }
		'
	echo "$_flat" | grep -o '"dns_nameservers"[[:space:]]*:[[:space:]]*\[[^]]*\]' |
		grep -o '[0-9]*\.[0-9]*\.[0-9]*\.[0-9]*' | sed 's/^/dns /'
}
