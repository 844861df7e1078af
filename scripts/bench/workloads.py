"""The workloads: snapshot, streaming single-row and 100-change
transactions, backlog drain (with decode), latency at a fixed rate, and
nested documents (snapshot and child-change fan-out). Each run of each tool gets a fresh copy of the
template database and a fresh index with the same body, so no tool sees
another's slot, triggers or documents.

Every workload ends with the end-state check (all documents against all
rows). Streaming workloads end with one more change, to the sentinel row,
committed after the load; the tool is done when that change is visible
(GET, real time). The tools apply a table's changes in commit order, so
the sentinel comes last; the end-state check then says whether everything
before it arrived too.
"""

import itertools
import os
import threading
import time

import nested_data as nd
from common import HZ, Es, Phase, Proc, connect, hwm_kib, log, reset_hwm, ticks, wait_until
from data import (INDEX_BODY, PROBES, SENTINEL, TABLE, bodies, copy_db, create_slots,
                  decoded_changes, drop_db, make_template, pgbench, row_count, set_sentinel, snapshot_docs)
from tools import PgSync, Sluice, pg_recvlogical, raw_bulk, source_drain
from verify import compare, compare_nested

_marker = itertools.count(1)


def marker():
    return -(int(time.time()) % 1000000) * 1000000 - next(_marker)


class Ctx:
    def __init__(self, env, args, work, es_version):
        self.env, self.args, self.work, self.es_version = env, args, work, es_version
        self.es = Es(env)
        self.results = {}
        self.best = {"concurrency": 4, "batch": 5000}
        self.stream_tpl = None
        self.base_docs = None

    def tools(self):
        return [t for t in ("sluice", "pgsync") if t in self.args.tools]

    def rundir(self, *parts):
        d = os.path.join(self.work, *parts)
        os.makedirs(d, exist_ok=True)
        return d

    def record(self, workload, tool, run):
        self.results.setdefault(workload, {}).setdefault(tool, []).append(run)
        log(f"{workload} {tool}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in run.items()
            if k not in ("samples", "indexed", "check", "examples")))


def check(env, db, index, settle_s=30, cmp=compare):
    """End state, checked again every 2 s for up to `settle_s` if it is not
    exact at first (a tool that applies changes out of order may still be
    at work when the sentinel shows; the report says how long it took).
    `cmp(env, db, index)` compares (default: the bench table's rows)."""
    t0 = time.monotonic()
    while True:
        at = time.monotonic() - t0
        res = cmp(env, db, index)
        res["settled_after_s"] = round(at, 1) if res["exact"] else None
        if res["exact"] or time.monotonic() - t0 > settle_s:
            return res
        time.sleep(2)


def caught_up(ctx, tool, index, mark, writer_s):
    """Waits for the sentinel change; False if the tool did not get there
    within --catchup-timeout after the writer finished (the run is then
    reported as unfinished, with the rate it had so far as an upper bound)."""
    try:
        wait_until(sentinel_visible(ctx.es, index, mark), ctx.args.catchup_timeout,
                   f"{tool.name} to catch up", alive=lambda: bool(tool.processes()))
        return True
    except TimeoutError:
        log(f"{tool.name} did not catch up within {ctx.args.catchup_timeout} s; stopping it")
        return False


def unfinished(ctx, writer_s):
    return {"exact": False, "missing": None, "extra": None, "differ": None, "rows": None, "settled_after_s": None,
            "examples": [f"did not show the last change within {ctx.args.catchup_timeout} s"], "timed_out": True}


def done_rate(changes, seconds, res):
    """Changes per second until the tool was done: at the sentinel, or when
    the end state became exact if that came later (to within one check)."""
    return changes / (seconds + (res["settled_after_s"] or 0))


def counts(res):
    return {k: res[k] for k in ("missing", "extra", "differ", "rows", "examples", "settled_after_s")}


