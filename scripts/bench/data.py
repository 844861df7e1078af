"""The benchmark's data: one table of 10 mixed columns, template databases
that every run copies (so each tool starts from the same rows in a database
of its own, with no other tool's slot or triggers), the load generators
(pgbench scripts), and the pre-rendered NDJSON the raw `_bulk` baselines send.

The raw documents are PostgreSQL's own JSON rendering of the rows
(row_to_json) for the snapshot, and the changes decoded from the WAL by a
test_decoding slot for the streaming workloads, so the ceiling indexes the
very documents and the very changes the tools had to move.
"""

import json
import os
import re
import subprocess
import time
from decimal import Decimal

from common import WRITER_APP, connect, log

TABLE = "bench10"
COLUMNS = ["id", "name", "email", "qty", "total", "active", "created_at", "score", "category", "counter"]
# Rows 1..PROBES are kept for the latency probes; row 0 is the sentinel whose
# change marks the end of a workload.
PROBES = 1000
SENTINEL = 0

CREATE = f"""
CREATE TABLE {TABLE} (id int8 PRIMARY KEY, name text, email text, qty int4,
  total numeric(12,2), active bool, created_at timestamptz, score float8,
  category text, counter int8)"""
ROW_EXPR = """{i}, 'name ' || {i}, 'user' || {i} || '@example.com', ({i} % 100)::int4,
  ({i} % 100000) / 100.0, {i} % 3 = 0, timestamptz '2026-01-01' + {i} * interval '1 second',
  {i} / 7.0, (ARRAY['books','games','tools','food'])[1 + {i} % 4], {i} * 31"""

# One index body for every tool and every baseline: same shards, replicas,
# refresh interval and field types. `index.gc_deletes` is what Sluice sets on
# indices it creates (its delete-replay window); harmless for the others.
INDEX_BODY = {
    "settings": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "1s",
                 "index.gc_deletes": "86400s"},
    "mappings": {"properties": {
        "id": {"type": "long"}, "name": {"type": "text"}, "email": {"type": "keyword"},
        "qty": {"type": "integer"}, "total": {"type": "double"},
        "active": {"type": "boolean"}, "created_at": {"type": "date"}, "score": {"type": "double"},
        "category": {"type": "keyword"}, "counter": {"type": "long"}}},
}


def make_template(env, db, rows):
    """A database holding rows 0..rows (0 is the sentinel) and the sequence
    new rows take their ids from."""
    with connect(env) as c:
        c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {db}")
    t0 = time.monotonic()
    with connect(env, db) as c:
        c.execute(CREATE)
        c.execute(f"INSERT INTO {TABLE} SELECT {ROW_EXPR.format(i='i')} FROM generate_series(0, {rows}) i")
        c.execute(f"CREATE SEQUENCE {TABLE}_ins START {rows + 1}")
        c.execute(f"VACUUM ANALYZE {TABLE}")
    log(f"template {db}: {rows + 1} rows in {time.monotonic() - t0:.1f} s")


def copy_db(env, template, db):
    drop_db(env, db)
    with connect(env) as c:
        c.execute(f"CREATE DATABASE {db} TEMPLATE {template}")


def drop_db(env, db):
    with connect(env) as c:
        c.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                  "WHERE database = %s AND active_pid IS NOT NULL", (db,))
        for _ in range(50):
            left = c.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s AND NOT active",
                             (db,)).fetchall()
            for (slot,) in left:
                c.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            if not c.execute("SELECT 1 FROM pg_replication_slots WHERE database = %s", (db,)).fetchall():
                break
            time.sleep(0.1)
        c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def row_count(env, db):
    with connect(env, db) as c:
        return c.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]


def table_rows(env, db):
    """Every row as PostgreSQL renders it in JSON, in id order."""
    with connect(env, db, autocommit=False) as c:
        with c.cursor(name="rows") as cur:
            cur.itersize = 10000
            cur.execute(f"SELECT id, row_to_json(t)::text FROM {TABLE} t ORDER BY id")
            for doc_id, doc in cur:
                yield doc_id, doc


def snapshot_docs(env, db):
    """The table as pre-rendered bulk lines: [(action, source)] as bytes."""
    out = []
    for doc_id, doc in table_rows(env, db):
        action = json.dumps({"index": {"_id": str(doc_id), "version": 1, "version_type": "external_gte"}})
        out.append((action.encode(), doc.encode()))
    return out


