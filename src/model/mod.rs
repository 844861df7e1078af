//! The plain data that crosses every seam: log positions, table
//! references (one `TableRef`; `PublishedTable` for a table as the
//! publication and the snapshot read it), the catalog as data, decoded row
//! changes and the bulk operations made from them; and the one pure rule
//! two layers share that neither may import from the other (`secret`).
//! The one retry policy type every retry loop uses (`retry`).
//!
//! Rule: this module imports nothing from the rest of the crate, not even
//! in doc links, so every layer can depend on it and none of them on each
//! other through it. Nothing here runs SQL or does I/O. The version of
//! every change is its transaction's commit LSN (DESIGN invariant 2);
//! `Lsn` and `BulkOp::version` carry it.

pub mod catalog;
pub mod change;
pub mod lsn;
pub mod nested;
pub mod op;
pub mod retry;
pub mod secret;
pub mod table;

pub use catalog::{Catalog, CatalogColumn, CatalogTable, ForeignKey, TableStorage};
pub use change::{
    Change, ChangeKind, Column, Datum, OldRow, Relation, ReplicaIdentity, Row, SourceEvent,
};
pub use lsn::Lsn;
pub use nested::{DocChild, DocNode, DocTree, JoinPairs, Link, Place};
pub use op::{BulkOp, OpAction, OpOrigin, RejectedRow};
pub use retry::RetryPolicy;
pub use table::{PublishedTable, TableRef};
