"""Writes what `./dev bench` measured: the generated section of
BENCHMARKS.md (between the bench:begin and bench:end markers; the rest of
the file is history and stays as it is), the raw results as
docs/bench/results.json, and one PNG chart per workload under docs/bench/,
drawn with matplotlib from the results (never by hand).
"""

import json
import os
import re

from common import ROOT, ratios, summary

DOCS = os.path.join(ROOT, "docs", "bench")
BENCHMARKS = os.path.join(ROOT, "BENCHMARKS.md")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
NAMES = {"raw": "raw `_bulk` (best of sweep)", "ceiling": "co-tenant ceiling (raw `_bulk` + `pg_recvlogical`)",
         "sluice": "Sluice", "pgsync": "PGSync", "pg_recvlogical": "`pg_recvlogical` > /dev/null"}
TITLES = {
    "snapshot": "Snapshot",
    "stream1": "Streaming single-row transactions",
    "stream100": "Streaming 100-change transactions",
    "drain": "Backlog drain, single-row transactions",
    "decode": "Decode: Sluice's reader vs `pg_recvlogical`",
    "latency": "Latency, commit to visible in search",
    "nested_snapshot": "Nested snapshot",
    "nested_items": "Nested child changes, single-row transactions",
    "nested_items100": "Nested child changes, 100-row transactions",
    "nested_products": "Nested fan-out",
}
# The result keys each workload writes (a run of some workloads replaces
# only these in the saved results; see merge()).
KEYS = {"snapshot": ["snapshot", "sweep"], "drain": ["drain", "decode"],
        "nested": ["nested", "nested_snapshot", "nested_items", "nested_items100", "nested_products"]}
NESTED = ("nested_snapshot", "nested_items", "nested_items100", "nested_products")


