"""One PNG per workload from the results: throughput per tool (median bar,
min-max whisker, ratio to the workload's ceiling written on the bar), and
for latency the p50/p95/p99 per tool next to the distribution of every
timed change (CDF)."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import ratios, summary  # noqa: E402

COLORS = {"raw": "#9e9e9e", "ceiling": "#9e9e9e", "pg_recvlogical": "#9e9e9e", "sluice": "#1f77b4",
          "pgsync": "#ff7f0e"}
LABELS = {"raw": "raw _bulk", "ceiling": "co-tenant ceiling", "pg_recvlogical": "pg_recvlogical",
          "sluice": "Sluice", "pgsync": "PGSync"}
TITLES = {"snapshot": "Snapshot", "stream1": "Streaming, single-row transactions",
          "stream100": "Streaming, 100-change transactions", "drain": "Backlog drain, single-row transactions",
          "decode": "Decode (null sink)", "nested_snapshot": "Nested documents: snapshot",
          "nested_items": "Nested documents: child changes (one item in each of N orders), single-row transactions",
          "nested_items100": "Nested documents: child changes, 100-row transactions",
          "nested_products": "Nested documents: fan-out (products renamed, every order with one rebuilt)"}
BASE = {"snapshot": "raw", "stream1": "ceiling", "stream100": "ceiling", "drain": "ceiling",
        "decode": "pg_recvlogical", "nested_snapshot": "raw", "nested_items": "raw", "nested_items100": "raw",
        "nested_products": "raw"}
UNITS = {"snapshot": "rows/s", "nested_snapshot": "root documents/s", "nested_items": "root documents/s",
         "nested_items100": "root documents/s",
         "nested_products": "root documents/s"}


def caveat(meta):
    runs = meta["args"]["runs"]
    s = f"{meta['date']}, commit {meta['commit']}, median of {runs} run{'s' if runs > 1 else ''}"
    if meta["quick"] or meta["load"]["max"] > 1.5:
        s += f"\n{'QUICK RUN, ' if meta['quick'] else ''}BUSY MACHINE (load average up to {meta['load']['max']:.0f} on 2 cores)"
    return s


def throughput(wl, data, meta, path):
    base = BASE[wl]
    tools = [t for t in (base, "sluice", "pgsync") if data.get(t)]
    if wl == "decode":
        tools = [t for t in (base, "sluice") if data.get(t)]
    meds, lo, hi = [], [], []
    for t in tools:
        s = summary([r["rate"] for r in data[t]])
        meds.append(s["median"])
        lo.append(s["median"] - s["min"])
        hi.append(s["max"] - s["median"])
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.75 * len(tools)))
    y = range(len(tools))
    several = any(len(data[t]) > 1 for t in tools)
    ax.barh(y, meds, xerr=[lo, hi] if several else None, color=[COLORS[t] for t in tools], capsize=4)
    ax.set_yticks(list(y), [LABELS[t] if not (wl == "decode" and t == "sluice") else "Sluice reader" for t in tools])
    ax.invert_yaxis()
    ax.set_xlabel(UNITS.get(wl, "changes/s"))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    for i, (t, m) in enumerate(zip(tools, meds)):
        txt = f" {m:,.0f}"
        r = ratios(data[t], data.get(base)) if t != base else None
        if r:
            txt += f"  ({r['median']:.2f}× ceiling)"
        bad = sum(1 for run in data[t] if run.get("exact") is False)
        if bad:
            txt += f"  END STATE NOT EXACT ({bad}/{len(data[t])})"
        ax.text(m, i, txt, va="center", ha="left", fontsize=9, color="#d62728" if bad else "black")
    ax.set_xlim(0, max(m + h for m, h in zip(meds, hi)) * 1.6)
    ax.set_title(f"{TITLES[wl]}\n{caveat(meta)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency(data, meta, path):
    tools = [t for t in ("sluice", "pgsync") if data.get(t)]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(tools))
    for i, t in enumerate(tools):
        vals = [summary([r[p] for r in data[t]]) for p in ("p50", "p95", "p99")]
        xs = [j + i * width for j in range(3)]
        err = [[v["median"] - v["min"] for v in vals], [v["max"] - v["median"] for v in vals]]
        a1.bar(xs, [v["median"] for v in vals], width, color=COLORS[t], label=LABELS[t],
               yerr=err if len(data[t]) > 1 else None, capsize=3)
        for x, v in zip(xs, vals):
            a1.text(x, v["median"], f"{v['median']:,.0f}", ha="center", va="bottom", fontsize=8)
        for key, style, suffix in (("samples", "-", "visible in search"), ("indexed", ":", "indexed (real-time GET)")):
            samples = sorted(s for r in data[t] for s in r.get(key, []))
            if samples:
                a2.plot(samples, [(k + 1) / len(samples) for k in range(len(samples))], color=COLORS[t], ls=style,
                        label=f"{LABELS[t]}, {suffix}")
    a1.set_xticks([j + width * (len(tools) - 1) / 2 for j in range(3)], ["p50", "p95", "p99"])
    a1.set_ylabel("ms, commit → visible in search")
    a1.axhline(1100, color="#d62728", lw=0.8, ls="--")
    a1.text(-0.35, 1100, "goal: 1 s refresh + 100 ms", color="#d62728", fontsize=7, va="bottom", ha="left")
    a1.legend(fontsize=8)
    a2.set_xscale("log")
    a2.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    a2.set_xlabel("ms, commit → visible in search (log)")
    a2.set_ylabel("fraction of timed changes")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    rate = meta["args"]["latency_rate"]
    fig.suptitle(f"Latency at {rate:,} changes/s\n{caveat(meta)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw(res, out, only=None):
    """Charts of the workloads in `only` (default: all in `res`), each
    captioned with the meta of the run that measured it."""
    for wl in BASE:
        if res.get(wl) and (only is None or wl in only):
            # The workload that wrote these results (decode: drain's; nested_*: nested's).
            owner = "drain" if wl == "decode" else wl.split("_")[0]
            meta = res.get("metas", {}).get(owner, res["meta"])
            throughput(wl, res[wl], meta, os.path.join(out, f"{wl}.png"))
    if res.get("latency") and (only is None or "latency" in only):
        latency(res["latency"], res.get("metas", {}).get("latency", res["meta"]), os.path.join(out, "latency.png"))
