//! The status page as HTML with inline SVG charts: pure functions from
//! [`UiStatus`] to text, so they are tested without a server.
//!
//! No framework and nothing fetched from elsewhere (many production networks
//! reach nothing outside): the styles and the small script are inline. The
//! server renders the whole page; the script only refreshes it from
//! `/status.json` every few seconds: numbers carry `data-k` (their path in
//! the JSON) and `data-f` (how to format them), charts carry `data-src` and
//! `data-field` (which series to draw), and when the page's shape changes
//! (tables, dead letters, state) it reloads the whole page.

use std::fmt::Write as _;

use crate::app::status::{SnapshotStatus, human_bytes};

use super::view::{SnapshotProgress, TableRow, UiStatus};

/// Escape text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

pub const CHART_W: f64 = 300.0;
pub const CHART_H: f64 = 60.0;

/// `points` of a polyline drawing `values` (oldest left) scaled to the
/// chart, zero at the bottom, the largest value at the top. The script
/// computes the same when it redraws.
pub fn polyline_points(values: &[f64], w: f64, h: f64) -> String {
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let n = values.len();
    let mut o = String::new();
    for (i, v) in values.iter().enumerate() {
        let x = if n > 1 {
            i as f64 * w / (n - 1) as f64
        } else {
            0.0
        };
        let y = if max > 0.0 {
            h - v.max(0.0) / max * h
        } else {
            h
        };
        let _ = write!(o, "{}{x:.1},{y:.1}", if i == 0 { "" } else { " " });
    }
    o
}

/// An inline SVG line chart of `values`, redrawn by the script from
/// `src[*].field` in the JSON.
pub fn line_chart(title: &str, values: &[f64], src: &str, field: &str, w: f64, h: f64) -> String {
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    format!(
        "<figure class=\"chart\"><figcaption>{t} <span class=\"max\">max {m}</span></figcaption>\
         <svg role=\"img\" aria-label=\"{t}\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" \
         data-src=\"{s}\" data-field=\"{f}\" preserveAspectRatio=\"none\">\
         <rect width=\"{w}\" height=\"{h}\" class=\"bg\"/>\
         <polyline fill=\"none\" points=\"{p}\"/></svg></figure>",
        t = esc(title),
        m = short_number(max),
        s = esc(src),
        f = esc(field),
        p = polyline_points(values, w, h),
    )
}

/// 1234567 → `1.2M`, for chart maxima.
pub fn short_number(v: f64) -> String {
    match v.abs() {
        a if a >= 1e9 => format!("{:.1}G", v / 1e9),
        a if a >= 1e6 => format!("{:.1}M", v / 1e6),
        a if a >= 1e3 => format!("{:.1}k", v / 1e3),
        a if a >= 10.0 || a == 0.0 => format!("{v:.0}"),
        _ => format!("{v:.2}"),
    }
}

/// A number the script refreshes: `key` is its path in the JSON.
fn live(key: &str, fmt: &str, text: &str) -> String {
    format!(
        "<span data-k=\"{}\" data-f=\"{fmt}\">{}</span>",
        esc(key),
        esc(text)
    )
}

fn opt_bytes(v: Option<u64>) -> String {
    v.map_or("-".into(), human_bytes)
}

/// Seconds as `1h 02m`, `3m 04s` or `5.2 s`.
pub fn human_secs(s: f64) -> String {
    let whole = s.max(0.0).round() as u64;
    match whole {
        w if w >= 3600 => format!("{}h {:02}m", w / 3600, (w % 3600) / 60),
        w if w >= 60 => format!("{}m {:02}s", w / 60, w % 60),
        _ => format!("{:.1} s", s.max(0.0)),
    }
}

/// A snapshot progress bar with rows done/total and the ETA.
pub fn progress_bar(table: &str, p: &SnapshotProgress) -> String {
    let pct = if p.rows_total > 0 {
        p.rows_done as f64 * 100.0 / p.rows_total as f64
    } else {
        0.0
    };
    let eta = match (p.done, p.eta_seconds) {
        (true, _) => "done".to_string(),
        (false, Some(s)) => format!("ETA {}", human_secs(s as f64)),
        (false, None) => "ETA -".to_string(),
    };
    format!(
        "<div class=\"snapshot\" data-table=\"{t}\"><progress class=\"snapshot-progress\" \
         value=\"{d}\" max=\"{m}\" aria-label=\"snapshot of {t}\">{pct:.0}%</progress> \
         <span class=\"rows\">{d} / {m} rows</span> <span class=\"eta\">{eta}</span> \
         <span class=\"pct\">{pct:.0}%</span></div>",
        t = esc(table),
        d = p.rows_done,
        m = p.rows_total.max(1),
    )
}

