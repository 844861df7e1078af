//! The Elasticsearch half of `sluice check`: the cluster answers and is
//! recent enough, the ingest pipelines the mappings name exist, and the
//! documents every mapping writes fit the index mapping they will meet
//! (an existing index's, or the one Sluice creates), with delete
//! tombstones kept for the replay window (DESIGN invariant 3). The requests
//! are `sink::admin`'s; the verdicts and their words are here.

use std::collections::BTreeMap;

use super::Report;
use super::compat::{field_conflicts, flatten_properties, parse_es_duration};
use crate::config::doc_shape::document_fields;
use crate::config::{Config, IndexName, IndexSpec, Mapping};
use crate::model::{Catalog, CatalogTable};
use crate::sink::Elasticsearch;
use crate::sink::admin::{self, AdminError};

/// An existing index that forgets delete tombstones sooner than the replay
/// window risks resurrecting deleted documents (DESIGN invariant 3).
async fn check_gc_deletes(es: &Elasticsearch, index: &str, config: &Config, report: &mut Report) {
    let Some(value) = admin::effective_gc_deletes(es, index).await else {
        return;
    };
    let secs = parse_es_duration(&value);
    let want = config.pipeline.gc_deletes.as_secs();
    if secs.is_some_and(|s| s < want) {
        report.warnings.push(format!(
            "index `{index}` has index.gc_deletes={value}, shorter than the replay window ({want}s, pipeline.gc_deletes_secs): a replayed write could resurrect a deleted document; run `PUT {index}/_settings {{\"index.gc_deletes\": \"{want}s\"}}`"
        ));
    }
}

/// What a failed request says in `check`'s words: the client's error, or
/// the status Elasticsearch answered.
fn short_reason(e: &AdminError) -> String {
    match e {
        AdminError::Request { source, .. } => source.to_string(),
        AdminError::Status { status, .. } => format!("HTTP {status}"),
        other => other.to_string(),
    }
}

/// A request that failed: refused by Elasticsearch (fix the setup) or not
/// answered (the cluster is unreachable).
fn request_failed(report: &mut Report, e: &AdminError, what: &str) {
    let message = format!("{what}: {}", short_reason(e));
    if matches!(e, AdminError::Status { .. }) {
        report.problem(message);
    } else {
        report.unreachable(message);
    }
}

/// A missing ingest pipeline would make Elasticsearch refuse every write
/// of the mapping (all of them dead letters).
async fn check_ingest_pipelines(es: &Elasticsearch, config: &Config, report: &mut Report) {
    let mut seen: Vec<&str> = Vec::new();
    for m in &config.mappings.list {
        let Some(p) = m.pipeline.as_deref() else {
            continue;
        };
        if seen.contains(&p) {
            continue;
        }
        seen.push(p);
        let found = admin::ingest_pipeline_exists(es, p).await;
        let at = format!(
            "{} line {}: `pipeline`",
            m.file.display(),
            m.pipeline_line.unwrap_or(m.table_line)
        );
        match found {
            Ok(true) => {}
            Ok(false) => report.problem(format!(
                "{at}: ingest pipeline `{p}` does not exist in Elasticsearch; every document of this mapping would be refused (create it with PUT _ingest/pipeline/{p}, or remove `pipeline`)"
            )),
            Err(e) => request_failed(
                report,
                &e,
                &format!("{at}: cannot read ingest pipeline `{p}`"),
            ),
        }
    }
}

/// `<distribution> <version>` of the cluster, with a problem if Sluice
/// cannot use it; `None` (the problem reported) when it cannot be read.
async fn cluster_version(es: &Elasticsearch, urls: &str, report: &mut Report) -> Option<String> {
    let info = match admin::cluster_info(es).await {
        Ok(info) => info,
        Err(AdminError::Status { status, .. }) if matches!(status, 401 | 403) => {
            report.problem(format!(
                "Elasticsearch at {urls} answered HTTP {status}: check `username`/`password` or `api_key` in [elasticsearch]"
            ));
            return None;
        }
        // Some proxies and locked-down clusters refuse `GET /`: ask a node.
        Err(AdminError::Status { .. }) => match admin::node_version(es).await {
            Ok(number) => serde_json::json!({ "version": { "number": number } }),
            Err(e) => {
                report.problem(format!(
                    "Elasticsearch at {urls}: cannot read its version: {}",
                    short_reason(&e)
                ));
                return None;
            }
        },
        Err(e) => {
            report.unreachable(format!(
                "Elasticsearch at {urls} is not reachable: {}",
                short_reason(&e)
            ));
            return None;
        }
    };
    let version = info["version"]["number"].as_str().unwrap_or("?");
    let distribution = info["version"]["distribution"]
        .as_str()
        .unwrap_or("elasticsearch");
    if let Some(p) = es_version_problem(distribution, version) {
        report.problem(p);
    }
    Some(format!("{distribution} {version}"))
}

