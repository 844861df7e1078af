//! pgoutput messages → `SourceEvent`s, with the relation cache.
//!
//! Keeps the transaction context (Begin's `final_lsn` is the version of every
//! change until Commit — DESIGN invariant 2) and a cache of relations keyed
//! by relation id that follows Relation messages mid-stream, so an
//! `ALTER TABLE` changes how later rows decode. Each change is emitted as soon
//! as it is decoded: a transaction is never held whole (invariant 7).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::model::change::{Change, ChangeKind, Datum, OldRow, Relation, Row, SourceEvent};
use crate::model::lsn::Lsn;
use crate::source::pgoutput::{self, DecodeError, Message, OldTuple, TupleData, TupleValue};
use crate::source::types::{Conv, TypeCatalog};
use crate::source::value::binary::convert_binary;
use crate::source::value::{ValueError, ValueOptions, convert};

#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    #[error(transparent)]
    Malformed(#[from] DecodeError),
    #[error("pgoutput {kind} refers to relation {rel_id}, which no Relation message described")]
    UnknownRelation { kind: &'static str, rel_id: u32 },
    #[error("pgoutput {kind} for {table} has {got} columns, the relation has {want}")]
    ColumnCount {
        kind: &'static str,
        table: String,
        got: usize,
        want: usize,
    },
    #[error("pgoutput {kind} arrived outside a transaction")]
    OutsideTransaction { kind: &'static str },
    #[error("{table}.{column}: {source}")]
    Value {
        table: String,
        column: String,
        source: ValueError,
    },
}

struct CachedRelation {
    rel: Arc<Relation>,
    convs: Vec<Conv>,
}

/// Decoder state for one replication stream.
pub struct Decoder {
    relations: HashMap<u32, CachedRelation>,
    types: TypeCatalog,
    opts: ValueOptions,
    tx: Option<(Lsn, DateTime<Utc>, u32)>,
    pending_types: HashSet<u32>,
    /// Columns of an unknown type already warned about, as (relation id,
    /// column name, type OID): the server resends Relation messages after
    /// every reconnect and ALTER, and that must not repeat the warning.
    warned: HashSet<(u32, String, u32)>,
    /// A Relation message or new type knowledge arrived since the last scan
    /// for unknown types (keeps the scan off the per-row path).
    unscanned: bool,
}

/// PostgreSQL timestamps count microseconds from 2000-01-01 UTC.
pub fn pg_time(us: i64) -> DateTime<Utc> {
    const PG_EPOCH_US: i64 = 946_684_800_000_000;
    DateTime::from_timestamp_micros(us.saturating_add(PG_EPOCH_US)).unwrap_or_default()
}

impl Decoder {
    pub fn new(opts: ValueOptions, types: TypeCatalog) -> Decoder {
        Decoder {
            relations: HashMap::new(),
            types,
            opts,
            tx: None,
            pending_types: HashSet::new(),
            warned: HashSet::new(),
            unscanned: false,
        }
    }

    /// True between a Begin and its Commit.
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Forget the open transaction (after a reconnect, the server resends it whole).
    pub fn reset_transaction(&mut self) {
        self.tx = None;
    }

    /// Type OIDs seen in Relation messages that the catalog does not know
    /// yet; the reader looks them up and calls `set_types`.
    pub fn pending_types(&self) -> &HashSet<u32> {
        &self.pending_types
    }

    /// Replace the type catalog and re-resolve every cached relation.
    pub fn set_types(&mut self, types: TypeCatalog) {
        self.types = types;
        self.pending_types.clear();
        self.unscanned = true;
        for cached in self.relations.values_mut() {
            cached.convs = cached
                .rel
                .columns
                .iter()
                .map(|c| self.types.resolve(c.type_oid))
                .collect();
        }
    }

    pub fn types(&self) -> &TypeCatalog {
        &self.types
    }

    /// The cached relation for an id, if a Relation message described it.
    pub fn relation(&self, rel_id: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&rel_id).map(|c| &c.rel)
    }

    /// Decode one XLogData payload, appending the events it yields to `out`
    /// (none for Relation/Type/Origin, several for a multi-table Truncate).
    pub fn decode(&mut self, data: &[u8], out: &mut Vec<SourceEvent>) -> Result<(), DecoderError> {
        match pgoutput::parse(data)? {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                let commit_time = pg_time(commit_time);
                self.tx = Some((final_lsn, commit_time, xid));
                out.push(SourceEvent::Begin {
                    final_lsn,
                    commit_time,
                    xid,
                });
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                self.tx = None;
                out.push(SourceEvent::Commit {
                    commit_lsn,
                    end_lsn,
                });
            }
            Message::Origin { .. } => {}
            Message::Type {
                oid,
                namespace,
                name,
            } => {
                self.types.note_type_message(oid, namespace, name);
                if self.types.needs_lookup(oid) {
                    self.pending_types.insert(oid);
                }
            }
            Message::Relation(rel) => {
                for c in &rel.columns {
                    if self.types.needs_lookup(c.type_oid) {
                        self.pending_types.insert(c.type_oid);
                    }
                }
                let convs = rel
                    .columns
                    .iter()
                    .map(|c| self.types.resolve(c.type_oid))
                    .collect();
                self.relations.insert(
                    rel.id,
                    CachedRelation {
                        rel: Arc::new(rel),
                        convs,
                    },
                );
                self.unscanned = true;
            }
            Message::Insert { rel_id, new } => {
                let tx = self.tx("Insert")?;
                let c = self.cached("Insert", rel_id)?;
                let new = row("Insert", c, &new, &self.opts)?;
                out.push(change(c, ChangeKind::Insert { new }, tx));
            }
            Message::Update { rel_id, old, new } => {
                let tx = self.tx("Update")?;
                let c = self.cached("Update", rel_id)?;
                let old = old
                    .map(|o| old_row("Update", c, o, &self.opts))
                    .transpose()?;
                let new = row("Update", c, &new, &self.opts)?;
                out.push(change(c, ChangeKind::Update { old, new }, tx));
            }
            Message::Delete { rel_id, old } => {
                let tx = self.tx("Delete")?;
                let c = self.cached("Delete", rel_id)?;
                let old = old_row("Delete", c, old, &self.opts)?;
                out.push(change(c, ChangeKind::Delete { old }, tx));
            }
            Message::Truncate { rel_ids, .. } => {
                let tx = self.tx("Truncate")?;
                for rel_id in rel_ids {
                    let c = self.cached("Truncate", rel_id)?;
                    out.push(change(c, ChangeKind::Truncate, tx));
                }
            }
            Message::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => out.push(SourceEvent::Message {
                lsn,
                transactional,
                prefix: prefix.to_string(),
                content: content.to_vec(),
            }),
        }
        if self.unscanned {
            self.warn_unknown();
        }
        Ok(())
    }

    fn tx(&self, kind: &'static str) -> Result<(Lsn, DateTime<Utc>, u32), DecoderError> {
        self.tx.ok_or(DecoderError::OutsideTransaction { kind })
    }

    fn cached(&self, kind: &'static str, rel_id: u32) -> Result<&CachedRelation, DecoderError> {
        self.relations
            .get(&rel_id)
            .ok_or(DecoderError::UnknownRelation { kind, rel_id })
    }

    /// One warning per column of an unknown type, once its relation has
    /// been resolved as far as the catalog allows.
    fn warn_unknown(&mut self) {
        if !self.pending_types.is_empty() {
            return;
        }
        self.unscanned = false;
        for c in self.relations.values() {
            for (conv, col) in c.convs.iter().zip(&c.rel.columns) {
                if !conv.has_unknown()
                    || !self
                        .warned
                        .insert((c.rel.id, col.name.clone(), col.type_oid))
                {
                    continue;
                }
                tracing::warn!(
                    table = %c.rel.qualified_name(),
                    column = %col.name,
                    type_oid = col.type_oid,
                    "column has a type Sluice does not know; its values are indexed as text"
                );
            }
        }
    }
}