fn table_row(i: usize, r: &TableRow) -> String {
    let k = |f: &str| format!("tables.{i}.{f}");
    let snapshot = r
        .snapshot
        .as_ref()
        .map_or_else(|| "-".to_string(), |p| progress_bar(&r.table, p));
    let spark: Vec<f64> = r.history.iter().map(|s| s.docs_per_sec as f64).collect();
    format!(
        "<tr class=\"table-row\" data-table=\"{t}\"><td class=\"name\">{t}</td><td>{idx}</td>\
         <td class=\"num\">{c}</td><td class=\"num\">{d}</td><td class=\"num\">{ct}</td>\
         <td class=\"num\">{dt}</td><td>{last}</td><td>{snap}</td><td>{chart}</td></tr>",
        t = esc(&r.table),
        idx = esc(&r.indices.join(", ")),
        c = live(
            &k("changes_per_sec"),
            "rate",
            &format!("{:.1}", r.changes_per_sec)
        ),
        d = live(
            &k("docs_per_sec"),
            "rate",
            &format!("{:.1}", r.docs_per_sec)
        ),
        ct = live(&k("changes_total"), "n", &r.changes_total.to_string()),
        dt = live(&k("docs_total"), "n", &r.docs_total.to_string()),
        last = live(
            &k("last_change"),
            "text",
            r.last_change.as_deref().unwrap_or("-")
        ),
        snap = snapshot,
        chart = line_chart(
            "docs/s",
            &spark,
            &format!("tables.{i}.history"),
            "docs_per_sec",
            120.0,
            24.0
        ),
    )
}

fn tables_section(u: &UiStatus) -> String {
    let rows: String = u
        .tables
        .iter()
        .enumerate()
        .map(|(i, r)| table_row(i, r))
        .collect();
    format!(
        "<section id=\"tables\"><h2>Tables and indices</h2><table><thead><tr><th>table</th>\
         <th>indices</th><th>changes/s</th><th>docs/s</th><th>changes</th><th>docs</th>\
         <th>last change</th><th>snapshot</th><th>docs/s, last hour</th></tr></thead>\
         <tbody>{rows}</tbody></table>{reindex}</section>",
        reindex = reindex_list(u),
    )
}

/// The reindexes of this configuration's indices (the state index may be
/// shared by several Sluice deployments).
fn reindex_list(u: &UiStatus) -> String {
    let Some(SnapshotStatus::Recorded { reindexes, .. }) = u.status.as_ref().map(|s| &s.snapshots)
    else {
        return String::new();
    };
    let ours = |alias: &str| {
        u.tables
            .iter()
            .any(|t| t.indices.iter().any(|i| i == alias))
    };
    let reindexes: Vec<_> = reindexes.iter().filter(|r| ours(&r.alias)).collect();
    if reindexes.is_empty() {
        return "<p class=\"reindex none\">No reindex recorded.</p>".into();
    }
    let items: String = reindexes
        .iter()
        .map(|r| {
            format!(
                "<li class=\"reindex\">{} → {}: <b>{}</b>{}</li>",
                esc(&r.alias),
                esc(&r.build_index),
                esc(&r.status),
                r.dual_write_from
                    .as_deref()
                    .map_or(String::new(), |l| format!(", dual-writing from {}", esc(l)))
            )
        })
        .collect();
    format!("<h3>Reindexes</h3><ul>{items}</ul>")
}

