//! The plain data that crosses every seam: log positions, decoded row
//! changes and the bulk operations made from them, and the one retry policy
//! type every retry loop uses.
//!
//! Rule: this module imports nothing from the rest of the crate, so every
//! layer can depend on it and none of them on each other through it. The
//! version of every change is its transaction's commit LSN (DESIGN
//! invariant 2); `Lsn` and `BulkOp::version` carry it.

pub mod change;
pub mod lsn;
pub mod op;
pub mod retry;

pub use change::{
    Change, ChangeKind, Column, Datum, OldRow, Relation, ReplicaIdentity, Row, SourceEvent,
};
pub use lsn::Lsn;
pub use op::{BulkOp, OpAction, OpOrigin, RejectedRow};
pub use retry::RetryPolicy;