def summary_of(res):
    if res.get("timed_out"):
        return res["examples"][0]
    if res["exact"]:
        return "exact" + (f" ({res['settled_after_s']} s after the last change showed)"
                          if res["settled_after_s"] else "")
    return (f"NOT exact: {res['missing']} missing, {res['extra']} extra, {res['differ']} differ "
            f"of {res['rows']} rows; e.g. {'; '.join(res['examples'])}")


# ---- snapshot ------------------------------------------------------------------
def snapshot(ctx):
    env, a, es = ctx.env, ctx.args, ctx.es
    tpl = "sb_tpl_snap"
    make_template(env, tpl, a.snapshot_rows)
    docs = snapshot_docs(env, tpl)
    n = len(docs)
    index = "sluice-bench-snap"
    # The raw loader's best concurrency and batch size, on a slice.
    sweep_docs = docs[:min(n, a.sweep_docs)]
    sweep = []
    for conc in a.sweep_concurrency:
        for batch in a.sweep_batch:
            es.create_index(index, INDEX_BODY)
            secs = raw_bulk(env, bodies(sweep_docs, batch, index), conc)
            es.refresh(index)
            sweep.append({"concurrency": conc, "batch": batch, "rate": len(sweep_docs) / secs})
            log(f"sweep: {conc} in flight x {batch} docs: {len(sweep_docs) / secs:,.0f} docs/s")
    best = max(sweep, key=lambda s: s["rate"])
    ctx.best = {"concurrency": best["concurrency"], "batch": best["batch"]}
    ctx.results["sweep"] = {"docs": len(sweep_docs), "points": sweep, "best": ctx.best}
    raw_bodies = bodies(docs, best["batch"], index)
    for run in range(a.runs):
        es.create_index(index, INDEX_BODY)
        with Phase(env) as ph:
            raw_bulk(env, raw_bodies, best["concurrency"])
            es.refresh(index)
        ok = es.count(index) == n
        ctx.record("snapshot", "raw", {"rate": n / ph.seconds, "seconds": ph.seconds, "changes": n,
                                       "es_cpu": ph.es_cpu, "exact": ok})
        for tool in ctx.tools():
            snapshot_tool(ctx, tool, tpl, n, run)
    es.delete_index(index)
    drop_db(env, tpl)


def snapshot_tool(ctx, tool, tpl, n, run):
    env, es = ctx.env, ctx.es
    db, index = f"sb_snap_{tool}", f"sluice-bench-snap-{tool}"
    work = ctx.rundir("snapshot", f"{tool}-{run}")
    copy_db(env, tpl, db)
    es.create_index(index, INDEX_BODY)
    extra = {}
    if tool == "sluice":
        t = Sluice(env, work, db, index, slot=f"sb_snap_{run}_{os.getpid()}", mode="initial_only",
                   readers=ctx.args.readers)
        with Phase(env, db) as ph:
            p = t.start()
            rc = p.wait(ctx.args.snapshot_timeout)
            es.refresh(index)
        procs_cpu, rss = p.cpu_s, p.rss_mib
    else:
        t = PgSync(env, work, db, index, ctx.es_version)
        b = t.bootstrap()
        extra = {"bootstrap_s": time.monotonic() - b.started, "bootstrap_cpu": b.cpu_s}
        with Phase(env, db) as ph:
            p = t.one_pass()
            rc = p.wait(ctx.args.snapshot_timeout)
            es.refresh(index)
        procs_cpu, rss = p.cpu_s, p.rss_mib
        t.stop()
    if rc is None:
        log(f"{tool} snapshot unfinished after {ctx.args.snapshot_timeout} s; stopping it")
        p.stop()
        res = {**unfinished(ctx, 0), "examples": [f"unfinished after {ctx.args.snapshot_timeout} s"]}
    elif rc != 0:
        raise RuntimeError(f"{tool} snapshot exited {rc}:\n{p.tail()}")
    else:
        res = check(env, db, index, settle_s=0)
    ctx.record("snapshot", tool, {"rate": n / ph.seconds, "seconds": ph.seconds, "changes": n,
                                  "tool_cpu": procs_cpu, "pg_cpu": ph.pg_cpu, "es_cpu": ph.es_cpu,
                                  "rss_mib": rss, "exact": res["exact"], "check": summary_of(res), **counts(res),
                                  "extra_fields": res["extra_fields"], **extra})
    es.delete_index(index)
    drop_db(env, db)


