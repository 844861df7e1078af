"""End-state check: every document of an index against every row of the
table, field by field, after the tool says it is done.

Values are compared by meaning, not spelling, because the tools render them
differently and either spelling is a faithful copy: numbers as decimals
(12.3 and "12.30" are the same numeric), timestamps as instants. PGSync adds
a `_meta` field of its own bookkeeping to every document; it is not a column
and is left out of the comparison (and counted, so the report can say so).
"""

import json
from datetime import datetime
from decimal import Decimal, InvalidOperation

from common import Es
from data import COLUMNS, table_rows

NUMERIC = {"id", "qty", "total", "score", "counter"}


def _num(v):
    if isinstance(v, bool) or v is None:
        return v
    try:
        return Decimal(str(v))
    except InvalidOperation:
        return v


def _same(col, a, b):
    if a is None or b is None:
        return a is None and b is None
    if col in NUMERIC:
        x, y = _num(a), _num(b)
        return x == y or (isinstance(x, Decimal) and isinstance(y, Decimal) and float(x) == float(y))
    if col == "created_at":
        try:
            return datetime.fromisoformat(str(a)) == datetime.fromisoformat(str(b))
        except ValueError:
            return a == b
    return a == b


def _walk(rows, docs, differs, limit_examples):
    """Rows ((id, ...) in id order) against documents (in `_id` order),
    merged: counts missing, extra and differing documents, with a few
    examples. `differs(row, doc, res)` says how a pair differs (or None)."""
    res = {"rows": 0, "docs": 0, "missing": 0, "extra": 0, "differ": 0, "examples": [], "extra_fields": set()}

    def example(kind, doc_id, detail=""):
        if len(res["examples"]) < limit_examples:
            res["examples"].append(f"{kind} {doc_id} {detail}".strip())

    row, doc = next(rows, None), next(docs, None)
    while row is not None or doc is not None:
        rid = row[0] if row else None
        did = int(doc["_id"]) if doc else None
        if doc is None or (row is not None and rid < did):
            res["rows"] += 1
            res["missing"] += 1
            example("missing", rid)
            row = next(rows, None)
        elif row is None or did < rid:
            res["docs"] += 1
            res["extra"] += 1
            example("extra", did)
            doc = next(docs, None)
        else:
            res["rows"] += 1
            res["docs"] += 1
            d = differs(row, doc, res)
            if d:
                res["differ"] += 1
                example("differs", rid, d)
            row, doc = next(rows, None), next(docs, None)
    res["exact"] = res["missing"] == res["extra"] == res["differ"] == 0
    res["extra_fields"] = sorted(res["extra_fields"])
    return res


def compare(env, db, index, limit_examples=3):
    """Returns {"exact", "rows", "docs", "missing", "extra", "differ", "examples", "extra_fields"}."""
    es = Es(env)
    es.refresh(index)

    def differs(row, doc, res):
        want = json.loads(row[1], parse_float=Decimal)
        got = doc["_source"]
        res["extra_fields"] |= set(got) - set(COLUMNS)
        bad = [c for c in COLUMNS if not _same(c, want.get(c), got.get(c))]
        return ", ".join(f"{c}: {want.get(c)!r} vs {got.get(c)!r}" for c in bad[:3]) or None

    return _walk(table_rows(env, db), es.scan(index), differs, limit_examples)


# ---- nested documents ----------------------------------------------------------
def _norm(v, unordered):
    """A document in comparable form: every number (or numeric string, as a
    tool may write `numeric`) a Decimal; with `unordered`, arrays of
    objects sorted by their id (PGSync has no array ordering)."""
    if isinstance(v, dict):
        return {k: _norm(x, unordered) for k, x in v.items()}
    if isinstance(v, list):
        out = [_norm(x, unordered) for x in v]
        if unordered and all(isinstance(x, dict) and "id" in x for x in out):
            out.sort(key=lambda x: x["id"])
        return out
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float, Decimal)):
        return Decimal(str(v)).normalize()
    if isinstance(v, str):
        try:
            return Decimal(v).normalize() if v[:1].isdigit() or v[:1] == "-" else v
        except InvalidOperation:
            return v
    return v


def _diff(want, got, path=""):
    """The first difference between two normalized documents, as text."""
    if isinstance(want, dict) and isinstance(got, dict):
        for k in sorted(set(want) | set(got)):
            if k not in got:
                return f"{path}{k} missing"
            if k not in want:
                return f"{path}{k} unexpected"
            d = _diff(want[k], got[k], f"{path}{k}.")
            if d:
                return d
        return None
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return f"{path.rstrip('.')}: {len(want)} elements vs {len(got)}"
        for i, (a, b) in enumerate(zip(want, got)):
            d = _diff(a, b, f"{path}{i}.")
            if d:
                return d
        return None
    return None if want == got else f"{path.rstrip('.')}: {want!r} vs {got!r}"


def compare_nested(env, rows, index, unordered=False, ignore=("_meta",), limit_examples=3):
    """Every document of `index` against `rows` ((id, JSON text) in id
    order, from nested_data.expected_docs), whole. Fields in `ignore` are
    left out (PGSync's `_meta`) and listed in extra_fields."""
    es = Es(env)
    es.refresh(index)

    def differs(row, doc, res):
        got = dict(doc["_source"])
        for k in ignore:
            if k in got:
                res["extra_fields"].add(k)
                del got[k]
        want = json.loads(row[1])
        # Fast path: the same JSON values (numbers parsed alike on both
        # sides); only documents that differ so are normalized and diffed.
        return None if want == got else _diff(_norm(want, unordered), _norm(got, unordered))

    return _walk(rows, es.scan(index), differs, limit_examples)