/// Whether the documents of mapping `m` fit the index mapping they will
/// meet: the existing indices' (and their tombstone lifetime), or the one
/// Sluice will create them with.
async fn check_index_mapping(
    es: &Elasticsearch,
    config: &Config,
    specs: &[IndexSpec],
    (m, t): (&Mapping, &CatalogTable),
    report: &mut Report,
) {
    let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
    let Ok(fields) = document_fields(m, &names) else {
        return;
    };
    let pattern = match &m.index {
        IndexName::Fixed(n) => n.to_string(),
        IndexName::Template(tpl) => tpl.wildcard(),
    };
    let body = match admin::index_mappings(es, &pattern).await {
        Ok(body) => body,
        Err(e) => {
            let what = format!("Elasticsearch: cannot read the mapping of `{pattern}`");
            request_failed(report, &e, &what);
            return;
        }
    };
    let Some(indices) = body.as_object() else {
        return;
    };
    let templated = matches!(m.index, IndexName::Template(_));
    if indices.is_empty() || templated {
        // Sluice will create it (or, for a templated name, the next
        // ones): the mapping it creates them with must take the
        // documents too.
        let spec = specs.iter().find(|s| s.pattern == pattern);
        let mut types = BTreeMap::new();
        if let Some(spec) = spec {
            flatten_properties(&spec.body["mappings"]["properties"], "", &mut types);
        }
        for conflict in field_conflicts(&fields, t, &types) {
            report.problem(format!(
                "{}: {conflict} but the index mapping configured for `{pattern}` maps it as `{}`; change `index_mappings` (or the index file) or convert the field in [fields]",
                m.file.display(),
                conflict.es_type,
            ));
        }
    }
    for (index, def) in indices {
        check_gc_deletes(es, index, config, report).await;
        let mut types = BTreeMap::new();
        flatten_properties(&def["mappings"]["properties"], "", &mut types);
        for conflict in field_conflicts(&fields, t, &types) {
            report.problem(format!(
                "{}: {conflict} but index `{index}` maps it as `{}`; change the index mapping or convert the field in [fields]",
                m.file.display(),
                conflict.es_type,
            ));
        }
    }
}

/// Elasticsearch before 7 wants a mapping type in every bulk action, which
/// Sluice does not write; OpenSearch (a fork of 7.10) numbers its own
/// versions and is fine.
fn es_version_problem(distribution: &str, version: &str) -> Option<String> {
    let major: Option<u32> = version.split('.').next().and_then(|m| m.parse().ok());
    match major {
        _ if distribution != "elasticsearch" => None,
        Some(m) if m >= 7 => None,
        Some(_) => Some(format!(
            "Elasticsearch {version} is too old: Sluice needs 7 or newer"
        )),
        None => Some(format!(
            "Elasticsearch reports version `{version}`, which Sluice cannot read; it needs 7 or newer"
        )),
    }
}

pub(super) async fn check_elasticsearch(
    config: &Config,
    catalog: Option<&Catalog>,
    report: &mut Report,
) {
    let es = match super::es_client(&config.elasticsearch) {
        Ok(c) => c,
        Err(e) => {
            report.problem(format!("Elasticsearch: {e:#}"));
            return;
        }
    };
    // `user:password@` in a URL is a secret: never print it.
    let urls = config
        .elasticsearch
        .urls
        .iter()
        .map(|u| crate::ops::logging::redact_url(u))
        .collect::<Vec<_>>()
        .join(", ");
    let Some(version) = cluster_version(&es, &urls, report).await else {
        return;
    };
    report.facts.push(format!("{version} at {urls}"));

    check_ingest_pipelines(&es, config, report).await;

    let Some(catalog) = catalog else { return };
    let specs = config
        .mappings
        .index_specs(&config.pipeline.gc_deletes_setting());
    for m in &config.mappings.list {
        if let Some(t) = catalog.tables.get(&*m.qualified_table) {
            check_index_mapping(&es, config, &specs, (m, t), report).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elasticsearch_before_7_is_refused_and_opensearch_is_not() {
        assert_eq!(es_version_problem("elasticsearch", "8.19.21"), None);
        assert_eq!(es_version_problem("elasticsearch", "7.17.0"), None);
        assert_eq!(
            es_version_problem("elasticsearch", "6.8.23").as_deref(),
            Some("Elasticsearch 6.8.23 is too old: Sluice needs 7 or newer")
        );
        assert!(es_version_problem("elasticsearch", "?").is_some());
        assert_eq!(es_version_problem("opensearch", "2.11.0"), None);
    }
}