# ---- streaming -------------------------------------------------------------------
def stream_template(ctx):
    if ctx.stream_tpl is None:
        ctx.stream_tpl = "sb_tpl_stream"
        make_template(ctx.env, ctx.stream_tpl, ctx.args.stream_rows)
        ctx.base_docs = snapshot_docs(ctx.env, ctx.stream_tpl)
    return ctx.stream_tpl


def sentinel_visible(es, index, mark):
    def pred():
        src = es.get_source(index, SENTINEL)
        return src is not None and src.get("counter") == mark
    return pred


def start_synced(ctx, tool, db, index, work, tag):
    """Starts `tool` on `db` and returns it once it has the table's rows and
    streams live changes (a sentinel change went through)."""
    env, es = ctx.env, ctx.es
    es.create_index(index, INDEX_BODY)
    if tool == "sluice":
        t = Sluice(env, work, db, index, slot=f"sb_{tag}_{os.getpid()}", mode="initial", readers=ctx.args.readers)
    else:
        t = PgSync(env, work, db, index, ctx.es_version)
        t.bootstrap()
    p = t.start()
    rows = row_count(env, db)

    def synced():
        es.refresh(index)
        return es.count(index) >= rows
    wait_until(synced, 1800, f"{tool} to copy {rows} rows", interval=0.5, alive=p.alive)
    mark = marker()
    set_sentinel(env, db, mark)
    wait_until(sentinel_visible(es, index, mark), 300, f"{tool} to stream", alive=p.alive)
    return t


class Usage:
    """CPU ticks and peak RSS of a running tool's processes across a phase."""

    def __init__(self, tool):
        self.tool = tool
        self.pids = tool.processes()
        for pid in self.pids:
            reset_hwm(pid)
        self.t0 = {pid: ticks(pid) for pid in self.pids}

    def read(self, fresh=False):
        pids = self.tool.processes()
        cpu = sum(ticks(p) - (0 if fresh and p not in self.t0 else self.t0.get(p, 0)) for p in pids) / HZ
        return cpu, sum(hwm_kib(p) for p in pids) / 1024


def co_tenant_ceiling(ctx, db, docs, end_lsn, slot, run, workload):
    """The same changes as raw `_bulk` (pre-rendered, best concurrency and
    batch) while pg_recvlogical drains the same WAL: the walsender's CPU is
    charged to the ceiling, as it is to the tools."""
    env, es = ctx.env, ctx.es
    index = "sluice-bench-ceiling"
    es.create_index(index, INDEX_BODY)
    raw_bulk(env, bodies(ctx.base_docs, 5000, index), 4)
    es.refresh(index)
    b = bodies(docs, ctx.best["batch"], index)
    work = ctx.rundir(workload, f"ceiling-{run}")
    with Phase(env, db) as ph:
        recv = pg_recvlogical(env, db, slot, end_lsn, os.path.join(work, "recvlogical.log"))
        bulk_s = raw_bulk(env, b, ctx.best["concurrency"])
        recv.wait(600)
        recv_s = time.monotonic() - recv.started
    secs = max(bulk_s, recv_s)
    es.delete_index(index)
    ctx.record(workload, "ceiling", {"rate": len(docs) / secs, "seconds": secs, "changes": len(docs),
                                     "bulk_s": bulk_s, "recvlogical_s": recv_s, "recvlogical_cpu": recv.cpu_s,
                                     "pg_cpu": ph.pg_cpu, "es_cpu": ph.es_cpu})


def stream(ctx, workload, script, transactions):
    tpl = stream_template(ctx)
    for run in range(ctx.args.runs):
        for tool in ctx.tools():
            stream_tool(ctx, workload, script, transactions, tool, tpl, run)


