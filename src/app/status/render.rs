//! The status report as text (`sluice status`) and JSON (`--json`).

use std::fmt::Write as _;

use super::es_health::{EsStatus, IndexState};
use super::{
    DeadLetterStatus, PublicationStatus, ReindexSummary, SlotStatus, SnapshotStatus, StatusReport,
    TableSnapshot, Targets, TeardownReport, is_done_word,
};
use crate::Lsn;

/// Bytes as a human reads them (`1.5 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn opt_bytes(n: Option<u64>) -> String {
    n.map_or("-".into(), human_bytes)
}

/// The report as the table `sluice status` prints.
pub fn render_human(r: &StatusReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Sluice status for {} (PostgreSQL {}, wal_level={}{})",
        r.database,
        r.server_version,
        r.wal_level,
        if r.in_recovery { ", standby" } else { "" }
    );
    let _ = writeln!(o, "  server WAL position   {}", r.server_wal_lsn);
    render_slot(&mut o, &r.slot);
    render_publication(&mut o, &r.publication);
    render_snapshots(&mut o, &r.snapshots);
    render_dead_letters(&mut o, &r.dead_letters);
    render_elasticsearch(&mut o, &r.elasticsearch);
    for w in &r.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    o
}

fn render_slot(o: &mut String, slot: &SlotStatus) {
    let s = match slot {
        SlotStatus::Missing { name } => {
            let _ = writeln!(o, "  replication slot      {name}: does not exist");
            return;
        }
        SlotStatus::Present(s) => s,
    };
    let holder = match (s.active, s.active_pid) {
        (true, Some(pid)) => format!(
            "active, pid {pid}{}",
            s.active_application
                .as_deref()
                .map(|a| format!(" ({a})"))
                .unwrap_or_default()
        ),
        (true, None) => "active".into(),
        (false, _) => "inactive (no Sluice is streaming)".into(),
    };
    let _ = writeln!(
        o,
        "  replication slot      {} ({}, {}): {holder}",
        s.name,
        s.slot_type,
        s.plugin.as_deref().unwrap_or("-")
    );
    for standby in &s.standbys {
        let _ = writeln!(
            o,
            "  standby               pid {}: {}",
            standby.pid, standby.state
        );
    }
    let lsn = |l: Option<Lsn>| l.map_or("-".into(), |l| l.to_string());
    let _ = writeln!(o, "  confirmed flush LSN   {}", lsn(s.confirmed_flush_lsn));
    let _ = writeln!(o, "  lag                   {}", opt_bytes(s.lag_bytes));
    let _ = writeln!(o, "  restart LSN           {}", lsn(s.restart_lsn));
    let _ = writeln!(
        o,
        "  retained WAL          {} (wal_status {}{})",
        opt_bytes(s.retained_wal_bytes),
        s.wal_status.as_deref().unwrap_or("-"),
        s.safe_wal_size
            .map(|b| format!(
                ", {} left before max_slot_wal_keep_size",
                human_bytes(b.max(0) as u64)
            ))
            .unwrap_or_default()
    );
}

fn render_publication(o: &mut String, p: &PublicationStatus) {
    if !p.exists {
        let _ = writeln!(o, "  publication           {}: does not exist", p.name);
        return;
    }
    let tables = if p.all_tables {
        "all tables".to_string()
    } else {
        format!("{} tables: {}", p.tables.len(), p.tables.join(", "))
    };
    let _ = writeln!(
        o,
        "  publication           {} (owner {}): {tables}",
        p.name,
        p.owner.as_deref().unwrap_or("?")
    );
}

