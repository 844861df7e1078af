#!/usr/bin/env bash
# Prints the path of a stunnel binary, installing Debian's stunnel4 if none
# is on the machine. Used by the integration tests that put a TLS terminator
# in front of the test Elasticsearch.
#   exit 0: path printed on stdout
#   exit 77: no stunnel and no way to install it (no apt-get / not root)
#   other: the install failed
set -euo pipefail

find_stunnel() {
  local c
  for c in stunnel4 stunnel /usr/bin/stunnel4 /usr/bin/stunnel; do
    if command -v "$c" >/dev/null 2>&1; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

if find_stunnel; then exit 0; fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-stunnel: stunnel is not installed and apt-get is not available" >&2
  exit 77
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 77; fi; }

# Serialise parallel test processes on one lock.
exec 9>/tmp/sluice-ensure-stunnel.lock
flock 9
if find_stunnel; then exit 0; fi
echo "ensure-stunnel: installing stunnel4 with apt-get" >&2
if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends stunnel4 >/dev/null 2>&1; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends stunnel4 >/dev/null
fi
find_stunnel