def stream_tool(ctx, workload, script, transactions, tool, tpl, run):
    env, es = ctx.env, ctx.es
    db, index = f"sb_{workload}_{tool}", f"sluice-bench-{workload}-{tool}"
    work = ctx.rundir(workload, f"{tool}-{run}")
    copy_db(env, tpl, db)
    t = start_synced(ctx, tool, db, index, work, f"{workload}_{run}")
    ceiling = tool == ctx.tools()[0]
    create_slots(env, db, pgoutput=("bench_ceil",) if ceiling else ())
    use = Usage(t)
    with Phase(env, db) as ph:
        w_s, _ = pgbench(env, db, script, ctx.args.stream_rows, work, transactions=transactions)
        mark = marker()
        end_lsn = set_sentinel(env, db, mark)
        finished = caught_up(ctx, t, index, mark, w_s)
    cpu, rss = use.read()
    changes, docs = decoded_changes(env, db, render=ceiling)
    res = check(env, db, index) if finished else unfinished(ctx, w_s)
    t.stop()
    ctx.record(workload, tool, {"rate": done_rate(changes, ph.seconds, res), "seconds": ph.seconds,
                                "rate_at_sentinel": changes / ph.seconds, "changes": changes,
                                "writer_rate": changes / w_s, "lag_after_writer_s": ph.seconds - w_s,
                                "tool_cpu": cpu, "pg_cpu": ph.pg_cpu, "es_cpu": ph.es_cpu, "rss_mib": rss,
                                "exact": res["exact"], "check": summary_of(res), **counts(res)})
    if ceiling:
        co_tenant_ceiling(ctx, db, docs, end_lsn, "bench_ceil", run, workload)
    es.delete_index(index)
    drop_db(env, db)


# ---- backlog drain and decode -----------------------------------------------------
def drain(ctx):
    tpl = stream_template(ctx)
    for run in range(ctx.args.runs):
        for tool in ctx.tools():
            drain_tool(ctx, tool, tpl, run)


def drain_tool(ctx, tool, tpl, run):
    env, es = ctx.env, ctx.es
    db, index = f"sb_drain_{tool}", f"sluice-bench-drain-{tool}"
    work = ctx.rundir("drain", f"{tool}-{run}")
    copy_db(env, tpl, db)
    t = start_synced(ctx, tool, db, index, work, f"drain_{run}")
    # Stopped: the changes below pile up in the slot (PGSync: also in its
    # trigger notifications, which nobody receives; its restart catches up
    # from its checkpoint, as documented).
    if tool == "pgsync":
        t.stop(redis=False)
    else:
        t.stop()
    first = tool == ctx.tools()[0]
    create_slots(env, db, pgoutput=("bench_ceil", "bench_dec_recv", "bench_dec_sluice") if first else ())
    w_s, _ = pgbench(env, db, "single", ctx.args.stream_rows, work, transactions=ctx.args.drain_tx)
    mark = marker()
    end_lsn = set_sentinel(env, db, mark)
    use = Usage(t)
    startup = None
    with Phase(env, db) as ph:
        t.start()
        if tool == "sluice":
            # Start-up (process start until its slot is in use), reported apart.
            wait_until(t.streaming, 120, "sluice's slot to be active", interval=0.01, alive=t.proc.alive)
            startup = time.monotonic() - ph.t0
        finished = caught_up(ctx, t, index, mark, 0)
    cpu, rss = use.read(fresh=True)
    changes, docs = decoded_changes(env, db, render=first)
    res = check(env, db, index) if finished else unfinished(ctx, 0)
    t.stop()
    ctx.record("drain", tool, {"rate": done_rate(changes, ph.seconds, res), "seconds": ph.seconds,
                               "rate_at_sentinel": changes / ph.seconds, "changes": changes, "startup_s": startup,
                               "writer_rate": changes / w_s, "tool_cpu": cpu, "pg_cpu": ph.pg_cpu,
                               "es_cpu": ph.es_cpu, "rss_mib": rss, "exact": res["exact"],
                               "check": summary_of(res), **counts(res)})
    if first:
        decode(ctx, db, changes, end_lsn, run)
        co_tenant_ceiling(ctx, db, docs, end_lsn, "bench_ceil", run, "drain")
    es.delete_index(index)
    drop_db(env, db)


