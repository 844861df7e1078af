#!/usr/bin/env bash
# ./dev soak [--kills N] [--minutes M] [--fuzz-minutes F]
#
# The SIGKILL soak (tests/it/run_soak.rs): `sluice run` killed N times
# (default 100) under load, then every index compared with its table; stops
# killing after M minutes if given. Then, unless --fuzz-minutes 0, every fuzz
# target for F minutes (default 1, `./dev fuzz`). The soak's figures are
# appended to RELIABILITY.md with the date and commit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

kills=100 minutes="" fuzz_minutes=1
while [ $# -gt 0 ]; do
  case "$1" in
    --kills) kills=$2; shift 2;;
    --minutes) minutes=$2; shift 2;;
    --fuzz-minutes) fuzz_minutes=$2; shift 2;;
    *) echo "usage: ./dev soak [--kills N] [--minutes M] [--fuzz-minutes F]" >&2; exit 2;;
  esac
done

report=$(mktemp)
trap 'rm -f "$report"' EXIT
set +e
SLUICE_SOAK_KILLS=$kills SLUICE_SOAK_MINUTES=$minutes SLUICE_SOAK_REPORT=$report \
  cargo test --release --test it run_soak:: -- --ignored --exact --nocapture \
  run_soak::soak_sigkill_under_load_loses_and_duplicates_nothing
rc=$?
set -e
if [ -s "$report" ]; then
  commit=$(git rev-parse --short HEAD)
  dirty=$(git diff --quiet HEAD -- src tests || echo "+changes")
  line="| $(date -u +%Y-%m-%d) | $commit$dirty $(cat "$report")"
  # Append to the soak table (the last table of RELIABILITY.md).
  printf '%s\n' "$line" >>RELIABILITY.md
  echo "[soak] appended to RELIABILITY.md: $line" >&2
fi
[ "$rc" = 0 ] || exit "$rc"
[ "$fuzz_minutes" = 0 ] || bash scripts/fuzz.sh --minutes "$fuzz_minutes"
