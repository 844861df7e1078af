//! Dead letters: documents Elasticsearch refused for a reason retrying cannot
//! fix, stored with everything needed to replay them by hand (DESIGN
//! invariant 5: nothing is dropped silently).

use chrono::Utc;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::indices::IndexSpec;
use crate::model::{BulkOp, OpAction, OpOrigin, RejectedRow};

/// Documents larger than this are stored truncated, as a string, so the dead
/// letter itself always fits.
pub const MAX_STORED_DOC_BYTES: usize = 1 << 20;

/// The dead-letter record for `op`, refused with `status` and `error`.
pub fn record(op: &BulkOp, status: u16, error_type: &str, reason: &str) -> Value {
    let (action, doc, truncated) = match &op.action {
        OpAction::Delete => ("delete", Value::Null, false),
        OpAction::Index { doc } => {
            let (doc, truncated) = stored_doc(doc);
            ("index", doc, truncated)
        }
    };
    json!({
        "@timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "index": &*op.index,
        "id": op.id,
        "action": action,
        "routing": op.routing,
        "version": op.version,
        "status": status,
        "error": { "type": error_type, "reason": reason },
        "table": &*op.origin.table,
        "key": op.origin.key,
        "lsn": op.origin.lsn.to_string(),
        "doc": doc,
        "doc_truncated": truncated,
    })
}

