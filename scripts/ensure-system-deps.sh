#!/usr/bin/env bash
# Tests drive a real redis-server and nginx (auth_request), and h2load (HTTP/2 clients). Install Debian's packages
# when they are missing and we can; otherwise fail clearly.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # Packages only: no daemon may start (nginx's postinst would start one on port 80). 101 = "action forbidden".
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
echo "error: the tests need: ${missing[*]}. Install it (Debian/Ubuntu: sudo apt-get install ${missing[*]}) and re-run." >&2
exit 1
