//! Chunk planning: split each table into ranges that readers take one at a
//! time and that are recorded as done one at a time.
//!
//! Keeps the resumability half of DESIGN invariant 4: the chunks of a table
//! cover its whole key space (the first range is open below, the last open
//! above), so rows inserted after planning are still read, and the plan is
//! stored once and reused when a run resumes under a new snapshot. Which row
//! a range holds may change between snapshots (a key or ctid changes), but
//! only through a change committed after the first snapshot, which the stream
//! delivers with a higher version — so the union stays exact.

use tokio_postgres::Client;

use super::catalog::{KeyColumn, KeyKind, Leaf, TableInfo};
use super::error::SnapshotError;
use crate::source::sql::{quote_ident, quote_literal};

/// One unit of reading and of recorded progress.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    /// Dense, 0-based within the table's plan.
    pub id: u32,
    /// The physical table this range belongs to.
    pub leaf_oid: u32,
    pub leaf_sql: String,
    pub bounds: Bounds,
}

/// `lo <= key < hi`; `None` is unbounded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Bounds {
    /// The whole leaf (small or empty tables).
    All,
    Integer {
        column: String,
        lo: Option<i64>,
        hi: Option<i64>,
    },
    /// Key tuples as their text forms, compared as typed row values.
    Tuple {
        columns: Vec<KeyColumn>,
        lo: Option<Vec<String>>,
        hi: Option<Vec<String>>,
    },
    /// Heap page ranges.
    Ctid { lo: Option<u64>, hi: Option<u64> },
}

impl Bounds {
    /// The SQL predicate selecting this range (`TRUE` for `All`).
    pub fn predicate(&self) -> String {
        let mut parts = Vec::new();
        match self {
            Bounds::All => {}
            Bounds::Integer { column, lo, hi } => {
                let c = quote_ident(column);
                if let Some(lo) = lo {
                    parts.push(format!("{c} >= {lo}"));
                }
                if let Some(hi) = hi {
                    parts.push(format!("{c} < {hi}"));
                }
            }
            Bounds::Tuple { columns, lo, hi } => {
                let cols = columns
                    .iter()
                    .map(|c| quote_ident(&c.name))
                    .collect::<Vec<_>>()
                    .join(", ");
                let tuple = |vals: &[String]| {
                    columns
                        .iter()
                        .zip(vals)
                        .map(|(c, v)| format!("{}::{}", quote_literal(v), c.sql_type))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                if let Some(lo) = lo {
                    parts.push(format!("ROW({cols}) >= ROW({})", tuple(lo)));
                }
                if let Some(hi) = hi {
                    parts.push(format!("ROW({cols}) < ROW({})", tuple(hi)));
                }
            }
            Bounds::Ctid { lo, hi } => {
                if let Some(lo) = lo {
                    parts.push(format!("ctid >= '({lo},0)'::tid"));
                }
                if let Some(hi) = hi {
                    parts.push(format!("ctid < '({hi},0)'::tid"));
                }
            }
        }
        if parts.is_empty() {
            "TRUE".into()
        } else {
            parts.join(" AND ")
        }
    }
}

/// Split `[min, max]` into about `n` contiguous ranges, the first open below
/// and the last open above.
pub fn integer_ranges(min: i64, max: i64, n: u64) -> Vec<(Option<i64>, Option<i64>)> {
    let span = max as i128 - min as i128 + 1;
    let n = (n.max(1) as i128).min(span.max(1));
    if n <= 1 {
        return vec![(None, None)];
    }
    let width = (span + n - 1) / n;
    let mut out = Vec::new();
    let mut lo: Option<i64> = None;
    let mut b = min as i128 + width;
    while b <= max as i128 {
        out.push((lo, Some(b as i64)));
        lo = Some(b as i64);
        b += width;
    }
    out.push((lo, None));
    out
}

/// Split `pages` heap pages into ranges of `per_chunk` pages, the last open
/// above (the table may grow).
pub fn page_ranges(pages: u64, per_chunk: u64) -> Vec<(Option<u64>, Option<u64>)> {
    let per_chunk = per_chunk.max(1);
    if pages <= per_chunk {
        return vec![(None, None)];
    }
    let mut out = Vec::new();
    let mut lo = None;
    let mut b = per_chunk;
    while b < pages {
        out.push((lo, Some(b)));
        lo = Some(b);
        b += per_chunk;
    }
    out.push((lo, None));
    out
}

/// Plan the chunks of a table, about `chunk_rows` rows each.
pub async fn plan_table(
    client: &Client,
    table: &TableInfo,
    chunk_rows: u64,
) -> Result<Vec<Chunk>, SnapshotError> {
    let chunk_rows = chunk_rows.max(1);
    let mut chunks = Vec::new();
    for leaf in &table.leaves {
        for bounds in plan_leaf(client, leaf, chunk_rows).await? {
            chunks.push(Chunk {
                id: chunks.len() as u32,
                leaf_oid: leaf.oid,
                leaf_sql: leaf.sql_name(),
                bounds,
            });
        }
    }
    Ok(chunks)
}

async fn plan_leaf(
    client: &Client,
    leaf: &Leaf,
    chunk_rows: u64,
) -> Result<Vec<Bounds>, SnapshotError> {
    match &leaf.key {
        KeyKind::Integer { column } => plan_integer(client, leaf, column, chunk_rows).await,
        KeyKind::Tuple { columns } => plan_tuple(client, leaf, columns, chunk_rows).await,
        KeyKind::Ctid => Ok(plan_ctid(leaf, chunk_rows)),
    }
}

/// Equal ranges between the key's minimum and maximum, as many as the
/// table's estimated rows fill.
async fn plan_integer(
    client: &Client,
    leaf: &Leaf,
    column: &str,
    chunk_rows: u64,
) -> Result<Vec<Bounds>, SnapshotError> {
    let c = quote_ident(column);
    let r = client
        .query_one(
            &format!(
                "SELECT min({c})::int8, max({c})::int8 FROM ONLY {}",
                leaf.sql_name()
            ),
            &[],
        )
        .await?;
    let (Some(min), Some(max)) = (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1)) else {
        return Ok(vec![Bounds::All]);
    };
    // Without statistics assume the keys are dense.
    let rows = if leaf.reltuples > 0.0 {
        leaf.reltuples as u64
    } else {
        (max as i128 - min as i128 + 1).min(u64::MAX as i128) as u64
    };
    Ok(integer_ranges(min, max, rows.div_ceil(chunk_rows))
        .into_iter()
        .map(|(lo, hi)| Bounds::Integer {
            column: column.to_string(),
            lo,
            hi,
        })
        .collect())
}