# ---- load generators -----------------------------------------------------------
INSERT_ONE = f"INSERT INTO {TABLE} SELECT {ROW_EXPR.format(i='n')} FROM nextval('{TABLE}_ins') n;"
# pgbench-style single-row transactions: 70% updates, 20% inserts, 10%
# deletes. Each client works on its own slice of ids (no lock conflicts, and
# the same seed gives the same changes to every tool); updates of a row its
# client deleted change nothing.
SINGLE_ROW = f"""\\set part (:rows - {PROBES}) / :clients
\\set id {PROBES} + :client_id * :part + random(1, :part)
\\set r random(1, 100)
\\if :r <= 70
UPDATE {TABLE} SET qty = qty + 1, counter = counter + 1, score = random(), name = 'upd ' || :id WHERE id = :id;
\\elif :r <= 90
{INSERT_ONE}
\\else
DELETE FROM {TABLE} WHERE id = :id;
\\endif
"""
# Transactions of about 100 changes: 70 updates, 20 inserts, 10 deletes.
HUNDRED = f"""\\set part (:rows - {PROBES}) / :clients
\\set a {PROBES} + :client_id * :part + random(1, :part - 70)
\\set b {PROBES} + :client_id * :part + random(1, :part - 10)
BEGIN;
UPDATE {TABLE} SET qty = qty + 1, counter = counter + 1, score = random(), name = 'upd ' || id WHERE id BETWEEN :a AND :a + 69;
INSERT INTO {TABLE} SELECT {ROW_EXPR.format(i='n')} FROM (SELECT nextval('{TABLE}_ins') n FROM generate_series(1, 20)) s;
DELETE FROM {TABLE} WHERE id BETWEEN :b AND :b + 9;
COMMIT;
"""
# The latency workload's background: single-row updates (one change each).
UPDATES = f"""\\set id random({PROBES + 1}, :rows)
UPDATE {TABLE} SET qty = qty + 1, counter = counter + 1, score = random() WHERE id = :id;
"""
SCRIPTS = {"single": SINGLE_ROW, "hundred": HUNDRED, "updates": UPDATES}


def pgbench(env, db, script, rows, work, clients=4, transactions=None, rate=None, seconds=None, seed=7):
    """Runs pgbench; returns (wall seconds, output)."""
    path = os.path.join(work, f"{script}.pgbench")
    with open(path, "w") as f:
        f.write(SCRIPTS[script])
    argv = [os.path.join(env.pg_bin, "pgbench"), "-n", "-f", path, "-c", str(clients), "-j", str(min(clients, 2)),
            "-D", f"rows={rows}", "-D", f"clients={clients}", f"--random-seed={seed}"]
    if transactions:
        argv += ["-t", str(max(1, transactions // clients))]
    if rate:
        argv += ["-R", str(rate), "-T", str(seconds)]
    argv.append(db)
    t0 = time.monotonic()
    r = subprocess.run(argv, env=env.pg_env(WRITER_APP), capture_output=True, text=True)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"pgbench failed: {r.stderr[-2000:]}")
    return dt, r.stdout


def set_sentinel(env, db, marker):
    with connect(env, db) as c:
        c.execute(f"UPDATE {TABLE} SET counter = %s WHERE id = {SENTINEL}", (marker,))
        return c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]


# ---- changes decoded from the WAL (test_decoding) ------------------------------
COUNT_SLOT = "bench_changes"


def create_slots(env, db, pgoutput=(), test_decoding=(COUNT_SLOT,)):
    with connect(env, db) as c:
        if pgoutput:
            c.execute(f"CREATE PUBLICATION bench_pub FOR TABLE {TABLE}")
        for s in test_decoding:
            c.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (s,))
        for s in pgoutput:
            c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (s,))


FIELD = re.compile(r"(\w+)\[([^\]]+)\]:('(?:[^']|'')*'|\S+)")


def _value(typ, raw):
    if raw == "null":
        return None
    if raw.startswith("'"):
        raw = raw[1:-1].replace("''", "'")
    if typ in ("bigint", "integer", "smallint"):
        return int(raw)
    if typ == "numeric":
        return Decimal(raw)
    if typ == "double precision":
        return float(raw)
    if typ == "boolean":
        return raw == "true"
    if typ.startswith("timestamp with"):
        d, t = raw.split(" ", 1)
        if re.search(r"[+-]\d\d$", t):
            t += ":00"
        return f"{d}T{t}"
    return raw


class _Enc(json.JSONEncoder):
    def default(self, o):
        if isinstance(o, Decimal):
            return float(o)
        return super().default(o)


def decoded_changes(env, db, slot=COUNT_SLOT, render=True):
    """Consumes the test_decoding slot: the number of row changes, and (if
    `render`) each as a bulk line pair, versioned by its position so that
    any concurrency applies them like a versioned stream."""
    n, out = 0, []
    with connect(env, db) as c:
        cur = c.execute("SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL)", (slot,))
        for (data,) in cur:
            if not data.startswith("table "):
                continue
            n += 1
            if not render:
                continue
            head, _, fields = data.partition(": ")[2].partition(": ")
            vals = {m.group(1): _value(m.group(2), m.group(3)) for m in FIELD.finditer(fields)}
            meta = {"_id": str(vals["id"]), "version": n, "version_type": "external_gte"}
            if head == "DELETE":
                out.append((json.dumps({"delete": meta}).encode(), None))
            else:
                src = json.dumps({k: vals.get(k) for k in COLUMNS}, cls=_Enc, separators=(",", ":"))
                out.append((json.dumps({"index": meta}).encode(), src.encode()))
    return n, out


def bodies(docs, batch, index):
    """Bulk request bodies of `batch` operations each, for `index`."""
    out = []
    prefix = b'{"index":{"_index":"' + index.encode() + b'",'
    dprefix = b'{"delete":{"_index":"' + index.encode() + b'",'
    for i in range(0, len(docs), batch):
        parts = []
        for action, src in docs[i:i + batch]:
            if src is None:
                parts.append(dprefix + action[len(b'{"delete": {'):] + b"\n")
            else:
                parts.append(prefix + action[len(b'{"index": {'):] + b"\n" + src + b"\n")
        out.append(b"".join(parts))
    return out
