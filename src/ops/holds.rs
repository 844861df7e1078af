//! `Holds`: why the bulk workers are holding changes back right now.
//!
//! It lives with the operator endpoints, not in the sink, because it is
//! what `/ready` reports: the sink's workers write it, the readiness
//! endpoint reads it, and `ops` stays below every other layer (it imports
//! only `model`), so no layer cycle runs through it.
//!
//! A write Elasticsearch refuses because of its configuration (privileges, a
//! closed or missing index, a missing ingest pipeline, an alias without a
//! write index; see `classify::ItemOutcome::Hold`) is never dead-lettered
//! and confirmed: the worker keeps it and sends it again until the cluster
//! is fixed, so the slot keeps the WAL (DESIGN invariants 1 and 5). Holding
//! silently would look like a stall, so each worker records its reason here
//! and `/ready` reports it (not ready, with the reason) until the held
//! writes go through.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared between the workers (which set and clear) and the readiness
/// endpoint (which reads). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Holds(Arc<Mutex<BTreeMap<usize, String>>>);

impl Holds {
    pub fn new() -> Holds {
        Holds::default()
    }

    /// Worker `worker` holds changes back because of `reason`.
    pub fn set(&self, worker: usize, reason: String) {
        self.0.lock().expect("holds").insert(worker, reason);
    }

    /// Worker `worker` holds nothing back (any more).
    pub fn clear(&self, worker: usize) {
        if self.0.lock().expect("holds").remove(&worker).is_some() {
            tracing::info!(
                worker,
                "held writes went through; Elasticsearch accepts them again"
            );
        }
    }

    /// One reason writes are held, if any (the lowest worker's).
    pub fn reason(&self) -> Option<String> {
        self.0.lock().expect("holds").values().next().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_reported_until_every_worker_that_held_cleared_it() {
        let h = Holds::new();
        assert_eq!(h.reason(), None);
        h.set(2, "index x is closed".into());
        h.set(0, "no privilege".into());
        assert_eq!(h.reason().as_deref(), Some("no privilege"));
        h.clear(0);
        assert_eq!(h.reason().as_deref(), Some("index x is closed"));
        h.clone().clear(2);
        assert_eq!(h.reason(), None);
    }
}
