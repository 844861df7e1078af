//! Elasticsearch administration beside the write path: index templates,
//! build indices and their settings, aliases, refreshes, cluster health, and
//! the questions `check` asks the cluster. With `indices` (target indices
//! made sure of) and `state_store` (Sluice's own records), the only place
//! above the indexer that speaks the Elasticsearch API: the layers above
//! pass names and JSON bodies in and get plain data back.
//!
//! Keeps DESIGN invariant 3 with its callers: `index.gc_deletes` is read and
//! set here exactly as Elasticsearch reports it, never guessed.

use elasticsearch::http::request::JsonBody;
use elasticsearch::http::response::Response;
use elasticsearch::indices::{
    IndicesCreateParts, IndicesDeleteParts, IndicesExistsParts, IndicesGetAliasParts,
    IndicesGetMappingParts, IndicesGetSettingsParts, IndicesPutIndexTemplateParts,
    IndicesPutSettingsParts, IndicesRefreshParts,
};
use elasticsearch::params::Refresh;
use elasticsearch::{BulkParts, Elasticsearch};
use serde_json::{Map, Value, json};

use super::client::describe_es_error;
use super::indices::IndexError;

/// How much of an error body a message quotes.
const BODY_EXCERPT: usize = 500;

/// An administrative request that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No answer (connection, timeout, TLS) or an unreadable one.
    #[error("Elasticsearch: {source}")]
    Request {
        what: String,
        source: elasticsearch::Error,
    },
    /// Elasticsearch answered with an error status.
    #[error("Elasticsearch answered {status} to {what}: {}", excerpt(body))]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    /// One item of a bulk request was refused.
    #[error("Elasticsearch refused {what}: {detail}")]
    Item { what: String, detail: String },
    #[error(transparent)]
    Index(#[from] IndexError),
}

fn excerpt(body: &str) -> String {
    body.chars().take(BODY_EXCERPT).collect()
}

impl AdminError {
    /// The error for a request that got no (readable) answer.
    pub(crate) fn request(
        what: impl Into<String>,
    ) -> impl FnOnce(elasticsearch::Error) -> AdminError {
        let what = what.into();
        move |source| AdminError::Request { what, source }
    }

    /// Whether the same request may succeed later: no answer, throttling
    /// (429) or a server error. Refusals of the request itself need a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            AdminError::Request { .. } => true,
            AdminError::Status { status, .. } => *status == 429 || *status >= 500,
            AdminError::Item { .. } => false,
            AdminError::Index(IndexError::Request { .. }) => true,
            AdminError::Index(IndexError::Refused { status, .. }) => {
                *status == 429 || *status >= 500
            }
            AdminError::Index(_) => false,
        }
    }

    /// One line for an operator: the client error with its cause chain, or
    /// `HTTP <status>: <Elasticsearch's reason>`.
    pub fn describe(&self) -> String {
        match self {
            AdminError::Request { source, .. } => describe_es_error(source),
            AdminError::Status { status, body, .. } => {
                let body: Value = serde_json::from_str(body).unwrap_or_default();
                format!("HTTP {status}: {}", error_reason(&body))
            }
            AdminError::Item { detail, .. } => detail.clone(),
            AdminError::Index(e) => e.to_string(),
        }
    }
}

/// `error.reason` of an Elasticsearch error body, else its whole `error`.
pub fn error_reason(body: &Value) -> String {
    body["error"]["reason"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body["error"].to_string())
}

/// A 2xx answer's JSON (`null` when it has none); any other status is an
/// error that keeps the body.
pub(crate) async fn json_ok(
    what: impl Into<String>,
    sent: Result<Response, elasticsearch::Error>,
) -> Result<Value, AdminError> {
    let what = what.into();
    let resp = sent.map_err(AdminError::request(what.clone()))?;
    let status = resp.status_code().as_u16();
    let text = resp
        .text()
        .await
        .map_err(AdminError::request(what.clone()))?;
    if (200..300).contains(&status) {
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    } else {
        Err(AdminError::Status {
            what,
            status,
            body: text,
        })
    }
}

/// A 2xx answer's JSON, `None` for a 404 (nothing there); any other status
/// is an error that keeps the body. An answer that is not JSON is a
/// `Request` error, like no answer.
pub(crate) async fn found_json(
    what: impl Into<String>,
    sent: Result<Response, elasticsearch::Error>,
) -> Result<Option<Value>, AdminError> {
    let what = what.into();
    let resp = sent.map_err(AdminError::request(what.clone()))?;
    let status = resp.status_code().as_u16();
    if status == 404 {
        return Ok(None);
    }
    let body: Value = resp
        .json()
        .await
        .map_err(AdminError::request(what.clone()))?;
    if !(200..300).contains(&status) {
        return Err(AdminError::Status {
            what,
            status,
            body: body.to_string(),
        });
    }
    Ok(Some(body))
}

/// The status of an answer, its body dropped.
fn status_only(
    what: &str,
    sent: Result<Response, elasticsearch::Error>,
) -> Result<u16, AdminError> {
    Ok(sent
        .map_err(AdminError::request(what))?
        .status_code()
        .as_u16())
}

