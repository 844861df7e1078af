//! The LSN watermark: what is durably in Elasticsearch.
//!
//! Keeps DESIGN invariant 1: a flush LSN is confirmed to the slot only when
//! every change of every transaction committed at or before it is acknowledged.
//!
//! [`Checkpoint`] is a pure tracker. Transactions enter in stream order
//! (`begin` → `add_ops` → `commit`); acknowledgements arrive in any order; the
//! confirmed LSN is the largest `end_lsn` such that it and every earlier entry
//! are fully acknowledged. It never goes backwards. Tracking is a counter per
//! transaction, never a record per op, so a million-row transaction costs O(1).
//!
//! A `begin` while a transaction is still open means the reader reconnected
//! and the open transaction will be delivered again: it is abandoned (late
//! acks for it are ignored) and it blocks confirmation until a later
//! transaction whose commit LSN reaches its own is fully acknowledged — that
//! later transaction is its replay, or something after it.

use std::collections::VecDeque;

use crate::model::lsn::Lsn;

/// Handle of one tracked transaction, used to acknowledge its ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxTicket(pub u64);

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    /// A transaction; `end` is `None` until its Commit arrives.
    Tx {
        final_lsn: Lsn,
        outstanding: u64,
        /// Whether any op was ever added (its ticket may be referenced).
        had_ops: bool,
        end: Option<Lsn>,
    },
    /// Confirmable as soon as everything before it is: a keepalive's WAL end
    /// or a run of transactions that needed no writes.
    Done { lsn: Lsn },
    /// An open transaction the reader will deliver again. Done once the entry
    /// at `replaced_by` (a later transaction with a commit LSN at least as
    /// large) is done.
    Abandoned {
        final_lsn: Lsn,
        replaced_by: Option<u64>,
    },
}

/// Why an event could not be applied. The tracker's state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("commit at {0} without an open transaction")]
    CommitWithoutBegin(Lsn),
    #[error("ops added to transaction {0:?}, which is not open")]
    NotOpen(TxTicket),
}

/// The pure transaction/ack tracker. See the module docs.
#[derive(Debug)]
pub struct Checkpoint {
    /// Entries not yet confirmed, in stream order; `entries[i]` has sequence
    /// number `base + i`.
    entries: VecDeque<Entry>,
    base: u64,
    open: Option<u64>,
    /// Abandoned entries still waiting for the transaction that replays them.
    unreplaced: Vec<u64>,
    /// Abandoned entries still tracked (so the common case skips a scan).
    abandoned: usize,
    /// Transactions confirmed since the last `take_completed`.
    completed: Vec<TxTicket>,
    confirmed: Lsn,
}

impl Checkpoint {
    /// Start from the slot's confirmed position.
    pub fn new(start: Lsn) -> Checkpoint {
        Checkpoint {
            entries: VecDeque::new(),
            base: 0,
            open: None,
            unreplaced: Vec::new(),
            abandoned: 0,
            completed: Vec::new(),
            confirmed: start,
        }
    }

    /// The confirmed flush LSN: everything committed at or before it is
    /// durably applied.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Entries waiting for confirmation (for tests and metrics).
    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    /// Whether a transaction is open (Begin seen, Commit not yet).
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    fn next_seq(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = seq.checked_sub(self.base)?;
        self.entries.get_mut(i as usize)
    }

    fn get(&self, seq: u64) -> Option<&Entry> {
        let i = seq.checked_sub(self.base)?;
        self.entries.get(i as usize)
    }

    /// A transaction starts. Abandons a still-open one (reader reconnected).
    pub fn begin(&mut self, final_lsn: Lsn) -> TxTicket {
        if let Some(open) = self.open.take() {
            let old = self.get_mut(open).expect("open entry is tracked");
            let Entry::Tx { final_lsn: f, .. } = *old else {
                unreachable!("open entry is a transaction")
            };
            *old = Entry::Abandoned {
                final_lsn: f,
                replaced_by: None,
            };
            self.unreplaced.push(open);
            self.abandoned += 1;
        }
        let seq = self.next_seq();
        self.entries.push_back(Entry::Tx {
            final_lsn,
            outstanding: 0,
            had_ops: false,
            end: None,
        });
        // This transaction (or a later one) stands in for abandoned ones it
        // reaches: once it is done, they have been delivered again.
        let entries = &mut self.entries;
        let base = self.base;
        self.unreplaced.retain(|&a| {
            let Some(Entry::Abandoned {
                final_lsn: f,
                replaced_by,
            }) = entries.get_mut((a - base) as usize)
            else {
                return false;
            };
            if final_lsn >= *f {
                *replaced_by = Some(seq);
                false
            } else {
                true
            }
        });
        self.open = Some(seq);
        TxTicket(seq)
    }

