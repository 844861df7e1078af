//! `Standby`: whether this process waits for another one to let go of the
//! replication slot, and who holds it.
//!
//! PostgreSQL lets one walsender stream from a slot at a time, so two
//! `sluice run` processes with the same configuration need no coordinator
//! of their own: the one that holds the slot streams, the other waits as a
//! standby and takes over when the slot is released. The start-up gate and
//! the replication reader (when `START_REPLICATION` answers "slot is active
//! for PID N") record the wait here; `/ready` reads it and reports the
//! process not ready, state `standby`, with the holder's pid. It lives in
//! `ops` beside [`crate::ops::Holds`] for the same reason: `source` and
//! `app` write it, the readiness endpoint reads it.

use std::sync::{Arc, Mutex};

/// Shared by the writers (start-up gate, reader) and `/ready`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Standby(Arc<Mutex<Option<Waiting>>>);

/// A standby's wait: the server process (walsender) holding the slot, when
/// known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub holder_pid: Option<i32>,
}

impl Waiting {
    /// What `/ready` and the log say: `slot held by pid N`.
    pub fn reason(&self) -> String {
        match self.holder_pid {
            Some(pid) => format!("slot held by pid {pid}"),
            None => "slot held by another process".into(),
        }
    }
}

impl Standby {
    pub fn new() -> Standby {
        Standby::default()
    }

    /// The slot is held by `holder_pid`: this process waits. Logged once per
    /// wait (and again when the holder changes), not on every retry.
    pub fn wait(&self, holder_pid: Option<i32>) {
        let now = Waiting { holder_pid };
        let old = self.0.lock().expect("standby").replace(now);
        if old != Some(now) {
            tracing::info!(
                holder_pid,
                "standby: the replication slot is {}; taking over when it is released",
                now.reason().trim_start_matches("slot ")
            );
        }
    }

    /// This process has the slot (or no longer waits for it).
    pub fn clear(&self) {
        if let Some(w) = self.0.lock().expect("standby").take() {
            tracing::info!(
                previous_holder = w.holder_pid,
                "the replication slot is free: taking over"
            );
        }
    }

    /// The current wait, if this process is a standby.
    pub fn waiting(&self) -> Option<Waiting> {
        *self.0.lock().expect("standby")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_names_the_holder_until_cleared() {
        let s = Standby::new();
        assert_eq!(s.waiting(), None);
        s.wait(Some(4242));
        assert_eq!(s.waiting().unwrap().reason(), "slot held by pid 4242");
        s.clone().wait(None);
        assert_eq!(
            s.waiting().unwrap().reason(),
            "slot held by another process"
        );
        s.clear();
        assert_eq!(s.waiting(), None);
    }
}
