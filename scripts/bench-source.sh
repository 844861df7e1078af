#!/usr/bin/env bash
# End-to-end read throughput: Sluice's reader (null sink) versus pg_recvlogical
# (to /dev/null), each draining its own slot over the same WAL, in one run.
# Usage: scripts/bench-source.sh [rows] [rows-per-transaction]
# Also reports each reader's CPU time (user+sys), which contention from other
# work on the machine does not inflate the way it does wall time.
# BASELINE_BIN=<another source_drain build> adds a third reader on a third
# slot (A/B against an older build, in the same run).
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
SELECT FROM pg_create_logical_replication_slot('bench_base', 'pgoutput') WHERE '${BASELINE_BIN:-}' <> '';
SQL
for ((start = 1; start <= ROWS; start += PER_TX)); do
  end=$((start + PER_TX - 1)); ((end > ROWS)) && end=$ROWS
  echo "INSERT INTO orders SELECT g, g % 1000, 'shipped', g * 0.01, 0.15, true, now(), gen_random_uuid(), 'leave at the door', '{\"gift\": false, \"items\": 3}' FROM generate_series($start, $end) g;"
done | $PSQL "$ADMIN_URL" >/dev/null
$PSQL "$ADMIN_URL" -c "CHECKPOINT" >/dev/null
END_LSN=$($PSQL "$ADMIN_URL" -c "SELECT pg_current_wal_lsn()")

TIMEFORMAT='%U %S'
run_recv() {
  local t0 t1 cpu
  t0=$(date +%s.%N)
  cpu=$( { time "$SLUICE_TEST_PG_BIN/pg_recvlogical" -d "$REPL_URL" --slot bench_recv --start --endpos "$END_LSN" \
    -o proto_version=1 -o publication_names=bench_pub -f /dev/null --no-loop; } 2>&1 )
  t1=$(date +%s.%N)
  RECV_S=$(echo "$t1 - $t0" | bc -l)
  RECV_CPU=$(echo "$cpu" | tail -1 | awk '{print $1 + $2}')
}
# drain <binary> <slot>: sets CHANGES, SECS, CPU
drain() {
  local out
  out=$( { time "$1" "$REPL_URL" "$2" bench_pub "$END_LSN"; } 2>&1 )
  read -r CHANGES SECS <<<"$(echo "$out" | head -1)"
  CPU=$(echo "$out" | tail -1 | awk '{print $1 + $2}')
}
run_sluice() {
  drain target/release/examples/source_drain bench_sluice
  SL_CHANGES=$CHANGES SLUICE_S=$SECS SLUICE_CPU=$CPU
}
BASE_CHANGES=0 BASE_S=0 BASE_CPU=0
run_base() {
  [[ -n "${BASELINE_BIN:-}" ]] || return 0
  drain "$BASELINE_BIN" bench_base
  BASE_CHANGES=$CHANGES BASE_S=$SECS BASE_CPU=$CPU
}
# All drain the same WAL (each from its own slot, same protocol options);
# ORDER=sluice-first swaps who reads the WAL first (page cache effects).
if [[ "${ORDER:-recv-first}" == sluice-first ]]; then run_sluice; run_base; run_recv; else run_recv; run_sluice; run_base; fi

python3 - "$ROWS" "$RECV_S" "$RECV_CPU" "$SL_CHANGES" "$SLUICE_S" "$SLUICE_CPU" "$BASE_CHANGES" "$BASE_S" "$BASE_CPU" <<'PY'
import sys
rows, recv_s, recv_cpu = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
changes, sl_s, sl_cpu = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
b_changes, b_s, b_cpu = int(sys.argv[7]), float(sys.argv[8]), float(sys.argv[9])
print(f"{'reader':<28}{'changes':>10}{'seconds':>10}{'changes/s':>12}{'CPU s':>8}{'CPU us/change':>15}")
def line(name, n, s, cpu):
    print(f"{name:<28}{n:>10}{s:>10.2f}{n/s:>12.0f}{cpu:>8.2f}{cpu*1e6/n:>15.2f}")
line("pg_recvlogical > /dev/null", rows, recv_s, recv_cpu)
line("sluice reader, null sink", changes, sl_s, sl_cpu)
if b_changes:
    line("baseline build (B)", b_changes, b_s, b_cpu)
print(f"ratio sluice / pg_recvlogical: {(changes/sl_s)/(rows/recv_s):.2f}x")
if b_changes:
    print(f"ratio sluice / baseline build: {(changes/sl_s)/(b_changes/b_s):.2f}x")
PY