    /// `n` more ops of the open transaction `tx` were handed to the indexer.
    pub fn add_ops(&mut self, tx: TxTicket, n: u64) -> Result<(), CheckpointError> {
        if self.open != Some(tx.0) {
            return Err(CheckpointError::NotOpen(tx));
        }
        match self.get_mut(tx.0) {
            Some(Entry::Tx {
                outstanding,
                had_ops,
                ..
            }) => {
                *outstanding += n;
                *had_ops |= n > 0;
                Ok(())
            }
            _ => Err(CheckpointError::NotOpen(tx)),
        }
    }

    /// The open transaction commits; its end LSN becomes confirmable once all
    /// its ops are acknowledged. Returns whether the confirmed LSN advanced.
    pub fn commit(&mut self, end_lsn: Lsn) -> Result<bool, CheckpointError> {
        let Some(seq) = self.open.take() else {
            return Err(CheckpointError::CommitWithoutBegin(end_lsn));
        };
        let entry = self.get_mut(seq).expect("open entry is tracked");
        let Entry::Tx { had_ops, end, .. } = entry else {
            unreachable!("open entry is a transaction")
        };
        *end = Some(end_lsn);
        if !*had_ops && self.is_back(seq) && !self.is_replacement(seq) {
            // Nothing to wait for and nothing refers to it: fold it into a
            // `Done` marker so runs of filtered transactions cost O(1).
            self.entries.pop_back();
            self.push_done(end_lsn);
        }
        Ok(self.advance())
    }

    /// A WAL position seen outside any transaction — a keepalive's WAL end,
    /// or the LSN of a non-transactional logical message such as a heartbeat
    /// (`source::heartbeat`): confirmable once everything before it is.
    /// While a transaction is open (a reconnect mid-transaction) it is
    /// ignored: it could lie past the open transaction.
    pub fn keepalive(&mut self, wal_end: Lsn) -> bool {
        if self.open.is_some() {
            return false;
        }
        self.push_done(wal_end);
        self.advance()
    }

    /// `n` ops of `tx` are done (written, stale, or dead-lettered). Acks for
    /// abandoned or unknown transactions are ignored. Returns whether the
    /// confirmed LSN advanced.
    pub fn ack(&mut self, tx: TxTicket, n: u64) -> bool {
        if let Some(Entry::Tx { outstanding, .. }) = self.get_mut(tx.0) {
            debug_assert!(*outstanding >= n, "more acks than ops for {tx:?}");
            *outstanding = outstanding.saturating_sub(n);
            self.advance()
        } else {
            false
        }
    }

    /// Transactions with ops that were confirmed since the last call, in
    /// stream order (for per-transaction bookkeeping such as metrics).
    pub fn take_completed(&mut self) -> Vec<TxTicket> {
        std::mem::take(&mut self.completed)
    }

    fn is_back(&self, seq: u64) -> bool {
        seq + 1 == self.next_seq()
    }

    fn is_replacement(&self, seq: u64) -> bool {
        self.abandoned > 0
            && self.entries.iter().any(|e| {
                matches!(e, Entry::Abandoned {
                replaced_by: Some(r),
                ..
            } if *r == seq)
            })
    }

    fn push_done(&mut self, lsn: Lsn) {
        if let Some(Entry::Done { lsn: last }) = self.entries.back_mut() {
            *last = (*last).max(lsn);
        } else {
            self.entries.push_back(Entry::Done { lsn });
        }
    }

    fn is_done(&self, seq: u64) -> bool {
        match self.get(seq) {
            None => seq < self.base,
            Some(Entry::Done { .. }) => true,
            Some(Entry::Tx {
                outstanding, end, ..
            }) => end.is_some() && *outstanding == 0,
            Some(Entry::Abandoned { replaced_by, .. }) => {
                replaced_by.is_some_and(|r| self.is_done(r))
            }
        }
    }

    fn advance(&mut self) -> bool {
        let before = self.confirmed;
        while !self.entries.is_empty() && self.is_done(self.base) {
            let lsn = match self.entries.pop_front().expect("not empty") {
                Entry::Done { lsn } => Some(lsn),
                Entry::Tx { end, .. } => {
                    self.completed.push(TxTicket(self.base));
                    end
                }
                Entry::Abandoned { .. } => {
                    self.abandoned -= 1;
                    None
                }
            };
            self.base += 1;
            if let Some(lsn) = lsn {
                self.confirmed = self.confirmed.max(lsn);
            }
        }
        self.confirmed > before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: u64) -> Lsn {
        Lsn(v)
    }

