#!/bin/bash
# Container HEALTHCHECK: 0 when linewatch's /healthz answers 200 within the timeout.
#
#   linewatch-healthcheck [PATH]      (default /healthz; /readyz asks for readiness instead)
#
# The port is that of LINEWATCH_HTTP (the image sets 0.0.0.0:9464); the check always goes to
# loopback. Bash's /dev/tcp keeps curl, and the ~10 libraries it pulls in, out of the image.
set -u
path="${1:-/healthz}"
addr="${LINEWATCH_HTTP:-127.0.0.1:9464}"
port="${addr##*:}"
{ exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || exit 1
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$path" >&3
IFS= read -r -t "${LINEWATCH_HEALTHCHECK_TIMEOUT_S:-4}" status <&3 || exit 1
exec 3<&-
case "$status" in
  HTTP/1.?" 200 "*) exit 0 ;;
  *) exit 1 ;;
esac
