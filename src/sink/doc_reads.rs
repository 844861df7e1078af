//! Reading documents back, for `sluice verify` and the dead-letter commands:
//! real-time multi-gets by id (what the bulk path wrote and Elasticsearch
//! acknowledged, refreshed or not) and a scroll over a whole index (ids,
//! routing and versions only), plus the dead-letter records.
//!
//! Only reads, and deletes of dead-letter records: documents themselves
//! are written through the indexer, versioned like every other write
//! (DESIGN invariant 2).

use elasticsearch::{ClearScrollParts, Elasticsearch, MgetParts, ScrollParts, SearchParts};
use serde_json::{Value, json};

use super::admin::{AdminError, found_json, json_ok};

/// How long Elasticsearch keeps a scroll context between two pages.
const SCROLL_KEEP_ALIVE: &str = "5m";

/// Where a document lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocRef {
    pub index: String,
    pub id: String,
    pub routing: Option<String>,
}

/// A document as a real-time get saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundDoc {
    /// Its (external) version: the commit LSN that wrote it, or for a
    /// document written by hand whatever Elasticsearch counted.
    pub version: u64,
    pub source: Value,
}

/// Real-time get of every `docs` entry, in order: `None` where there is no
/// document (or no index).
pub async fn mget(
    es: &Elasticsearch,
    docs: &[DocRef],
) -> Result<Vec<Option<FoundDoc>>, AdminError> {
    if docs.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: Vec<Value> = docs
        .iter()
        .map(|d| {
            let mut v = json!({"_index": d.index, "_id": d.id});
            if let Some(r) = &d.routing {
                v["routing"] = json!(r);
            }
            v
        })
        .collect();
    let sent = es
        .mget(MgetParts::None)
        .realtime(true)
        .body(json!({ "docs": wanted }))
        .send()
        .await;
    let body = json_ok("read documents back (mget)", sent).await?;
    let got = body["docs"].as_array().cloned().unwrap_or_default();
    if got.len() != docs.len() {
        return Err(AdminError::Item {
            what: "read documents back (mget)".into(),
            detail: format!("asked for {} documents, got {}", docs.len(), got.len()),
        });
    }
    got.into_iter()
        .map(|mut d| {
            if d["found"] == json!(true) {
                Ok(Some(FoundDoc {
                    version: d["_version"].as_u64().unwrap_or(0),
                    source: d["_source"].take(),
                }))
            } else if d.get("error").is_none()
                || d["error"]["type"] == json!("index_not_found_exception")
            {
                Ok(None)
            } else {
                Err(AdminError::Item {
                    what: format!("read document {} back", d["_id"]),
                    detail: d["error"].to_string(),
                })
            }
        })
        .collect()
}

/// A document as the index scan lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedDoc {
    /// The concrete index (the name may be an alias).
    pub index: String,
    pub id: String,
    pub routing: Option<String>,
    pub version: u64,
}

/// A scroll over every document of one index, a page at a time: what was
/// searchable when it opened (refresh first), without sources.
pub struct IndexScan {
    es: Elasticsearch,
    index: String,
    page_size: u64,
    scroll_id: Option<String>,
    done: bool,
}

impl IndexScan {
    pub fn new(es: &Elasticsearch, index: &str, page_size: u64) -> IndexScan {
        IndexScan {
            es: es.clone(),
            index: index.to_string(),
            page_size,
            scroll_id: None,
            done: false,
        }
    }

    /// The next page; empty when the scan is over (or the index missing).
    pub async fn next_page(&mut self) -> Result<Vec<ScannedDoc>, AdminError> {
        if self.done {
            return Ok(Vec::new());
        }
        let what = format!("scan index {}", self.index);
        let body = match &self.scroll_id {
            None => {
                let sent = self
                    .es
                    .search(SearchParts::Index(&[&self.index]))
                    .scroll(SCROLL_KEEP_ALIVE)
                    .body(json!({
                        "size": self.page_size,
                        "_source": false,
                        "version": true,
                        "sort": ["_doc"],
                        "query": {"match_all": {}}
                    }))
                    .send()
                    .await;
                found_json(what, sent).await?
            }
            Some(id) => {
                let sent = self
                    .es
                    .scroll(ScrollParts::None)
                    .body(json!({"scroll": SCROLL_KEEP_ALIVE, "scroll_id": id}))
                    .send()
                    .await;
                Some(json_ok(what, sent).await?)
            }
        };
        let Some(body) = body else {
            self.done = true;
            return Ok(Vec::new());
        };
        self.scroll_id = body["_scroll_id"].as_str().map(str::to_string);
        let hits: Vec<ScannedDoc> = body["hits"]["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| {
                Some(ScannedDoc {
                    index: h["_index"].as_str()?.to_string(),
                    id: h["_id"].as_str()?.to_string(),
                    routing: h["_routing"].as_str().map(str::to_string),
                    version: h["_version"].as_u64().unwrap_or(0),
                })
            })
            .collect();
        if hits.is_empty() {
            self.close().await;
        }
        Ok(hits)
    }

    /// Release the scroll context (best effort: it expires anyway).
    pub async fn close(&mut self) {
        self.done = true;
        if let Some(id) = self.scroll_id.take() {
            let _ = self
                .es
                .clear_scroll(ClearScrollParts::None)
                .body(json!({ "scroll_id": [id] }))
                .send()
                .await;
        }
    }
}

