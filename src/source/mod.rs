//! The source layer: reads PostgreSQL.
//!
//! Owns the replication connection, the pgoutput decoder, value conversion,
//! publication/slot management and snapshot reads. It yields `SourceEvent`s in
//! WAL order and keeps exact LSN bookkeeping: the version of every change is
//! its transaction's commit LSN (DESIGN invariant 2).

pub mod change;
pub mod decoder;
pub mod error;
pub mod manage;
pub mod pg_config;
pub mod pgoutput;
pub mod reader;
pub mod replication;
pub mod tls;
pub mod types;
pub mod value;
mod value_parse;

pub use change::{
    Change, ChangeKind, Column, Datum, OldRow, Relation, ReplicaIdentity, Row, SourceEvent,
};
pub use decoder::{Decoder, DecoderError};
pub use error::{ServerError, SourceError, is_retryable};
pub use manage::{
    PublicationChange, PublishedTable, SlotState, check_server, check_tables, connect_sql,
    drop_publication, drop_slot, ensure_publication, ensure_slot, fetch_rows_by_key,
};
pub use pg_config::{PgConfigError, PgConnectConfig, SslMode};
pub use reader::{ReaderConfig, run_reader};
pub use replication::{
    CreatedSlot, ReplMessage, ReplicationConnection, ReplicationStream, SnapshotAction, SystemInfo,
};
pub use types::{Conv, TypeCatalog, TypeInfo};
pub use value::{
    InfiniteTime, NonFiniteFloat, NumericMode, ValueError, ValueOptions, convert_text,
};
