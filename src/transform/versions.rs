//! `TxVersions`: the version of each write inside one transaction, so that
//! two different states of one document never carry the same version
//! (DESIGN invariant 2).
//!
//! Why: Elasticsearch does not cancel a bulk request the client gave up on
//! (timeout). Such a request can still apply after its retry and after later
//! batches. If an insert and an update of one row in one transaction both
//! carried the commit LSN, `external_gte` accepted the late, stale insert
//! (a tie) and the document stayed stale. So the k-th write (k from 0) of a
//! document `(index, _id)` inside a transaction gets `final_lsn + k`: a late
//! earlier write now has a lower version and is refused with 409.
//!
//! Why `final_lsn + k` cannot collide with another transaction: `final_lsn`
//! is where the transaction's commit record starts. A commit record is at
//! least 34 bytes: the record header `XLogRecord` (`SizeOfXLogRecord` = 24,
//! `src/include/access/xlogrecord.h`), a `XLogRecordDataHeaderShort` (2) and
//! `xl_xact_commit` (`MinSizeOfXactCommit` = 8, its `xact_time`,
//! `src/include/access/xact.h`); records also start MAXALIGNed. So the next
//! transaction's `final_lsn`, and the consistent point of any snapshot that
//! contains this transaction, is at least `final_lsn + 34`: with `k <= 31`
//! (`MAX_STEP`), `final_lsn + k` stays below both. A snapshot written at
//! `P - 1` is therefore still newer than every write of a transaction it
//! contains (`final_lsn + 31 < final_lsn + 34 <= P`) and older than every
//! streamed write (`>= final_lsn >= P`), as invariant 4 needs.
//!
//! Deterministic: k depends only on the ops of the transaction in stream
//! order, so a replay after a crash (which always starts at a transaction's
//! Begin) computes the same versions.
//!
//! Bounded memory: an exact map for the first `EXACT_DOCS` documents of a
//! transaction, then a fixed array of `HASHED_BUCKETS` counters indexed by a
//! fixed hash of the document (a stable FNV-1a, not the std hasher, whose
//! algorithm may change between Rust releases and so between a crash and the
//! replay by an upgraded binary). Documents sharing a bucket share a counter:
//! their versions still grow with each write, they just skip numbers.
//!
//! Past the cap (a document written more than 32 times in one transaction,
//! or a saturated bucket), writes keep `final_lsn + 31`: those ties are the
//! pre-existing exposure, now limited to that case. It is still correct
//! whenever no request is abandoned on timeout: one document always goes to
//! the same bulk worker, which resolves a batch fully before sending the
//! next, and Elasticsearch applies a request's items in order, so equal
//! versions land in stream order and `external_gte` keeps the last.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::BulkOp;

/// The highest step added to `final_lsn`: below the 34-byte minimum size of
/// a commit record (see the module docs).
pub const MAX_STEP: u8 = 31;

/// Documents of one transaction counted exactly before the hashed counters.
const EXACT_DOCS: usize = 4096;

/// Hashed counters for the documents of huge transactions (1 MiB, allocated
/// only when a transaction has more than `EXACT_DOCS` documents).
const HASHED_BUCKETS: usize = 1 << 20;

/// Per-transaction write counters; see the module docs.
pub struct TxVersions {
    /// The open transaction's commit LSN (the version base).
    base: u64,
    /// Index → `_id` → writes so far: looked up by the borrowed `_id`, so
    /// a document's later writes allocate nothing.
    exact: HashMap<Arc<str>, HashMap<String, u8>>,
    /// Documents in `exact`, all indices together.
    exact_docs: usize,
    hashed: Option<Box<[u8]>>,
}

impl Default for TxVersions {
    fn default() -> Self {
        TxVersions::new()
    }
}

impl TxVersions {
    pub fn new() -> TxVersions {
        TxVersions {
            base: 0,
            exact: HashMap::new(),
            exact_docs: 0,
            hashed: None,
        }
    }

    /// A transaction with commit LSN `final_lsn` begins: every counter
    /// starts again at 0 (also when the same transaction is delivered again
    /// after a reconnect).
    pub fn begin(&mut self, final_lsn: u64) {
        self.base = final_lsn;
        // Clearing drops the per-index maps, so memory stays bounded.
        self.exact.clear();
        self.exact_docs = 0;
        // Dropped rather than zeroed: most transactions never need it.
        self.hashed = None;
    }

    /// The version of the next write of `(index, id)` in the open
    /// transaction, whose commit LSN is `final_lsn` (a change of another
    /// transaction than the one begun starts a new count).
    pub fn next(&mut self, final_lsn: u64, index: &Arc<str>, id: &str) -> u64 {
        if final_lsn != self.base {
            self.begin(final_lsn);
        }
        let step = self.step(index, id);
        final_lsn.saturating_add(step as u64)
    }

    /// Stamp `ops`, the writes of one change of the open transaction in
    /// stream order, each with the version its place in the transaction
    /// gives it (their own `version` is the commit LSN).
    pub fn stamp(&mut self, ops: &mut [BulkOp]) {
        for op in ops {
            op.version = self.next(op.version, &op.index, &op.id);
        }
    }

