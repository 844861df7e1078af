//! "The index equals the table": the end state every end-to-end test
//! compares. A query's rows become the documents the index must hold, keyed
//! the way Sluice (or a test sink) builds `_id`; a mismatch is reported as
//! a diff (missing, extra and differing documents), never as a bare `false`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::es::Es;
use super::{SqlClient, json_rows};

/// The rows of `query` as documents: `_id` → row, where `_id` is the text
/// of the `keys` columns joined by `|` (a single key: its text).
pub async fn table_docs(
    db: &impl SqlClient,
    query: &str,
    keys: &[&str],
) -> BTreeMap<String, Value> {
    json_rows(db.sql_client(), query)
        .await
        .into_iter()
        .map(|row| (doc_id(row.as_object().expect("a row object"), keys), row))
        .collect()
}

/// A document id from a row's key columns, as the test sinks build it.
pub fn doc_id(row: &Map<String, Value>, keys: &[&str]) -> String {
    keys.iter()
        .map(|k| match &row[*k] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// `None` if `actual` holds exactly the `expected` documents, otherwise
/// what differs: counts, and up to five examples of each kind.
pub fn docs_diff(
    expected: &BTreeMap<String, Value>,
    actual: &BTreeMap<String, Value>,
) -> Option<String> {
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    let differ: Vec<_> = expected
        .iter()
        .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
        .map(|(k, v)| format!("{k}: table {v} vs index {}", actual[k]))
        .collect();
    if missing.is_empty() && extra.is_empty() && differ.is_empty() {
        return None;
    }
    let extra_docs: Vec<String> = extra
        .iter()
        .take(5)
        .map(|k| format!("{k}: {}", actual[*k]))
        .collect();
    Some(format!(
        "{} rows vs {} documents: {} missing (e.g. {:?}), {} extra, e.g.:\n{}\n{} differ:\n{}",
        expected.len(),
        actual.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra_docs.join("\n"),
        differ.len(),
        differ
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    ))
}

/// Assert that `index` holds exactly the rows of `query` (whole rows as
/// documents, `_id` from the `keys` columns) and nothing else.
pub async fn assert_index_matches(
    db: &impl SqlClient,
    es: &Es,
    index: &str,
    query: &str,
    keys: &[&str],
) {
    let expected = table_docs(db, query, keys).await;
    assert_index_holds(es, index, &expected, query).await;
}

/// Assert that `index` holds exactly `expected` (`_id` → `_source`);
/// `what` names the expectation in the failure message.
pub async fn assert_index_holds(
    es: &Es,
    index: &str,
    expected: &BTreeMap<String, Value>,
    what: &str,
) {
    let docs = es.all_docs(index).await;
    let actual: BTreeMap<String, Value> = docs
        .iter()
        .map(|(k, (_, s))| (k.clone(), s.clone()))
        .collect();
    if let Some(diff) = docs_diff(expected, &actual) {
        // The versions (commit LSNs) of what is wrong tell a stale write
        // from a missing one.
        let versions: Vec<String> = actual
            .keys()
            .filter(|k| expected.get(*k) != actual.get(*k))
            .take(5)
            .map(|k| format!("{k}: _version {}", docs[k].0))
            .collect();
        panic!(
            "index {index} does not match `{what}`: {diff}\nversions of extra and differing documents: {}",
            versions.join(", ")
        );
    }
}