fn pipeline_section(u: &UiStatus) -> String {
    let series =
        |f: fn(&super::view::Sample) -> f64| -> Vec<f64> { u.history.iter().map(f).collect() };
    let reason = u.state_reason.as_deref().map_or(String::new(), |r| {
        format!(
            "<p class=\"reason\" data-k=\"state_reason\" data-f=\"text\">{}</p>",
            esc(r)
        )
    });
    format!(
        "<section id=\"pipeline\"><h2>Pipeline</h2>{reason}<dl class=\"figures\">\
         <div><dt>confirmed LSN</dt><dd id=\"confirmed-lsn\">{lsn}</dd></div>\
         <div><dt>slot lag</dt><dd id=\"lag-bytes\">{lagb}</dd></div>\
         <div><dt>lag</dt><dd id=\"lag-seconds\">{lags}</dd></div>\
         <div><dt>retained WAL</dt><dd id=\"retained-wal\">{wal}</dd></div></dl>\
         <div class=\"charts\">{c1}{c2}{c3}{c4}</div>\
         <p class=\"bound\">History: the last {n} samples, one every {every} s \
         ({sb} bytes each, and {tb} bytes per table per sample), kept in memory: the bound does not grow with uptime.</p></section>",
        lsn = live(
            "confirmed_lsn",
            "text",
            u.confirmed_lsn.as_deref().unwrap_or("-")
        ),
        lagb = live("lag_bytes", "bytes", &opt_bytes(u.lag_bytes)),
        lags = live(
            "lag_seconds",
            "secs",
            &u.lag_seconds.map_or("-".into(), human_secs)
        ),
        wal = live(
            "retained_wal_bytes",
            "bytes",
            &opt_bytes(u.retained_wal_bytes)
        ),
        c1 = line_chart(
            "slot lag (bytes)",
            &series(|s| s.lag_bytes as f64),
            "history",
            "lag_bytes",
            CHART_W,
            CHART_H
        ),
        c2 = line_chart(
            "lag (seconds)",
            &series(|s| s.lag_seconds as f64),
            "history",
            "lag_seconds",
            CHART_W,
            CHART_H
        ),
        c3 = line_chart(
            "changes/s",
            &series(|s| s.changes_per_sec as f64),
            "history",
            "changes_per_sec",
            CHART_W,
            CHART_H
        ),
        c4 = line_chart(
            "docs/s",
            &series(|s| s.docs_per_sec as f64),
            "history",
            "docs_per_sec",
            CHART_W,
            CHART_H
        ),
        n = u.history_bound.samples,
        every = u.history_bound.sample_every_secs,
        sb = u.history_bound.sample_bytes,
        tb = u.history_bound.table_sample_bytes,
    )
}

fn dead_letters_section(u: &UiStatus) -> String {
    let d = &u.dead_letters;
    let total = d.total.map_or("-".to_string(), |n| n.to_string());
    let per: String = d
        .per_index
        .iter()
        .map(|(i, n)| {
            format!(
                "<li class=\"dl-index\" data-index=\"{}\">{}: <b>{n}</b></li>",
                esc(i),
                esc(i)
            )
        })
        .collect();
    let latest: String = d
        .latest
        .iter()
        .map(|l| {
            format!(
                "<tr class=\"dead-letter\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td class=\"reason\"><b>{}</b>: {}</td></tr>",
                esc(&l.at),
                esc(&l.index),
                esc(&l.table),
                esc(&l.id),
                esc(&l.error_type),
                esc(&l.reason)
            )
        })
        .collect();
    let error = d.error.as_deref().map_or(String::new(), |e| {
        format!("<p class=\"error\">{}</p>", esc(e))
    });
    format!(
        "<section id=\"dead-letters\"><h2>Dead letters</h2><p>In <code>{idx}</code>: \
         <b id=\"dead-letter-total\">{total}</b></p>{error}<ul>{per}</ul>\
         <table><thead><tr><th>at</th><th>index</th><th>table</th><th>id</th><th>reason</th>\
         </tr></thead><tbody>{latest}</tbody></table></section>",
        idx = esc(&d.index),
    )
}

