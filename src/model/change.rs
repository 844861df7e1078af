//! The plain data types the source hands downstream.
//!
//! This is the contract between `source` (which produces it from pgoutput or
//! from snapshot reads) and `transform` (which consumes it). Values are
//! already converted to JSON here, so the transformer never looks at type OIDs.
//! `Datum::Unchanged` exists so an unchanged TOAST value can never be mistaken
//! for NULL (DESIGN invariant 6).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::model::lsn::Lsn;

/// A table as described by a pgoutput Relation message (or the catalog, for
/// snapshot reads). Shared by every change of that table via `Arc`.
///
/// Not a [`TableRef`](crate::model::TableRef) plus data: it is the table as
/// of one WAL position (OID, columns, key flags), which may differ from the
/// catalog now, and its name is compared on every change, so it keeps
/// `schema` and `name` as plain fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    /// The relation OID.
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

impl Relation {
    /// `schema.table`, the name mappings use.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Position of a column by name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// Primary key (`d`).
    Default,
    /// No old values at all (`n`).
    Nothing,
    /// Every column (`f`).
    Full,
    /// A unique index (`i`).
    Index,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity (primary key or chosen index).
    pub is_key: bool,
}

/// One column value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Null,
    /// An unchanged TOAST value that PostgreSQL did not send. Never write it
    /// as null: fill it from elsewhere or leave the field untouched.
    Unchanged,
    Value(serde_json::Value),
}

/// A row's values, in the order of `Relation::columns`.
pub type Row = Vec<Datum>;

/// The old row an UPDATE or DELETE carries.
#[derive(Debug, Clone, PartialEq)]
pub enum OldRow {
    /// Only the replica identity columns are set (`K`); the rest are `Null`.
    Key(Row),
    /// The whole old row (`O`, REPLICA IDENTITY FULL).
    Full(Row),
}

impl OldRow {
    pub fn row(&self) -> &Row {
        match self {
            OldRow::Key(r) | OldRow::Full(r) => r,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChangeKind {
    Insert {
        new: Row,
    },
    Update {
        /// Present when the key changed (`K`) or with REPLICA IDENTITY FULL (`O`).
        old: Option<OldRow>,
        new: Row,
    },
    Delete {
        old: OldRow,
    },
    /// The table was truncated (one `Change` per truncated relation).
    Truncate,
}

/// One row change of one committed transaction (or one snapshot row, as an
/// `Insert`).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub relation: Arc<Relation>,
    pub kind: ChangeKind,
    /// The version every write caused by this change carries: the
    /// transaction's commit LSN from its Begin message, or the snapshot's
    /// consistent point minus one (DESIGN invariants 2 and 4).
    pub version: Lsn,
    /// Commit time of the transaction (snapshot rows: the snapshot time).
    pub commit_time: DateTime<Utc>,
    /// The transaction's id from its Begin message (0 for snapshot rows and
    /// anything else not read from the stream). A re-read of the row must
    /// not run before this transaction is visible to other sessions: the
    /// stream can deliver a transaction between the moment its commit
    /// record is flushed and the moment it becomes visible.
    pub xid: u32,
}

/// What the replication stream yields, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// A transaction starts; `final_lsn` is its commit LSN (the version).
    Begin {
        final_lsn: Lsn,
        commit_time: DateTime<Utc>,
        xid: u32,
    },
    Change(Change),
    /// A transaction ends. Once all of its writes are acknowledged, `end_lsn`
    /// may be confirmed to the slot.
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
    },
    /// A logical decoding message (`pg_logical_emit_message`), e.g. a heartbeat.
    Message {
        lsn: Lsn,
        transactional: bool,
        prefix: String,
        content: Vec<u8>,
    },
    /// The server's WAL end from a keepalive, seen while no transaction was
    /// open: safe to confirm once everything before it is acknowledged.
    Keepalive {
        wal_end: Lsn,
    },
}
