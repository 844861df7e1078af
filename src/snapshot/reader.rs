//! One snapshot reader: a connection inside the exported snapshot that reads
//! chunks with `COPY (SELECT ...) TO STDOUT` and turns rows into `Insert`
//! changes versioned P − 1 (DESIGN invariant 4).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_postgres::Client;

use crate::model::change::{Change, ChangeKind, Datum};
use crate::model::lsn::Lsn;

use super::catalog::TableInfo;
use super::copy_text;
use super::error::SnapshotError;
use super::plan::Chunk;
use super::seams::{AckFuture, SnapshotSink, ValueConverter};
use crate::source::sql::{quote_ident, quote_literal};

/// Start a read-only REPEATABLE READ transaction that sees exactly the
/// exported snapshot `name`.
pub async fn import_snapshot(client: &Client, name: &str) -> Result<(), SnapshotError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    client
        .batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", quote_literal(name)))
        .await?;
    Ok(())
}

/// The statement that reads one chunk: the relation's columns (by name, so
/// a partition with a different column order still lines up), the chunk's
/// range and the mapping's row filter.
pub fn chunk_copy_sql(table: &TableInfo, chunk: &Chunk) -> String {
    if let Some(tree) = &table.documents {
        let from = format!("ONLY {}", chunk.leaf_sql);
        let select = crate::source::nested::documents_from(tree, &from, &chunk.bounds.predicate());
        return format!("COPY ({select}) TO STDOUT");
    }
    let cols = if table.relation.columns.is_empty() {
        String::new()
    } else {
        table
            .relation
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let filter = match &table.spec.row_filter {
        Some(f) => format!(" AND ({f})"),
        None => String::new(),
    };
    format!(
        "COPY (SELECT {cols} FROM ONLY {} WHERE ({}){filter}) TO STDOUT",
        chunk.leaf_sql,
        chunk.bounds.predicate()
    )
}

/// What every row of one table shares.
pub struct RowContext {
    pub table: Arc<TableInfo>,
    pub converter: ValueConverter,
    /// P − 1.
    pub version: Lsn,
    pub commit_time: DateTime<Utc>,
    pub batch_rows: usize,
}

/// Read one chunk and hand its rows to `sink` in batches. Returns the rows
/// read and the acknowledgements of every batch: the chunk is durable once
/// all of them resolve.
pub async fn read_chunk(
    client: &Client,
    ctx: &RowContext,
    chunk: &Chunk,
    sink: &dyn SnapshotSink,
    mut on_rows: impl FnMut(u64),
) -> Result<(u64, Vec<AckFuture>), SnapshotError> {
    let table_name = ctx.table.relation.qualified_name();
    let rel = &ctx.table.relation;
    let ncols = rel.columns.len();
    let stream = client
        .copy_out(chunk_copy_sql(&ctx.table, chunk).as_str())
        .await?;
    futures::pin_mut!(stream);
    let mut acks = Vec::new();
    let mut batch: Vec<Change> = Vec::with_capacity(ctx.batch_rows);
    let mut texts: Vec<Option<String>> = Vec::with_capacity(ncols);
    let mut rows = 0u64;
    // Rows (not changes: a document row of a table with flat mappings too
    // is two) in the batch not yet reported.
    let mut in_batch = 0u64;
    // Each CopyData message of COPY TO carries exactly one row; tolerate
    // several anyway by splitting on newlines (raw newlines end rows).
    while let Some(data) = stream.next().await {
        let data = data?;
        for line in data
            .split_inclusive(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            copy_text::parse_row(line, ncols, &mut texts).map_err(|source| {
                SnapshotError::Copy {
                    table: table_name.clone(),
                    source,
                }
            })?;
            let mut row = Vec::with_capacity(ncols);
            for (col, text) in rel.columns.iter().zip(texts.drain(..)) {
                row.push(match text {
                    None => Datum::Null,
                    Some(t) => {
                        Datum::Value((ctx.converter)(col.type_oid, &t).map_err(|message| {
                            SnapshotError::Convert {
                                table: table_name.clone(),
                                column: col.name.clone(),
                                type_oid: col.type_oid,
                                message,
                            }
                        })?)
                    }
                });
            }
            if let Some(flat) = &ctx.table.flat {
                batch.push(Change {
                    relation: flat.clone(),
                    kind: ChangeKind::Insert {
                        new: row[..flat.columns.len()].to_vec(),
                    },
                    version: ctx.version,
                    commit_time: ctx.commit_time,
                    xid: 0,
                });
            }
            if let Some(tree) = &ctx.table.documents {
                related_values(tree, &mut row, &*ctx.converter).map_err(|message| {
                    SnapshotError::Convert {
                        table: table_name.clone(),
                        column: "relations".into(),
                        type_oid: 0,
                        message,
                    }
                })?;
            }
            batch.push(Change {
                relation: rel.clone(),
                kind: ChangeKind::Insert { new: row },
                version: ctx.version,
                commit_time: ctx.commit_time,
                xid: 0,
            });
            rows += 1;
            in_batch += 1;
            if batch.len() >= ctx.batch_rows {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(ctx.batch_rows));
                acks.push(sink.write(full).await?);
                on_rows(std::mem::take(&mut in_batch));
            }
        }
    }
    if !batch.is_empty() {
        acks.push(sink.write(batch).await?);
        on_rows(in_batch);
    }
    Ok((rows, acks))
}

/// A nested document row's related fields, read as JSON of text values,
/// with each value converted by its column's type.
fn related_values(
    tree: &crate::model::DocTree,
    row: &mut [Datum],
    conv: crate::source::nested::Convert<'_>,
) -> Result<(), String> {
    let n = tree.root.columns.len();
    for (i, c) in tree.root.children.iter().enumerate() {
        let raw = match std::mem::replace(&mut row[n + i], Datum::Null) {
            Datum::Value(v) => v,
            _ => serde_json::Value::Null,
        };
        row[n + i] = Datum::Value(crate::source::nested::convert_child(raw, c, conv)?);
    }
    Ok(())
}
