//! Noticing a target index deleted (or replaced) under a running stream.
//!
//! Elasticsearch creates a missing index on the first write to it
//! (`action.auto_create_index`, on by default): a target index deleted by
//! hand mid-stream silently comes back empty, with dynamic mappings and the
//! default `index.gc_deletes`, and every document written before is gone.
//! Streaming alone can never make that index equal to its table again, and
//! the write path cannot tell (writes into the new index succeed). So the
//! identity of every fixed target index (its `index.uuid`, or what an alias
//! of that name points at) is read when streaming starts and watched; a
//! change that only a deletion explains is reported to the caller, who
//! stops the stream and says how to rebuild. An alias moved to another
//! index (`sluice snapshot --reindex` swapping it) is not a loss.

use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::indices::IndicesGetSettingsParts;
use serde_json::Value;

use super::admin::{AdminError, found_json};

/// What an index name stands for, as far as a deletion is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexIdentity {
    /// Nothing of that name.
    Missing,
    /// A concrete index of that name, with its uuid.
    Concrete { uuid: String },
    /// An alias: the concrete indices behind it (name, uuid), sorted.
    Alias { behind: Vec<(String, String)> },
}

impl IndexIdentity {
    /// The identity from a `GET <name>/_settings/index.uuid` answer
    /// (`None`: a 404).
    pub fn from_settings(name: &str, settings: Option<&Value>) -> IndexIdentity {
        let Some(Value::Object(by_index)) = settings else {
            return IndexIdentity::Missing;
        };
        let uuid = |s: &Value| {
            s["settings"]["index"]["uuid"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        if by_index.len() == 1
            && let Some(s) = by_index.get(name)
        {
            return IndexIdentity::Concrete { uuid: uuid(s) };
        }
        if by_index.is_empty() {
            return IndexIdentity::Missing;
        }
        let mut behind: Vec<(String, String)> =
            by_index.iter().map(|(k, s)| (k.clone(), uuid(s))).collect();
        behind.sort();
        IndexIdentity::Alias { behind }
    }
}

/// How an index name's identity changed between two looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityChange {
    /// Nothing that matters changed (the same index, or an alias moved).
    Kept,
    /// The index the stream wrote to was deleted: what the words say.
    Lost(&'static str),
}

/// Judge a change of identity. Pure: the one place that decides which
/// changes only a deletion explains.
pub fn judge(before: &IndexIdentity, now: &IndexIdentity) -> IdentityChange {
    use IndexIdentity::*;
    match (before, now) {
        // Not there at the start (a name only templates make): nothing to lose.
        (Missing, _) => IdentityChange::Kept,
        (_, Missing) => IdentityChange::Lost("it no longer exists"),
        (Concrete { uuid: a }, Concrete { uuid: b }) if a != b => IdentityChange::Lost(
            "it was deleted and created again (its index.uuid changed), most likely by \
             Elasticsearch's automatic index creation on the next write",
        ),
        (Alias { .. }, Concrete { .. }) => IdentityChange::Lost(
            "the index behind the alias was deleted and a new index of the alias's name was \
             created, most likely by Elasticsearch's automatic index creation on the next write",
        ),
        // A concrete index replaced by an alias, or an alias moved: what
        // `sluice snapshot --reindex` does when it swaps.
        _ => IdentityChange::Kept,
    }
}

/// Read the identity of `name`.
pub async fn identity(es: &Elasticsearch, name: &str) -> Result<IndexIdentity, AdminError> {
    let sent = es
        .indices()
        .get_settings(IndicesGetSettingsParts::IndexName(&[name], &["index.uuid"]))
        .request_timeout(Duration::from_secs(10))
        .send()
        .await;
    let v = found_json(format!("read the uuid of {name}"), sent).await?;
    Ok(IndexIdentity::from_settings(name, v.as_ref()))
}

/// A target index that was deleted under the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostIndex {
    pub index: String,
    /// What happened to it, in words.
    pub what: &'static str,
}

/// Watch `names` every `every` until one of them is lost; return it. Never
/// returns otherwise (the caller drops it). A failed look (Elasticsearch
/// down) is no evidence: it is skipped, and an index whose first look
/// failed is looked at again until one succeeds.
pub async fn watch(es: Elasticsearch, names: Vec<String>, every: Duration) -> LostIndex {
    let mut known: Vec<(String, Option<IndexIdentity>)> =
        names.into_iter().map(|n| (n, None)).collect();
    loop {
        for (name, before) in known.iter_mut() {
            let now = match identity(&es, name).await {
                Ok(now) => now,
                Err(e) => {
                    tracing::debug!(index = %name, error = %e.describe(), "could not read the index's identity; trying again");
                    continue;
                }
            };
            if let Some(b) = before.as_ref()
                && let IdentityChange::Lost(what) = judge(b, &now)
            {
                tracing::error!(index = %name, before = ?b, now = ?now, "{what}");
                return LostIndex {
                    index: name.clone(),
                    what,
                };
            }
            *before = Some(now);
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::IdentityChange::*;
    use super::IndexIdentity::*;
    use super::*;
    use serde_json::json;

    fn concrete(u: &str) -> IndexIdentity {
        Concrete { uuid: u.into() }
    }

    fn alias(behind: &[(&str, &str)]) -> IndexIdentity {
        Alias {
            behind: behind
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_settings_answer_tells_an_index_from_an_alias() {
        let v = json!({"items": {"settings": {"index": {"uuid": "U1"}}}});
        assert_eq!(
            IndexIdentity::from_settings("items", Some(&v)),
            concrete("U1")
        );
        let v = json!({"items-2": {"settings": {"index": {"uuid": "U2"}}},
                       "items-1": {"settings": {"index": {"uuid": "U1"}}}});
        assert_eq!(
            IndexIdentity::from_settings("items", Some(&v)),
            alias(&[("items-1", "U1"), ("items-2", "U2")])
        );
        assert_eq!(IndexIdentity::from_settings("items", None), Missing);
        assert_eq!(
            IndexIdentity::from_settings("items", Some(&json!({}))),
            Missing
        );
    }

    #[test]
    fn the_same_index_is_kept() {
        assert_eq!(judge(&concrete("a"), &concrete("a")), Kept);
        let a = alias(&[("items-1", "a")]);
        assert_eq!(judge(&a, &a), Kept);
    }

    #[test]
    fn a_deleted_index_is_lost_whether_or_not_it_came_back() {
        assert!(matches!(judge(&concrete("a"), &Missing), Lost(_)));
        assert!(matches!(judge(&concrete("a"), &concrete("b")), Lost(w) if w.contains("uuid")));
        let a = alias(&[("items-1", "a")]);
        assert!(matches!(judge(&a, &Missing), Lost(_)));
        assert!(matches!(judge(&a, &concrete("b")), Lost(w) if w.contains("alias")));
    }

    #[test]
    fn a_reindex_swap_is_not_a_loss() {
        // A concrete index replaced by an alias of its name in one request.
        assert_eq!(judge(&concrete("a"), &alias(&[("items-2", "b")])), Kept);
        // An alias moved from one build index to the next.
        assert_eq!(
            judge(&alias(&[("items-1", "a")]), &alias(&[("items-2", "b")])),
            Kept
        );
        // A name that did not exist at the start has nothing to lose.
        assert_eq!(judge(&Missing, &concrete("a")), Kept);
    }
}