/// A change of the open transaction `(version, commit_time, xid)`.
fn change(
    c: &CachedRelation,
    kind: ChangeKind,
    (version, commit_time, xid): (Lsn, DateTime<Utc>, u32),
) -> SourceEvent {
    SourceEvent::Change(Change {
        relation: c.rel.clone(),
        kind,
        version,
        commit_time,
        xid,
    })
}

fn old_row(
    kind: &'static str,
    c: &CachedRelation,
    old: OldTuple<'_>,
    opts: &ValueOptions,
) -> Result<OldRow, DecoderError> {
    Ok(match old {
        OldTuple::Key(t) => OldRow::Key(row(kind, c, &t, opts)?),
        OldTuple::Full(t) => OldRow::Full(row(kind, c, &t, opts)?),
    })
}

fn row(
    kind: &'static str,
    c: &CachedRelation,
    t: &TupleData<'_>,
    opts: &ValueOptions,
) -> Result<Row, DecoderError> {
    if t.ncols != c.convs.len() {
        return Err(DecoderError::ColumnCount {
            kind,
            table: c.rel.qualified_name(),
            got: t.ncols,
            want: c.convs.len(),
        });
    }
    let mut out = Vec::with_capacity(t.ncols);
    for (i, (v, conv)) in t.iter().zip(&c.convs).enumerate() {
        out.push(match v {
            TupleValue::Null => Datum::Null,
            TupleValue::Unchanged => Datum::Unchanged,
            TupleValue::Text(bytes) => {
                let value_err = |source| DecoderError::Value {
                    table: c.rel.qualified_name(),
                    column: c.rel.columns[i].name.clone(),
                    source,
                };
                let text = std::str::from_utf8(bytes).map_err(|_| {
                    value_err(crate::source::value::verr("text", "", "not valid UTF-8"))
                })?;
                Datum::Value(convert(conv, text, opts).map_err(value_err)?)
            }
            TupleValue::Binary(bytes) => Datum::Value(
                convert_binary(c.rel.columns[i].type_oid, conv, bytes, opts).map_err(|source| {
                    DecoderError::Value {
                        table: c.rel.qualified_name(),
                        column: c.rel.columns[i].name.clone(),
                        source,
                    }
                })?,
            ),
        });
    }
    Ok(out)
}

#[cfg(test)]
#[path = "decoder_tests.rs"]
mod tests;