fn counters_section(u: &UiStatus) -> String {
    let c = &u.counters;
    let rows = [
        ("retries", "retries", c.retries),
        (
            "failed bulk requests",
            "bulk_requests_failed",
            c.bulk_requests_failed,
        ),
        ("items retried", "bulk_items_retried", c.bulk_items_retried),
        (
            "items already applied (409)",
            "bulk_items_conflict",
            c.bulk_items_conflict,
        ),
        (
            "items dead-lettered",
            "bulk_items_dead_lettered",
            c.bulk_items_dead_lettered,
        ),
        (
            "dead letters recorded",
            "dead_letters_recorded",
            c.dead_letters_recorded,
        ),
        (
            "dead letters lost (log only)",
            "dead_letter_write_failures",
            c.dead_letter_write_failures,
        ),
    ];
    let body: String = rows
        .iter()
        .map(|(label, key, n)| {
            format!(
                "<tr><td>{label}</td><td class=\"num\">{}</td></tr>",
                live(&format!("counters.{key}"), "n", &n.to_string())
            )
        })
        .collect();
    format!(
        "<section id=\"counters\"><h2>Retries and errors (since start)</h2>\
         <table><tbody>{body}</tbody></table></section>"
    )
}

fn server_section(u: &UiStatus) -> String {
    let mut o = String::from("<section id=\"servers\"><h2>Servers</h2>");
    match &u.status {
        Some(s) => {
            let _ = write!(
                o,
                "<p>PostgreSQL {} ({}), wal_level {}, server WAL at {}; Elasticsearch cluster {}. Read at {}.</p>",
                esc(&s.server_version),
                esc(&s.database),
                esc(&s.wal_level),
                s.server_wal_lsn,
                esc(s
                    .elasticsearch
                    .cluster
                    .as_ref()
                    .map_or("unreachable", |c| c.status.as_str())),
                esc(u.status_read_at.as_deref().unwrap_or("-")),
            );
            let warnings: String = s
                .warnings
                .iter()
                .map(|w| format!("<li class=\"warning\">{}</li>", esc(w)))
                .collect();
            if !warnings.is_empty() {
                let _ = write!(o, "<ul class=\"warnings\">{warnings}</ul>");
            }
        }
        None => o.push_str("<p>Not read yet.</p>"),
    }
    if let Some(e) = &u.status_error {
        let _ = write!(o, "<p class=\"error\">Last read failed: {}</p>", esc(e));
    }
    o.push_str("</section>");
    o
}

fn config_section(u: &UiStatus) -> String {
    let rows: String = u
        .config
        .settings
        .iter()
        .map(|(k, v)| {
            format!(
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                esc(k),
                esc(v)
            )
        })
        .collect();
    let maps: String = u
        .config
        .mappings
        .iter()
        .map(|m| format!("<li>{}</li>", esc(m)))
        .collect();
    format!(
        "<section id=\"config\"><h2>Configuration in effect</h2><p><code>{}</code> (secrets redacted)</p>\
         <table><tbody>{rows}</tbody></table><h3>Mappings</h3><ul>{maps}</ul></section>",
        esc(&u.config.file)
    )
}

/// What makes the script reload the whole page instead of refreshing
/// numbers: the state, the tables and the dead letters.
pub fn shape(u: &UiStatus) -> String {
    let snap: Vec<String> = u
        .tables
        .iter()
        .map(|t| {
            format!(
                "{}:{}",
                t.table,
                t.snapshot
                    .as_ref()
                    .map_or("-", |p| if p.done { "done" } else { "run" })
            )
        })
        .collect();
    format!(
        "{}|{}|{}|{}",
        u.state,
        snap.join(","),
        u.dead_letters.total.unwrap_or(0),
        u.status.as_ref().map_or(0, |s| s.warnings.len())
    )
}