def decode(ctx, db, changes, end_lsn, run):
    """pg_recvlogical and Sluice's reader (null sink) over the same WAL, each
    through its own slot; who reads first alternates between runs."""
    env = ctx.env
    work = ctx.rundir("decode", f"run-{run}")
    order = [("pg_recvlogical", pg_recvlogical, "bench_dec_recv"), ("sluice", source_drain, "bench_dec_sluice")]
    for name, fn, slot in (order if run % 2 == 0 else order[::-1]):
        with Phase(env, db) as ph:
            p = fn(env, db, slot, end_lsn, os.path.join(work, f"{name}.log"))
            rc = p.wait(900)
        if rc != 0:
            raise RuntimeError(f"{name} exited {rc}:\n{p.tail()}")
        ctx.record("decode", name, {"rate": changes / ph.seconds, "seconds": ph.seconds, "changes": changes,
                                    "tool_cpu": p.cpu_s, "pg_cpu": ph.pg_cpu, "rss_mib": p.rss_mib})


# ---- latency -------------------------------------------------------------------
class Probes:
    """Commits a change to one probe row every 1/rate s and polls (`_mget`,
    realtime=false: what a search sees) until each is visible."""

    def __init__(self, env, db, index, rate):
        self.env, self.db, self.index, self.rate = env, db, index, rate
        self.pending, self.samples, self.indexed = {}, [], []
        self.lock = threading.Lock()
        self.stop_ev, self.done_ev = threading.Event(), threading.Event()

    def writer(self):
        ids = itertools.cycle(range(1, PROBES + 1))
        with connect(self.env, self.db) as c:
            nxt = time.monotonic()
            while not self.stop_ev.is_set():
                pid, mark = next(ids), marker()
                c.execute(f"UPDATE {TABLE} SET counter = %s WHERE id = %s", (mark, pid))
                with self.lock:
                    self.pending[pid] = [mark, time.monotonic(), None]
                nxt += 1 / self.rate
                time.sleep(max(0, nxt - time.monotonic()))

    def poller(self):
        """Two views of each timed change: when a real-time GET first sees it
        (the tool has delivered it), and when a search does (after the
        index's refresh): the difference is Elasticsearch's, not the tool's."""
        es = Es(self.env)
        while not (self.done_ev.is_set() and not self.pending):
            with self.lock:
                unseen = [i for i, p in self.pending.items() if p[2] is None]
                ids = list(self.pending)
            for realtime, batch in (("true", unseen), ("false", ids)):
                if not batch:
                    continue
                r = es.request("POST", f"/{self.index}/_mget?realtime={realtime}&_source_includes=counter",
                               {"ids": [str(i) for i in batch]})
                now = time.monotonic()
                with self.lock:
                    for d in r["docs"]:
                        pid = int(d["_id"])
                        want = self.pending.get(pid)
                        if not (want and d.get("found") and d["_source"].get("counter") == want[0]):
                            continue
                        if realtime == "true":
                            want[2] = now
                        else:
                            self.indexed.append(((want[2] or now) - want[1]) * 1000)
                            self.samples.append((now - want[1]) * 1000)
                            del self.pending[pid]
            time.sleep(0.005)

    def run(self, seconds_fn):
        tw, tp = threading.Thread(target=self.writer), threading.Thread(target=self.poller)
        tw.start()
        tp.start()
        try:
            seconds_fn()
        finally:
            self.stop_ev.set()
            tw.join()
            deadline = time.monotonic() + 30
            while self.pending and time.monotonic() < deadline:
                time.sleep(0.05)
            lost = len(self.pending)
            self.pending.clear()
            self.done_ev.set()
            tp.join()
        return lost


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else None