/// One stored dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The record's own id in the dead-letter index.
    pub record_id: String,
    pub source: Value,
}

/// Every dead letter in `dead_letter_index` (for the index `only`, if
/// given), oldest first; none when the index does not exist. Dead letters
/// are few (each is a failure someone must look at), so they are read whole,
/// through a scroll (Elasticsearch 8 refuses to sort on `_id`).
pub async fn dead_letters(
    es: &Elasticsearch,
    dead_letter_index: &str,
    only: Option<&str>,
) -> Result<Vec<DeadLetter>, AdminError> {
    let query = match only {
        Some(i) => json!({"term": {"index": i}}),
        None => json!({"match_all": {}}),
    };
    let what = "read the dead letters";
    let sent = es
        .search(SearchParts::Index(&[dead_letter_index]))
        .scroll(SCROLL_KEEP_ALIVE)
        .body(json!({"size": 1000, "query": query, "sort": ["_doc"]}))
        .send()
        .await;
    let Some(mut page) = found_json(what, sent).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    loop {
        let scroll_id = page["_scroll_id"].as_str().map(str::to_string);
        let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
        let done = hits.is_empty();
        out.extend(hits.into_iter().filter_map(|mut h| {
            Some(DeadLetter {
                record_id: h["_id"].as_str()?.to_string(),
                source: h["_source"].take(),
            })
        }));
        let Some(id) = scroll_id else { break };
        if done {
            let _ = es
                .clear_scroll(ClearScrollParts::None)
                .body(json!({ "scroll_id": [id] }))
                .send()
                .await;
            break;
        }
        let sent = es
            .scroll(ScrollParts::None)
            .body(json!({"scroll": SCROLL_KEEP_ALIVE, "scroll_id": id}))
            .send()
            .await;
        page = json_ok(what, sent).await?;
    }
    out.sort_by(|a, b| {
        a.source["@timestamp"]
            .as_str()
            .cmp(&b.source["@timestamp"].as_str())
            .then_with(|| a.record_id.cmp(&b.record_id))
    });
    Ok(out)
}

/// The dead letters at a glance: how many per target index and the newest
/// few. One search (an aggregation and `latest` hits), for the status page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetterSummary {
    pub total: u64,
    /// Target index → records, most first.
    pub per_index: Vec<(String, u64)>,
    /// Newest first.
    pub latest: Vec<DeadLetter>,
}

/// [`DeadLetterSummary`] of `dead_letter_index`; `None` when it does not
/// exist (nothing was ever rejected).
pub async fn dead_letter_summary(
    es: &Elasticsearch,
    dead_letter_index: &str,
    latest: usize,
) -> Result<Option<DeadLetterSummary>, AdminError> {
    let sent = es
        .search(SearchParts::Index(&[dead_letter_index]))
        .body(json!({
            "size": latest,
            "track_total_hits": true,
            "sort": [{"@timestamp": {"order": "desc", "unmapped_type": "date"}}],
            "_source": {"excludes": ["doc", "row", "old_row"]},
            "aggs": {"per_index": {"terms": {"field": "index", "size": 100}}}
        }))
        .send()
        .await;
    let Some(body) = found_json("summarize the dead letters", sent).await? else {
        return Ok(None);
    };
    let per_index = body["aggregations"]["per_index"]["buckets"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|b| Some((b["key"].as_str()?.to_string(), b["doc_count"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let latest = body["hits"]["hits"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|h| {
                    Some(DeadLetter {
                        record_id: h["_id"].as_str()?.to_string(),
                        source: h["_source"].clone(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(DeadLetterSummary {
        total: body["hits"]["total"]["value"].as_u64().unwrap_or(0),
        per_index,
        latest,
    }))
}

/// Delete dead-letter records (refreshed, so a listing right after no
/// longer shows them); returns how many existed.
pub async fn delete_dead_letters(
    es: &Elasticsearch,
    dead_letter_index: &str,
    record_ids: &[String],
) -> Result<u64, AdminError> {
    super::admin::delete_ids(es, dead_letter_index, record_ids, "delete dead letters").await
}