    #[test]
    fn a_transaction_is_confirmed_once_all_its_ops_are_acknowledged() {
        let mut c = Checkpoint::new(l(10));
        let t = c.begin(l(100));
        c.add_ops(t, 3).unwrap();
        assert!(!c.commit(l(110)).unwrap());
        assert!(!c.ack(t, 2));
        assert_eq!(c.confirmed(), l(10));
        assert!(c.ack(t, 1));
        assert_eq!(c.confirmed(), l(110));
        assert_eq!(c.pending(), 0);
        assert_eq!(c.take_completed(), vec![t]);
        assert!(c.take_completed().is_empty());
    }

    #[test]
    fn acks_before_commit_do_not_confirm_the_transaction() {
        let mut c = Checkpoint::new(l(0));
        let t = c.begin(l(100));
        c.add_ops(t, 2).unwrap();
        c.ack(t, 2);
        assert_eq!(c.confirmed(), l(0));
        assert!(c.commit(l(110)).unwrap());
        assert_eq!(c.confirmed(), l(110));
    }

    #[test]
    fn a_later_transaction_acknowledged_first_waits_for_the_earlier_one() {
        let mut c = Checkpoint::new(l(0));
        let a = c.begin(l(100));
        c.add_ops(a, 1).unwrap();
        c.commit(l(110)).unwrap();
        let b = c.begin(l(200));
        c.add_ops(b, 1).unwrap();
        c.commit(l(210)).unwrap();
        assert!(!c.ack(b, 1));
        assert_eq!(c.confirmed(), l(0), "must not pass the unacknowledged a");
        assert!(c.ack(a, 1));
        assert_eq!(c.confirmed(), l(210));
    }

    #[test]
    fn a_transaction_without_ops_is_done_at_commit() {
        let mut c = Checkpoint::new(l(0));
        c.begin(l(100));
        assert!(c.commit(l(110)).unwrap());
        assert_eq!(c.confirmed(), l(110));
    }

    #[test]
    fn runs_of_empty_transactions_behind_a_blocked_one_cost_one_entry() {
        let mut c = Checkpoint::new(l(0));
        let a = c.begin(l(100));
        c.add_ops(a, 1).unwrap();
        c.commit(l(110)).unwrap();
        for i in 0..1000u64 {
            c.begin(l(200 + i * 10));
            c.commit(l(205 + i * 10)).unwrap();
            c.keepalive(l(206 + i * 10));
        }
        assert_eq!(c.pending(), 2);
        assert_eq!(c.confirmed(), l(0));
        c.ack(a, 1);
        assert_eq!(c.confirmed(), l(206 + 999 * 10));
    }

    #[test]
    fn a_keepalive_is_confirmed_when_nothing_before_it_is_outstanding() {
        let mut c = Checkpoint::new(l(0));
        assert!(c.keepalive(l(50)));
        assert_eq!(c.confirmed(), l(50));
        let a = c.begin(l(100));
        c.add_ops(a, 1).unwrap();
        c.commit(l(110)).unwrap();
        assert!(!c.keepalive(l(500)));
        assert_eq!(c.confirmed(), l(50));
        c.ack(a, 1);
        assert_eq!(c.confirmed(), l(500));
    }

    #[test]
    fn a_heartbeat_behind_an_unacknowledged_transaction_waits_for_it() {
        // Unpublished WAL between transactions: the heartbeat's LSN lets the
        // slot move past it, but never past the unfinished transaction.
        let mut c = Checkpoint::new(l(0));
        let a = c.begin(l(100));
        c.add_ops(a, 2).unwrap();
        c.commit(l(110)).unwrap();
        assert!(!c.keepalive(l(9_000)), "heartbeat");
        c.ack(a, 1);
        assert_eq!(c.confirmed(), l(0));
        assert!(c.ack(a, 1));
        assert_eq!(c.confirmed(), l(9_000));
        let b = c.begin(l(9_100));
        c.add_ops(b, 1).unwrap();
        c.commit(l(9_110)).unwrap();
        assert!(!c.keepalive(l(20_000)));
        assert_eq!(c.confirmed(), l(9_000));
    }

