#!/usr/bin/env bash
# Bulk indexer throughput vs the raw `_bulk` ceiling on the dev Elasticsearch.
# Usage: scripts/bench-bulk.sh [docs=200000] [rounds=3] [pipeline_changes=1000000] [memory_mb=64]
# Prints a per-run table and a Markdown summary (for BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(./dev services env)"
cargo bench --bench bulk -- "${1:-200000}" "${2:-3}"
cargo bench --bench bulk_pipeline -- "${3:-1000000}" "${4:-64}"