fn render_snapshots(o: &mut String, snapshots: &SnapshotStatus) {
    match snapshots {
        SnapshotStatus::Unavailable { index, .. } => {
            let _ = writeln!(o, "  snapshots             unknown: cannot read {index}");
        }
        SnapshotStatus::NoneRecorded { index } => {
            let _ = writeln!(
                o,
                "  snapshots             no snapshot recorded (no index {index})"
            );
        }
        SnapshotStatus::Recorded {
            index,
            tables,
            unrecognized_documents,
            truncated,
            reindexes,
        } => {
            let _ = writeln!(
                o,
                "  snapshots             {} table(s) in {index}{}",
                tables.len(),
                if *truncated {
                    " (first 10000 documents only)"
                } else {
                    ""
                }
            );
            for t in tables {
                render_table_snapshot(o, t);
            }
            if *unrecognized_documents > 0 {
                let _ = writeln!(
                    o,
                    "    ({unrecognized_documents} documents without a table field ignored)"
                );
            }
            for r in reindexes {
                render_reindex(o, r);
            }
        }
    }
}

fn render_table_snapshot(o: &mut String, t: &TableSnapshot) {
    let others: Vec<String> = t
        .states
        .iter()
        .filter(|(s, _)| !is_done_word(s))
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    let _ = writeln!(
        o,
        "    {:<30} {}/{} chunks done, {} rows{}{}",
        t.table,
        t.chunks_done,
        t.chunks,
        t.rows,
        if others.is_empty() {
            String::new()
        } else {
            format!(" ({})", others.join(", "))
        },
        t.last_update
            .as_deref()
            .map(|u| format!(", last update {u}"))
            .unwrap_or_default()
    );
}

fn render_reindex(o: &mut String, r: &ReindexSummary) {
    let stream = match (&r.dual_write_from, r.status.as_str()) {
        (_, "swapped") => String::new(),
        (Some(lsn), _) => format!(", stream dual-writes from {lsn}"),
        (None, _) => ", waiting for `sluice run` to dual-write".to_string(),
    };
    let _ = writeln!(
        o,
        "  reindex               {} → {}: {}{stream}{}",
        r.alias,
        r.build_index,
        r.status,
        r.started_at
            .as_deref()
            .map(|t| format!(", started {t}"))
            .unwrap_or_default()
    );
}

fn render_dead_letters(o: &mut String, d: &DeadLetterStatus) {
    match d.count {
        None if d.error.is_some() => {
            let _ = writeln!(
                o,
                "  dead letters          unknown: cannot read {}",
                d.index
            );
        }
        Some(n) => {
            let _ = writeln!(o, "  dead letters          {n} (index {})", d.index);
        }
        None => {
            let _ = writeln!(o, "  dead letters          0 (no index {})", d.index);
        }
    }
}

fn render_elasticsearch(o: &mut String, es: &EsStatus) {
    if let Some(c) = &es.cluster {
        let _ = writeln!(
            o,
            "  elasticsearch         cluster {}, {} node{}, {} unassigned shard{}",
            c.status,
            c.number_of_nodes,
            if c.number_of_nodes == 1 { "" } else { "s" },
            c.unassigned_shards,
            if c.unassigned_shards == 1 { "" } else { "s" },
        );
    }
    for t in &es.indices {
        let state = match &t.state {
            IndexState::Missing => "not created yet".to_string(),
            IndexState::Open { health } => format!("open, {health}"),
            IndexState::Closed { indices } => format!("CLOSED ({})", indices.join(", ")),
            IndexState::NoWriteIndex { .. } => "alias without a write index".to_string(),
        };
        let _ = writeln!(o, "  index {:<15} {state}", t.name);
    }
}

/// The report as `sluice status --json` prints it.
pub fn render_json(r: &StatusReport) -> String {
    serde_json::to_string_pretty(r).expect("a status report always serializes")
}

/// What teardown did, in words.
pub fn render_teardown(t: &TeardownReport, targets: &Targets) -> String {
    let line = |done: bool, what: &str, name: &str, absent: &str| {
        if done {
            format!("dropped {what} {name}\n")
        } else {
            format!("{what} {name} {absent}\n")
        }
    };
    let mut o = String::new();
    o += &line(
        t.slot_dropped,
        "replication slot",
        &targets.slot,
        "did not exist",
    );
    o += &line(
        t.publication_dropped,
        "publication",
        &targets.publication,
        "did not exist",
    );
    o += &format!(
        "deleted {} record(s) of slot {} from state index {} (other deployments' records stay)\n",
        t.state_records_deleted, targets.slot, targets.state_index
    );
    o
}
