#!/usr/bin/env bash
# ./dev fuzz [--minutes M] [--target T] [--proptest]
#
# Every fuzz target (src/fuzz/mod.rs) for M minutes each (default 1): under
# libFuzzer (`cargo +nightly fuzz run`, corpus seeded from src/fuzz/seeds.rs)
# when a nightly toolchain and cargo-fuzz are installed, else (or with
# --proptest) the unit suite's proptest harness for that long. Prints a
# table of targets, cases run and failures; a crash leaves its input under
# fuzz/artifacts/<target>/ (libFuzzer) or in the test output (proptest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

minutes=1 only="" engine=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2;;
    --target) only=$2; shift 2;;
    --proptest) engine=proptest; shift;;
    *) echo "usage: ./dev fuzz [--minutes M] [--target T] [--proptest]" >&2; exit 2;;
  esac
done
seconds=$(awk "BEGIN { printf \"%d\", $minutes * 60 }")
targets=$(sed -n 's/^    ("\([a-z_]*\)", [a-z_]*),$/\1/p' src/fuzz/mod.rs)
[ -z "$only" ] || targets=$only
[ -n "$targets" ] || { echo "no fuzz targets found in src/fuzz/mod.rs" >&2; exit 1; }

if [ "$engine" = auto ]; then
  if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
    engine=libfuzzer
  else
    echo "[fuzz] no nightly toolchain or cargo-fuzz (rustup toolchain install nightly;" \
      "cargo install cargo-fuzz): using the proptest harness" >&2
    engine=proptest
  fi
fi

out=${SLUICE_DEV_HOME:-/var/tmp/sluice-dev}/fuzz
mkdir -p "$out"
rows=() failed=0
if [ "$engine" = libfuzzer ]; then
  cargo test --release --lib fuzz_write_corpus -- --ignored --quiet >/dev/null
  cargo +nightly fuzz build
  for t in $targets; do
    echo "[fuzz] $t: ${seconds}s under libFuzzer (log: $out/$t.log)" >&2
    set +e
    # -malloc_limit_mb: one allocation past 256 MiB is a failure (no input
    # here is a fraction of that); -timeout: one input past 20 s is a hang.
    cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -malloc_limit_mb=256 -rss_limit_mb=2048 -timeout=20 \
      -print_final_stats=1 >"$out/$t.log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log" | tail -1)
    result=ok
    if [ "$rc" != 0 ]; then result="FAILED (exit $rc, see $out/$t.log)"; failed=1; fi
    rows+=("| $t | libFuzzer | ${runs:-?} | $result |")
  done
else
  for t in $targets; do
    echo "[fuzz] $t: ${seconds}s under the proptest harness (log: $out/$t.log)" >&2
    set +e
    SLUICE_FUZZ_SECONDS=$seconds SLUICE_FUZZ_CASES=${SLUICE_FUZZ_CASES:-20000} \
      cargo test --release --lib "fuzz::harness::fuzz_$t" -- --exact --nocapture >"$out/$t.log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n "s/^fuzz target $t: \([0-9]*\) cases.*/\1/p" "$out/$t.log" | tail -1)
    result=ok
    if [ "$rc" != 0 ]; then result="FAILED (exit $rc, see $out/$t.log)"; failed=1; fi
    rows+=("| $t | proptest | ${runs:-?} | $result |")
  done
fi
printf '| target | engine | cases | result |\n|---|---|---|---|\n'
printf '%s\n' "${rows[@]}"
exit $failed
