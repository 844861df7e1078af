#!/usr/bin/env bash
# Snapshot throughput vs the raw _bulk ceiling, and 1 vs N readers, in one
# run against the dev services. Prints a markdown table.
#   SLUICE_BENCH_ROWS=1000000 SLUICE_BENCH_READERS=4 scripts/bench-snapshot.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$("$ROOT/dev" services env)"
cd "$ROOT"
exec cargo bench --bench snapshot
