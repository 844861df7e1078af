//! Index creation: target indices (and the dead-letter index) that do not
//! exist are created with their settings, mappings and alias.
//!
//! Keeps DESIGN invariant 3: indices Sluice creates get `index.gc_deletes`
//! long enough for the replay window, so a replayed stale write cannot
//! resurrect a deleted document. An existing index's mappings are never
//! changed: a difference is reported as a conflict.

use std::time::Duration;

use backon::Retryable;

use elasticsearch::Elasticsearch;
use elasticsearch::indices::{
    IndicesCreateParts, IndicesExistsParts, IndicesGetMappingParts, IndicesGetSettingsParts,
    IndicesPutAliasParts,
};
use serde_json::{Map, Value, json};

use crate::model::RetryPolicy;
use crate::ops::metrics::names;

/// What an index should look like.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    pub name: String,
    /// Index settings (`{"index": {...}}` or flat `{"number_of_shards": 1}`).
    pub settings: Value,
    /// Index mappings (`{"properties": {...}}`).
    pub mappings: Value,
    /// An alias to point at the index.
    pub alias: Option<String>,
}

/// What `ensure_index` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnsureOutcome {
    Created,
    /// It existed with compatible mappings.
    Existing {
        /// Its `index.gc_deletes` is shorter than the replay window: replays
        /// after that long may resurrect deleted documents.
        gc_deletes_too_short: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("Elasticsearch request for index `{index}` failed: {source}")]
    Request {
        index: String,
        source: elasticsearch::Error,
    },
    #[error("Elasticsearch refused {what} for index `{index}` with HTTP {status}: {body}")]
    Refused {
        index: String,
        what: &'static str,
        status: u16,
        body: String,
    },
    #[error(
        "`{index}` is an alias over several indices ({behind}); Sluice writes through the name \
         a mapping gives, so it must point at exactly one index: point the mapping's `index` at \
         one of them, or move the alias"
    )]
    AliasOverSeveral { index: String, behind: String },
    #[error(
        "index `{index}` already exists with mappings that differ from the configured ones \
         ({}); Sluice does not change an existing index's mappings: reindex into a new index \
         or align the mapping file",
        differences.join("; ")
    )]
    MappingConflict {
        index: String,
        differences: Vec<String>,
    },
}

/// `index.gc_deletes` for a replay window, as Elasticsearch writes it.
pub fn gc_deletes_setting(window: Duration) -> String {
    format!("{}s", window.as_secs().max(60))
}

/// The create-index body: the spec's settings with `index.gc_deletes` set to
/// the replay window (overriding a shorter configured one), its mappings and
/// its alias.
pub fn create_body(spec: &IndexSpec, replay_window: Duration) -> Value {
    let mut settings = match &spec.settings {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    // Settings may be nested (`index.gc_deletes`) or flat (`gc_deletes`, or
    // the dotted key): remove every spelling, then set the nested one.
    settings.remove("gc_deletes");
    settings.remove("index.gc_deletes");
    let index = settings
        .entry("index")
        .or_insert_with(|| Value::Object(Map::new()));
    if !index.is_object() {
        *index = Value::Object(Map::new());
    }
    index.as_object_mut().expect("object").insert(
        "gc_deletes".into(),
        Value::String(gc_deletes_setting(replay_window)),
    );
    let mut body = json!({ "settings": settings });
    if !spec.mappings.is_null() {
        body["mappings"] = spec.mappings.clone();
    }
    if let Some(alias) = &spec.alias {
        body["aliases"] = json!({ alias: {} });
    }
    body
}

impl IndexError {
    /// A failure that passes by itself (no answer in time, the cluster busy
    /// or between masters), so trying again is right; a refusal of the
    /// request itself (privileges, a conflict) is not.
    pub fn is_transient(&self) -> bool {
        match self {
            IndexError::Request { source, .. } => {
                super::classify::admin_call_is_transient(source.status_code().map(|s| s.as_u16()))
            }
            IndexError::Refused { status, .. } => {
                super::classify::admin_call_is_transient(Some(*status))
            }
            IndexError::AliasOverSeveral { .. } | IndexError::MappingConflict { .. } => false,
        }
    }
}

/// Make sure `spec.name` exists. Creates it if missing; otherwise checks its
/// mappings (reporting a conflict, never changing them) and adds the alias if
/// it is missing.
///
/// A busy cluster answers index creation slowly (it waits for the primary
/// shard): a transient failure is tried again with
/// [`RetryPolicy::ADMIN`], so `sluice run` does not exit at start-up
/// because Elasticsearch was slow once. Every step is idempotent (a
/// creation that raced another is "exists").
pub async fn ensure_index(
    client: &Elasticsearch,
    spec: &IndexSpec,
    replay_window: Duration,
) -> Result<EnsureOutcome, IndexError> {
    (|| ensure_index_once(client, spec, replay_window))
        .retry(RetryPolicy::ADMIN.builder())
        .when(IndexError::is_transient)
        .notify(|e, delay| {
            tracing::warn!(index = %spec.name, error = %e, retry_in = ?delay,
                "preparing the index failed for a passing reason; trying again");
            metrics::counter!(names::RETRIES_TOTAL).increment(1);
        })
        .await
}

async fn ensure_index_once(
    client: &Elasticsearch,
    spec: &IndexSpec,
    replay_window: Duration,
) -> Result<EnsureOutcome, IndexError> {
    if create_if_missing(client, spec, replay_window).await? {
        return Ok(EnsureOutcome::Created);
    }
    check_mappings(client, spec).await?;
    let too_short = gc_deletes_too_short(client, &spec.name, replay_window).await?;
    if let Some(alias) = &spec.alias {
        let resp = client
            .indices()
            .put_alias(IndicesPutAliasParts::IndexName(&[&spec.name], alias))
            .send()
            .await
            .map_err(request_error(&spec.name))?;
        let _: Value = json_or_refused(resp, &spec.name, "adding the alias").await?;
    }
    Ok(EnsureOutcome::Existing {
        gc_deletes_too_short: too_short,
    })
}

fn request_error(index: &str) -> impl Fn(elasticsearch::Error) -> IndexError + '_ {
    move |source| IndexError::Request {
        index: index.to_string(),
        source,
    }
}