/// The whole page.
pub fn page(u: &UiStatus) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>Sluice: {state}</title>\
         <style>{CSS}</style></head><body data-shape=\"{shape}\">\
         <header><h1>Sluice</h1><span id=\"state\" class=\"state s-{state}\" data-k=\"state\" \
         data-f=\"text\">{state}</span><span class=\"updated\">updated \
         <span data-k=\"generated_at\" data-f=\"text\">{at}</span> \
         <span id=\"live\">(server-rendered)</span></span></header>\
         <main>{p}{t}{d}{c}{s}{cfg}</main><script>{SCRIPT}</script></body></html>",
        state = esc(&u.state),
        shape = esc(&shape(u)),
        at = esc(&u.generated_at),
        p = pipeline_section(u),
        t = tables_section(u),
        d = dead_letters_section(u),
        c = counters_section(u),
        s = server_section(u),
        cfg = config_section(u),
    )
}

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{display:flex;gap:1em;align-items:center;padding:.6em 1.2em;background:#1d2330;color:#fff}\
h1{font-size:1.3em;margin:0}h2{font-size:1.1em;margin:.2em 0 .5em}main{padding:0 1.2em 2em}\
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:.8em 1em;margin:1em 0}\
.state{padding:.15em .6em;border-radius:1em;font-weight:600;background:#888}\
.s-streaming{background:#1f8a4c}.s-snapshotting{background:#2b6cb0}.s-stalled{background:#c53030}\
.s-standby,.s-starting,.s-stopping{background:#b7791f}.updated{margin-left:auto;opacity:.8}\
dl.figures{display:flex;gap:2em;margin:0}dl.figures dt{font-size:.85em;color:#5a6372}\
dl.figures dd{margin:0;font-size:1.3em;font-weight:600}.charts{display:flex;flex-wrap:wrap;gap:1em}\
figure{margin:.6em 0}figcaption{font-size:.85em;color:#5a6372}.max{float:right}\
svg .bg{fill:#f0f3f7}svg polyline{stroke:#2b6cb0;stroke-width:1.5}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25em .5em;border-bottom:1px solid #eef0f3}\
.num{text-align:right;font-variant-numeric:tabular-nums}.error,.reason,.warning{color:#c53030}\
progress{width:9em}.bound{font-size:.8em;color:#5a6372}code{font-size:.95em}";

/// Refreshes numbers and charts from `/status.json`; reloads the page when
/// its shape changes. Runs in the page, so it is plain ES5-level JavaScript.
const SCRIPT: &str = r#"(function(){
var W=300,H=60;
function get(o,p){return p.split('.').reduce(function(a,k){return a==null?a:a[k];},o);}
function bytes(n){var u=['B','KiB','MiB','GiB','TiB'],i=0;while(n>=1024&&i<4){n/=1024;i++;}return i?n.toFixed(1)+' '+u[i]:n+' B';}
function secs(s){s=Math.max(0,s);var w=Math.round(s);if(w>=3600)return Math.floor(w/3600)+'h '+('0'+Math.floor(w%3600/60)).slice(-2)+'m';if(w>=60)return Math.floor(w/60)+'m '+('0'+w%60).slice(-2)+'s';return s.toFixed(1)+' s';}
function fmt(v,f){if(v==null)return '-';if(f==='bytes')return bytes(v);if(f==='secs')return secs(v);if(f==='rate')return Number(v).toFixed(1);return String(v);}
function draw(svg,vals){var vb=svg.viewBox.baseVal,w=vb.width,h=vb.height,max=0,pts=[];vals.forEach(function(v){if(v>max)max=v;});
vals.forEach(function(v,i){var x=vals.length>1?i*w/(vals.length-1):0,y=max>0?h-Math.max(0,v)/max*h:h;pts.push(x.toFixed(1)+','+y.toFixed(1));});
svg.querySelector('polyline').setAttribute('points',pts.join(' '));}
function shape(j){var s=j.tables.map(function(t){return t.table+':'+(t.snapshot?(t.snapshot.done?'done':'run'):'-');});
return j.state+'|'+s.join(',')+'|'+(j.dead_letters.total||0)+'|'+(j.status?j.status.warnings.length:0);}
function apply(j){if(shape(j)!==document.body.getAttribute('data-shape')){location.reload();return;}
document.querySelectorAll('[data-k]').forEach(function(e){e.textContent=fmt(get(j,e.getAttribute('data-k')),e.getAttribute('data-f'));});
document.querySelectorAll('svg[data-src]').forEach(function(s){var a=get(j,s.getAttribute('data-src'))||[];var f=s.getAttribute('data-field');draw(s,a.map(function(o){return o[f];}));});
var l=document.getElementById('live');l.textContent='(live)';l.className='live';}
function poll(){fetch('status.json',{cache:'no-store',credentials:'same-origin'}).then(function(r){if(!r.ok)throw r.status;return r.json();}).then(apply).catch(function(e){var l=document.getElementById('live');l.textContent='(refresh failed: '+e+')';l.className='stale';});}
poll();setInterval(poll,3000);})();"#;
