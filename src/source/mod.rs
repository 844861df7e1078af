//! The source layer: reads PostgreSQL.
//!
//! Owns the replication connection, the pgoutput decoder, value conversion,
//! publication/slot management and snapshot reads. It yields `SourceEvent`s in
//! WAL order and keeps exact LSN bookkeeping: the version of every change is
//! its transaction's commit LSN (DESIGN invariant 2).
//!
//! Entry points:
//! - `run_reader(ReaderConfig, Option<ReplicationConnection>, mpsc::Sender<SourceEvent>,
//!   watch::Receiver<Lsn> /* flushed */, watch::Receiver<bool> /* shutdown */)`: the
//!   streaming task (status updates, reconnects with backoff).
//! - `ReplicationConnection::{connect, identify_system, create_slot, start_replication}`.
//! - `connect_sql`, `check_server`, `check_tables`, `ensure_publication`,
//!   `ensure_slot`, `drop_slot`, `drop_publication`, `fetch_rows_by_key`.
//! - `row_filter::validate_row_filter`: a mapping's filter is one expression
//!   before any SQL carries it; `auth_guard`: which password exchanges are
//!   answered over which transport (both connection kinds).
//! - `convert_text` / `TypeCatalog` / `ValueOptions` for snapshot reads, with
//!   sessions set up per `value::SESSION_SETTINGS` (`connect_sql` does that);
//!   `convert_binary` for binary values (same results as their text).
//!
//! After a reconnect the stream resumes from the slot's confirmed position,
//! so a `Begin` may arrive while the previous transaction was never
//! committed downstream: that transaction is being replayed whole.

pub mod auth_guard;
pub mod decoder;
pub mod error;
pub mod filter_check;
pub mod heartbeat;
pub mod inspect;
pub mod manage;
pub mod pg_config;
pub mod pgoutput;
pub mod reader;
pub mod replication;
pub mod row_filter;
pub mod sql;
pub mod tls;
pub mod types;
pub mod value;

pub use decoder::{Decoder, DecoderError};
pub use error::{ServerError, SourceError, is_retryable};
pub use manage::{
    PublicationChange, PublishedTable, SlotState, check_server, check_tables, connect_sql,
    drop_publication, drop_slot, ensure_publication, ensure_slot, fetch_rows_by_key, relation_oids,
};
pub use pg_config::{PgConfigError, PgConnectConfig, SslMode};
pub use reader::{ReaderConfig, run_reader};
pub use replication::{
    CreatedSlot, ReplMessage, ReplicationConnection, ReplicationStream, SnapshotAction, SystemInfo,
};
pub use types::{Conv, TypeCatalog, TypeInfo};
pub use value::binary::convert_binary;
pub use value::{
    InfiniteTime, NonFiniteFloat, NumericMode, ValueError, ValueOptions, convert_text,
};
