#!/usr/bin/env bash
# End-to-end demo, called by `./dev demo` with the services up and their URLs
# in the environment (SLUICE_TEST_*). It:
#   1. creates the demo shop database (scripts/demo-schema.sql) with a few
#      thousand realistic rows,
#   2. runs `sluice check`, then `sluice run` with the shipped mappings/,
#   3. applies live changes while Sluice streams, and shows the documents
#      arriving through Elasticsearch searches,
#   4. stops Sluice with SIGTERM and prints `sluice status`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

: "${SLUICE_TEST_PG_URL:?run through ./dev demo}"
ES=$SLUICE_TEST_ES_URL
DB=sluice_demo
ADMIN_URL=${SLUICE_TEST_PG_URL%/*}/$DB
PSQL=(psql -X -q -v ON_ERROR_STOP=1)
WORK=${SLUICE_DEMO_DIR:-/var/tmp/sluice-demo}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
search() { # index, query-string: print the hits compactly
  curl -fsS "$ES/$1/_search?q=$(python3 -c 'import sys,urllib.parse;print(urllib.parse.quote(sys.argv[1]))' "$2")&size=5" |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
print("   %d hit(s)" % r["hits"]["total"]["value"])
for h in r["hits"]["hits"]:
    print("   ", h["_index"], h["_id"], json.dumps(h["_source"], ensure_ascii=False)[:160])'
}
wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 1 300); do
    "$@" >/dev/null 2>&1 && return 0
    if [ -n "${PID:-}" ] && ! kill -0 "$PID" 2>/dev/null; then
      echo "sluice exited while waiting for $what; its log:" >&2; tail -20 "$WORK/sluice.log" >&2; return 1
    fi
    sleep 0.2
  done
  echo "timed out waiting for $what; sluice log: $WORK/sluice.log" >&2; return 1
}

step "Building sluice"
cargo build --release --quiet --bin sluice
SLUICE=$ROOT/target/release/sluice

step "Creating the demo shop database '$DB'"
"${PSQL[@]}" "$SLUICE_TEST_PG_URL" >/dev/null <<SQL
SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '$DB' AND active_pid IS NOT NULL;
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$DB';
SQL

"${PSQL[@]}" "$SLUICE_TEST_PG_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" 2>/dev/null
"${PSQL[@]}" "$ADMIN_URL" -f scripts/demo-schema.sql
"${PSQL[@]}" "$ADMIN_URL" <<'SQL'
-- A few thousand realistic rows on top of the schema's examples.
INSERT INTO customers (email, first_name, last_name, country, attributes)
SELECT 'user' || g || '@example.com',
       (ARRAY['Alan','Barbara','Claude','Dennis','Edsger','Frances','Ken','Margaret','Niklaus','Radia'])[1 + g % 10],
       (ARRAY['Turing','Liskov','Shannon','Ritchie','Dijkstra','Allen','Thompson','Hamilton','Wirth','Perlman'])[1 + (g / 10) % 10],
       (ARRAY['GB','US','DE','FR','NL','SE'])[1 + g % 6],
       jsonb_build_object('tier', (ARRAY['bronze','silver','gold'])[1 + g % 3])
FROM generate_series(1, 1000) g;
INSERT INTO products (sku, name, description, price, tags)
SELECT 'SKU-' || g,
       (ARRAY['Cable','Monitor','Laptop stand','Headset','Webcam','Dock','Charger','Desk lamp'])[1 + g % 8] || ' ' || g,
       repeat('Sturdy and well made. ', 1 + g % 5),
       round((5 + random() * 300)::numeric, 2),
       (ARRAY['office','usb','audio','video','power'])[1 + g % 5] || ', ' || (ARRAY['new','sale','classic'])[1 + g % 3]
FROM generate_series(1, 200) g;
INSERT INTO orders (customer_id, status, region, total, placed_at)
SELECT 1 + (g * 7) % 1000, (ARRAY['placed','shipped','draft','cancelled'])[1 + g % 4],
       (ARRAY['eu','us','apac'])[1 + g % 3], round((10 + random() * 500)::numeric, 2),
       now() - (g || ' minutes')::interval
FROM generate_series(1, 3000) g;
INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price)
SELECT o.id, l, 1 + (o.id * l) % 200, 1 + l % 3, 19.99 FROM orders o, generate_series(1, 2) l WHERE o.id > 2;
SQL
"${PSQL[@]}" "$ADMIN_URL" -Atc "SELECT 'customers ' || count(*) FROM customers UNION ALL SELECT 'products ' || count(*) FROM products
  UNION ALL SELECT 'orders ' || count(*) FROM orders UNION ALL SELECT 'order_items ' || count(*) FROM order_items" | sed 's/^/   /'

step "Clearing demo indices from earlier runs"
for i in customers-v1 order-documents order-items orders 'orders-archive-*' products search sluice-dead-letters sluice-state; do
  curl -fsS -o /dev/null -X DELETE "$ES/$i?ignore_unavailable=true" || true
done

mkdir -p "$WORK"
cat > "$WORK/sluice.toml" <<TOML
# Written by scripts/demo.sh. The demo connects as the database owner, who
# may create the publication; see docs/operations.md for the least-privilege
# setup (a REPLICATION role with SELECT, publication made by the owner).
mappings_dir = "$ROOT/mappings"

[postgres]
url = "$ADMIN_URL"
slot = "sluice_demo"
publication = "sluice_demo"

[elasticsearch]
urls = ["$ES"]

[pipeline]
linger_ms = 50

[snapshot]
mode = "initial"

[http]
listen = "127.0.0.1:19187"
TOML

step "sluice check"
"$SLUICE" check --config "$WORK/sluice.toml"

step "sluice run (initial snapshot, then streaming; log: $WORK/sluice.log)"
"$SLUICE" run --config "$WORK/sluice.toml" >"$WORK/sluice.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
wait_for "/ready" curl -fsS http://127.0.0.1:19187/ready
echo "   ready: $(curl -fsS http://127.0.0.1:19187/ready)"
count() { curl -fsS "$ES/$1/_count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'; }
wait_for "the snapshot to land" bash -c "[ \"\$(curl -fsS '$ES/customers/_count' | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"count\"])')\" -ge 1002 ]"
curl -fsS -o /dev/null -X POST "$ES/_refresh"
for i in customers order-documents order-items orders products search; do printf '   %-12s %s documents\n' "$i" "$(count $i)"; done

step "Live changes while Sluice streams"
echo "   INSERT a customer 'Katherine Johnson' (US, gold)"
"${PSQL[@]}" "$ADMIN_URL" -c "INSERT INTO customers (email, first_name, last_name, country, attributes)
  VALUES ('katherine@example.com', 'Katherine', 'Johnson', 'US', '{\"tier\": \"gold\"}')"
echo "   UPDATE product SKU-7: new name 'Noise-cancelling headset', price 129.00"
"${PSQL[@]}" "$ADMIN_URL" -c "UPDATE products SET name = 'Noise-cancelling headset', price = 129.00 WHERE sku = 'SKU-7'"
DRAFT=$("${PSQL[@]}" "$ADMIN_URL" -Atc "SELECT min(id) FROM orders WHERE status = 'draft'")
echo "   UPDATE order $DRAFT from draft to placed (enters the orders index through the row filter)"
"${PSQL[@]}" "$ADMIN_URL" -c "UPDATE orders SET status = 'placed' WHERE id = $DRAFT"
echo "   DELETE customer 3's orders and customer 3"
"${PSQL[@]}" "$ADMIN_URL" -c "DELETE FROM orders WHERE customer_id = 3" -c "DELETE FROM customers WHERE id = 3"

wait_for "Katherine in the index" bash -c "curl -fsS '$ES/customers/_search?q=Katherine' | grep -q katherine || curl -fsS '$ES/customers/_search?q=Katherine' | grep -q Katherine"
wait_for "the product rename" bash -c "curl -fsS '$ES/products/_search?q=name:Noise-cancelling' | grep -q 'Noise-cancelling'"
wait_for "order $DRAFT in the orders index" curl -fsS "$ES/orders/_doc/$DRAFT"
wait_for "customer 3 gone" bash -c "! curl -fsS '$ES/customers-v1/_doc/3' >/dev/null 2>&1"

step "A nested document follows every table it joins"
show_order() { curl -fsS "$ES/order-documents/_doc/1" | python3 -c 'import json,sys; d=json.load(sys.stdin)["_source"]; print("   order 1:", json.dumps({k: d[k] for k in ("id","status","customer","items")}, ensure_ascii=False)[:300])'; }
wait_for "order 1's document" curl -fsS "$ES/order-documents/_doc/1"
show_order
echo "   UPDATE customer 1 (of order 1): last_name 'Lovelace' -> 'King'"
"${PSQL[@]}" "$ADMIN_URL" -c "UPDATE customers SET last_name = 'King' WHERE id = 1"
wait_for "order 1 to carry the new customer name" bash -c "curl -fsS '$ES/order-documents/_doc/1' | grep -q 'Ada King'"
show_order

step "Searches"
# A GET sees a write at once; a search sees it after the next refresh
# (1 s by default). Refresh now so the searches show what the GETs saw.
curl -fsS -o /dev/null -X POST "$ES/customers,products,orders/_refresh"
echo " customers: Katherine"; search customers Katherine
echo " products: name:Noise-cancelling"; search products 'name:Noise-cancelling'
echo " orders: _id $DRAFT"; search orders "_id:$DRAFT"
echo " customers: _id 3 (deleted)"; search customers '_id:3'

step "Metrics (a few)"
curl -fsS http://127.0.0.1:19187/metrics | grep -E '^sluice_(changes_applied_total|bulk_items_total|confirmed_flush_lsn)' | head -12 | sed 's/^/   /'

step "Stopping Sluice with SIGTERM"
kill -TERM $PID
wait $PID && echo "   exited cleanly (0)"
trap - EXIT

step "sluice status"
"$SLUICE" status --config "$WORK/sluice.toml" | sed 's/^/   /'
