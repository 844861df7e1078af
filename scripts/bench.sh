#!/usr/bin/env bash
# `./dev bench [--quick] [options]` (run through ./dev, which starts the
# services and exports SLUICE_TEST_*): every workload of issue 19 side by side
# with PGSync and the ceilings, then BENCHMARKS.md's generated section and
# the charts in docs/bench/. `./dev bench --help` lists the sizes and options.
#
# Prepares, outside the work tree (under $SLUICE_DEV_HOME, default
# /var/tmp/sluice-dev): a virtualenv for the harness (psycopg, matplotlib),
# PGSync's own virtualenv and Redis (scripts/bench/tools.py), and release
# builds of sluice and examples/source_drain. Then runs scripts/bench/main.py.
#
# `./dev bench micro` runs the in-process cargo benches instead (decoder,
# transform, bulk indexer vs raw `_bulk`, whole pipeline in bounded memory).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
: "${SLUICE_TEST_PG_URL:?run through ./dev bench (it starts the services)}"
STATE=${SLUICE_DEV_HOME:-/var/tmp/sluice-dev}

if [ "${1:-}" = micro ]; then
  shift
  cargo bench --bench decoder
  cargo bench --bench transform
  cargo bench --bench bulk -- "${1:-200000}" "${2:-3}"
  cargo bench --bench bulk_pipeline -- "${3:-1000000}" "${4:-64}"
  exit
fi

VENV=$STATE/bench-venv
if ! "$VENV/bin/python" -c 'import matplotlib, psycopg' 2>/dev/null; then
  echo "[bench] creating $VENV (psycopg, matplotlib)" >&2
  # Debian's python3 needs python3-venv for this (PGSync's venv too).
  python3 -m venv "$VENV" 2>/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install -q 'psycopg[binary]>=3.1,<4' 'matplotlib>=3.7,<4'
fi
case " $* " in
  *" --help "*|*" -h "*|*" --report-only "*) ;;
  *) echo "[bench] building release sluice and examples/source_drain" >&2
     cargo build --release --quiet --bin sluice --example source_drain;;
esac
exec "$VENV/bin/python" scripts/bench/main.py "$@"
