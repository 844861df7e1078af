//! What Elasticsearch says about the cluster and the indices the mappings
//! write to: its health, and whether each index is missing, open (with its
//! health), closed, or an alias without a write index. Read for `sluice
//! status`; the verdicts (which states hold changes) are the caller's.

use elasticsearch::Elasticsearch;
use elasticsearch::cat::CatIndicesParts;
use elasticsearch::cluster::ClusterHealthParts;
use elasticsearch::indices::IndicesGetAliasParts;
use elasticsearch::params::ExpandWildcards;
use serde::Serialize;
use serde_json::Value;

use super::client::describe_es_error;

#[derive(Debug, Clone, Default, Serialize)]
pub struct EsStatus {
    /// `None` when `_cluster/health` could not be read (see `error`).
    pub cluster: Option<ClusterHealth>,
    pub indices: Vec<TargetIndex>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClusterHealth {
    /// `green`, `yellow` or `red`.
    pub status: String,
    pub number_of_nodes: u64,
    pub unassigned_shards: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetIndex {
    /// As the mapping names it (an index or an alias).
    pub name: String,
    #[serde(flatten)]
    pub state: IndexState,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IndexState {
    /// Not created yet: the first write creates it.
    Missing,
    Open {
        health: String,
    },
    /// These concrete indices behind the name are closed.
    Closed {
        indices: Vec<String>,
    },
    /// An alias over several indices, none of them its write index.
    NoWriteIndex {
        indices: Vec<String>,
    },
}

/// Reads the cluster's health and the state of each named index. Errors are
/// part of the report (an unreachable cluster must not hide the slot).
pub async fn read(es: &Elasticsearch, names: &[String]) -> EsStatus {
    let mut out = EsStatus::default();
    match cluster_health(es).await {
        Ok(h) => out.cluster = Some(h),
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    }
    for name in names {
        match index_state(es, name).await {
            Ok(state) => out.indices.push(TargetIndex {
                name: name.clone(),
                state,
            }),
            Err(e) => out.error = Some(e),
        }
    }
    out
}

async fn get_json(
    what: &str,
    resp: Result<elasticsearch::http::response::Response, elasticsearch::Error>,
) -> Result<(u16, Value), String> {
    let resp = resp.map_err(|e| format!("{what}: {}", describe_es_error(&e)))?;
    let code = resp.status_code().as_u16();
    let body = resp
        .json::<Value>()
        .await
        .map_err(|e| format!("{what}: {}", describe_es_error(&e)))?;
    Ok((code, body))
}

async fn cluster_health(es: &Elasticsearch) -> Result<ClusterHealth, String> {
    let sent = es.cluster().health(ClusterHealthParts::None).send().await;
    let (code, body) = get_json("reading the cluster health", sent).await?;
    if !(200..300).contains(&code) {
        return Err(format!("reading the cluster health: HTTP {code}: {body}"));
    }
    Ok(ClusterHealth {
        status: body["status"].as_str().unwrap_or("unknown").to_string(),
        number_of_nodes: body["number_of_nodes"].as_u64().unwrap_or(0),
        unassigned_shards: body["unassigned_shards"].as_u64().unwrap_or(0),
    })
}

async fn index_state(es: &Elasticsearch, name: &str) -> Result<IndexState, String> {
    let what = format!("reading index {name}");
    let sent = es
        .cat()
        .indices(CatIndicesParts::Index(&[name]))
        .format("json")
        .h(&["index", "status", "health"])
        .expand_wildcards(&[ExpandWildcards::All])
        .send()
        .await;
    let (code, rows) = get_json(&what, sent).await?;
    if code == 404 {
        return Ok(IndexState::Missing);
    }
    if !(200..300).contains(&code) {
        return Err(format!("{what}: HTTP {code}: {rows}"));
    }
    let sent = es
        .indices()
        .get_alias(IndicesGetAliasParts::Name(&[name]))
        .send()
        .await;
    let (alias_code, aliases) = get_json(&what, sent).await?;
    let aliases = (alias_code == 200).then_some(aliases);
    Ok(classify(name, &rows, aliases.as_ref()))
}

/// The state of one mapped name from `_cat/indices/<name>` rows and, if the
/// name is an alias, its `_alias/<name>` answer. Pure, for the unit tests.
pub fn classify(name: &str, rows: &Value, aliases: Option<&Value>) -> IndexState {
    let rows = rows.as_array().cloned().unwrap_or_default();
    let closed: Vec<String> = rows
        .iter()
        .filter(|r| r["status"] == "close")
        .filter_map(|r| r["index"].as_str().map(str::to_string))
        .collect();
    if !closed.is_empty() {
        return IndexState::Closed { indices: closed };
    }
    if let Some(map) = aliases.and_then(Value::as_object)
        && map.len() > 1
        && !map
            .values()
            .any(|v| v["aliases"][name]["is_write_index"] == true)
    {
        let mut indices: Vec<String> = map.keys().cloned().collect();
        indices.sort();
        return IndexState::NoWriteIndex { indices };
    }
    let rank = |h: &str| match h {
        "red" => 2,
        "yellow" => 1,
        _ => 0,
    };
    let health = rows
        .iter()
        .filter_map(|r| r["health"].as_str())
        .max_by_key(|h| rank(h))
        .unwrap_or("green")
        .to_string();
    IndexState::Open { health }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_closed_index_behind_a_name_is_reported_closed() {
        let rows = json!([{"index": "orders", "status": "close", "health": "red"}]);
        assert_eq!(
            classify("orders", &rows, None),
            IndexState::Closed {
                indices: vec!["orders".into()]
            }
        );
    }

    #[test]
    fn an_alias_over_two_indices_without_a_write_index_is_reported() {
        let rows = json!([
            {"index": "orders-1", "status": "open", "health": "green"},
            {"index": "orders-2", "status": "open", "health": "green"}
        ]);
        let aliases = json!({"orders-1": {"aliases": {"orders": {}}},
                             "orders-2": {"aliases": {"orders": {}}}});
        assert_eq!(
            classify("orders", &rows, Some(&aliases)),
            IndexState::NoWriteIndex {
                indices: vec!["orders-1".into(), "orders-2".into()]
            }
        );
        let with_write = json!({"orders-1": {"aliases": {"orders": {}}},
                                "orders-2": {"aliases": {"orders": {"is_write_index": true}}}});
        assert_eq!(
            classify("orders", &rows, Some(&with_write)),
            IndexState::Open {
                health: "green".into()
            }
        );
    }

    #[test]
    fn an_open_index_takes_the_worst_health_of_its_indices() {
        let rows = json!([
            {"index": "a", "status": "open", "health": "green"},
            {"index": "b", "status": "open", "health": "yellow"}
        ]);
        assert_eq!(
            classify("x", &rows, None),
            IndexState::Open {
                health: "yellow".into()
            }
        );
    }
}
