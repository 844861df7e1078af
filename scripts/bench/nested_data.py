"""The nested-documents workload's data (issue 12): a shop schema where one
search document per order carries its customer (many-to-one, an object)
and its items (one-to-many, an array), each item its product (many-to-one,
two levels down). The same document three ways: Sluice's mapping
(`[relations.*]`), PGSync's schema.json (`children` nodes), and SQL
(json_build_object, as tests/it/run_nested.rs builds its expected
documents), which is both the end-state reference and what the raw `_bulk`
ceiling sends.

Order 0 is the sentinel: its `counter` marks that a tool streams.
"""

import json
import time

from common import connect, log

ORDERS, ITEMS, CUSTOMERS, PRODUCTS = "orders", "order_items", "customers", "products"
TABLES = [CUSTOMERS, PRODUCTS, ORDERS, ITEMS]

ROOT_COLUMNS = ["id", "customer_id", "status", "total", "counter"]
CUSTOMER_COLUMNS = ["id", "name", "email"]
ITEM_COLUMNS = ["id", "product_id", "qty", "unit_price"]
PRODUCT_COLUMNS = ["id", "sku", "title", "price"]

SCHEMA = """
CREATE TABLE customers (id int8 PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE products (id int8 PRIMARY KEY, sku text NOT NULL, title text NOT NULL, price numeric(10,2));
CREATE TABLE orders (id int8 PRIMARY KEY, customer_id int8 REFERENCES customers, status text NOT NULL,
                     total numeric(12,2), counter int8 NOT NULL DEFAULT 0);
CREATE INDEX ON orders (customer_id);
CREATE TABLE order_items (id int8 PRIMARY KEY, order_id int8 NOT NULL REFERENCES orders,
                          product_id int8 REFERENCES products, qty int4 NOT NULL, unit_price numeric(10,2));
CREATE INDEX ON order_items (order_id);
CREATE INDEX ON order_items (product_id);
-- Sluice refuses a child whose join columns a DELETE would not carry
-- (mappings/README.md); the same table serves PGSync.
ALTER TABLE order_items REPLICA IDENTITY FULL;
"""

# Orders 0..orders (0: the sentinel), `items` items each (ids o*items+1 ..
# o*items+items), a customer per 50 orders, products spread over the items.
FILL = """
INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, {customers}) g;
INSERT INTO products SELECT g, 'SKU-' || g, 'product ' || g, (g % 500) + 0.99 FROM generate_series(1, {products}) g;
INSERT INTO orders SELECT g, 1 + g % {customers}, (ARRAY['placed','paid','shipped'])[1 + g % 3],
  (g % 10000) / 10.0, 0 FROM generate_series(0, {orders}) g;
INSERT INTO order_items SELECT g, (g - 1) / {items}, 1 + (g * 7919) % {products}, 1 + g % 4, (g % 300) + 0.5
  FROM generate_series(1, ({orders} + 1) * {items}) g;
"""

# Field types, the same for every tool and the raw baseline: objects, not
# `nested` (neither tool needs it to be exact, and PGSync does not create it).
INDEX_BODY = {
    "settings": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "1s",
                 "index.gc_deletes": "86400s"},
    "mappings": {"properties": {
        "id": {"type": "long"}, "customer_id": {"type": "long"}, "status": {"type": "keyword"},
        "total": {"type": "double"}, "counter": {"type": "long"},
        "customer": {"properties": {"id": {"type": "long"}, "name": {"type": "keyword"},
                                    "email": {"type": "keyword"}}},
        "items": {"properties": {
            "id": {"type": "long"}, "product_id": {"type": "long"}, "qty": {"type": "integer"},
            "unit_price": {"type": "double"},
            "product": {"properties": {"id": {"type": "long"}, "sku": {"type": "keyword"},
                                       "title": {"type": "keyword"}, "price": {"type": "double"}}}}}}},
}


