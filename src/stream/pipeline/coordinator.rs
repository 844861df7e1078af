//! The coordinator's bookkeeping: every op is registered with the
//! checkpoint before it goes to the sink, acknowledgements are applied as
//! they come, and each advance of the confirmed LSN is published (DESIGN
//! invariant 1: only what the sink acknowledged is ever confirmed).

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use tokio::sync::watch;

use super::PipelineError;
use super::transform_task::{Counts, add_count};
use crate::model::lsn::Lsn;
use crate::ops::metrics::names;
use crate::sink::Ack;
use crate::stream::checkpoint::{Checkpoint, CheckpointError, TxTicket};

/// Per-transaction counts of changes, reported as applied at confirmation.
type TxStats = HashMap<u64, Counts>;

/// The checkpoint and what goes with it: per-transaction counts for the
/// applied-changes metric, commit times for the lag, and the `watch` the
/// confirmed LSN is published on.
pub(super) struct Coordinator {
    pub(super) cp: Checkpoint,
    /// The open transaction, if any.
    pub(super) current: Option<TxTicket>,
    stats: TxStats,
    confirmed: watch::Sender<Lsn>,
    /// Ops handed to the sink.
    pub(super) ops_submitted: u64,
    /// Commit times of the unconfirmed transactions with ops, in stream
    /// order, for `sluice_replication_lag_seconds`.
    commit_times: VecDeque<(u64, SystemTime)>,
    /// The open transaction's commit time.
    current_time: Option<SystemTime>,
    started_at: Lsn,
}

impl Coordinator {
    /// Track from the slot's confirmed position `start`, and publish it.
    pub(super) fn start(start: Lsn, confirmed: watch::Sender<Lsn>) -> Coordinator {
        let mut co = Coordinator {
            cp: Checkpoint::new(start),
            current: None,
            stats: HashMap::new(),
            confirmed,
            ops_submitted: 0,
            commit_times: VecDeque::new(),
            current_time: None,
            started_at: start,
        };
        co.publish();
        co
    }

    pub(super) fn begin(&mut self, final_lsn: Lsn, commit_time: SystemTime) {
        if let Some(open) = self.current.take() {
            tracing::info!(
                abandoned = ?open,
                final_lsn = %final_lsn,
                "a transaction began while another was open (the reader reconnected); \
                 the open one will be delivered again"
            );
            self.stats.remove(&open.0);
        }
        self.current = Some(self.cp.begin(final_lsn));
        self.current_time = Some(commit_time);
        crate::ops::metrics::record_transaction_received(commit_time);
    }

    pub(super) fn register(
        &mut self,
        n: u64,
        counts: Counts,
        lsn: Lsn,
    ) -> Result<TxTicket, PipelineError> {
        let tx = self
            .current
            .ok_or(PipelineError::ChangeOutsideTransaction(lsn))?;
        self.cp.add_ops(tx, n)?;
        if self.commit_times.back().map(|b| b.0) != Some(tx.0)
            && let Some(t) = self.current_time
        {
            self.commit_times.push_back((tx.0, t));
        }
        let stats = self.stats.entry(tx.0).or_default();
        for (table, op, n) in counts {
            add_count(stats, table, op, n);
        }
        Ok(tx)
    }

    pub(super) fn commit(&mut self, end: Lsn) -> Result<(), CheckpointError> {
        self.current = None;
        if self.cp.commit(end)? {
            self.publish();
        }
        Ok(())
    }

    pub(super) fn keepalive(&mut self, wal_end: Lsn) {
        if self.cp.keepalive(wal_end) {
            self.publish();
        }
    }

    pub(super) fn apply(&mut self, acks: &[Ack]) {
        let mut advanced = false;
        for a in acks {
            advanced |= self.cp.ack(TxTicket(a.tag), a.count);
        }
        if advanced {
            self.publish();
        }
    }

    pub(super) fn publish(&mut self) {
        let completed = self.cp.take_completed();
        for tx in &completed {
            for (table, op, n) in self.stats.remove(&tx.0).unwrap_or_default() {
                metrics::counter!(names::CHANGES_APPLIED_TOTAL, "table" => table.to_string(), "op" => op)
                    .increment(n);
            }
        }
        // Confirmation is in stream order: everything up to the last
        // completed transaction is applied.
        if let Some(last) = completed.last() {
            let mut newest = None;
            while let Some(&(seq, t)) = self.commit_times.front()
                && seq <= last.0
            {
                newest = Some(t);
                self.commit_times.pop_front();
            }
            if let Some(t) = newest {
                crate::ops::metrics::record_applied_commit(t);
            }
        }
        // Not at start-up: a backlog may be on its way.
        if self.cp.confirmed() > self.started_at
            && self.cp.pending() == 0
            && !self.cp.in_transaction()
        {
            self.commit_times.clear();
            crate::ops::metrics::record_caught_up();
        }
        let lsn = self.cp.confirmed();
        metrics::gauge!(names::CONFIRMED_FLUSH_LSN).set(lsn.0 as f64);
        self.confirmed.send_if_modified(|cur| {
            if lsn > *cur {
                *cur = lsn;
                true
            } else {
                false
            }
        });
    }
}
