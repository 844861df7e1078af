//! The `_bulk` wire format: NDJSON bodies rendered once into one buffer, and
//! the (filtered) response read back into per-item results.
//!
//! Every write carries `version_type=external_gte` and the op's version,
//! deletes included (DESIGN invariant 2).

use std::hash::{Hash, Hasher};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use super::classify::ActionKind;
use crate::model::{BulkOp, OpAction};

/// Query string for bulk requests: keep responses to what classification
/// needs (a few bytes per item instead of a few hundred).
pub const BULK_FILTER_PATH: &str = "errors,items.*.status,items.*.error.type,items.*.error.reason";

/// Append one op (action line, and the document for an index) to `buf`.
pub fn render_op(buf: &mut BytesMut, op: &BulkOp) {
    let action = match op.action {
        OpAction::Index { .. } => "index",
        OpAction::Delete => "delete",
    };
    buf.put_slice(b"{\"");
    buf.put_slice(action.as_bytes());
    buf.put_slice(b"\":{\"_index\":");
    put_json_str(buf, &op.index);
    buf.put_slice(b",\"_id\":");
    put_json_str(buf, &op.id);
    if let Some(r) = &op.routing {
        buf.put_slice(b",\"routing\":");
        put_json_str(buf, r);
    }
    if let (OpAction::Index { .. }, Some(p)) = (&op.action, &op.pipeline) {
        buf.put_slice(b",\"pipeline\":");
        put_json_str(buf, p);
    }
    buf.put_slice(b",\"version\":");
    buf.put_slice(itoa(op.version).as_bytes());
    buf.put_slice(b",\"version_type\":\"external_gte\"}}\n");
    if let OpAction::Index { doc } = &op.action {
        buf.put_slice(doc);
        buf.put_u8(b'\n');
    }
}

/// Render a whole request body.
pub fn render<'a>(ops: impl IntoIterator<Item = &'a BulkOp>, size_hint: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(size_hint);
    for op in ops {
        render_op(&mut buf, op);
    }
    buf.freeze()
}

fn put_json_str(buf: &mut BytesMut, s: &str) {
    let plain = s
        .bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f);
    if plain {
        buf.put_u8(b'"');
        buf.put_slice(s.as_bytes());
        buf.put_u8(b'"');
    } else {
        let escaped = serde_json::to_string(s).expect("a string always serializes");
        buf.put_slice(escaped.as_bytes());
    }
}

fn itoa(v: u64) -> String {
    v.to_string()
}

/// The bulk action of an op, for classification.
pub fn action_kind(op: &BulkOp) -> ActionKind {
    match op.action {
        OpAction::Index { .. } => ActionKind::Index,
        OpAction::Delete => ActionKind::Delete,
    }
}

/// Which concurrent worker an op goes to: the same (index, _id) always maps
/// to the same worker, so writes to one document stay in stream order.
pub fn partition(op: &BulkOp, workers: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    op.index.hash(&mut h);
    op.id.hash(&mut h);
    (h.finish() % workers.max(1) as u64) as usize
}

/// One item's result in a bulk response.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ItemResult {
    pub status: u16,
    #[serde(default)]
    pub error: Option<ItemError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ItemError {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Deserialize)]
struct ItemWrapper {
    #[serde(alias = "delete", alias = "create", alias = "update")]
    index: ItemResult,
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    items: Vec<ItemWrapper>,
}

/// Parse a (filtered) bulk response into item results, in request order.
pub fn parse_response(body: &[u8]) -> Result<Vec<ItemResult>, serde_json::Error> {
    let r: Response = serde_json::from_slice(body)?;
    Ok(r.items.into_iter().map(|w| w.index).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;
    use crate::model::OpOrigin;
    use crate::model::lsn::Lsn;

    fn op(id: &str, action: OpAction) -> BulkOp {
        BulkOp {
            action,
            index: Arc::from("items"),
            id: id.to_string(),
            routing: None,
            pipeline: None,
            version: 42,
            origin: OpOrigin {
                table: Arc::from("public.items"),
                key: format!("{{\"id\":{id}}}"),
                lsn: Lsn(42),
            },
        }
    }

    #[test]
    fn an_index_op_renders_as_a_versioned_action_line_and_its_document() {
        let body = render(
            [&op(
                "7",
                OpAction::Index {
                    doc: br#"{"a":1}"#.to_vec(),
                },
            )],
            0,
        );
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "{\"index\":{\"_index\":\"items\",\"_id\":\"7\",\"version\":42,\"version_type\":\"external_gte\"}}\n{\"a\":1}\n"
        );
    }

    #[test]
    fn a_delete_is_versioned_too_and_has_no_document_line() {
        let mut d = op("7", OpAction::Delete);
        d.routing = Some("r1".into());
        d.pipeline = Some(Arc::from("ignored-for-deletes"));
        let body = render([&d], 0);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "{\"delete\":{\"_index\":\"items\",\"_id\":\"7\",\"routing\":\"r1\",\"version\":42,\"version_type\":\"external_gte\"}}\n"
        );
    }

    #[test]
    fn ids_with_quotes_and_control_characters_are_escaped() {
        let mut o = op("x", OpAction::Delete);
        o.id = "a\"b\\c\nd".into();
        let body = render([&o], 0);
        let line = std::str::from_utf8(&body).unwrap().trim_end();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["delete"]["_id"], "a\"b\\c\nd");
    }

    #[test]
    fn ops_on_one_document_always_go_to_the_same_worker() {
        let a = op("17", OpAction::Delete);
        let b = op(
            "17",
            OpAction::Index {
                doc: b"{}".to_vec(),
            },
        );
        for n in 1..9 {
            assert_eq!(partition(&a, n), partition(&b, n));
            assert!(partition(&a, n) < n);
        }
    }

    #[test]
    fn documents_spread_over_all_workers() {
        let used: HashSet<usize> = (0..1000)
            .map(|i| partition(&op(&i.to_string(), OpAction::Delete), 4))
            .collect();
        assert_eq!(used.len(), 4);
    }

    #[test]
    fn a_filtered_response_parses_into_results_in_order() {
        let body = br#"{"errors":true,"items":[{"index":{"status":201}},{"delete":{"status":404}},
            {"index":{"status":400,"error":{"type":"document_parsing_exception","reason":"bad"}}}]}"#;
        let items = parse_response(body).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].status, 201);
        assert_eq!(items[1].status, 404);
        let e = items[2].error.as_ref().unwrap();
        assert_eq!(e.kind.as_deref(), Some("document_parsing_exception"));
        assert_eq!(e.reason.as_deref(), Some("bad"));
    }
}