fn refused(what: impl Into<String>, status: u16) -> AdminError {
    AdminError::Status {
        what: what.into(),
        status,
        body: String::new(),
    }
}

// ---- indices, settings, aliases ---------------------------------------------

/// Create `name` with `body` (settings and mappings).
pub async fn create_index(es: &Elasticsearch, name: &str, body: Value) -> Result<(), AdminError> {
    let sent = es
        .indices()
        .create(IndicesCreateParts::Index(name))
        .body(body)
        .send()
        .await;
    json_ok(format!("create index {name}"), sent).await?;
    Ok(())
}

/// Delete indices; with `missing_ok`, one that does not exist is no error.
pub async fn delete_indices(
    es: &Elasticsearch,
    names: &[&str],
    missing_ok: bool,
) -> Result<(), AdminError> {
    let what = format!("delete {}", names.join(", "));
    let resp = es
        .indices()
        .delete(IndicesDeleteParts::Index(names))
        .send()
        .await
        .map_err(AdminError::request(what.clone()))?;
    if missing_ok && resp.status_code().as_u16() == 404 {
        return Ok(());
    }
    json_ok(what, Ok(resp)).await?;
    Ok(())
}

/// Set index-level settings (`{"refresh_interval": "1s", ...}`) on `index`.
pub async fn put_index_settings(
    es: &Elasticsearch,
    index: &str,
    settings: &Value,
) -> Result<(), AdminError> {
    let sent = es
        .indices()
        .put_settings(IndicesPutSettingsParts::Index(&[index]))
        .body(json!({ "index": settings }))
        .send()
        .await;
    json_ok(format!("set the settings of {index}"), sent).await?;
    Ok(())
}

/// Make everything written to `index` visible to searches.
pub async fn refresh(es: &Elasticsearch, index: &str) -> Result<(), AdminError> {
    let sent = es
        .indices()
        .refresh(IndicesRefreshParts::Index(&[index]))
        .send()
        .await;
    json_ok(format!("refresh {index}"), sent).await?;
    Ok(())
}

/// Wait (up to `timeout`, an Elasticsearch time value) until every shard of
/// `index`, replicas included where the cluster can place them, is
/// allocated (status yellow or better).
pub async fn wait_until_allocated(
    es: &Elasticsearch,
    index: &str,
    timeout: &str,
) -> Result<(), AdminError> {
    let sent = es
        .cluster()
        .health(elasticsearch::cluster::ClusterHealthParts::Index(&[index]))
        .wait_for_status(elasticsearch::params::WaitForStatus::Yellow)
        .timeout(timeout)
        .send()
        .await;
    json_ok(format!("wait for {index} to be allocated"), sent).await?;
    Ok(())
}

/// Apply `_aliases` actions in one request (atomically).
pub async fn update_aliases(es: &Elasticsearch, actions: Value) -> Result<(), AdminError> {
    let sent = es.indices().update_aliases().body(actions).send().await;
    json_ok("move aliases", sent).await?;
    Ok(())
}

/// What `name` stands for: the indices an alias of that name points at
/// (`false`), a concrete index of that name (`[name]`, `true`), or nothing.
pub async fn alias_target(
    es: &Elasticsearch,
    name: &str,
) -> Result<(Vec<String>, bool), AdminError> {
    let what = format!("read alias {name}");
    let resp = es
        .indices()
        .get_alias(IndicesGetAliasParts::Name(&[name]))
        .send()
        .await
        .map_err(AdminError::request(what.clone()))?;
    if resp.status_code().is_success() {
        let v: Value = resp.json().await.map_err(AdminError::request(what))?;
        let names = v
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        return Ok((names, false));
    }
    let sent = es
        .indices()
        .exists(IndicesExistsParts::Index(&[name]))
        .send()
        .await;
    Ok(if (200..300).contains(&status_only(&what, sent)?) {
        (vec![name.to_string()], true)
    } else {
        (Vec::new(), false)
    })
}

/// The explicit `index.gc_deletes` of every concrete index behind `target`
/// (an index or an alias): `null` where the index keeps the default.
pub async fn explicit_gc_deletes(
    es: &Elasticsearch,
    target: &str,
) -> Result<Map<String, Value>, AdminError> {
    let sent = es
        .indices()
        .get_settings(IndicesGetSettingsParts::IndexName(
            &[target],
            &["index.gc_deletes"],
        ))
        .send()
        .await;
    let v = json_ok(format!("read settings of {target}"), sent).await?;
    let mut out = Map::new();
    if let Some(obj) = v.as_object() {
        for (index, s) in obj {
            out.insert(index.clone(), s["settings"]["index"]["gc_deletes"].clone());
        }
    }
    Ok(out)
}