/// The dead letter's `_id`: a digest of the refused write (target index,
/// document id, version, action and the document itself). A write replayed
/// after a crash is the same write, so its record is created once and the
/// replay gets a 409 instead of a second record. The document is part of it
/// because two different writes of one row can share a version (past the
/// per-transaction cap of `TxVersions`): without it the second record's
/// `create` got a 409 and counted as stored while only the first existed.
/// Hashed because document ids may be up to 512 bytes, the limit for the
/// dead letter's own id too.
pub fn record_id(op: &BulkOp) -> String {
    let (action, doc): (&str, &[u8]) = match &op.action {
        OpAction::Delete => ("delete", b""),
        OpAction::Index { doc } => ("index", doc),
    };
    let mut h = Sha256::new();
    for part in [
        op.index.as_bytes(),
        op.id.as_bytes(),
        action.as_bytes(),
        doc,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(op.version.to_be_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The write that stores `r` as a dead letter in `dead_letter_index`: an
/// ordinary bulk op, so the indexer retries it like any write and the
/// checkpoint passes the change only once it is durable (DESIGN invariants
/// 1 and 5). Versioned with the change's commit LSN like the document it
/// replaces; its `_id` is a digest of everything that tells two rejected
/// changes apart, so a replay overwrites its own record with the same
/// content instead of adding one.
pub fn rejected_row_op(r: &RejectedRow, dead_letter_index: &std::sync::Arc<str>) -> BulkOp {
    let (row, row_truncated) = stored_doc(&serde_json::to_vec(&r.row).expect("a Value serializes"));
    let old_row = r
        .old_row
        .as_ref()
        .map(|o| stored_doc(&serde_json::to_vec(o).expect("a Value serializes")).0);
    let record = json!({
        "@timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "stage": "transform",
        "mapping": &*r.mapping,
        "index": r.index,
        "id": Value::Null,
        "action": Value::Null,
        "change": r.change,
        "version": r.lsn.as_version(),
        "status": Value::Null,
        "error": { "type": r.kind, "reason": r.reason },
        "table": &*r.table,
        "key": r.key,
        "lsn": r.lsn.to_string(),
        "row": row,
        "old_row": old_row,
        "doc": Value::Null,
        "doc_truncated": row_truncated,
    });
    let mut h = Sha256::new();
    for part in [
        r.mapping.as_bytes(),
        r.table.as_bytes(),
        r.change.as_bytes(),
        r.key.as_bytes(),
        r.reason.as_bytes(),
        &serde_json::to_vec(&r.row).expect("a Value serializes"),
        &serde_json::to_vec(&r.old_row).expect("a Value serializes"),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(r.lsn.as_version().to_be_bytes());
    let id = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    BulkOp {
        action: OpAction::Index {
            doc: serde_json::to_vec(&record).expect("a Value serializes"),
        },
        index: dead_letter_index.clone(),
        id,
        routing: None,
        pipeline: None,
        version: r.lsn.as_version(),
        origin: OpOrigin {
            table: r.table.clone(),
            key: r.key.clone(),
            lsn: r.lsn,
        },
    }
}

/// A stored document is never cut below this many bytes.
const MIN_STORED_DOC_BYTES: usize = 1024;

/// Halve the documents a dead-letter record stores (`doc`, `row`,
/// `old_row`), keeping them as text, for a cluster whose
/// `http.max_content_length` refused the record (HTTP 413): the record is
/// what says a change was rejected, so it must fit, even with less of the
/// document. False when nothing is left to cut.
pub fn shrink(body: &mut Value) -> bool {
    let mut shrunk = false;
    for field in ["doc", "row", "old_row"] {
        let text = match &body[field] {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if text.len() <= MIN_STORED_DOC_BYTES {
            continue;
        }
        let mut end = (text.len() / 2).max(MIN_STORED_DOC_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        body[field] = Value::String(text[..end].to_string());
        body["doc_truncated"] = Value::Bool(true);
        shrunk = true;
    }
    shrunk
}

/// The original document: as JSON when it parses and fits, else as a string.
fn stored_doc(doc: &[u8]) -> (Value, bool) {
    if doc.len() > MAX_STORED_DOC_BYTES {
        let mut end = MAX_STORED_DOC_BYTES;
        while end > 0 && !is_char_boundary(doc, end) {
            end -= 1;
        }
        let s = String::from_utf8_lossy(&doc[..end]).into_owned();
        return (Value::String(s), true);
    }
    match serde_json::from_slice::<Value>(doc) {
        Ok(v) => (v, false),
        Err(_) => (
            Value::String(String::from_utf8_lossy(doc).into_owned()),
            false,
        ),
    }
}

fn is_char_boundary(b: &[u8], i: usize) -> bool {
    i >= b.len() || (b[i] as i8) >= -0x40
}

/// The dead-letter index: the document is stored but not indexed
/// (`enabled: false`), so any document fits whatever its shape.
pub fn index_spec(name: &str) -> IndexSpec {
    IndexSpec {
        name: name.to_string(),
        settings: json!({ "index": { "number_of_replicas": 0 } }),
        mappings: json!({
            "dynamic": false,
            "properties": {
                "@timestamp": { "type": "date" },
                "index": { "type": "keyword" },
                "id": { "type": "keyword" },
                "action": { "type": "keyword" },
                "routing": { "type": "keyword" },
                "version": { "type": "long" },
                "status": { "type": "short" },
                "error": { "properties": {
                    "type": { "type": "keyword" },
                    "reason": { "type": "text" }
                } },
                "table": { "type": "keyword" },
                "key": { "type": "keyword" },
                "lsn": { "type": "keyword" },
                "doc": { "type": "object", "enabled": false },
                "doc_truncated": { "type": "boolean" },
                "stage": { "type": "keyword" },
                "mapping": { "type": "keyword" },
                "change": { "type": "keyword" },
                "row": { "type": "object", "enabled": false },
                "old_row": { "type": "object", "enabled": false }
            }
        }),
        alias: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::OpOrigin;
    use crate::model::lsn::Lsn;

    fn op(doc: &[u8]) -> BulkOp {
        BulkOp {
            action: OpAction::Index { doc: doc.to_vec() },
            index: Arc::from("items"),
            id: "7".into(),
            routing: None,
            pipeline: None,
            version: 0x16_B374_D848,
            origin: OpOrigin {
                table: Arc::from("public.items"),
                key: "{\"id\":7}".into(),
                lsn: Lsn(0x16_B374_D848),
            },
        }
    }

    #[test]
    fn a_record_too_large_for_the_cluster_is_halved_down_to_a_floor() {
        let doc = format!("{{\"note\":\"{}\"}}", "é".repeat(300_000));
        let mut r = record(&op(doc.as_bytes()), 413, "http_413", "too large");
        let before = r.to_string().len();
        assert!(shrink(&mut r));
        let after = r.to_string().len();
        assert!(after < before / 2 + 2048, "{before} -> {after}");
        assert_eq!(r["doc_truncated"], true);
        assert!(r["doc"].as_str().unwrap().starts_with("{\"note\":\"é"));
        while shrink(&mut r) {}
        let left = r["doc"].as_str().unwrap().len();
        assert!(
            (MIN_STORED_DOC_BYTES - 1..=MIN_STORED_DOC_BYTES).contains(&left),
            "{left}"
        );
        assert_eq!(r["error"]["type"], "http_413", "the rest is kept");
        let mut delete = record(&op(b"{}"), 413, "http_413", "x");
        delete["doc"] = Value::Null;
        assert!(!shrink(&mut delete), "nothing to cut");
    }

    #[test]
    fn a_record_names_the_target_the_error_and_the_source() {
        let r = record(
            &op(br#"{"n":"x"}"#),
            400,
            "document_parsing_exception",
            "bad n",
        );
        assert_eq!(r["index"], "items");
        assert_eq!(r["id"], "7");
        assert_eq!(r["action"], "index");
        assert_eq!(r["error"]["type"], "document_parsing_exception");
        assert_eq!(r["error"]["reason"], "bad n");
        assert_eq!(r["table"], "public.items");
        assert_eq!(r["key"], "{\"id\":7}");
        assert_eq!(r["lsn"], "16/B374D848");
        assert_eq!(r["doc"], json!({"n": "x"}));
        assert_eq!(r["doc_truncated"], false);
        assert!(r["@timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn a_replayed_write_gets_the_same_dead_letter_id_and_another_write_does_not() {
        let a = op(br#"{"n":"x"}"#);
        let id = record_id(&a);
        assert_eq!(id.len(), 32);
        assert_eq!(id, record_id(&op(br#"{"n":"x"}"#)));
        let mut newer = op(br#"{"n":"x"}"#);
        newer.version += 1;
        assert_ne!(id, record_id(&newer));
        let mut other_index = op(br#"{"n":"x"}"#);
        other_index.index = Arc::from("items2");
        assert_ne!(id, record_id(&other_index));
        let mut delete = op(b"");
        delete.action = OpAction::Delete;
        assert_ne!(id, record_id(&delete));
    }

    #[test]
    fn two_rejected_updates_of_one_row_in_one_transaction_get_two_dead_letter_ids() {
        // Same index, id, action and version: only the document differs.
        let first = op(br#"{"n":"x"}"#);
        let second = op(br#"{"n":"y"}"#);
        assert_ne!(record_id(&first), record_id(&second));
    }

    #[test]
    fn an_unparseable_document_is_kept_as_a_string() {
        let r = record(&op(b"{not json"), 400, "x", "y");
        assert_eq!(r["doc"], "{not json");
    }

    #[test]
    fn a_huge_document_is_truncated_on_a_character_boundary() {
        let mut doc = b"\"".to_vec();
        doc.extend("é".repeat(MAX_STORED_DOC_BYTES).as_bytes());
        let r = record(&op(&doc), 413, "x", "too large");
        let s = r["doc"].as_str().unwrap();
        assert!(s.len() <= MAX_STORED_DOC_BYTES);
        assert!(!s.contains('\u{FFFD}'));
        assert_eq!(r["doc_truncated"], true);
    }

    fn rejected(reason: &str) -> RejectedRow {
        RejectedRow {
            mapping: Arc::from("readings"),
            index: "readings".into(),
            table: Arc::from("public.readings"),
            change: "update",
            key: "{\"id\":7}".into(),
            lsn: Lsn(0x16_B374_D848),
            kind: "convert",
            reason: reason.into(),
            row: json!({"id": 7, "amount": "seven"}),
            old_row: None,
        }
    }

    #[test]
    fn a_rejected_row_is_a_versioned_write_to_the_dead_letter_index_with_its_values() {
        let dl: Arc<str> = Arc::from("dead");
        let op = rejected_row_op(&rejected("not a number"), &dl);
        assert_eq!(&*op.index, "dead");
        assert_eq!(op.version, 0x16_B374_D848);
        let OpAction::Index { doc } = &op.action else {
            panic!("an index write")
        };
        let r: Value = serde_json::from_slice(doc).unwrap();
        assert_eq!(r["stage"], "transform");
        assert_eq!(r["mapping"], "readings");
        assert_eq!(r["table"], "public.readings");
        assert_eq!(r["change"], "update");
        assert_eq!(r["key"], "{\"id\":7}");
        assert_eq!(r["lsn"], "16/B374D848");
        assert_eq!(
            r["error"],
            json!({"type": "convert", "reason": "not a number"})
        );
        assert_eq!(r["row"], json!({"id": 7, "amount": "seven"}));
        // A replay is the same record; another failure of the row is not.
        assert_eq!(op.id, rejected_row_op(&rejected("not a number"), &dl).id);
        assert_ne!(op.id, rejected_row_op(&rejected("other"), &dl).id);
    }
}
