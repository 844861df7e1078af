//! What `sluice verify` found, per index: plain data, serialized as the
//! `--json` output and as the record `/metrics` reads back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The kinds of drift, as words in the output and metric labels.
pub const DRIFT_KINDS: [&str; 4] = ["missing", "extra", "stale", "dead_lettered"];

/// One id list, capped: `count` is exact, `ids` holds the first `cap`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdList {
    pub count: u64,
    pub ids: Vec<String>,
}

impl IdList {
    pub fn push(&mut self, id: &str, cap: usize) {
        self.count += 1;
        if self.ids.len() < cap {
            self.ids.push(id.to_string());
        }
    }
}

/// A document whose content differs, with the top-level fields that do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaleExample {
    pub id: String,
    pub fields: Vec<String>,
}

/// The comparison of one index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IndexReport {
    pub index: String,
    /// Rows read inside the snapshot whose documents were compared.
    pub checked: u64,
    /// Equal (or, for a mapping with an ingest pipeline, present).
    pub equal: u64,
    /// A row at P, no document.
    pub missing: IdList,
    /// A document older than P, no row at P (or a soft-deleted one).
    pub extra: IdList,
    /// Both, with different content.
    pub stale: IdList,
    /// Missing or stale documents of rows that have a dead letter: known
    /// drift, fixed by `sluice dead-letters retry`, not by `--repair`.
    pub dead_lettered: IdList,
    /// Documents written after P (version ≥ P) or rows changed after P:
    /// the stream's newer work, not drift.
    pub skipped_newer: u64,
    /// A few stale documents and their differing fields.
    pub stale_examples: Vec<StaleExample>,
    /// Whether the whole index was scanned for extra documents (not with
    /// `--sample`, a templated name, `on_delete = "ignore"` or a table of
    /// the index left out with `--table`).
    pub extras_checked: bool,
    /// Repair writes and deletes sent (`--repair`), acknowledged.
    pub repaired: u64,
}

impl IndexReport {
    pub fn new(index: &str) -> IndexReport {
        IndexReport {
            index: index.to_string(),
            ..Default::default()
        }
    }

    /// Drift that `--repair` fixes (dead letters excluded).
    pub fn repairable(&self) -> u64 {
        self.missing.count + self.extra.count + self.stale.count
    }

    /// Every kind of drift, known drift included.
    pub fn drift(&self) -> u64 {
        self.repairable() + self.dead_lettered.count
    }

    /// Drift counts by kind, in [`DRIFT_KINDS`] order.
    pub fn counts(&self) -> [(&'static str, u64); 4] {
        [
            ("missing", self.missing.count),
            ("extra", self.extra.count),
            ("stale", self.stale.count),
            ("dead_lettered", self.dead_lettered.count),
        ]
    }
}

/// The whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The snapshot's consistent point P.
    pub point: String,
    pub started_at: String,
    pub finished_at: String,
    pub rows: u64,
    pub seconds: f64,
    /// Whether `sluice run` had applied everything up to P before the
    /// comparison (if not, changes it had yet to write show as drift).
    pub stream_caught_up: bool,
    pub repair: bool,
    pub indices: BTreeMap<String, IndexReport>,
}

impl VerifyReport {
    pub fn drift(&self) -> u64 {
        self.indices.values().map(IndexReport::drift).sum()
    }

    /// The text an operator reads.
    pub fn render(&self) -> String {
        let mut out = format!(
            "verified at {} ({} rows in {:.1}s{})\n",
            self.point,
            self.rows,
            self.seconds,
            if self.stream_caught_up {
                ""
            } else {
                "; sluice run was not streaming: changes it has yet to apply show as drift"
            }
        );
        for r in self.indices.values() {
            out.push_str(&format!(
                "{}: {} checked, {} equal, {} missing, {} extra, {} stale, {} dead-lettered (known drift), {} newer than the snapshot (skipped){}{}\n",
                r.index,
                r.checked,
                r.equal,
                r.missing.count,
                r.extra.count,
                r.stale.count,
                r.dead_lettered.count,
                r.skipped_newer,
                if r.extras_checked { "" } else { "; extra documents not checked" },
                if self.repair {
                    format!("; {} repaired", r.repaired)
                } else {
                    String::new()
                },
            ));
            for (kind, list) in [
                ("missing", &r.missing),
                ("extra", &r.extra),
                ("stale", &r.stale),
                ("dead-lettered", &r.dead_lettered),
            ] {
                if list.count > 0 {
                    let more = list.count - list.ids.len() as u64;
                    out.push_str(&format!(
                        "  {kind}: {}{}\n",
                        list.ids.join(", "),
                        if more > 0 {
                            format!(" (and {more} more; --json lists all)")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            for e in &r.stale_examples {
                out.push_str(&format!(
                    "  stale {}: fields {}\n",
                    e.id,
                    e.fields.join(", ")
                ));
            }
        }
        out
    }
}