def latency(ctx):
    tpl = stream_template(ctx)
    a = ctx.args
    for run in range(a.runs):
        for tool in ctx.tools():
            env, es = ctx.env, ctx.es
            db, index = f"sb_latency_{tool}", f"sluice-bench-latency-{tool}"
            work = ctx.rundir("latency", f"{tool}-{run}")
            copy_db(env, tpl, db)
            t = start_synced(ctx, tool, db, index, work, f"latency_{run}")
            create_slots(env, db)
            use = Usage(t)
            probes = Probes(env, db, index, a.probe_rate)
            with Phase(env, db) as ph:
                lost = probes.run(lambda: pgbench(env, db, "updates", a.stream_rows, work,
                                                  rate=a.latency_rate - a.probe_rate, seconds=a.latency_seconds))
            cpu, rss = use.read()
            changes, _ = decoded_changes(env, db, render=False)
            res = check(env, db, index)
            t.stop()
            s = probes.samples
            ix = probes.indexed
            ctx.record("latency", tool, {"p50": pct(s, 50), "p95": pct(s, 95), "p99": pct(s, 99),
                                         "indexed_p50": pct(ix, 50), "indexed_p99": pct(ix, 99), "indexed": ix,
                                         "max": max(s) if s else None, "probes": len(s), "lost": lost,
                                         "rate": changes / ph.seconds, "changes": changes, "tool_cpu": cpu,
                                         "pg_cpu": ph.pg_cpu, "es_cpu": ph.es_cpu, "rss_mib": rss,
                                         "exact": res["exact"], "check": summary_of(res), **counts(res), "samples": s})
            es.delete_index(index)
            drop_db(env, db)


# ---- nested documents (issue 12) ----------------------------------------------------
def nested(ctx):
    """One order document built from four tables (customer{}, items[] →
    product{}; scripts/bench/nested_data.py), four measures per run:
    the snapshot (root documents/s, against raw `_bulk` of the same
    documents rendered by SQL), then with the tool streaming, child changes
    (one item of each of N orders: one root each; in single-row and in
    100-row transactions) and many-to-one fan-out (R products renamed:
    every order with an item of one), in root documents
    rebuilt per second until the index shows them all, against raw `_bulk`
    of the same rebuilt documents. Every phase ends with the whole index
    compared with the documents SQL builds."""
    env, a, es = ctx.env, ctx.args, ctx.es
    tpl = "sb_tpl_nested"
    nd.make_template(env, tpl, a.nested_orders, a.nested_items)
    docs = nd.bulk_docs(env, tpl)
    n = len(docs)
    raw_index = "sluice-bench-nested-raw"
    # The raw loader's best concurrency and batch for these (larger) documents.
    sweep_docs = docs[:min(n, a.sweep_docs, 50_000)]
    sweep = []
    for conc in a.sweep_concurrency:
        for batch in a.sweep_batch:
            es.create_index(raw_index, nd.INDEX_BODY)
            secs = raw_bulk(env, bodies(sweep_docs, batch, raw_index), conc)
            sweep.append({"concurrency": conc, "batch": batch, "rate": len(sweep_docs) / secs})
            log(f"nested sweep: {conc} in flight x {batch} docs: {len(sweep_docs) / secs:,.0f} docs/s")
    best = max(sweep, key=lambda s: s["rate"])
    best = {"concurrency": best["concurrency"], "batch": best["batch"]}
    ctx.results["nested"] = {"orders": n, "items_per_order": a.nested_items, **nd.sizes(a.nested_orders),
                             "item_updates": a.nested_item_updates, "renames": a.nested_renames,
                             "sweep": {"docs": len(sweep_docs), "points": sweep, "best": best},
                             "doc_bytes": sum(len(d) for _, d in docs) / n}
    raw_bodies = bodies(docs, best["batch"], raw_index)
    del docs
    for run in range(a.runs):
        es.create_index(raw_index, nd.INDEX_BODY)
        with Phase(env) as ph:
            raw_bulk(env, raw_bodies, best["concurrency"])
            es.refresh(raw_index)
        ctx.record("nested_snapshot", "raw", {"rate": n / ph.seconds, "seconds": ph.seconds, "changes": n,
                                              "es_cpu": ph.es_cpu, "exact": es.count(raw_index) == n})
        for tool in ctx.tools():
            try:
                nested_tool(ctx, tool, tpl, n, run, raw_index, best)
            except Exception as e:  # noqa: BLE001 - one tool's failure must not lose the other's runs
                log(f"nested {tool} run {run} FAILED: {e!r}")
                ctx.results.setdefault("failed", {})[f"nested ({tool}, run {run + 1})"] = repr(e)[:500]
                Proc.stop_all()
                drop_db(env, f"sb_nested_{tool}")
        es.delete_index(raw_index)
    drop_db(env, tpl)


