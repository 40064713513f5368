#!/bin/sh
# GET / on port 8080 (busybox httpd serves this when /www/index.html does not exist).
K=/run/kumo
printf 'Content-Type: text/plain\r\n\r\n'
echo "kumo-guest hostname=$(hostname) ip=$(cat $K/ip 2>/dev/null || echo none) instance-id=$(cat $K/instance-id 2>/dev/null) datasource=$(cat $K/datasource 2>/dev/null) ready=$([ -e $K/ready ] && echo yes || echo no) userdata-rc=$(cat $K/user-data-rc 2>/dev/null || echo pending)"
[ -f /www/userdata.txt ] && cat /www/userdata.txt
exit 0
