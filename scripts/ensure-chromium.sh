#!/usr/bin/env bash
# Prints the path of a Chromium binary, installing Debian's chromium (and a
# font, for the screenshot) if none is on the machine. Used by the browser
# test of the status page (tests/it/ops_ui.rs), which runs it headless.
#   exit 0: path printed on stdout
#   exit 77: no chromium and no way to install it (no apt-get / not root)
#   other: the install failed
set -euo pipefail

find_chromium() {
  local c
  for c in chromium chromium-browser /usr/bin/chromium; do
    if command -v "$c" >/dev/null 2>&1; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

if find_chromium; then exit 0; fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: chromium is not installed and apt-get is not available" >&2
  exit 77
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 77; fi; }

# Serialise parallel test processes on one lock.
exec 9>/tmp/sluice-ensure-chromium.lock
flock 9
if find_chromium; then exit 0; fi
echo "ensure-chromium: installing chromium with apt-get" >&2
if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
find_chromium