/// Walk the key index: each boundary is the key `chunk_rows` rows after
/// the previous one. One index-only pass over the keys.
async fn plan_tuple(
    client: &Client,
    leaf: &Leaf,
    columns: &[KeyColumn],
    chunk_rows: u64,
) -> Result<Vec<Bounds>, SnapshotError> {
    let table = leaf.sql_name();
    let cols = columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>();
    let text_cols = cols
        .iter()
        .map(|c| format!("{c}::text"))
        .collect::<Vec<_>>()
        .join(", ");
    let order = cols.join(", ");
    let range = |lo: Option<Vec<String>>, hi: Option<Vec<String>>| Bounds::Tuple {
        columns: columns.to_vec(),
        lo,
        hi,
    };
    let mut bounds = Vec::new();
    let mut lo: Option<Vec<String>> = None;
    loop {
        let from = match &lo {
            None => "TRUE".to_string(),
            Some(_) => range(lo.clone(), None).predicate(),
        };
        let sql = format!(
            "SELECT {text_cols} FROM ONLY {table} WHERE {from}
              ORDER BY {order} OFFSET {chunk_rows} LIMIT 1"
        );
        let Some(row) = client.query_opt(&sql, &[]).await? else {
            break;
        };
        let hi: Vec<String> = (0..columns.len()).map(|i| row.get(i)).collect();
        bounds.push(range(lo.take(), Some(hi.clone())));
        lo = Some(hi);
    }
    bounds.push(range(lo, None));
    Ok(bounds)
}

/// Heap page ranges of about `chunk_rows` rows each, by the table's density.
fn plan_ctid(leaf: &Leaf, chunk_rows: u64) -> Vec<Bounds> {
    let pages = leaf.pages.max(0) as u64;
    let rows_per_page = if leaf.reltuples > 0.0 && pages > 0 {
        (leaf.reltuples / pages as f64).max(1.0)
    } else {
        // Unknown density: a guess for narrow rows; only chunk size
        // depends on it, never correctness.
        60.0
    };
    let per_chunk = ((chunk_rows as f64) / rows_per_page).ceil() as u64;
    page_ranges(pages, per_chunk)
        .into_iter()
        .map(|(lo, hi)| Bounds::Ctid { lo, hi })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn integer_ranges_cover_everything_with_open_ends() {
        let r = integer_ranges(1, 100, 4);
        assert_eq!(
            r,
            vec![
                (None, Some(26)),
                (Some(26), Some(51)),
                (Some(51), Some(76)),
                (Some(76), None)
            ]
        );
    }

    #[test]
    fn integer_ranges_survive_the_extremes_of_int8() {
        let r = integer_ranges(i64::MIN, i64::MAX, 3);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].0, None);
        assert_eq!(r[2].1, None);
    }

    #[test]
    fn a_single_value_or_one_chunk_is_one_open_range() {
        assert_eq!(integer_ranges(5, 5, 10), vec![(None, None)]);
        assert_eq!(integer_ranges(1, 1000, 1), vec![(None, None)]);
    }

    #[test]
    fn page_ranges_leave_the_last_range_open_for_growth() {
        assert_eq!(page_ranges(0, 10), vec![(None, None)]);
        assert_eq!(
            page_ranges(25, 10),
            vec![(None, Some(10)), (Some(10), Some(20)), (Some(20), None)]
        );
    }

    #[test]
    fn predicates_quote_identifiers_and_literals() {
        let b = Bounds::Tuple {
            columns: vec![
                KeyColumn {
                    name: "we\"ird".into(),
                    sql_type: "text".into(),
                },
                KeyColumn {
                    name: "n".into(),
                    sql_type: "integer".into(),
                },
            ],
            lo: Some(vec!["O'Brien".into(), "3".into()]),
            hi: None,
        };
        assert_eq!(
            b.predicate(),
            "ROW(\"we\"\"ird\", \"n\") >= ROW('O''Brien'::text, '3'::integer)"
        );
        assert_eq!(
            Bounds::Ctid {
                lo: Some(10),
                hi: Some(20)
            }
            .predicate(),
            "ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid"
        );
        assert_eq!(Bounds::All.predicate(), "TRUE");
    }

    proptest! {
        #[test]
        fn integer_ranges_partition_the_key_space(min in -1000i64..1000, len in 0i64..5000, n in 1u64..50, probe in -3000i64..8000) {
            let max = min + len;
            let ranges = integer_ranges(min, max, n);
            let hits = ranges
                .iter()
                .filter(|(lo, hi)| lo.is_none_or(|lo| probe >= lo) && hi.is_none_or(|hi| probe < hi))
                .count();
            prop_assert_eq!(hits, 1);
            prop_assert!(ranges.len() as u64 <= n.max(1));
        }
    }
}