def fnum(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def fsum(s, digits=0, unit=""):
    if not s:
        return "–"
    if s["n"] == 1 or s["min"] == s["max"]:
        return f"{fnum(s['median'], digits)}{unit}"
    return f"{fnum(s['median'], digits)}{unit} ({fnum(s['min'], digits)}–{fnum(s['max'], digits)})"


def col(runs, key):
    return summary([r.get(key) for r in runs])


def per_change(runs):
    return summary([r["tool_cpu"] * 1e6 / r["changes"] for r in runs if r.get("tool_cpu") is not None])


def end_state(runs):
    if not runs or all(r.get("exact") is None for r in runs):
        return "–"
    bad = [r for r in runs if not r.get("exact")]
    late = [r["settled_after_s"] for r in runs if r.get("settled_after_s")]
    if not bad:
        s = f"exact ({len(runs)}/{len(runs)})"
        if late:
            s += f", {len(late)} of them only {max(late):.0f} s after the last change showed"
        return s
    slow = [r for r in bad if r.get("missing") is None]
    if slow:
        return f"**unfinished** in {len(slow)}/{len(runs)} ({slow[0]['examples'][0]})"
    w = max(bad, key=lambda r: r["missing"] + r["extra"] + r["differ"])
    return (f"**not exact** in {len(bad)}/{len(runs)} (worst: {w['missing']:,} missing, {w['extra']:,} "
            f"stale deleted, {w['differ']:,} differing of {w['rows']:,} rows, 30 s after the last change showed)")


def examples(data):
    out = []
    for tool in ("sluice", "pgsync"):
        bad = [r for r in data.get(tool, []) if r.get("exact") is False and r.get("examples")]
        if bad:
            out.append(f"{NAMES[tool]}, e.g.: " + "; ".join(bad[0]["examples"]))
    return ["", *[f"- {o}" for o in out]] if out else []


def throughput_table(wl, data, base_key, unit=None, per="change"):
    base = data.get(base_key)
    unit = unit or ("rows/s" if wl == "snapshot" else "changes/s")
    lines = [f"| | {unit} | ratio to ceiling | tool CPU s | CPU µs/{per} | PostgreSQL CPU s | "
             f"Elasticsearch CPU s | peak RSS MiB | end state |", "|---|---|---|---|---|---|---|---|---|"]
    for tool in (base_key, "sluice", "pgsync"):
        runs = data.get(tool)
        if not runs:
            continue
        lines.append("| " + " | ".join([
            NAMES[tool], fsum(col(runs, "rate")),
            "1.00×" if tool == base_key else fsum(ratios(runs, base), 2, "×"),
            fsum(col(runs, "tool_cpu"), 2), fsum(per_change(runs), 1), fsum(col(runs, "pg_cpu"), 2),
            fsum(col(runs, "es_cpu"), 1), fsum(col(runs, "rss_mib")), end_state(runs)]) + " |")
    return lines


def versus(data):
    s, p = data.get("sluice"), data.get("pgsync")
    if not s or not p:
        return []
    r = summary([a["rate"] / b["rate"] for a, b in zip(s, p)])
    return ["", f"Sluice / PGSync: **{fsum(r, 1, '×')}**."]


def startup_note(data):
    runs = [r for r in data.get("sluice", []) if r.get("startup_s")]
    if not runs:
        return []
    s = summary([r["startup_s"] for r in runs])
    streaming = summary([r["changes"] / (r["seconds"] - r["startup_s"]) for r in runs])
    return ["", f"Sluice's start-up (process start until its slot is in use) took {fsum(s, 2, ' s')} of that; "
                f"from then on it drained {fsum(streaming)} changes/s."]


def writer_note(data):
    parts = []
    for tool in ("sluice", "pgsync"):
        runs = data.get(tool)
        if runs and runs[0].get("writer_rate"):
            parts.append(f"{NAMES[tool]}'s database {fsum(col(runs, 'writer_rate'))} changes/s")
    if not parts:
        return []
    return ["", "Load generator (pgbench, 4 clients) alone: " + "; ".join(parts) +
            " (PGSync's triggers run inside the writers' transactions)."]


def decode_table(data):
    recv = data.get("pg_recvlogical")
    lines = ["| | changes/s | ratio | CPU s | CPU µs/change | walsender CPU s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for tool in ("pg_recvlogical", "sluice"):
        runs = data.get(tool)
        if not runs:
            continue
        name = NAMES[tool] if tool != "sluice" else "Sluice reader (decode + conversion, null sink)"
        lines.append("| " + " | ".join([
            name, fsum(col(runs, "rate")), "1.00×" if tool == "pg_recvlogical" else fsum(ratios(runs, recv), 2, "×"),
            fsum(col(runs, "tool_cpu"), 2), fsum(per_change(runs), 2), fsum(col(runs, "pg_cpu"), 2),
            fsum(col(runs, "rss_mib"))]) + " |")
    return lines


def latency_table(data):
    lines = ["| | p50 ms | p95 ms | p99 ms | max ms | indexed p50 / p99 ms | probes | changes/s | tool CPU s | "
             "peak RSS MiB | end state |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for tool in ("sluice", "pgsync"):
        runs = data.get(tool)
        if not runs:
            continue
        lines.append("| " + " | ".join([
            NAMES[tool], fsum(col(runs, "p50")), fsum(col(runs, "p95")), fsum(col(runs, "p99")),
            fsum(col(runs, "max")), f"{fsum(col(runs, 'indexed_p50'))} / {fsum(col(runs, 'indexed_p99'))}",
            fsum(col(runs, "probes")), fsum(col(runs, "rate")),
            fsum(col(runs, "tool_cpu"), 2), fsum(col(runs, "rss_mib")), end_state(runs)]) + " |")
    return lines


def targets(res):
    out = []

    def med(wl, tool, key="rate"):
        s = col(res.get(wl, {}).get(tool, []), key)
        return s["median"] if s else None

    def line(goal, value, ok):
        if value is not None:
            out.append(f"| {goal} | {value} | {'yes' if ok else 'no'} |")

    snap = ratios(res.get("snapshot", {}).get("sluice", []), res.get("snapshot", {}).get("raw"))
    if snap:
        line("snapshot ≥ 0.95× raw `_bulk`", f"{snap['median']:.2f}×", snap["median"] >= 0.95)
    for wl in ("stream1", "stream100", "drain"):
        r = ratios(res.get(wl, {}).get("sluice", []), res.get(wl, {}).get("ceiling"))
        if r:
            line(f"{TITLES[wl].lower()} ≥ 0.9× co-tenant ceiling", f"{r['median']:.2f}×", r["median"] >= 0.9)
    d, rv = med("drain", "sluice"), med("decode", "pg_recvlogical")
    if d and rv:
        line("backlog drain ≥ 0.8× `pg_recvlogical`", f"{d / rv:.2f}×", d / rv >= 0.8)
    dec = ratios(res.get("decode", {}).get("sluice", []), res.get("decode", {}).get("pg_recvlogical"))
    if dec:
        line("decode ≥ 0.9× `pg_recvlogical`", f"{dec['median']:.2f}×", dec["median"] >= 0.9)
    for wl in ("snapshot", "stream1", "stream100", "drain"):
        s, p = med(wl, "sluice"), med(wl, "pgsync")
        if s and p:
            line(f"≥ 10× PGSync: {TITLES[wl].lower()}", f"{s / p:.1f}×", s / p >= 10)
    p99 = med("latency", "sluice", "p99")
    if p99 is not None:
        line("latency p99 ≤ refresh interval (1 s) + 100 ms", f"{p99:,.0f} ms", p99 <= 1100)
    for wl in ("stream1", "drain"):
        us = per_change(res.get(wl, {}).get("sluice", []))
        if us:
            line(f"Sluice CPU ≤ 2 µs/change ({TITLES[wl].lower()})", f"{us['median']:.1f} µs", us["median"] <= 2)
    rss = [r.get("rss_mib") for wl in ("snapshot", "stream1", "stream100", "drain", "latency")
           for r in res.get(wl, {}).get("sluice", []) if r.get("rss_mib")]
    if rss:
        line("Sluice peak RSS ≤ 64 MB in every workload", f"{max(rss):.0f} MiB (largest)", max(rss) * 1.048576 <= 64)
    out += nested_targets(res, med)
    if not out:
        return []
    return ["| goal (issue 19 unless noted) | measured (median) | met |", "|---|---|---|", *out]


def nested_targets(res, med):
    """Issue 12's goals for the nested workload."""
    out = []
    snap = ratios(res.get("nested_snapshot", {}).get("sluice", []), res.get("nested_snapshot", {}).get("raw"))
    if snap:
        out.append(f"| nested snapshot ≥ 0.8× raw `_bulk` (issue 12) | {snap['median']:.2f}× | "
                   f"{'yes' if snap['median'] >= 0.8 else 'no'} |")
    for wl in NESTED:
        s, p = med(wl, "sluice"), med(wl, "pgsync")
        if s and p:
            out.append(f"| ≥ 10× PGSync: {TITLES[wl].lower()} (issue 12) | {s / p:.1f}× | "
                       f"{'yes' if s / p >= 10 else 'no'} |")
    runs = [r for wl in NESTED for r in res.get(wl, {}).get("sluice", [])]
    if runs:
        ok = sum(1 for r in runs if r.get("exact"))
        out.append(f"| Sluice's nested end state exact (issue 12) | {ok}/{len(runs)} phases | "
                   f"{'yes' if ok == len(runs) else 'no'} |")
    return out


def nested_writer_note(data):
    parts = [f"{NAMES[t]}'s database {fsum(col(data[t], 'writer_rate'))}/s" for t in ("sluice", "pgsync")
             if data.get(t)]
    if not parts:
        return []
    return ["", "The writer's own rate (single-row transactions, one connection): " + "; ".join(parts) +
            " (PGSync's triggers run inside the writer's transactions)."]


def nested_section(res):
    n = res["nested"]
    if "skipped" in n:
        return ["### Nested documents", "", f"Not measured: {n['skipped']}.", ""]
    m = res.get("metas", {}).get("nested", res["meta"])
    a = m["args"]
    L = ["### Nested documents (issue 12)", "",
         "![nested snapshot](docs/bench/nested_snapshot.png)", "",
         "![nested child changes](docs/bench/nested_items.png)", "",
         "![nested child changes, 100-row transactions](docs/bench/nested_items100.png)", "",
         "![nested fan-out](docs/bench/nested_products.png)", ""]
    if m is not res["meta"]:
        runs = f"{a['runs']} run{'s' if a['runs'] > 1 else ''}"
        L += [f"Measured apart from the figures above, by `./dev bench --workloads nested"
              f"{' --quick' if m['quick'] else ''}`: {m['date']} at commit `{m['commit']}`"
              f"{' (with uncommitted changes)' if m['dirty'] else ''}, median (min–max) of {runs}, "
              f"{m['workload_seconds'].get('nested', m['seconds']) / 60:.1f} min"
              + (f"; load average {m['load']['min']:.1f}–{m['load']['max']:.1f} on 2 cores from other "
                 "sessions building and testing (a **busy machine**: the ratios mean more than the rates)"
                 if m["load"]["max"] > 1.5 else "") + ".", ""]
    sw = n["sweep"]
    pts = ", ".join(f"{p['concurrency']}×{p['batch']}: {p['rate']:,.0f}/s" for p in sw["points"])
    L += [f"{n['orders']:,} order documents, each with its customer (many-to-one: an object) and its "
          f"{n['items_per_order']} items (one-to-many: an array), each item with its product (many-to-one, two "
          f"levels down): four tables, {n['customers']:,} customers, {n['products']:,} products, "
          f"≈{n['doc_bytes']:,.0f} bytes of JSON per document. Sluice: one mapping with `[relations.customer]`, "
          "`[relations.items]` (`order_by = [\"id\"]`) and `[relations.items.relations.product]`; PGSync: the "
          "same document as `children` nodes of schema.json (`one_to_one` objects for the customer and the "
          "product, `one_to_many` for the items, foreign keys given). After every phase the whole index is "
          "compared with the documents SQL builds from the tables (`json_build_object`, as "
          "tests/it/run_nested.rs does), document by document and field by field (numbers by value). "
          "PGSync's arrays are compared as sets (it has no array ordering; Sluice's must be in `order_by` "
          "order) and its `_meta` field is left out. Rates are root documents per second.", "",
          "**Snapshot**: Sluice `sluice run` with `snapshot.mode = \"initial_only\"` "
          f"({a['readers']} readers); PGSync `bootstrap`, then one pass of `pgsync` (bootstrap not counted); "
          "each clocked from process start to exit (connections and Sluice's slot creation included). "
          "Raw `_bulk`: the documents as SQL builds them, pre-rendered (rendering not counted), at the best "
          f"point of a sweep on {sw['docs']:,} of them ({pts}; best {sw['best']['concurrency']}×"
          f"{sw['best']['batch']}).", "",
          *throughput_table("nested_snapshot", res.get("nested_snapshot", {}), "raw", "root docs/s", "doc"),
          *examples(res.get("nested_snapshot", {})), *versus(res.get("nested_snapshot", {})), "",
          f"**Child changes**: {n['item_updates']:,} single-row transactions, each changing one item of a "
          "different order (one root document each), committed back to back by one connection while the tool "
          "streams (Sluice: `sluice run` from the slot its snapshot left; PGSync: `pgsync --daemon`). Clock "
          "from the first write until a search (polled every 0.25 s, each time after a `_refresh`) finds "
          "every touched document changed. Ceiling: raw `_bulk` of the same documents as SQL renders them "
          "afterwards, onto the raw snapshot's index (updates, as the tools write), timed until a `_refresh` "
          "returns; no tool can outrun the writer, so the ratio is to the lower of the ceiling and the "
          "writer's rate.", "",
          *throughput_table("nested_items", res.get("nested_items", {}), "raw", "root docs/s", "doc"),
          *examples(res.get("nested_items", {})), *versus(res.get("nested_items", {})),
          *nested_writer_note(res.get("nested_items", {})), "",
          f"**Child changes, 100-row transactions**: the same number of item updates to other orders, 100 to a "
          "transaction (so the writer is no longer the limit). Same clock and ceiling.", "",
          *throughput_table("nested_items100", res.get("nested_items100", {}), "raw", "root docs/s", "doc"),
          *examples(res.get("nested_items100", {})), *versus(res.get("nested_items100", {})), ""]
    roots = col(res.get("nested_products", {}).get("sluice") or res.get("nested_products", {}).get("pgsync")
                or [], "changes")
    L += [f"**Fan-out**: {n['renames']:,} single-row transactions, each renaming one product (a many-to-one "
          f"target two levels down), which touch {fsum(roots)} orders: every one is rebuilt. Same clock and "
          "ceiling as above.", "",
          *throughput_table("nested_products", res.get("nested_products", {}), "raw", "root docs/s", "doc"),
          *examples(res.get("nested_products", {})), *versus(res.get("nested_products", {})), ""]
    return L


def section(res):
    m = res["meta"]
    a = m["args"]
    busy = m["load"]["max"] > 1.5
    L = [BEGIN, "<!-- Written by `./dev bench` (scripts/bench/); edit the generator, not this section. -->", "",
         "## Side by side: `./dev bench`", ""]
    if m["quick"] or busy:
        what = "a quick run (`./dev bench --quick`: small sizes, one run of each)" if m["quick"] else "a run"
        L += [f"> **Caveat:** {what} on a **busy machine** (load average {m['load']['min']:.1f}–{m['load']['max']:.1f} "
              "on 2 cores from other sessions building and testing). These figures show that the harness works "
              "and roughly where the tools stand; they are not the quiet-machine figures, which `./dev bench` "
              "(3 runs, full sizes) on an idle machine replaces them with.", ""]
    L += [f"Measured {m['date']} at commit `{m['commit']}`{' (with uncommitted changes)' if m['dirty'] else ''} "
          f"on {m['machine']}; PostgreSQL {m['postgres']}, Elasticsearch {m['elasticsearch']} (the dev services), "
          f"PGSync {m['pgsync']} (PyPI) with Debian's redis-server. Took {m['seconds'] / 60:.1f} min. "
          f"Each figure is the median (min–max) of {a['runs']} run{'s' if a['runs'] > 1 else ''}.", "",
          "Every tool writes into a fresh index with the same settings (1 shard, 0 replicas, refresh 1 s) and the "
          "same explicit field types, from its own copy of the same database; the end state of every run is "
          "checked document by document against the table (values compared by meaning: `12.3` = `\"12.30\"`, "
          "timestamps as instants). CPU is user+system seconds of the tool's own processes (PGSync: `pgsync` and "
          "its Redis), of the PostgreSQL backends and walsenders serving the tool's database (sampled every 0.1 s, "
          "so a backend that ends between samples loses up to 0.1 s; the load generator's and the harness's "
          "connections are not counted), and of the whole "
          "Elasticsearch JVM (shared with other sessions' tests, so inflated on a busy machine). Peak RSS is the "
          "tool's (PGSync: `pgsync` + Redis).", ""]
    sw = res.get("sweep")
    if "snapshot" in res:
        L += [f"### {TITLES['snapshot']}: {a['snapshot_rows']:,} rows × 10 columns", "",
              "![snapshot](docs/bench/snapshot.png)", "",
              *throughput_table("snapshot", res["snapshot"], "raw"), *examples(res["snapshot"]),
              *versus(res["snapshot"]), ""]
        if sw:
            pts = ", ".join(f"{p['concurrency']}×{p['batch']}: {p['rate']:,.0f}/s" for p in sw["points"])
            L += [f"Raw `_bulk` sweep on {sw['docs']:,} documents (requests in flight × documents per request): "
                  f"{pts}; best {sw['best']['concurrency']}×{sw['best']['batch']}, used for every ceiling. "
                  f"Sluice: `sluice run` with `snapshot.mode = \"initial_only\"`, {a['readers']} readers. "
                  "PGSync: `bootstrap`, then one pass of `pgsync` (bootstrap time not counted).", ""]
    sizes = {"stream1": f"{a['stream1_tx']:,} single-row transactions (70% update, 20% insert, 10% delete)",
             "stream100": f"{a['stream100_tx']:,} transactions of ≈100 changes (70 updates, 20 inserts, 10 deletes)",
             "drain": f"{a['drain_tx']:,} single-row transactions committed while the tool was stopped"}
    for wl in ("stream1", "stream100", "drain"):
        if wl not in res:
            continue
        how = ("the tool running, pgbench writing as fast as the database takes it; clock from the first "
               "write until the last change is visible. No tool can stream faster than the writer writes, so "
               "the ratio is to the lower of the co-tenant ceiling and the writer's rate in the same run"
               if wl != "drain" else
               "clock from the tool's start until the last change is visible: the drain is the tool's alone")
        L += [f"### {TITLES[wl]}", "", f"![{wl}](docs/bench/{wl}.png)", "",
              f"{sizes[wl]}, on a table of {a['stream_rows']:,} rows; {how}.", "",
              *throughput_table(wl, res[wl], "ceiling"), *examples(res[wl]), *versus(res[wl]),
              *startup_note(res[wl]), *(writer_note(res[wl]) if wl != "drain" else []), ""]
    if "decode" in res:
        L += [f"### {TITLES['decode']}", "", "![decode](docs/bench/decode.png)", "",
              "The drain workload's WAL, read again through two more slots (same publication, proto 1): "
              "`pg_recvlogical` to /dev/null and Sluice's reader (examples/source_drain) into a null sink.", "",
              *decode_table(res["decode"]), ""]
    if "latency" in res:
        L += [f"### {TITLES['latency']}", "", "![latency](docs/bench/latency.png)", "",
              f"{a['latency_rate']:,} changes/s for {a['latency_seconds']} s (pgbench `-R`, single-row updates) of "
              f"which {a['probe_rate']}/s are timed: each timed change is committed, then polled with `_mget` "
              "(`realtime=false`, so only what a search sees counts) until visible. \"Indexed\" is when a "
              "real-time `_mget` first saw it: the tool's part; the rest is waiting for the index's refresh.", "",
              *latency_table(res["latency"]), *examples(res["latency"]), ""]
    if "nested" in res:
        L += nested_section(res)
    for name, err in res.get("failed", {}).items():
        L += [f"**The {name} workload failed in this run**: `{err}` (full log in the work directory).", ""]
    t = targets(res)
    if t:
        L += ["### Against the goals", "", *t, ""]
    L += ["PGSync notes: its Elasticsearch client (elasticsearch-py 7.17, pinned by PGSync 7.3) asks `GET /` "
          "before its first request (product check) and for `info()`; the integration-test Elasticsearch the "
          "dev services run does not serve `GET /`, so a `sitecustomize.py` in PGSync's virtualenv answers that "
          "one request locally with the server's real version. Nothing else is changed: PGSync runs with its "
          "documented defaults, configured through its environment variables and a schema.json naming the "
          "same table and the same 10 columns, and writes into the pre-created index (it keeps an existing "
          "index's settings). One setting differs from its defaults, as its documentation advises for read "
          "timeouts: `ELASTICSEARCH_TIMEOUT=60` (default 10 s, which a busy 2-core machine exceeded on its first "
          "bulk request). In the drain workload it is stopped with SIGTERM after its initial sync (its Redis and "
          "its checkpoint file stay) and started again with `--daemon` once the changes are committed. It adds a `_meta` field to every document (its own bookkeeping), which the "
          "end-state check leaves out.", "", END]
    return "\n".join(L) + "\n"


def merge(res, path):
    """A run of some workloads only (`--workloads`) replaces those
    workloads' results in the saved results and keeps every other figure, so
    BENCHMARKS.md never loses what it did not measure again. The page's
    header keeps describing the run the other figures come from; each
    workload run apart keeps its own date, commit and sizes in `metas`."""
    ran = res["meta"]["args"]["workloads"]
    if not os.path.exists(path):
        return res
    with open(path) as f:
        old = json.load(f)
    if not set(old["meta"]["args"]["workloads"]) - set(ran):
        return res
    keys = {k for wl in ran for k in KEYS.get(wl, [wl])}
    merged = {k: v for k, v in old.items() if k not in keys and k != "failed"}
    merged.update({k: v for k, v in res.items() if k in keys})
    failed = {k: v for k, v in old.get("failed", {}).items() if not any(k.startswith(wl) for wl in ran)}
    failed.update(res.get("failed", {}))
    if failed:
        merged["failed"] = failed
    merged["metas"] = {**old.get("metas", {}), **{wl: res["meta"] for wl in ran}}
    return merged


def write(res):
    os.makedirs(DOCS, exist_ok=True)
    path = os.path.join(DOCS, "results.json")
    ran = {k for wl in res["meta"]["args"]["workloads"] for k in KEYS.get(wl, [wl])}
    res = merge(json.loads(json.dumps(res)), path)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    import chart
    chart.draw(res, DOCS, only=ran)
    text = open(BENCHMARKS).read() if os.path.exists(BENCHMARKS) else "# Benchmarks\n"
    new = section(res)
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", lambda _: new, text, flags=re.S)
    elif "## Earlier measurements" in text:
        head, sep, rest = text.partition("## Earlier measurements")
        text = head + new + "\n" + sep + rest
    else:
        head, _, rest = text.partition("\n")
        text = head + "\n\n" + new + "\n" + rest.lstrip("\n")
    with open(BENCHMARKS, "w") as f:
        f.write(text)
