#!/usr/bin/env bash
# End-to-end streaming benchmark: `sluice run` applying WAL to Elasticsearch,
# versus the raw `_bulk` ceiling of the very same documents, in one run on
# the same servers. Prints a table.
#
#   scripts/bench-run.sh [rows] [rows-per-transaction]
#
# 1. Sluice starts once to create its slot, then stops (SIGTERM).
# 2. N rows of a 10-column table are written in transactions while it is
#    stopped, so the slot holds them all.
# 3. Sluice starts again; the clock runs until Elasticsearch has indexed
#    every row (its indexing stats, polled without refreshing the index).
#    Start-up (process start until the slot is active) is reported apart.
#    CPU time of Sluice, the walsender and Elasticsearch, and Sluice's peak
#    RSS, come from /proc.
# 4. The ceiling: the documents Sluice wrote are exported as pre-rendered
#    NDJSON files of 5,000 documents and sent to a fresh index with curl,
#    4 requests in flight (the indexer's default concurrency).
# PG_PARAMS="?sslmode=disable" changes how Sluice connects (default: prefer,
# i.e. TLS when the server offers it); PERF=1 records perf profiles of Sluice
# and the walsender into PERF_OUT; SLUICE_LOG=sluice=debug keeps the log
# there, with per-batch timings; PIPELINE="concurrency = 2" sets [pipeline]
# options.
# Needs the services (`eval "$(./dev services up)"`); builds in release.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
: "${SLUICE_TEST_PG_URL:?run ./dev services up first}"
ROWS=${1:-200000}
PER_TX=${2:-1000}
ES=$SLUICE_TEST_ES_URL
DB=sluice_bench_run
ADMIN=${SLUICE_TEST_PG_URL%/*}/$DB
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
PID=

command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null
# SLUICE_BIN runs another build (e.g. for an A/B comparison).
[ -n "${SLUICE_BIN:-}" ] || cargo build --release --quiet --bin sluice
SLUICE=${SLUICE_BIN:-$ROOT/target/release/sluice}
psql -qX "$SLUICE_TEST_PG_URL" >/dev/null <<SQL
SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '$DB' AND active_pid IS NOT NULL;
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$DB';
SQL
psql -qX "$SLUICE_TEST_PG_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" 2>/dev/null
psql -qX "$ADMIN" -c "CREATE TABLE t (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2),
  active boolean, created timestamptz, tags text, score float8, code varchar(16), note text)"
for i in bench-run bench-raw; do curl -fsS -o /dev/null -X DELETE "$ES/$i?ignore_unavailable=true"; done

mkdir -p "$WORK/mappings"
printf 'table = "public.t"\nindex = "bench-run"\n' > "$WORK/mappings/t.toml"
cat > "$WORK/sluice.toml" <<TOML
mappings_dir = "mappings"
[postgres]
url = "$ADMIN${PG_PARAMS:-}"
slot = "bench_run"
publication = "bench_run"
[elasticsearch]
urls = ["$ES"]
[snapshot]
mode = "never"
[pipeline]
${PIPELINE:-}
[http]
listen = "127.0.0.1:0"
TOML

slot_active() { psql -AtX "$ADMIN" -c "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = 'bench_run'"; }
"$SLUICE" run --config "$WORK/sluice.toml" 2>"$WORK/log1" & PID=$!
until [ "$(slot_active)" = t ]; do kill -0 $PID || { cat "$WORK/log1"; exit 1; }; sleep 0.2; done
kill -TERM $PID; wait $PID; PID=

echo "writing $ROWS rows in transactions of $PER_TX ..." >&2
psql -qX "$ADMIN" -v rows="$ROWS" -v per="$PER_TX" <<'SQL'
SELECT format('INSERT INTO t SELECT g, ''name '' || g, g %% 100, (g %% 1000) / 7.0, g %% 2 = 0, now(), ''a, b, c'', g / 3.0, ''C'' || g, repeat(''x'', 40) FROM generate_series(%s, %s) g',
              s, least(s + :per - 1, :rows)) AS q
FROM generate_series(1, :rows, :per) s \gexec
SQL

count() { curl -fsS "$ES/$1/_count" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("count", 0))' 2>/dev/null || echo 0; }
# Progress without refreshing: a refresh every poll would make the index
# write tiny segments (the ceiling never refreshes until the end).
indexed() { curl -fsS "$ES/$1/_stats/indexing?filter_path=_all.primaries.indexing.index_total" 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["_all"]["primaries"]["indexing"]["index_total"])' 2>/dev/null || echo 0; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
ES_PID=$(ss -ltnpH "sport = :${ES##*:}" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
walsender() { psql -AtX "$ADMIN" -c "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'bench_run' AND active"; }
es0=$(ticks "${ES_PID:-0}")
start=$(date +%s.%N)
"$SLUICE" run --config "$WORK/sluice.toml" 2>"$WORK/log2" & PID=$!
until WS=$(walsender) && [ -n "$WS" ]; do kill -0 $PID || { tail "$WORK/log2"; exit 1; }; sleep 0.02; done
streaming=$(date +%s.%N)
ws0=$(ticks "$WS")
[ -n "${PERF:-}" ] && { perf record -F 1999 -g -o "$WORK/perf-sluice.data" -p $PID 2>/dev/null & PERF_PID=$!; perf record -F 1999 -g -o "$WORK/perf-ws.data" -p $WS 2>/dev/null & PERF_WS=$!; }
while :; do
  [ "$(indexed bench-run)" -ge "$ROWS" ] && break
  kill -0 $PID || { tail "$WORK/log2"; exit 1; }
  sleep 0.05
done
end=$(date +%s.%N)
ticks=$(ticks $PID)
ws_ticks=$(( $(ticks "$WS") - ws0 ))
es_ticks=$(( $(ticks "${ES_PID:-0}") - es0 ))
hwm=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
[ -n "${PERF:-}" ] && { kill -INT $PERF_PID $PERF_WS; wait $PERF_PID $PERF_WS || true; cp "$WORK"/perf-*.data "${PERF_OUT:-/tmp}/"; }
kill -TERM $PID; wait $PID; PID=
[ -n "${SLUICE_LOG:-}" ] && cp "$WORK/log2" "${PERF_OUT:-/tmp}/sluice-run.log"
curl -fsS -o /dev/null -X POST "$ES/bench-run/_refresh"
[ "$(count bench-run)" -eq "$ROWS" ] || { echo "sluice wrote $(count bench-run) of $ROWS" >&2; exit 1; }
sluice_s=$(echo "$end - $start" | bc -l)
stream_s=$(echo "$end - $streaming" | bc -l)
startup_s=$(echo "$streaming - $start" | bc -l)
HZ=$(getconf CLK_TCK)
cpu_s=$(echo "$ticks / $HZ" | bc -l)

# The ceiling: the same documents, pre-rendered, sent as fast as ES takes them.
python3 - "$ES" "$WORK" <<'PY'
import json, sys, urllib.request
es, work = sys.argv[1], sys.argv[2]
def post(path, body):
    req = urllib.request.Request(es + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
r = post("/bench-run/_search?scroll=1m", {"size": 5000, "sort": ["_doc"]})
n = 0
while r["hits"]["hits"]:
    with open(f"{work}/bulk-{n:05}.ndjson", "w") as f:
        for h in r["hits"]["hits"]:
            f.write(json.dumps({"index": {"_index": "bench-raw", "_id": h["_id"], "version": 1, "version_type": "external_gte"}}) + "\n")
            f.write(json.dumps(h["_source"], separators=(",", ":")) + "\n")
    n += 1
    r = post("/_search/scroll", {"scroll": "1m", "scroll_id": r["_scroll_id"]})
PY
curl -fsS -o /dev/null -X PUT "$ES/bench-raw" -H 'Content-Type: application/json' \
  -d "$(curl -fsS "$ES/bench-run/_mapping" | python3 -c 'import json,sys; m=json.load(sys.stdin)["bench-run"]["mappings"]; print(json.dumps({"mappings": m, "settings": {"number_of_replicas": 0}}))')"
es1=$(ticks "${ES_PID:-0}")
rstart=$(date +%s.%N)
ls "$WORK"/bulk-*.ndjson | xargs -P 4 -I{} curl -fsS -o /dev/null -H 'Content-Type: application/x-ndjson' \
  --data-binary @{} "$ES/_bulk?filter_path=errors"
curl -fsS -o /dev/null -X POST "$ES/bench-raw/_refresh"
rend=$(date +%s.%N)
es_raw_ticks=$(( $(ticks "${ES_PID:-0}") - es1 ))
raw_s=$(echo "$rend - $rstart" | bc -l)
[ "$(count bench-raw)" -eq "$ROWS" ] || { echo "raw load wrote $(count bench-raw) of $ROWS" >&2; exit 1; }

printf '\n| %-46s | %10s | %8s | %12s | %8s |\n' "run ($ROWS rows, $PER_TX per transaction)" "changes/s" "seconds" "ES CPU s" "ratio"
printf '|%s|%s|%s|%s|%s|\n' "------------------------------------------------" "------------" "----------" "--------------" "----------"
printf '| %-46s | %10.0f | %8.2f | %12.2f | %8s |\n' "raw _bulk ceiling (same docs, 4 in flight)" "$(echo "$ROWS / $raw_s" | bc -l)" "$raw_s" "$(echo "$es_raw_ticks / $HZ" | bc -l)" "1.00x"
printf '| %-46s | %10.0f | %8.2f | %12.2f | %7.2fx |\n' "sluice run, streaming (slot active -> done)" "$(echo "$ROWS / $stream_s" | bc -l)" "$stream_s" "$(echo "$es_ticks / $HZ" | bc -l)" "$(echo "$raw_s / $stream_s" | bc -l)"
printf '| %-46s | %10.0f | %8.2f | %12s | %7.2fx |\n' "sluice run, total (incl. start-up)" "$(echo "$ROWS / $sluice_s" | bc -l)" "$sluice_s" "" "$(echo "$raw_s / $sluice_s" | bc -l)"
printf '\nstart-up (process start -> slot active) %.2f s; Sluice CPU %.2f s (%.1f us/change); walsender CPU %.2f s; peak RSS %d MiB; load %s\n' \
  "$startup_s" "$cpu_s" "$(echo "$cpu_s * 1000000 / $ROWS" | bc -l)" "$(echo "$ws_ticks / $HZ" | bc -l)" "$((hwm / 1024))" "$(cut -d' ' -f1-3 /proc/loadavg)"
psql -qX "$SLUICE_TEST_PG_URL" -c "SELECT pg_drop_replication_slot('bench_run')" >/dev/null
psql -qX "$SLUICE_TEST_PG_URL" -c "DROP DATABASE $DB WITH (FORCE)" 2>/dev/null
