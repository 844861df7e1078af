//! The pure half of `sluice verify`: what one expected document and what
//! Elasticsearch holds for it say about drift, at the snapshot's point P.
//!
//! The version rule: every write carries the commit LSN of the change that
//! made it (DESIGN invariant 2), and a transaction the snapshot does not
//! contain commits at or after P (invariant 4). So a document whose version
//! is ≥ P was written by a change the snapshot cannot see: it is the
//! stream's newer work, never drift. A document older than P, once the
//! stream has applied everything up to P, must equal the row at P.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use serde_json::Value;

use crate::model::lsn::Lsn;
use crate::sink::doc_reads::FoundDoc;

/// What the comparison of one document says.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Equal,
    /// Written after P: not drift.
    Newer,
    /// A row at P and no document: to be confirmed (the row may have been
    /// deleted after P, and the delete applied already).
    MissingCandidate,
    /// A document older than P that should not exist (soft-deleted row).
    Extra,
    /// Different content; the top-level fields that differ.
    Stale(Vec<String>),
}

/// Compare what the transformer made of the row at P (`expected`: the
/// document, or `None` when the row's document must not exist) with what
/// Elasticsearch holds. `content` is false for a mapping whose documents
/// pass an ingest pipeline: their stored form is not the transformer's.
pub fn judge(
    expected: Option<&Value>,
    found: Option<&FoundDoc>,
    point: Lsn,
    content: bool,
) -> Verdict {
    match (expected, found) {
        (_, Some(f)) if f.version >= point.0 => Verdict::Newer,
        (None, None) => Verdict::Equal,
        (None, Some(_)) => Verdict::Extra,
        (Some(_), None) => Verdict::MissingCandidate,
        (Some(_), Some(_)) if !content => Verdict::Equal,
        (Some(e), Some(f)) => {
            let fields = differing_fields(e, &f.source);
            if fields.is_empty() {
                Verdict::Equal
            } else {
                Verdict::Stale(fields)
            }
        }
    }
}

/// The top-level fields whose values differ (present on one side only
/// included); empty when the documents are equal as JSON, whatever their
/// key order.
pub fn differing_fields(expected: &Value, found: &Value) -> Vec<String> {
    if expected == found {
        return Vec::new();
    }
    match (expected.as_object(), found.as_object()) {
        (Some(a), Some(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .cloned()
                .collect()
        }
        _ => vec!["(document)".to_string()],
    }
}

/// The 64-bit digest of a document id kept for the scan for extra
/// documents: eight bytes per row instead of the id itself, with a
/// collision chance (an extra document hidden by another row's id) of
/// about rows² / 2⁶⁵.
pub fn id_digest(id: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(version: u64, source: Value) -> FoundDoc {
        FoundDoc { version, source }
    }

    const P: Lsn = Lsn(1000);

    #[test]
    fn a_document_written_at_or_after_the_point_is_never_drift() {
        let row = json!({"n": 1});
        for v in [1000, 1001, u64::MAX] {
            let found = doc(v, json!({"n": 2}));
            assert_eq!(judge(Some(&row), Some(&found), P, true), Verdict::Newer);
            assert_eq!(judge(None, Some(&found), P, true), Verdict::Newer);
        }
    }

    #[test]
    fn an_older_document_must_equal_the_row_whatever_the_key_order() {
        let row = json!({"a": 1, "b": {"c": [1, 2]}});
        let same = doc(
            999,
            serde_json::from_str(r#"{"b":{"c":[1,2]},"a":1}"#).unwrap(),
        );
        assert_eq!(judge(Some(&row), Some(&same), P, true), Verdict::Equal);
        let edited = doc(5, json!({"a": 2, "b": {"c": [1, 2]}}));
        assert_eq!(
            judge(Some(&row), Some(&edited), P, true),
            Verdict::Stale(vec!["a".into()])
        );
        let old_build = doc(5, json!({"a": 1}));
        assert_eq!(
            judge(Some(&row), Some(&old_build), P, true),
            Verdict::Stale(vec!["b".into()])
        );
        // Behind an ingest pipeline only presence counts.
        assert_eq!(judge(Some(&row), Some(&edited), P, false), Verdict::Equal);
    }

    #[test]
    fn absence_on_either_side_is_missing_or_extra() {
        let row = json!({"a": 1});
        assert_eq!(judge(Some(&row), None, P, true), Verdict::MissingCandidate);
        assert_eq!(
            judge(None, Some(&doc(1, row.clone())), P, true),
            Verdict::Extra
        );
        assert_eq!(judge(None, None, P, true), Verdict::Equal);
    }

    #[test]
    fn digests_are_stable_within_a_run_and_tell_ids_apart() {
        assert_eq!(id_digest("7"), id_digest("7"));
        assert_ne!(id_digest("7"), id_digest("70"));
    }
}