def nested_cmp(unordered):
    """PGSync has no array order (its json_agg has no ORDER BY), so its
    arrays are compared as sets of elements by id; Sluice's as written
    (`order_by = ["id"]`)."""
    return lambda env, db, index: compare_nested(env, nd.expected_docs(env, db), index, unordered=unordered)


def nested_tool(ctx, tool, tpl, n, run, raw_index, best):
    env, es, a = ctx.env, ctx.es, ctx.args
    db, index = f"sb_nested_{tool}", f"sluice-bench-nested-{tool}"
    work = ctx.rundir("nested", f"{tool}-{run}")
    copy_db(env, tpl, db)
    es.create_index(index, nd.INDEX_BODY)
    cmp = nested_cmp(unordered=tool == "pgsync")
    slot = f"sb_nested_{run}_{os.getpid()}"
    extra = {}
    if tool == "sluice":
        t = Sluice(env, work, db, index, slot=slot, mode="initial_only", readers=a.readers,
                   mapping=nd.sluice_mapping(index))
        with Phase(env, db) as ph:
            p = t.start()
            rc = p.wait(a.snapshot_timeout)
            es.refresh(index)
    else:
        t = PgSync(env, work, db, index, ctx.es_version, nodes=nd.pgsync_nodes())
        b = t.bootstrap()
        extra = {"bootstrap_s": time.monotonic() - b.started, "bootstrap_cpu": b.cpu_s}
        with Phase(env, db) as ph:
            p = t.one_pass()
            rc = p.wait(a.snapshot_timeout)
            es.refresh(index)
    if rc is None:
        p.stop()
        raise RuntimeError(f"{tool} snapshot unfinished after {a.snapshot_timeout} s")
    if rc != 0:
        raise RuntimeError(f"{tool} snapshot exited {rc}:\n{p.tail()}")
    res = check(env, db, index, settle_s=0, cmp=cmp)
    ctx.record("nested_snapshot", tool, {"rate": n / ph.seconds, "seconds": ph.seconds, "changes": n,
                                         "tool_cpu": p.cpu_s, "pg_cpu": ph.pg_cpu, "es_cpu": ph.es_cpu,
                                         "rss_mib": p.rss_mib, "exact": res["exact"], "check": summary_of(res),
                                         **counts(res), "extra_fields": res["extra_fields"], **extra})
    # Streaming: Sluice from the slot its snapshot left, PGSync `--daemon`
    # from its checkpoint; both shown streaming by a change to order 0.
    if tool == "sluice":
        t = Sluice(env, work, db, index, slot=slot, mode="initial", readers=a.readers,
                   mapping=nd.sluice_mapping(index))
    p = t.start()
    # Twice, a few seconds apart: PGSync reads its slot once at start, then
    # listens to its triggers; a change committed between the two was lost in
    # a trial run, and that start-up race is not what this workload measures.
    for pause in (0, 3):
        time.sleep(pause)
        mark = marker()
        nd.set_sentinel(env, db, mark)
        wait_until(sentinel_visible(es, index, mark), 300, f"{tool} to stream", alive=p.alive)
    ceiling = tool == ctx.tools()[0]
    try:
        for phase, version in (("items", 2), ("items100", 3), ("products", 4)):
            fanout(ctx, t, tool, db, index, run, phase, cmp, raw_index if ceiling else None, best, version)
    finally:
        t.stop()
    es.delete_index(index)
    drop_db(env, db)