def sizes(orders):
    return {"orders": orders, "customers": max(10, orders // 50), "products": max(20, orders // 50)}


def make_template(env, db, orders, items):
    with connect(env) as c:
        c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {db}")
    t0 = time.monotonic()
    with connect(env, db) as c:
        c.execute(SCHEMA)
        c.execute(FILL.format(items=items, **sizes(orders)))
        for t in TABLES:
            c.execute(f"VACUUM ANALYZE {t}")
    log(f"template {db}: {orders + 1} orders × {items} items in {time.monotonic() - t0:.1f} s")


def _obj(alias, cols):
    return "json_build_object(" + ", ".join(f"'{c}', {alias}.{c}" for c in cols) + ")"


# Every order document, built by SQL independently of either tool (items in
# id order: Sluice's `order_by`; PGSync has no ordering, see verify.py).
EXPECTED = f"""
SELECT o.id, json_build_object({", ".join(f"'{c}', o.{c}" for c in ROOT_COLUMNS)},
  'customer', (SELECT {_obj("c", CUSTOMER_COLUMNS)} FROM customers c WHERE c.id = o.customer_id),
  'items', COALESCE((SELECT json_agg(json_build_object({", ".join(f"'{c}', i.{c}" for c in ITEM_COLUMNS)},
        'product', (SELECT {_obj("p", PRODUCT_COLUMNS)} FROM products p WHERE p.id = i.product_id)) ORDER BY i.id)
      FROM order_items i WHERE i.order_id = o.id), '[]'::json))::text
FROM orders o"""


def expected_docs(env, db, where="", params=None):
    """(id, JSON text) of every order document (or those `where` selects), in id order."""
    with connect(env, db, autocommit=False) as c:
        with c.cursor(name="nested_docs") as cur:
            cur.itersize = 5000
            cur.execute(f"{EXPECTED} {where} ORDER BY o.id", params)
            for doc_id, doc in cur:
                yield doc_id, doc


def bulk_docs(env, db, version=1, where="", params=None):
    """The documents as pre-rendered bulk line pairs (external_gte `version`)."""
    return [(json.dumps({"index": {"_id": str(i), "version": version, "version_type": "external_gte"}}).encode(),
             doc.encode()) for i, doc in expected_docs(env, db, where, params)]


def sluice_mapping(index):
    return f'''table = "public.{ORDERS}"
index = "{index}"
include = {json.dumps(ROOT_COLUMNS)}

[relations.customer]
table = "public.{CUSTOMERS}"
kind = "many_to_one"
include = {json.dumps(CUSTOMER_COLUMNS)}

[relations.items]
table = "public.{ITEMS}"
kind = "one_to_many"
include = {json.dumps(ITEM_COLUMNS)}
order_by = ["id"]

[relations.items.relations.product]
table = "public.{PRODUCTS}"
kind = "many_to_one"
include = {json.dumps(PRODUCT_COLUMNS)}
'''


def pgsync_nodes():
    """The same document as PGSync's schema.json `nodes` (its docs: a
    many-to-one parent → child is `one_to_one` with the foreign key on the
    parent; `variant: object`)."""
    return {"table": ORDERS, "columns": ROOT_COLUMNS, "children": [
        {"table": CUSTOMERS, "columns": CUSTOMER_COLUMNS, "label": "customer",
         "relationship": {"variant": "object", "type": "one_to_one",
                          "foreign_key": {"child": ["id"], "parent": ["customer_id"]}}},
        {"table": ITEMS, "columns": ITEM_COLUMNS, "label": "items",
         "relationship": {"variant": "object", "type": "one_to_many",
                          "foreign_key": {"child": ["order_id"], "parent": ["id"]}},
         "children": [
             {"table": PRODUCTS, "columns": PRODUCT_COLUMNS, "label": "product",
              "relationship": {"variant": "object", "type": "one_to_one",
                               "foreign_key": {"child": ["id"], "parent": ["product_id"]}}}]}]}


# ---- the changes ---------------------------------------------------------------
def item_updates(env, db, orders, items, n, per_tx=1, add=1000, shift=False):
    """`n` item updates, `per_tx` to a transaction, each adding `add` to the
    quantity of one item of a different order (a one-to-many child change:
    one root each); `shift` picks other orders than without. Returns
    (seconds, the orders touched)."""
    n = min(n, orders)
    step = max(1, orders // n)
    off = max(1, step // 2) if shift else 0
    targets = [1 + (k * step + off) % orders for k in range(n)]
    t0 = time.monotonic()
    with connect(env, db) as c:
        for i in range(0, n, per_tx):
            ids = [o * items + 1 for o in targets[i:i + per_tx]]
            c.execute(f"UPDATE {ITEMS} SET qty = qty + %s WHERE id = ANY(%s)", (add, ids))
    return time.monotonic() - t0, len(set(targets))


def product_renames(env, db, orders, n, tag):
    """`n` single-row transactions, each renaming a different product (a
    many-to-one change two levels down: every order with an item of it).
    Returns (seconds, the orders touched)."""
    products = sizes(orders)["products"]
    n = min(n, products)
    ids = [1 + (k * (products // n)) % products for k in range(n)]
    t0 = time.monotonic()
    with connect(env, db) as c:
        for p in ids:
            c.execute(f"UPDATE {PRODUCTS} SET title = %s WHERE id = %s", (f"renamed {tag} {p}", p))
        secs = time.monotonic() - t0
        roots = c.execute(f"SELECT count(DISTINCT order_id) FROM {ITEMS} WHERE product_id = ANY(%s)",
                          (ids,)).fetchone()[0]
    return secs, roots


# How many documents already show each phase's changes (a search: what the
# tools wrote, as of the index's last refresh).
def items_done_query(add):
    return {"query": {"range": {"items.qty": {"gte": add}}}}


def products_done_query(tag):
    return {"query": {"prefix": {"items.product.title": f"renamed {tag} "}}}


def items_changed_where(add):
    return "WHERE o.id IN (SELECT order_id FROM order_items WHERE qty >= %s)", (add,)


def products_changed_where(tag):
    return ("WHERE o.id IN (SELECT i.order_id FROM order_items i JOIN products p ON p.id = i.product_id "
            "WHERE p.title LIKE %s)", (f"renamed {tag} %",))


def set_sentinel(env, db, mark):
    with connect(env, db) as c:
        c.execute(f"UPDATE {ORDERS} SET counter = %s WHERE id = 0", (mark,))