/// `index.gc_deletes` in effect on `index` (its own value, else the
/// cluster's default, else Elasticsearch's 60 s); `None` when it cannot be
/// read.
pub async fn effective_gc_deletes(es: &Elasticsearch, index: &str) -> Option<String> {
    let resp = es
        .indices()
        .get_settings(IndicesGetSettingsParts::IndexName(
            &[index],
            &["index.gc_deletes"],
        ))
        .include_defaults(true)
        .flat_settings(true)
        .send()
        .await
        .ok()?;
    let v = resp.json::<Value>().await.ok()?;
    let s = &v[index];
    let value = s["settings"]["index.gc_deletes"]
        .as_str()
        .or(s["defaults"]["index.gc_deletes"].as_str())
        .unwrap_or("60s");
    Some(value.to_string())
}

/// Create or replace the index template `name` for `pattern`.
pub async fn put_index_template(
    es: &Elasticsearch,
    name: &str,
    pattern: &str,
    template: &Value,
) -> Result<(), AdminError> {
    let sent = es
        .indices()
        .put_index_template(IndicesPutIndexTemplateParts::Name(name))
        .body(json!({
            "index_patterns": [pattern],
            "template": template,
        }))
        .send()
        .await;
    json_ok(format!("index template {name}"), sent).await?;
    Ok(())
}

/// The mappings of the indices `pattern` matches, by index (`{}` when none
/// exists yet).
pub async fn index_mappings(es: &Elasticsearch, pattern: &str) -> Result<Value, AdminError> {
    let what = format!("read the mapping of {pattern}");
    let resp = es
        .indices()
        .get_mapping(IndicesGetMappingParts::Index(&[pattern]))
        .allow_no_indices(true)
        .ignore_unavailable(true)
        .send()
        .await
        .map_err(AdminError::request(what.clone()))?;
    match resp.status_code().as_u16() {
        404 => Ok(Value::Object(Map::new())),
        s if (200..300).contains(&s) => Ok(resp.json().await.unwrap_or_default()),
        s => Err(refused(what, s)),
    }
}

/// Document count of `index`; `None` when it does not exist.
pub async fn count_docs(es: &Elasticsearch, index: &str) -> Result<Option<u64>, AdminError> {
    let sent = es
        .count(elasticsearch::CountParts::Index(&[index]))
        .send()
        .await;
    let body = found_json(format!("count the documents of {index}"), sent).await?;
    Ok(body.and_then(|b| b["count"].as_u64()))
}

// ---- what `check` asks ---------------------------------------------------------

/// `GET /`: the cluster's name and version (`null` when the answer is not
/// JSON); an error status comes back as `Status` without a body.
pub async fn cluster_info(es: &Elasticsearch) -> Result<Value, AdminError> {
    let what = "read the cluster info";
    let resp = es.info().send().await.map_err(AdminError::request(what))?;
    let status = resp.status_code().as_u16();
    if !(200..300).contains(&status) {
        return Err(refused(what, status));
    }
    Ok(resp.json::<Value>().await.unwrap_or_default())
}

/// The version number of the node answering (`?` if it names none), for
/// clusters that refuse `GET /`.
pub async fn node_version(es: &Elasticsearch) -> Result<String, AdminError> {
    let what = "read the node info";
    let resp = es
        .nodes()
        .info(elasticsearch::nodes::NodesInfoParts::NodeId(&["_local"]))
        .filter_path(&["nodes.*.version"])
        .send()
        .await
        .map_err(AdminError::request(what))?;
    let status = resp.status_code().as_u16();
    if !(200..300).contains(&status) {
        return Err(refused(what, status));
    }
    let v: Value = resp.json().await.map_err(AdminError::request(what))?;
    Ok(v["nodes"]
        .as_object()
        .and_then(|n| n.values().next())
        .and_then(|n| n["version"].as_str())
        .unwrap_or("?")
        .to_string())
}

/// Whether the ingest pipeline `id` exists.
pub async fn ingest_pipeline_exists(es: &Elasticsearch, id: &str) -> Result<bool, AdminError> {
    let what = format!("read ingest pipeline {id}");
    let sent = es
        .ingest()
        .get_pipeline(elasticsearch::ingest::IngestGetPipelineParts::Id(id))
        .send()
        .await;
    match status_only(&what, sent)? {
        s if (200..300).contains(&s) => Ok(true),
        404 => Ok(false),
        s => Err(refused(what, s)),
    }
}

/// Delete the documents `ids` of `index` in one bulk request, refreshed so
/// the next search no longer finds them; returns how many existed (a
/// missing document or index is nothing to delete). `what` names the
/// request in errors.
pub async fn delete_ids(
    es: &Elasticsearch,
    index: &str,
    ids: &[String],
    what: &str,
) -> Result<u64, AdminError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let body: Vec<JsonBody<Value>> = ids
        .iter()
        .map(|id| json!({"delete": {"_index": index, "_id": id}}).into())
        .collect();
    let sent = es
        .bulk(BulkParts::None)
        .refresh(Refresh::True)
        .body(body)
        .send()
        .await;
    let v = json_ok(what, sent).await?;
    let mut deleted = 0;
    for item in v["items"].as_array().into_iter().flatten() {
        match item["delete"]["status"].as_u64() {
            Some(200) => deleted += 1,
            Some(404) => {}
            _ => {
                return Err(AdminError::Item {
                    what: what.into(),
                    detail: item["delete"]["error"].to_string(),
                });
            }
        }
    }
    Ok(deleted)
}