/// Create the index if it does not exist. True if this call created it;
/// false if it existed (or someone created it meanwhile).
async fn create_if_missing(
    client: &Elasticsearch,
    spec: &IndexSpec,
    replay_window: Duration,
) -> Result<bool, IndexError> {
    let name = spec.name.as_str();
    let exists = client
        .indices()
        .exists(IndicesExistsParts::Index(&[name]))
        .send()
        .await
        .map_err(request_error(name))?;
    if exists.status_code().as_u16() != 404 {
        return Ok(false);
    }
    let resp = client
        .indices()
        .create(IndicesCreateParts::Index(name))
        .body(create_body(spec, replay_window))
        .send()
        .await
        .map_err(request_error(name))?;
    let status = resp.status_code().as_u16();
    if (200..300).contains(&status) {
        tracing::info!(index = name, gc_deletes = %gc_deletes_setting(replay_window), "created index");
        return Ok(true);
    }
    let body = resp.text().await.unwrap_or_default();
    // Someone (another Sluice, a parallel call) created it meanwhile.
    if body.contains("resource_already_exists_exception") {
        return Ok(false);
    }
    Err(IndexError::Refused {
        index: name.to_string(),
        what: "index creation",
        status,
        body,
    })
}

/// The existing index's mappings must have every configured field as
/// configured (they are never changed).
async fn check_mappings(client: &Elasticsearch, spec: &IndexSpec) -> Result<(), IndexError> {
    let name = spec.name.as_str();
    let resp = client
        .indices()
        .get_mapping(IndicesGetMappingParts::Index(&[name]))
        .send()
        .await
        .map_err(request_error(name))?;
    let existing: Value = json_or_refused(resp, name, "reading mappings").await?;
    let Value::Object(by_index) = &existing else {
        return Ok(());
    };
    // `name` may be an alias (after `sluice snapshot --reindex` it is one):
    // writes go through it, so it must resolve to exactly one index, whose
    // mappings are the ones checked.
    if by_index.len() > 1 {
        let mut names: Vec<&str> = by_index.keys().map(String::as_str).collect();
        names.sort();
        return Err(IndexError::AliasOverSeveral {
            index: name.to_string(),
            behind: names.join(", "),
        });
    }
    let mut differences = Vec::new();
    for (concrete, m) in by_index {
        for d in mapping_differences(&spec.mappings, &m["mappings"]) {
            differences.push(format!("{concrete}: {d}"));
        }
    }
    if !differences.is_empty() {
        return Err(IndexError::MappingConflict {
            index: name.to_string(),
            differences,
        });
    }
    Ok(())
}

/// Whether the existing index keeps delete tombstones for less than the
/// replay window (DESIGN invariant 3); warns if so.
async fn gc_deletes_too_short(
    client: &Elasticsearch,
    name: &str,
    replay_window: Duration,
) -> Result<bool, IndexError> {
    let resp = client
        .indices()
        .get_settings(IndicesGetSettingsParts::IndexName(
            &[name],
            &["index.gc_deletes"],
        ))
        .include_defaults(true)
        .send()
        .await
        .map_err(request_error(name))?;
    let settings: Value = json_or_refused(resp, name, "reading settings").await?;
    let mut too_short = false;
    if let Value::Object(by_index) = &settings {
        for (concrete, s) in by_index {
            let v = s["settings"]["index"]["gc_deletes"]
                .as_str()
                .or_else(|| s["defaults"]["index"]["gc_deletes"].as_str())
                .unwrap_or("60s");
            if parse_duration(v).is_some_and(|d| d < replay_window) {
                too_short = true;
                tracing::warn!(
                    index = %concrete,
                    gc_deletes = v,
                    replay_window_secs = replay_window.as_secs(),
                    "existing index keeps delete tombstones for less than the replay window: \
                     a replay older than that may resurrect deleted documents; set \
                     index.gc_deletes on it (see README)"
                );
            }
        }
    }
    Ok(too_short)
}

