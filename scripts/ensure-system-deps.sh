#!/usr/bin/env bash
# Tests drive a real redis-server. Install Debian's package when it is missing and we can; otherwise fail clearly.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
echo "error: the tests need: ${missing[*]}. Install it (Debian/Ubuntu: sudo apt-get install ${missing[*]}) and re-run." >&2
exit 1
