#!/usr/bin/env bash
# End-to-end read throughput: Sluice's reader (null sink) versus pg_recvlogical
# (to /dev/null), each draining its own slot over the same WAL, in one run.
# Usage: scripts/bench-source.sh [rows] [rows-per-transaction]
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(./dev services env 2>/dev/null || /work/main/dev services env)"
ROWS=${1:-500000}
PER_TX=${2:-5000}
DB=sluice_bench_$$
ADMIN_URL=$(python3 -c "import sys,urllib.parse as u;p=u.urlparse(sys.argv[1]);print(p._replace(path='/'+sys.argv[2]).geturl())" "$SLUICE_TEST_PG_URL" "$DB")
REPL_URL=$(python3 -c "import sys,urllib.parse as u;p=u.urlparse(sys.argv[1]);print(p._replace(path='/'+sys.argv[2]).geturl())" "$SLUICE_TEST_PG_REPL_URL" "$DB")
PSQL="$SLUICE_TEST_PG_BIN/psql -qAtX"

cleanup() {
  $PSQL "$SLUICE_TEST_PG_URL" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$DB'" >/dev/null 2>&1 || true
  $PSQL "$SLUICE_TEST_PG_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

cargo build --release --example source_drain -q
$PSQL "$SLUICE_TEST_PG_URL" -c "CREATE DATABASE $DB"
$PSQL "$ADMIN_URL" <<SQL
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int, status text, total numeric(12,2),
  discount float8, paid bool, created_at timestamptz, ref uuid, note varchar(100), attrs jsonb);
GRANT SELECT ON orders TO sluice;
CREATE PUBLICATION bench_pub FOR TABLE orders;
SELECT FROM pg_create_logical_replication_slot('bench_sluice', 'pgoutput');
SELECT FROM pg_create_logical_replication_slot('bench_recv', 'pgoutput');
SQL
for ((start = 1; start <= ROWS; start += PER_TX)); do
  end=$((start + PER_TX - 1)); ((end > ROWS)) && end=$ROWS
  echo "INSERT INTO orders SELECT g, g % 1000, 'shipped', g * 0.01, 0.15, true, now(), gen_random_uuid(), 'leave at the door', '{\"gift\": false, \"items\": 3}' FROM generate_series($start, $end) g;"
done | $PSQL "$ADMIN_URL" >/dev/null
$PSQL "$ADMIN_URL" -c "CHECKPOINT" >/dev/null
END_LSN=$($PSQL "$ADMIN_URL" -c "SELECT pg_current_wal_lsn()")

run_recv() {
  local t0 t1
  t0=$(date +%s.%N)
  "$SLUICE_TEST_PG_BIN/pg_recvlogical" -d "$REPL_URL" --slot bench_recv --start --endpos "$END_LSN" \
    -o proto_version=1 -o publication_names=bench_pub -f /dev/null --no-loop
  t1=$(date +%s.%N)
  RECV_S=$(echo "$t1 - $t0" | bc -l)
}
run_sluice() {
  read -r CHANGES SLUICE_S < <(target/release/examples/source_drain "$REPL_URL" bench_sluice bench_pub "$END_LSN")
}
# Both drain the same WAL (each from its own slot, same protocol options);
# ORDER=sluice-first swaps who reads the WAL first (page cache effects).
if [[ "${ORDER:-recv-first}" == sluice-first ]]; then run_sluice; run_recv; else run_recv; run_sluice; fi

python3 - "$ROWS" "$RECV_S" "$CHANGES" "$SLUICE_S" <<'PY'
import sys
rows, recv_s, changes, sl_s = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
print(f"{'reader':<28}{'changes':>10}{'seconds':>10}{'changes/s':>12}")
print(f"{'pg_recvlogical > /dev/null':<28}{rows:>10}{recv_s:>10.2f}{rows/recv_s:>12.0f}")
print(f"{'sluice reader, null sink':<28}{changes:>10}{sl_s:>10.2f}{changes/sl_s:>12.0f}")
print(f"ratio sluice / pg_recvlogical: {(changes/sl_s)/(rows/recv_s):.2f}x")
PY