async fn json_or_refused(
    resp: elasticsearch::http::response::Response,
    index: &str,
    what: &'static str,
) -> Result<Value, IndexError> {
    let status = resp.status_code().as_u16();
    let text = resp.text().await.map_err(|source| IndexError::Request {
        index: index.to_string(),
        source,
    })?;
    if !(200..300).contains(&status) {
        return Err(IndexError::Refused {
            index: index.to_string(),
            what,
            status,
            body: text,
        });
    }
    serde_json::from_str(&text).map_err(|e| IndexError::Refused {
        index: index.to_string(),
        what,
        status,
        body: format!("unreadable response ({e}): {text}"),
    })
}

/// Differences between the configured mappings and an existing index's: each
/// field the configuration declares must exist with the same definition
/// (fields only the index has, e.g. from dynamic mapping, are fine).
pub fn mapping_differences(wanted: &Value, existing: &Value) -> Vec<String> {
    let mut out = Vec::new();
    compare_properties(&wanted["properties"], &existing["properties"], "", &mut out);
    out
}

fn compare_properties(wanted: &Value, existing: &Value, path: &str, out: &mut Vec<String>) {
    let Value::Object(wanted) = wanted else {
        return;
    };
    for (field, w) in wanted {
        let p = if path.is_empty() {
            field.clone()
        } else {
            format!("{path}.{field}")
        };
        let e = &existing[field.as_str()];
        if e.is_null() {
            out.push(format!("field `{p}` is missing"));
            continue;
        }
        let Value::Object(wm) = w else { continue };
        for (k, wv) in wm {
            if k == "properties" {
                compare_properties(wv, &e["properties"], &p, out);
            } else if k == "fields" {
                compare_properties(wv, &e["fields"], &p, out);
            } else if !same_setting(wv, &e[k.as_str()], k) {
                out.push(format!(
                    "field `{p}`: `{k}` is {} in the index, {} configured",
                    e[k.as_str()],
                    wv
                ));
            }
        }
    }
}

fn same_setting(wanted: &Value, existing: &Value, key: &str) -> bool {
    if wanted == existing {
        return true;
    }
    // Elasticsearch echoes some values as strings (`"false"`) and omits
    // defaults: an `object` type is implied by `properties`.
    if let (Some(w), Some(e)) = (scalar_text(wanted), scalar_text(existing))
        && w == e
    {
        return true;
    }
    key == "type" && wanted == "object" && existing.is_null()
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parse an Elasticsearch time value (`60s`, `1h`, `500ms`, `2d`).
fn parse_duration(v: &str) -> Option<Duration> {
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().ok()?;
    let unit = &v[digits.len()..];
    let secs = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(settings: Value) -> IndexSpec {
        IndexSpec {
            name: "items".into(),
            settings,
            mappings: json!({"properties": {"n": {"type": "long"}}}),
            alias: Some("items-live".into()),
        }
    }

    #[test]
    fn created_indices_keep_delete_tombstones_for_the_replay_window() {
        let b = create_body(
            &spec(json!({"index": {"number_of_shards": 2, "gc_deletes": "10s"}})),
            Duration::from_secs(3600),
        );
        assert_eq!(b["settings"]["index"]["gc_deletes"], "3600s");
        assert_eq!(b["settings"]["index"]["number_of_shards"], 2);
        assert_eq!(b["mappings"]["properties"]["n"]["type"], "long");
        assert_eq!(b["aliases"], json!({"items-live": {}}));
    }

    #[test]
    fn flat_gc_deletes_settings_are_replaced_too() {
        let b = create_body(
            &spec(json!({"index.gc_deletes": "1s", "gc_deletes": "2s", "number_of_replicas": 0})),
            Duration::from_secs(120),
        );
        let s = b["settings"].as_object().unwrap();
        assert!(!s.contains_key("index.gc_deletes") && !s.contains_key("gc_deletes"));
        assert_eq!(b["settings"]["index"]["gc_deletes"], "120s");
        assert_eq!(b["settings"]["number_of_replicas"], 0);
    }

    #[test]
    fn matching_mappings_have_no_differences_even_with_extra_index_fields() {
        let wanted = json!({"properties": {
            "n": {"type": "long"},
            "o": {"properties": {"a": {"type": "keyword", "index": false}}}
        }});
        let existing = json!({"properties": {
            "n": {"type": "long"},
            "extra": {"type": "text"},
            "o": {"properties": {"a": {"type": "keyword", "index": "false"}}}
        }});
        assert_eq!(
            mapping_differences(&wanted, &existing),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_changed_type_or_missing_field_is_a_difference() {
        let wanted = json!({"properties": {
            "n": {"type": "long"},
            "o": {"properties": {"a": {"type": "keyword"}}}
        }});
        let existing = json!({"properties": {
            "n": {"type": "text"},
            "o": {"properties": {}}
        }});
        let d = mapping_differences(&wanted, &existing);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("`n`") && d[0].contains("long"));
        assert!(d[1].contains("`o.a` is missing"));
    }

    #[test]
    fn elasticsearch_time_values_parse() {
        assert_eq!(parse_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("x"), None);
    }
}
