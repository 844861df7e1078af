//! Elasticsearch as tests see it, on the official client: every document
//! of an index, counts, index settings and mappings, the admin steps a
//! scenario takes (create, close, open, block writes), and a private index
//! prefix for tests without a `TestDb`.

use std::collections::BTreeMap;

use elasticsearch::Elasticsearch;
use elasticsearch::http::transport::Transport;
use elasticsearch::indices::{
    IndicesCloseParts, IndicesCreateParts, IndicesDeleteParts, IndicesExistsParts,
    IndicesGetMappingParts, IndicesGetParts, IndicesGetSettingsParts, IndicesOpenParts,
    IndicesPutSettingsParts, IndicesRefreshParts,
};
use serde_json::{Value, json};

use super::{services, unique_name};

/// Elasticsearch helpers for tests.
pub struct Es {
    pub client: Elasticsearch,
}

impl Default for Es {
    fn default() -> Es {
        Es::new()
    }
}

impl Es {
    /// The shared test server.
    pub fn new() -> Es {
        Es::at(&services().es_url)
    }

    /// Helpers on another node or cluster than the shared one.
    pub fn at(url: &str) -> Es {
        let transport = Transport::single_node(url).expect("ES URL");
        Es {
            client: Elasticsearch::new(transport),
        }
    }

    pub async fn refresh(&self, index: &str) {
        self.client
            .indices()
            .refresh(IndicesRefreshParts::Index(&[index]))
            .send()
            .await
            .expect("refresh");
    }

    pub async fn delete_indices(&self, pattern: &str) -> Result<(), elasticsearch::Error> {
        self.client
            .indices()
            .delete(IndicesDeleteParts::Index(&[pattern]))
            .send()
            .await
            .map(|_| ())
    }

    /// Create `index` with `body` (settings, mappings, aliases); it must work.
    pub async fn create_index(&self, index: &str, body: Value) {
        self.client
            .indices()
            .create(IndicesCreateParts::Index(index))
            .body(body)
            .send()
            .await
            .unwrap()
            .error_for_status_code()
            .unwrap_or_else(|e| panic!("create index {index}: {e}"));
    }

    pub async fn exists(&self, index: &str) -> bool {
        self.client
            .indices()
            .exists(IndicesExistsParts::Index(&[index]))
            .send()
            .await
            .unwrap()
            .status_code()
            .is_success()
    }

    /// Close `index` (it refuses reads and writes until opened).
    pub async fn close(&self, index: &str) {
        self.client
            .indices()
            .close(IndicesCloseParts::Index(&[index]))
            .send()
            .await
            .unwrap()
            .error_for_status_code()
            .unwrap_or_else(|e| panic!("close {index}: {e}"));
    }

    pub async fn open(&self, index: &str) {
        self.client
            .indices()
            .open(IndicesOpenParts::Index(&[index]))
            .send()
            .await
            .unwrap()
            .error_for_status_code()
            .unwrap_or_else(|e| panic!("open {index}: {e}"));
    }

    /// Set or lift `index.blocks.write`.
    pub async fn block_writes(&self, index: &str, blocked: bool) {
        self.client
            .indices()
            .put_settings(IndicesPutSettingsParts::Index(&[index]))
            .body(json!({"index.blocks.write": blocked}))
            .send()
            .await
            .unwrap()
            .error_for_status_code()
            .unwrap_or_else(|e| panic!("blocks.write on {index}: {e}"));
    }