def fanout(ctx, t, tool, db, index, run, phase, cmp, raw_index, best, version):
    """One burst of transactions to a joined table while `t`
    streams; done when a search (after a refresh) finds every root
    document they touch changed; then the whole index is compared. The rate counts root
    documents, each once however many of its rows changed."""
    env, es, a = ctx.env, ctx.es, ctx.args
    tag = f"{run}{tool[0]}"
    use = Usage(t)
    with Phase(env, db) as ph:
        if phase.startswith("items"):
            # Single-row transactions, then transactions of 100 items (of
            # other orders, adding more, so each phase has its own marks).
            per_tx, add = (1, 1000) if phase == "items" else (100, 10000)
            w_s, roots = nd.item_updates(env, db, a.nested_orders, a.nested_items, a.nested_item_updates,
                                         per_tx=per_tx, add=add, shift=per_tx > 1)
            query, (where, params) = nd.items_done_query(add), nd.items_changed_where(add)
            writes = roots
        else:
            w_s, roots = nd.product_renames(env, db, a.nested_orders, a.nested_renames, tag)
            query, (where, params) = nd.products_done_query(tag), nd.products_changed_where(tag)
            writes = min(a.nested_renames, nd.sizes(a.nested_orders)["products"])

        def shown():
            # Refreshed first: visible in search, without waiting out the
            # index's 1 s refresh interval (the ceiling is timed the same way).
            es.refresh(index)
            return es.request("POST", f"/{index}/_count", query)["count"] >= roots
        try:
            wait_until(shown, a.catchup_timeout, f"{tool} to rebuild {roots} documents", interval=0.25,
                       alive=lambda: bool(t.processes()))
            finished = True
        except TimeoutError:
            log(f"{tool} did not rebuild every document within {a.catchup_timeout} s")
            finished = False
    cpu, rss = use.read()
    res = check(env, db, index, cmp=cmp) if finished else unfinished(ctx, w_s)
    ctx.record(f"nested_{phase}", tool, {"rate": done_rate(roots, ph.seconds, res), "seconds": ph.seconds,
                                         "rate_at_sentinel": roots / ph.seconds, "changes": roots, "writes": writes,
                                         "writer_rate": roots / w_s, "lag_after_writer_s": ph.seconds - w_s,
                                         "tool_cpu": cpu, "pg_cpu": ph.pg_cpu, "es_cpu": ph.es_cpu, "rss_mib": rss,
                                         "exact": res["exact"], "check": summary_of(res), **counts(res)})
    if raw_index:
        # The same rebuilt documents (as SQL renders them now) onto the raw
        # snapshot's index: updates of existing documents, as the tools did.
        docs = nd.bulk_docs(env, db, version=version, where=where, params=params)
        b = bodies(docs, best["batch"], raw_index)
        with Phase(env) as ph:
            raw_bulk(env, b, best["concurrency"])
            es.refresh(raw_index)
        secs = ph.seconds
        ctx.record(f"nested_{phase}", "raw", {"rate": len(docs) / secs, "seconds": secs, "changes": len(docs),
                                                  "es_cpu": ph.es_cpu})


def cleanup(ctx):
    """Drops every database and index the harness made (`sb_*`,
    `sluice-bench-*`), also those a failed run left behind."""
    with connect(ctx.env) as c:
        dbs = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'sb\\_%'").fetchall()]
    for db in dbs:
        drop_db(ctx.env, db)
    ctx.es.request("DELETE", "/sluice-bench-*?ignore_unavailable=true&expand_wildcards=all", ok=(200, 404))
