"""`./dev bench [--quick] [options]`: every workload, every tool and every
baseline in one invocation, then BENCHMARKS.md's generated section and the
charts under docs/bench/ (see scripts/bench.sh, which prepares the
virtualenvs and the builds and then runs this)."""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import report  # noqa: E402
import workloads as w  # noqa: E402
from common import ROOT, STATE, Env, Es, Proc, log  # noqa: E402
from tools import ensure_pgsync  # noqa: E402

WORKLOADS = ["snapshot", "stream1", "stream100", "drain", "latency", "nested"]

# Sizes: defaults fit a 2-core machine in about 30 minutes (and the nested
# workload about 7 more), --quick in about 5.
DEFAULTS = dict(runs=3, snapshot_rows=1_000_000, sweep_docs=200_000, stream_rows=50_000, stream1_tx=20_000,
                stream100_tx=200, drain_tx=20_000, latency_seconds=20, catchup_timeout=300,
                nested_orders=50_000, nested_items=3, nested_item_updates=5_000, nested_renames=100)
QUICK = dict(runs=1, snapshot_rows=100_000, sweep_docs=50_000, stream_rows=20_000, stream1_tx=5_000,
             stream100_tx=50, drain_tx=5_000, latency_seconds=10, catchup_timeout=120,
             nested_orders=20_000, nested_items=3, nested_item_updates=1_000, nested_renames=25)


def parse(argv):
    sizes = "\n".join(f"  {k.replace('_', '-'):18} {DEFAULTS[k]:>10,} {QUICK[k]:>10,}" for k in DEFAULTS)
    p = argparse.ArgumentParser(prog="./dev bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"sizes:             default    --quick\n{sizes}")
    p.add_argument("--quick", action="store_true", help="small sizes and one run of each (about 5 minutes)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}")
    p.add_argument("--tools", default="sluice,pgsync", help="tools besides the baselines: sluice,pgsync")
    p.add_argument("--runs", type=int, help="runs of each tool per workload (median and min-max of these)")
    p.add_argument("--snapshot-rows", type=int)
    p.add_argument("--sweep-docs", type=int, help="documents per point of the raw _bulk sweep")
    p.add_argument("--sweep-concurrency", default="2,4,8")
    p.add_argument("--sweep-batch", default="1000,5000")
    p.add_argument("--stream-rows", type=int, help="rows in the table the streaming workloads change")
    p.add_argument("--stream1-tx", type=int, help="single-row transactions (streaming)")
    p.add_argument("--stream100-tx", type=int, help="100-change transactions (streaming)")
    p.add_argument("--drain-tx", type=int, help="single-row transactions committed while the tool is stopped")
    p.add_argument("--latency-rate", type=int, default=1000, help="changes/s during the latency workload")
    p.add_argument("--latency-seconds", type=int)
    p.add_argument("--probe-rate", type=int, default=10, help="sampled (timed) changes per second")
    p.add_argument("--nested-orders", type=int, help="root documents (orders) of the nested workload")
    p.add_argument("--nested-items", type=int, help="items per order (each with its product)")
    p.add_argument("--nested-item-updates", type=int, help="single-row item updates, each in another order")
    p.add_argument("--nested-renames", type=int, help="single-row product renames (each fans out to its orders)")
    p.add_argument("--readers", type=int, default=4, help="Sluice's parallel snapshot readers")
    p.add_argument("--snapshot-timeout", type=int, default=1800, help="seconds a snapshot may take")
    p.add_argument("--catchup-timeout", type=int,
                   help="seconds a tool may take to show the last change before its run counts as unfinished")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md or docs/bench/")
    p.add_argument("--report-only", metavar="RESULTS_JSON", help="redraw tables and charts from saved results")
    a = p.parse_args(argv)
    for k, v in (QUICK if a.quick else DEFAULTS).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.workloads = [x for x in a.workloads.split(",") if x]
    bad = set(a.workloads) - set(WORKLOADS)
    if bad:
        p.error(f"unknown workloads {sorted(bad)}")
    a.tools = [x for x in a.tools.split(",") if x]
    a.sweep_concurrency = [int(x) for x in a.sweep_concurrency.split(",")]
    a.sweep_batch = [int(x) for x in a.sweep_batch.split(",")]
    return a


def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT).stdout.strip()


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} vCPUs ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}"


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def main(argv):
    a = parse(argv)
    if a.report_only:
        with open(a.report_only) as f:
            results = json.load(f)
        report.write(results)
        return
    env = Env()
    es_version = Es(env).request("GET", "/_nodes/_local?filter_path=nodes.*.version")["nodes"]
    es_version = next(iter(es_version.values()))["version"]
    pg_version = w.connect(env).execute("SHOW server_version").fetchone()[0]
    pgsync_version = ensure_pgsync() if "pgsync" in a.tools else None
    work = os.path.join(STATE, "bench-work", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(work)
    log(f"work directory {work} (logs of every process)")
    ctx = w.Ctx(env, a, work, es_version)
    w.cleanup(ctx)
    loads = [load()]
    started = time.monotonic()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": sh("git", "rev-parse", "--short", "HEAD"),
        "dirty": bool(sh("git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock")),
        "machine": machine(), "postgres": pg_version, "elasticsearch": es_version, "pgsync": pgsync_version,
        "quick": a.quick, "args": {k: v for k, v in vars(a).items() if k not in ("report_only",)},
    }
    plan = {"snapshot": lambda: w.snapshot(ctx),
            "stream1": lambda: w.stream(ctx, "stream1", "single", a.stream1_tx),
            "stream100": lambda: w.stream(ctx, "stream100", "hundred", a.stream100_tx),
            "drain": lambda: w.drain(ctx),
            "latency": lambda: w.latency(ctx),
            "nested": lambda: w.nested(ctx)}
    durations = {}
    try:
        for name in WORKLOADS:
            if name in a.workloads:
                log(f"== {name} (load average {load():.1f})")
                t0 = time.monotonic()
                try:
                    plan[name]()
                except Exception as e:  # noqa: BLE001 - one failed workload must not lose the others
                    log(f"{name} FAILED: {e!r}\n{traceback.format_exc()}")
                    ctx.results.setdefault("failed", {})[name] = repr(e)[:500]
                    Proc.stop_all()
                durations[name] = time.monotonic() - t0
                loads.append(load())
    finally:
        Proc.stop_all()
        w.cleanup(ctx)
    meta["seconds"] = time.monotonic() - started
    meta["workload_seconds"] = durations
    meta["load"] = {"min": min(loads), "max": max(loads)}
    results = {"meta": meta, **ctx.results}
    path = os.path.join(work, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    log(f"results in {path}; took {meta['seconds'] / 60:.1f} min")
    if not a.no_write:
        report.write(results)


if __name__ == "__main__":
    main(sys.argv[1:])