    fn step(&mut self, index: &Arc<str>, id: &str) -> u8 {
        let ids = match self.exact.get_mut(index) {
            Some(ids) => ids,
            None => self.exact.entry(index.clone()).or_default(),
        };
        if let Some(n) = ids.get_mut(id) {
            let step = *n;
            *n = n.saturating_add(1).min(MAX_STEP);
            return step;
        }
        if self.exact_docs < EXACT_DOCS {
            ids.insert(id.to_string(), 1.min(MAX_STEP));
            self.exact_docs += 1;
            return 0;
        }
        let buckets = self
            .hashed
            .get_or_insert_with(|| vec![0u8; HASHED_BUCKETS].into_boxed_slice());
        let slot = &mut buckets[(fnv1a(index, id) % HASHED_BUCKETS as u64) as usize];
        let step = *slot;
        *slot = slot.saturating_add(1).min(MAX_STEP);
        step
    }
}

/// 64-bit FNV-1a over the index name, a separator and the id: fixed forever,
/// so a replay by another build computes the same buckets.
fn fnv1a(index: &str, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in index.bytes().chain([0xff]).chain(id.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn the_kth_write_of_a_document_in_a_transaction_gets_final_lsn_plus_k() {
        let mut v = TxVersions::new();
        let i = idx("items");
        v.begin(1000);
        assert_eq!(v.next(1000, &i, "1"), 1000);
        assert_eq!(v.next(1000, &i, "1"), 1001);
        assert_eq!(v.next(1000, &i, "2"), 1000, "another document counts alone");
        assert_eq!(v.next(1000, &idx("other"), "1"), 1000, "another index too");
        assert_eq!(v.next(1000, &i, "1"), 1002);
    }

    #[test]
    fn every_transaction_counts_from_zero_again() {
        let mut v = TxVersions::new();
        let i = idx("items");
        v.begin(1000);
        v.next(1000, &i, "1");
        v.next(1000, &i, "1");
        v.begin(2000);
        assert_eq!(v.next(2000, &i, "1"), 2000);
        // The same transaction delivered again (a reader reconnect).
        v.begin(2000);
        assert_eq!(v.next(2000, &i, "1"), 2000);
        // A change of another transaction without its Begin starts over too.
        assert_eq!(v.next(3000, &i, "1"), 3000);
    }

    #[test]
    fn a_replay_computes_the_same_versions() {
        let run = || {
            let mut v = TxVersions::new();
            v.begin(5000);
            let i = idx("items");
            (0..20_000u32)
                .map(|n| v.next(5000, &i, &(n % 7000).to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn versions_stop_growing_at_the_cap() {
        let mut v = TxVersions::new();
        let i = idx("items");
        v.begin(1000);
        let got: Vec<u64> = (0..40).map(|_| v.next(1000, &i, "1")).collect();
        assert_eq!(got[..32], (1000..1032).collect::<Vec<_>>()[..]);
        assert!(got[32..].iter().all(|&x| x == 1000 + MAX_STEP as u64));
    }

    #[test]
    fn the_cap_stays_below_the_smallest_commit_record() {
        // 24 (XLogRecord) + 2 (XLogRecordDataHeaderShort) + 8 (xact_time).
        const MIN_COMMIT_RECORD: u64 = 24 + 2 + 8;
        assert!((MAX_STEP as u64) < MIN_COMMIT_RECORD - 1);
    }

    #[test]
    fn documents_beyond_the_exact_map_still_get_increasing_versions() {
        let mut v = TxVersions::new();
        let i = idx("items");
        v.begin(1000);
        for n in 0..EXACT_DOCS {
            assert_eq!(v.next(1000, &i, &n.to_string()), 1000);
        }
        assert!(v.hashed.is_none(), "small transactions need no buckets");
        // Past the exact map: every document's writes still grow (a bucket
        // shared with another document only skips numbers).
        for n in EXACT_DOCS..EXACT_DOCS + 50_000 {
            let id = format!("big-{n}");
            let a = v.next(1000, &i, &id);
            let b = v.next(1000, &i, &id);
            assert!(b > a, "{id}: {a} then {b}");
        }
        assert_eq!(v.exact_docs, EXACT_DOCS, "the exact map stays bounded");
        // Documents of the exact map stay exact.
        assert_eq!(v.next(1000, &i, "0"), 1001);
        v.begin(2000);
        assert!(v.hashed.is_none(), "the next transaction starts small");
    }

    #[test]
    fn stamping_a_change_uses_its_ops_commit_lsn_as_the_base() {
        use crate::model::lsn::Lsn;
        use crate::model::{OpAction, OpOrigin};
        let op = |id: &str| BulkOp {
            action: OpAction::Delete,
            index: idx("items"),
            id: id.into(),
            routing: None,
            pipeline: None,
            version: 700,
            origin: OpOrigin {
                table: Arc::from("public.items"),
                key: String::new(),
                lsn: Lsn(700),
            },
        };
        let mut v = TxVersions::new();
        v.begin(700);
        let mut ops = vec![op("1"), op("2"), op("1")];
        v.stamp(&mut ops);
        assert_eq!(
            ops.iter().map(|o| o.version).collect::<Vec<_>>(),
            [700, 700, 701]
        );
        assert!(ops.iter().all(|o| o.origin.lsn == Lsn(700)), "origin kept");
    }
}