    /// `GET <index>/_mapping`, keyed by concrete index name.
    pub async fn mapping(&self, index: &str) -> Value {
        self.client
            .indices()
            .get_mapping(IndicesGetMappingParts::Index(&[index]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET <index>/_settings`, keyed by concrete index name.
    pub async fn settings(&self, index: &str) -> Value {
        self.client
            .indices()
            .get_settings(IndicesGetSettingsParts::Index(&[index]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The concrete indices behind `name` (an alias, a pattern, or an index:
    /// itself).
    pub async fn indices_behind(&self, name: &str) -> Vec<String> {
        let v: Value = self
            .client
            .indices()
            .get(IndicesGetParts::Index(&[name]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_object().unwrap().keys().cloned().collect()
    }

    /// `_count` of `index`; 0 while it cannot be counted (no such index
    /// yet, or no shard started), which suits a wait.
    pub async fn count(&self, index: &str) -> u64 {
        self.try_count(index).await.unwrap_or(0)
    }

    /// `_count` of `index`, or the response that carried no count.
    pub async fn try_count(&self, index: &str) -> Result<u64, Value> {
        let v: Value = self
            .client
            .count(elasticsearch::CountParts::Index(&[index]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["count"].as_u64().ok_or(v)
    }

    /// Add to (or loosen) an index's mapping; panics if refused.
    pub async fn put_mapping(&self, index: &str, body: Value) {
        let resp = self
            .client
            .indices()
            .put_mapping(elasticsearch::indices::IndicesPutMappingParts::Index(&[
                index,
            ]))
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(resp.status_code().is_success(), "{:?}", resp.text().await);
    }

    /// The `_version` of a document (its commit LSN), once it is there.
    pub async fn doc_version(&self, index: &str, id: &str) -> Option<u64> {
        let r = self
            .client
            .get(elasticsearch::GetParts::IndexId(index, id))
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        v["found"]
            .as_bool()
            .filter(|f| *f)
            .and(v["_version"].as_u64())
    }

    /// The version number of the node we talk to (`8.19.21`, or `2.19.1` for
    /// OpenSearch), read from `_nodes` because some test distributions refuse
    /// `GET /`.
    pub async fn server_version(&self) -> String {
        let v: Value = self
            .client
            .nodes()
            .info(elasticsearch::nodes::NodesInfoParts::NodeId(&["_local"]))
            .send()
            .await
            .expect("nodes info")
            .json()
            .await
            .expect("nodes info response");
        v["nodes"]
            .as_object()
            .and_then(|n| n.values().next())
            .and_then(|node| node["version"].as_str())
            .unwrap_or_else(|| panic!("no node version in {v}"))
            .to_string()
    }

    /// Every document of an index as `_id → (_version, _source)`; empty if the
    /// index does not exist. Refreshes first so recent writes are visible.
    pub async fn all_docs(&self, index: &str) -> BTreeMap<String, (u64, Value)> {
        self.refresh(index).await;
        let mut out = BTreeMap::new();
        // Elasticsearch 8 refuses to sort on `_id`; page through a scroll in
        // `_doc` order instead (scroll, unlike a point in time, is the same API
        // on Elasticsearch and OpenSearch), and fail loudly on any error (an
        // empty result must mean an empty index).
        // A just-created index answers 503 (no shard available) until its
        // primary is started; wait that out (bounded) rather than fail: it is
        // not yet a statement about the index's content.
        let mut attempts = 0;
        let first = loop {
            let resp = self
                .client
                .search(elasticsearch::SearchParts::Index(&[index]))
                .scroll("1m")
                .body(json!({
                    "size": 5000,
                    "version": true,
                    "sort": ["_doc"],
                    "query": {"match_all": {}}
                }))
                .send()
                .await
                .expect("search");
            attempts += 1;
            if resp.status_code().as_u16() == 503 && attempts < 100 {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
            break resp;
        };
        if first.status_code().as_u16() == 404 {
            return out;
        }
        let mut resp = first;
        let mut scroll_id: Option<String> = None;
        loop {
            let status = resp.status_code().as_u16();
            let v: Value = resp.json().await.expect("search response");
            assert!(status == 200, "search of {index} failed: {v}");
            assert!(
                v["_shards"]["failed"].as_u64().unwrap_or(0) == 0,
                "search of {index} failed on some shards: {v}"
            );
            scroll_id = v["_scroll_id"].as_str().map(str::to_string).or(scroll_id);
            let hits = v["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                break;
            }
            for h in &hits {
                out.insert(
                    h["_id"].as_str().unwrap().to_string(),
                    (h["_version"].as_u64().unwrap_or(0), h["_source"].clone()),
                );
            }
            let id = scroll_id
                .clone()
                .unwrap_or_else(|| panic!("no scroll id for {index}: {v}"));
            resp = self
                .client
                .scroll(elasticsearch::ScrollParts::None)
                .body(json!({"scroll": "1m", "scroll_id": id}))
                .send()
                .await
                .expect("scroll");
        }
        if let Some(id) = scroll_id {
            let _ = self
                .client
                .clear_scroll(elasticsearch::ClearScrollParts::None)
                .body(json!({"scroll_id": [id]}))
                .send()
                .await;
        }
        out
    }

    /// Sources only, `_id → _source`.
    pub async fn sources(&self, index: &str) -> BTreeMap<String, Value> {
        self.all_docs(index)
            .await
            .into_iter()
            .map(|(k, (_, s))| (k, s))
            .collect()
    }
}

/// A private index-name prefix for a test without a `TestDb` (one on a
/// private PostgreSQL cluster); its indices are deleted on drop.
pub struct Indices(pub String);

impl Default for Indices {
    fn default() -> Indices {
        Indices::new()
    }
}

impl Indices {
    pub fn new() -> Indices {
        Indices(format!("{}-", unique_name("t").replace('_', "-")))
    }

    pub fn name(&self, n: &str) -> String {
        format!("{}{n}", self.0)
    }
}

impl Drop for Indices {
    fn drop(&mut self) {
        let pattern = format!("{}*", self.0);
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async { Es::new().delete_indices(&pattern).await })
        })
        .join();
    }
}
