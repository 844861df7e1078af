//! The state index (`sluice-state` by default): the records Sluice keeps in
//! Elasticsearch beside the documents it writes — snapshot progress, the
//! initial load's marker, reindexes, saved tombstone settings. Here they are
//! JSON documents by id; what each kind means belongs to the snapshot
//! (`snapshot::state`, `reindex`, `tombstones`) and to the commands.
//!
//! Writes are acknowledged only once durable (the translog is synced before
//! Elasticsearch answers), which is what lets a snapshot record a chunk as
//! done only after its documents are (DESIGN invariant 4). `get` is
//! real-time; searches see what was written before the last refresh.

use std::time::Duration;

use elasticsearch::{
    DeleteParts, Elasticsearch, GetParts, IndexParts, SearchParts, params::Refresh,
};
use serde_json::{Value, json};

use super::admin::{AdminError, found_json, json_ok};
use super::indices::{IndexSpec, ensure_index};

/// One record: its id and its document.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub source: Value,
}

/// A condition on a keyword field of the records.
#[derive(Debug, Clone)]
pub enum Filter {
    Is(&'static str, Value),
    AnyOf(&'static str, Vec<Value>),
}

impl Filter {
    fn query(&self) -> Value {
        match self {
            Filter::Is(field, value) => json!({"term": {*field: value}}),
            Filter::AnyOf(field, values) => json!({"terms": {*field: values}}),
        }
    }
}

fn query(filters: &[Filter]) -> Value {
    let filters: Vec<Value> = filters.iter().map(Filter::query).collect();
    json!({"bool": {"filter": filters}})
}

/// Records read at once, with how many matched in all.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub records: Vec<Record>,
    pub total: u64,
    /// The sort values of the last hit, where the next page starts.
    last_sort: Option<Value>,
}

/// The state index of one cluster.
#[derive(Clone)]
pub struct StateIndex {
    es: Elasticsearch,
    index: String,
}

impl StateIndex {
    pub fn new(es: Elasticsearch, index: impl Into<String>) -> StateIndex {
        StateIndex {
            es,
            index: index.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.index
    }

    /// The cluster the records live in.
    pub fn client(&self) -> &Elasticsearch {
        &self.es
    }

    /// Create the state index if it does not exist (checking an existing
    /// one's mapping, as for every index Sluice relies on).
    pub async fn ensure(&self) -> Result<(), AdminError> {
        let spec = IndexSpec {
            name: self.index.clone(),
            settings: json!({"number_of_shards": 1, "auto_expand_replicas": "0-1"}),
            mappings: json!({
                "dynamic": false,
                "properties": {
                    "kind": {"type": "keyword"},
                    "run_id": {"type": "keyword"},
                    "table": {"type": "keyword"},
                    "target": {"type": "keyword"},
                    "status": {"type": "keyword"},
                    "chunk": {"type": "long"},
                    "rows": {"type": "long"}
                }
            }),
            alias: None,
        };
        // Records are written without external versions, so no replay window
        // applies: Elasticsearch's own tombstone lifetime is enough.
        ensure_index(&self.es, &spec, Duration::ZERO).await?;
        Ok(())
    }

    /// Write a record; acknowledged means durable.
    pub async fn put(&self, id: &str, doc: &Value) -> Result<(), AdminError> {
        let sent = self
            .es
            .index(IndexParts::IndexId(&self.index, id))
            .body(doc)
            .send()
            .await;
        json_ok(format!("write state document {id}"), sent).await?;
        Ok(())
    }

    /// Read a record (real-time: no refresh needed).
    pub async fn get(&self, id: &str) -> Result<Option<Value>, AdminError> {
        let what = format!("read state document {id}");
        let resp = self
            .es
            .get(GetParts::IndexId(&self.index, id))
            .send()
            .await
            .map_err(AdminError::request(what.clone()))?;
        if resp.status_code().as_u16() == 404 {
            return Ok(None);
        }
        let v = json_ok(what, Ok(resp)).await?;
        Ok(v.get("_source").cloned())
    }

    /// Delete a record; with `refresh`, searches no longer find it once this
    /// returns. A missing record is an error (`Status` 404).
    pub async fn delete(&self, id: &str, refresh: bool) -> Result<(), AdminError> {
        let mut req = self.es.delete(DeleteParts::IndexId(&self.index, id));
        if refresh {
            req = req.refresh(Refresh::True);
        }
        json_ok(format!("delete state document {id}"), req.send().await).await?;
        Ok(())
    }

    /// Make every record written so far visible to searches.
    pub async fn refresh(&self) -> Result<(), AdminError> {
        super::admin::refresh(&self.es, &self.index).await
    }

    /// Up to `size` records matching every filter; none when the index does
    /// not exist.
    pub async fn find(&self, filters: &[Filter], size: u64) -> Result<Vec<Record>, AdminError> {
        let body = json!({"size": size, "query": query(filters)});
        Ok(self
            .search(body)
            .await?
            .map(|p| p.records)
            .unwrap_or_default())
    }

    /// Every record matching the filters, `fields` of each, in the order of
    /// the numeric field `sort_by`, read a page at a time.
    pub async fn find_all_sorted(
        &self,
        filters: &[Filter],
        sort_by: &'static str,
        fields: &[&str],
    ) -> Result<Vec<Record>, AdminError> {
        let mut out = Vec::new();
        let mut after: Option<Value> = None;
        loop {
            let mut body = json!({
                "size": 5000,
                "_source": fields,
                "query": query(filters),
                "sort": [{sort_by: "asc"}]
            });
            if let Some(a) = after.take() {
                body["search_after"] = a;
            }
            let page = self.search(body).await?.unwrap_or_default();
            if page.records.is_empty() {
                return Ok(out);
            }
            after = page.last_sort;
            out.extend(page.records);
        }
    }

    /// The first `limit` records and the total count; `None` when the index
    /// does not exist.
    pub async fn read_all(&self, limit: u64) -> Result<Option<Page>, AdminError> {
        self.search(json!({
            "size": limit,
            "track_total_hits": true,
            "query": {"match_all": {}}
        }))
        .await
    }

    /// Delete the records `ids` (refreshed, so the next search no longer
    /// finds them); returns how many existed.
    pub async fn delete_ids(&self, ids: &[String]) -> Result<u64, AdminError> {
        super::admin::delete_ids(&self.es, &self.index, ids, "delete state records").await
    }

    /// One search; `None` when the index does not exist.
    async fn search(&self, body: Value) -> Result<Option<Page>, AdminError> {
        let sent = self
            .es
            .search(SearchParts::Index(&[&self.index]))
            .body(body)
            .send()
            .await;
        let found = found_json("search the state index", sent).await?;
        Ok(found.map(|body| page(&body)))
    }
}

fn page(body: &Value) -> Page {
    let hits = body["hits"]["hits"].as_array();
    let records = hits
        .into_iter()
        .flatten()
        .filter_map(|h| {
            Some(Record {
                id: h["_id"].as_str()?.to_string(),
                source: h["_source"].clone(),
            })
        })
        .collect();
    Page {
        records,
        total: body["hits"]["total"]["value"].as_u64().unwrap_or(0),
        last_sort: hits.and_then(|h| h.last()).map(|h| h["sort"].clone()),
    }
}
