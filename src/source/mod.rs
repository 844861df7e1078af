//! The source layer: reads PostgreSQL.
//!
//! Owns the replication connection, the pgoutput decoder, value conversion,
//! publication/slot management, the table catalog and snapshot reads. It
//! yields `SourceEvent`s in WAL order and keeps exact LSN bookkeeping: the
//! version of every change is its transaction's commit LSN (DESIGN
//! invariant 2).
//!
//! Rules kept here:
//! - source never sees sink (or transform) types: it speaks `model` only,
//!   and what it hands out is plain data (`SourceEvent`, `Row`, `Catalog`);
//! - SQL lives only here and in the snapshot reader (`snapshot::reader`):
//!   every other layer asks source (e.g. `catalog` for tables, keys and
//!   replica identities, which config validates mappings against);
//! - one quoting of identifiers and literals (`sql`), one catalog reader
//!   (`catalog`);
//! - nothing here changes the application's data; DDL is limited to the
//!   publication and the slot, under a short lock timeout.
//!
//! Entry points:
//! - `run_reader(ReaderConfig, Option<ReplicationConnection>, mpsc::Sender<SourceEvent>,
//!   watch::Receiver<Lsn> /* flushed */, watch::Receiver<bool> /* shutdown */)`: the
//!   streaming task (status updates, reconnects with backoff).
//! - `ReplicationConnection::{connect, identify_system, create_slot, start_replication}`.
//! - `connect_sql`, `check_server`, `check_tables`, `ensure_publication`,
//!   `ensure_slot`, `drop_slot`, `drop_publication` (`manage`);
//!   `fetch_rows_by_key` (`rows_by_key`); `catalog::read_schemas`,
//!   `read_table`, `read_relation`, `leaf_oids`, `storage` (`catalog`).
//! - `standby`: who holds the slot (or is loading it), and the session
//!   marks a standby and a loader show to `sluice status`.
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
pub mod catalog;
pub mod decoder;
pub mod error;
pub mod filter_check;
pub mod heartbeat;
pub mod inspect;
pub mod liveness;
pub mod manage;
pub mod nested;
pub mod pg_config;
pub mod pgoutput;
pub mod publication_guard;
pub mod reader;
pub mod replication;
pub mod row_filter;
pub mod rows_by_key;
pub mod sql;
pub mod standby;
pub mod tls;
pub mod types;
pub mod value;

pub use decoder::{Decoder, DecoderError};
pub use error::{ServerError, SourceError, is_retryable};
pub use manage::{
    PublicationChange, SlotState, check_server, check_tables, connect_sql, drop_publication,
    drop_slot, ensure_publication, ensure_slot,
};
pub use pg_config::{PgConfigError, PgConnectConfig, SslMode};
pub use reader::{ReaderConfig, run_reader};
pub use replication::{
    CreatedSlot, ReplMessage, ReplicationConnection, ReplicationStream, SnapshotAction, SystemInfo,
};
pub use rows_by_key::{fetch_rows_by_key, transaction_visible};
pub use types::{Conv, TypeCatalog, TypeInfo};
pub use value::binary::convert_binary;
pub use value::{
    InfiniteTime, NonFiniteFloat, NumericMode, ValueError, ValueOptions, convert_text,
};
