//! Start-up steps shared by `sluice run` and `sluice snapshot`: the
//! preflight checks, the pipeline settings from the config, and the target
//! and dead-letter indices made ready before anything is written.

use std::time::Duration;

use anyhow::{Context, anyhow};

use crate::app::{EXIT_CONFIG, EXIT_RUNTIME};
use crate::config::{Config, ConfigErrors};
use crate::sink::Elasticsearch;
use crate::sink::admin::{self, AdminError};
use crate::sink::indexer::IndexerConfig;
use crate::source::SourceError;

/// How `run` failed: bad input (exit 2) or a runtime failure (exit 1).
#[derive(Debug)]
pub enum Failure {
    Config(String),
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Config(_) => EXIT_CONFIG,
            Failure::Runtime(_) => EXIT_RUNTIME,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Config(m) => f.write_str(m),
            Failure::Runtime(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        if let Some(c) = e.downcast_ref::<ConfigErrors>() {
            return Failure::Config(c.to_string());
        }
        Failure::Runtime(e)
    }
}

/// `check`'s fatal PostgreSQL checks for `run` and `snapshot`: its
/// warnings are logged, its problems refuse the start with `check`'s words.
pub(crate) async fn preflight(
    cfg: &Config,
    what: crate::app::check::Preflight,
) -> Result<(), Failure> {
    match crate::app::check::preflight(cfg, what).await {
        Ok(warnings) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            Ok(())
        }
        Err((code, message)) if code == EXIT_CONFIG => Err(Failure::Config(message)),
        Err((_, message)) => Err(Failure::Runtime(anyhow!(message))),
    }
}

/// Setup problems the user must fix (a missing privilege, wal_level) are
/// configuration failures; connection trouble is a runtime failure.
pub(crate) fn source_failure(e: SourceError, what: &str) -> Failure {
    match e {
        SourceError::Setup(m) => Failure::Config(format!("{what}: {m}")),
        other => Failure::Runtime(anyhow!(other).context(what.to_string())),
    }
}

pub(crate) fn indexer_config(cfg: &Config) -> IndexerConfig {
    let p = &cfg.pipeline;
    IndexerConfig {
        concurrency: p.concurrency,
        max_batch_docs: p.batch_max_docs,
        max_batch_bytes: p.batch_max_bytes,
        linger: p.linger,
        dead_letter_index: p.dead_letter_index.clone(),
        ..IndexerConfig::default()
    }
    // The memory bound covers queued ops and request bodies together.
    .fit_memory(p.memory_bound_bytes)
}

/// Create the target indices (or templates) of the mappings — of those
/// reading `tables` only, when given — and the dead-letter index; existing
/// indices are checked, never changed. `run` does this at start-up, and
/// `snapshot` too, so a backfill can be the first thing a deployment does.
pub(crate) async fn prepare_indices(
    cfg: &Config,
    es: &Elasticsearch,
    tables: Option<&[String]>,
) -> anyhow::Result<()> {
    // A name being reindexed is checked against nothing here: its build
    // index was created from the (new) mapping, and the old index behind
    // the alias legitimately differs from it until the swap.
    let reindexing = crate::snapshot::reindex::active_for(
        &crate::snapshot::StateStore::new(es.clone(), crate::config::STATE_INDEX),
        &cfg.slot,
    )
    .await
    .context("reading running reindexes from the state index")?;
    let wanted: Option<Vec<String>> = tables.map(|tables| {
        cfg.mappings
            .list
            .iter()
            .filter(|m| tables.iter().any(|t| *t == *m.qualified_table))
            .map(|m| m.index_pattern())
            .collect()
    });
    let specs: Vec<_> = cfg
        .mappings
        .index_specs(&cfg.pipeline.gc_deletes_setting())
        .into_iter()
        .filter(|s| wanted.as_ref().is_none_or(|w| w.contains(&s.pattern)))
        .filter(|s| {
            let r = reindexing.iter().find(|r| r.alias == s.pattern);
            if let Some(r) = r {
                tracing::info!(index = %s.pattern, build_index = %r.build_index, "being reindexed: not checking its mappings");
            }
            r.is_none()
        })
        .collect();
    ensure_mapping_indices(es, &specs, cfg.pipeline.gc_deletes)
        .await
        .context("preparing the target indices")?;
    crate::sink::ensure_index(
        es,
        &crate::sink::dead_letter::index_spec(&cfg.pipeline.dead_letter_index),
        cfg.pipeline.gc_deletes,
    )
    .await
    .context("preparing the dead-letter index")?;
    Ok(())
}

/// Create the mappings' target indices (or index templates, for templated
/// names) that do not exist; existing ones are checked, never changed.
async fn ensure_mapping_indices(
    es: &Elasticsearch,
    specs: &[crate::config::IndexSpec],
    replay_window: Duration,
) -> anyhow::Result<()> {
    for spec in specs {
        if spec.templated {
            let name = format!("sluice-{}", spec.pattern.replace(['*', ',', ' '], ""));
            match admin::put_index_template(es, &name, &spec.pattern, &spec.body).await {
                Ok(()) => continue,
                Err(AdminError::Status { status, body, .. }) => anyhow::bail!(
                    "Elasticsearch refused index template `{name}` with HTTP {status}: {body}"
                ),
                Err(AdminError::Request { source, .. }) => {
                    return Err(
                        anyhow!(source).context(format!("creating index template `{name}`"))
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        let sink_spec = crate::sink::IndexSpec {
            name: spec.pattern.clone(),
            settings: spec.body.get("settings").cloned().unwrap_or_default(),
            mappings: spec.body.get("mappings").cloned().unwrap_or_default(),
            alias: spec.alias.clone(),
        };
        let outcome = crate::sink::ensure_index(es, &sink_spec, replay_window).await?;
        if let crate::sink::EnsureOutcome::Existing {
            gc_deletes_too_short: true,
        } = outcome
        {
            tracing::warn!(index = %sink_spec.name, "index.gc_deletes is shorter than the replay window: a replay after that long could resurrect deleted documents (see README)");
        }
    }
    Ok(())
}