    #[test]
    fn a_keepalive_inside_an_open_transaction_is_ignored() {
        let mut c = Checkpoint::new(l(0));
        let a = c.begin(l(100));
        c.add_ops(a, 1).unwrap();
        assert!(!c.keepalive(l(500)));
        c.ack(a, 1);
        c.commit(l(110)).unwrap();
        assert_eq!(c.confirmed(), l(110));
    }

    #[test]
    fn the_confirmed_lsn_never_goes_backwards() {
        let mut c = Checkpoint::new(l(1000));
        c.keepalive(l(10));
        assert_eq!(c.confirmed(), l(1000));
        c.begin(l(20));
        c.commit(l(30)).unwrap();
        assert_eq!(c.confirmed(), l(1000));
    }

    #[test]
    fn a_replay_abandons_the_open_transaction_and_ignores_its_late_acks() {
        let mut c = Checkpoint::new(l(0));
        let a = c.begin(l(100));
        c.add_ops(a, 2).unwrap();
        // Reconnect: the reader delivers the same transaction again.
        let a2 = c.begin(l(100));
        c.add_ops(a2, 2).unwrap();
        assert!(c.add_ops(a, 1).is_err(), "the abandoned one takes no ops");
        c.ack(a, 2);
        assert_eq!(c.confirmed(), l(0));
        c.commit(l(110)).unwrap();
        assert_eq!(c.confirmed(), l(0));
        c.ack(a2, 2);
        assert_eq!(c.confirmed(), l(110));
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn an_abandoned_transaction_blocks_until_its_replay_is_done() {
        let mut c = Checkpoint::new(l(0));
        // x committed but not yet acknowledged, then y open at the reconnect.
        let x = c.begin(l(100));
        c.add_ops(x, 1).unwrap();
        c.commit(l(110)).unwrap();
        let y = c.begin(l(200));
        c.add_ops(y, 1).unwrap();
        // Replay restarts at x (never confirmed), then y again.
        let x2 = c.begin(l(100));
        c.add_ops(x2, 1).unwrap();
        c.commit(l(110)).unwrap();
        c.ack(x, 1);
        c.ack(y, 1);
        c.ack(x2, 1);
        assert_eq!(c.confirmed(), l(110));
        // A keepalive before y's replay must not be confirmed past y.
        assert!(!c.keepalive(l(900)));
        assert_eq!(c.confirmed(), l(110));
        let y2 = c.begin(l(200));
        c.add_ops(y2, 1).unwrap();
        c.commit(l(210)).unwrap();
        assert_eq!(c.confirmed(), l(110));
        assert!(c.ack(y2, 1));
        assert_eq!(c.confirmed(), l(900));
    }

    #[test]
    fn an_abandoned_empty_transaction_is_replaced_by_its_replay() {
        let mut c = Checkpoint::new(l(0));
        c.begin(l(100));
        c.begin(l(100));
        assert!(c.commit(l(110)).unwrap());
        assert_eq!(c.confirmed(), l(110));
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn a_transaction_acknowledged_before_its_commit_is_reported_completed() {
        let mut c = Checkpoint::new(l(0));
        let t = c.begin(l(100));
        c.add_ops(t, 1).unwrap();
        c.ack(t, 1);
        c.commit(l(110)).unwrap();
        assert_eq!(c.take_completed(), vec![t]);
        let u = c.begin(l(200));
        assert_ne!(u, t, "tickets of transactions with ops are never reused");
    }

    #[test]
    fn a_commit_without_begin_is_an_error() {
        let mut c = Checkpoint::new(l(0));
        assert_eq!(
            c.commit(l(5)),
            Err(CheckpointError::CommitWithoutBegin(l(5)))
        );
    }

    #[test]
    fn acks_in_any_order_across_many_transactions_confirm_everything() {
        use rand::seq::SliceRandom;
        let mut rng = rand::rng();
        let mut c = Checkpoint::new(l(0));
        let mut acks = Vec::new();
        for i in 0..200u64 {
            let t = c.begin(l(1000 + i * 10));
            let n = i % 4;
            c.add_ops(t, n).unwrap();
            c.commit(l(1005 + i * 10)).unwrap();
            acks.extend(std::iter::repeat_n(t, n as usize));
        }
        acks.shuffle(&mut rng);
        let mut last = c.confirmed();
        for t in acks {
            c.ack(t, 1);
            assert!(c.confirmed() >= last);
            last = c.confirmed();
        }
        assert_eq!(c.confirmed(), l(1005 + 199 * 10));
        assert_eq!(c.pending(), 0);
    }
}
