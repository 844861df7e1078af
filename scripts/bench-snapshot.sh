#!/usr/bin/env bash
# Snapshot throughput of the production path (`sluice snapshot`: parallel
# COPY readers -> value conversion -> transformer -> IndexerSink -> _bulk)
# versus the raw `_bulk` ceiling of the very same documents, and 1 vs N
# readers, in one run on the same servers. Prints a table.
#
#   scripts/bench-snapshot.sh [rows] [readers] [rounds]     (1000000 4 2)
#
# 1. A 10-column table is filled with N rows.
# 2. Each round, interleaved: the raw ceiling (the documents Sluice wrote,
#    exported once as pre-rendered NDJSON files of 5,000 and sent with curl,
#    4 requests in flight, into a fresh index with the same mapping), then
#    `sluice snapshot` with N readers, then with 1 reader, each into a fresh
#    index. Sluice's wall time, CPU and peak RSS come from /usr/bin/time;
#    the wall time includes start-up (connections, temporary slot, index
#    creation), which is also reported on its own.
# Needs the services (`eval "$(./dev services up)"`); builds in release.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
: "${SLUICE_TEST_PG_URL:?run ./dev services up first}"
ROWS=${1:-1000000}
READERS=${2:-4}
ROUNDS=${3:-2}
ES=$SLUICE_TEST_ES_URL
DB=sluice_bench_snap
ADMIN=${SLUICE_TEST_PG_URL%/*}/$DB
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null
cargo build --release --quiet --bin sluice
SLUICE=$ROOT/target/release/sluice
ES_PID=$(ss -ltnpH "sport = :${ES##*:}" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
HZ=$(getconf CLK_TCK)

psql -qX "$SLUICE_TEST_PG_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" 2>/dev/null
echo "filling bench10 with $ROWS rows ..." >&2
psql -qX "$ADMIN" <<SQL
CREATE TABLE bench10 (id int8 PRIMARY KEY, name text, email text, qty int4,
  total numeric(12,2), active bool, created_at timestamptz, score float8,
  category text, counter int8);
INSERT INTO bench10 SELECT i, 'name ' || i, 'user' || i || '@example.com',
  (i % 100)::int4, (i % 100000) / 100.0, i % 3 = 0,
  timestamptz '2026-01-01' + i * interval '1 second', i / 7.0,
  (ARRAY['books','games','tools','food'])[1 + i % 4], i * 31
FROM generate_series(1, $ROWS) i;
VACUUM ANALYZE bench10;
SQL

count() { curl -fsS -X POST -o /dev/null "$ES/$1/_refresh"; curl -fsS "$ES/$1/_count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'; }
drop() { curl -fsS -o /dev/null -X DELETE "$ES/$1?ignore_unavailable=true"; }

# One `sluice snapshot` into index $1 with $2 readers; prints
# "seconds cpu_seconds peak_rss_mib startup_seconds es_cpu_seconds".
snap() {
  local index=$1 readers=$2
  drop "$index"
  # `sluice snapshot` writes into existing indices (`run` creates them).
  curl -fsS -o /dev/null -X PUT "$ES/$index" -H 'Content-Type: application/json' \
    -d '{"settings": {"number_of_replicas": 0}}'
  mkdir -p "$WORK/mappings"
  printf 'table = "public.bench10"\nindex = "%s"\n' "$index" > "$WORK/mappings/bench10.toml"
  cat > "$WORK/sluice.toml" <<TOML
mappings_dir = "mappings"
[postgres]
url = "$ADMIN"
slot = "bench_snap"
publication = "bench_snap"
[elasticsearch]
urls = ["$ES"]
[snapshot]
mode = "never"
parallel_readers = $readers
TOML
  local es0 start first=""
  es0=$(ticks "$ES_PID")
  start=$(date +%s.%N)
  /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" \
    "$SLUICE" snapshot --config "$WORK/sluice.toml" --table public.bench10 >"$WORK/snap.log" 2>&1 &
  local pid=$!
  # Start-up: until the first document is indexed.
  while kill -0 $pid 2>/dev/null; do
    n=$(curl -fsS "$ES/$index/_stats/indexing?filter_path=_all.primaries.indexing.index_total" 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["_all"]["primaries"]["indexing"]["index_total"])' 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then first=$(date +%s.%N); break; fi
    sleep 0.05
  done
  wait $pid || { cat "$WORK/snap.log" >&2; exit 1; }
  local es_cpu
  es_cpu=$(echo "($(ticks "$ES_PID") - $es0) / $HZ" | bc -l)
  [ "$(count "$index")" -eq "$ROWS" ] || { echo "snapshot wrote $(count "$index") of $ROWS" >&2; exit 1; }
  read -r e u s m < "$WORK/time"
  echo "$e $(echo "$u + $s" | bc -l) $((m / 1024)) $(echo "${first:-$start} - $start" | bc -l) $es_cpu"
}

raw() {
  local index=$1
  drop "$index"
  curl -fsS -o /dev/null -X PUT "$ES/$index" -H 'Content-Type: application/json' -d "$MAPPING"
  local es0 t0 t1
  es0=$(ticks "$ES_PID")
  t0=$(date +%s.%N)
  ls "$WORK"/bulk-*.ndjson | xargs -P 4 -I{} curl -fsS -o /dev/null -H 'Content-Type: application/x-ndjson' \
    --data-binary @{} "$ES/$index/_bulk?filter_path=errors"
  curl -fsS -o /dev/null -X POST "$ES/$index/_refresh"
  t1=$(date +%s.%N)
  local es_cpu
  es_cpu=$(echo "($(ticks "$ES_PID") - $es0) / $HZ" | bc -l)
  [ "$(count "$index")" -eq "$ROWS" ] || { echo "raw load wrote $(count "$index") of $ROWS" >&2; exit 1; }
  echo "$(echo "$t1 - $t0" | bc -l) 0 0 0 $es_cpu"
}

# A first snapshot produces the documents for the ceiling (and warms up).
echo "warm-up snapshot and export of the documents ..." >&2
snap bench-snap-src "$READERS" >/dev/null
MAPPING=$(curl -fsS "$ES/bench-snap-src/_mapping" | python3 -c 'import json,sys; m=json.load(sys.stdin)["bench-snap-src"]["mappings"]; print(json.dumps({"mappings": m, "settings": {"number_of_replicas": 0}}))')
python3 - "$ES" "$WORK" <<'PY'
import json, sys, urllib.request
es, work = sys.argv[1], sys.argv[2]
def post(path, body):
    req = urllib.request.Request(es + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
r = post("/bench-snap-src/_search?scroll=2m", {"size": 5000, "sort": ["_doc"], "version": True})
n = 0
while r["hits"]["hits"]:
    with open(f"{work}/bulk-{n:05}.ndjson", "w") as f:
        for h in r["hits"]["hits"]:
            f.write(json.dumps({"index": {"_id": h["_id"], "version": h["_version"], "version_type": "external_gte"}}) + "\n")
            f.write(json.dumps(h["_source"], separators=(",", ":")) + "\n")
    n += 1
    r = post("/_search/scroll", {"scroll": "2m", "scroll_id": r["_scroll_id"]})
PY
drop bench-snap-src

declare -a RAW SN S1
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r: load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  RAW+=("$(raw bench-snap-raw)"); drop bench-snap-raw
  SN+=("$(snap bench-snap-n "$READERS")"); drop bench-snap-n
  S1+=("$(snap bench-snap-1 1)"); drop bench-snap-1
  echo "  raw: ${RAW[-1]} | $READERS readers: ${SN[-1]} | 1 reader: ${S1[-1]}" >&2
done

# Median over rounds of each field (the upper median for an even count).
med() { local f=$1; shift; printf '%s\n' "$@" | awk -v f="$f" '{print $f}' | sort -g | awk '{a[NR]=$1} END {print a[int(NR/2)+1]}'; }
raw_s=$(med 1 "${RAW[@]}")
row() {
  local name=$1; shift
  local s cpu rss st es
  s=$(med 1 "$@"); cpu=$(med 2 "$@"); rss=$(med 3 "$@"); st=$(med 4 "$@"); es=$(med 5 "$@")
  printf '| %-44s | %9.0f | %7.2f | %7.2fx | %6.2f | %8s | %6.2f | %7.2f |\n' "$name" "$(echo "$ROWS / $s" | bc -l)" "$s" \
    "$(echo "$raw_s / $s" | bc -l)" "$cpu" "$rss" "$st" "$es"
}
printf '\n%s rows of a 10-column table; median of %s rounds; load at the end: %s\n\n' "$ROWS" "$ROUNDS" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '| %-44s | %9s | %7s | %8s | %6s | %8s | %6s | %7s |\n' run rows/s seconds ratio "CPU s" "RSS MiB" "start" "ES CPU"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "----------------------------------------------" "-----------" "---------" "----------" "--------" "----------" "--------" "---------"
row "raw _bulk ceiling (same docs, 4 in flight)" "${RAW[@]}"
row "sluice snapshot, $READERS readers (production sink)" "${SN[@]}"
row "sluice snapshot, 1 reader (production sink)" "${S1[@]}"
sn_s=$(med 1 "${SN[@]}"); s1_s=$(med 1 "${S1[@]}")
printf '\nspeed-up 1 -> %s readers: %.2fx (medians)\n' "$READERS" "$(echo "$s1_s / $sn_s" | bc -l)"
for r in $(seq 0 $((ROUNDS - 1))); do
  printf 'round %d ratios: %s readers %.2fx, 1 reader %.2fx\n' $((r + 1)) "$READERS" \
    "$(echo "$(echo "${RAW[$r]}" | cut -d' ' -f1) / $(echo "${SN[$r]}" | cut -d' ' -f1)" | bc -l)" \
    "$(echo "$(echo "${RAW[$r]}" | cut -d' ' -f1) / $(echo "${S1[$r]}" | cut -d' ' -f1)" | bc -l)"
done
psql -qX "$SLUICE_TEST_PG_URL" -c "DROP DATABASE $DB WITH (FORCE)" 2>/dev/null
