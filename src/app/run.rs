//! `sluice run`: the long-lived sidecar.
//!
//! Owns start-up order and shutdown, nothing else: load and validate the
//! configuration, check the servers, make sure the publication and the
//! target indices exist, wait as a standby while another process holds the
//! slot, make sure the slot exists, take the initial snapshot when the slot
//! is new and the mode asks for it, then stream until SIGTERM/SIGINT.
//!
//! Standby: two processes with the same configuration need no coordinator;
//! PostgreSQL is the lock. The slot streams to one walsender at a time, and
//! while it is created and loaded its loader's session is marked (see
//! `source::standby`). A process that finds the slot held waits before
//! touching it (`wait_while_held`), and its reader waits too if it loses a
//! race to `START_REPLICATION`; both show in `/ready` as `standby`. Every piece of
//! real work lives in its layer; this file only wires them.
//!
//! Invariant kept here: the reader confirms to the slot only what the
//! pipeline's checkpoint publishes (DESIGN invariant 1), and on shutdown the
//! pipeline drains and publishes its final LSN *before* the reader is told to
//! stop, so the last standby status update carries it.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::app::setup::{Failure, indexer_config, preflight, prepare_indices, source_failure};
use crate::config::{Config, SnapshotMode};
use crate::model::RetryPolicy;
use crate::model::lsn::Lsn;
use crate::ops::http::{Health, Heartbeat, HttpHandles, PipelineState, ReadyState};
use crate::sink::Elasticsearch;
use crate::sink::Indexer;
use crate::snapshot::StateStore;
use crate::source::publication_guard::{
    self, PublicationGuard, PublicationIdentity, read_identity,
};
use crate::source::{self, ReaderConfig, SourceError, standby};
use crate::stream::dual_write::{DualWrite, MakeTransform, Poller, PollerSetup};
use crate::stream::nested::NestedStream;
use crate::stream::pipeline::{Pipeline, PipelineConfig};
use crate::stream::transform_step::{StepSetup, transform_step};

/// Where streaming starts.
enum SlotStart {
    /// The slot existed: resume from its confirmed position.
    Existing { confirmed_flush: Lsn },
    /// The slot was just created on `conn`, which must stay open and idle
    /// while `snapshot_name` (if any) is read, then streams from it.
    Created {
        consistent_point: Lsn,
        conn: source::ReplicationConnection,
        snapshot_name: Option<String>,
    },
}

/// The start-up gate: wait as a standby while another process keeps the
/// slot — streams from it, or creates it and loads its initial snapshot —
/// so a standby never snapshots, creates or resumes anything another
/// process is doing. The wait shows in `/ready` (state `standby`) and, by
/// this session's `application_name`, in `sluice status`. Returns whether
/// it waited. Right after a crash this is also where a restarting process
/// waits for its own previous walsender to exit.
async fn wait_while_held(
    pg: &tokio_postgres::Client,
    cfg: &Config,
    ready: &ReadyState,
) -> Result<bool, SourceError> {
    let standby = ready.standby();
    let mut backoff = RetryPolicy::STANDBY.backoff();
    let mut waited = false;
    while let Some(pid) = standby::slot_holder(pg, &cfg.slot).await? {
        if !waited {
            standby::mark_session(pg, Some(&standby::standby_name(&cfg.slot))).await?;
            waited = true;
        }
        standby.wait(Some(pid));
        let delay = backoff.next().unwrap_or(RetryPolicy::STANDBY.max_delay);
        tokio::time::sleep(delay).await;
    }
    if waited {
        standby::mark_session(pg, None).await?;
        standby.clear();
    }
    Ok(waited)
}

/// Resume the configured slot, or create it through the replication
/// protocol so that the initial snapshot is exactly the slot's consistent
/// point (DESIGN invariant 4). Returns with this session marked as the
/// slot's loader (see `source::standby`): the caller takes the mark back
/// once the initial snapshot is done.
async fn open_slot(
    pg: &tokio_postgres::Client,
    es: &Elasticsearch,
    cfg: &Config,
    ready: &ReadyState,
) -> Result<SlotStart, SourceError> {
    loop {
        wait_while_held(pg, cfg, ready).await?;
        // Two processes past the gate at once: one loads, one waits again.
        if !standby::claim_loading(pg, &cfg.slot).await? {
            continue;
        }
        if source::inspect::slot(pg, &cfg.slot).await?.is_some() {
            match source::ensure_slot(pg, &cfg.slot, None).await {
                // Taken since the gate looked: wait again.
                Err(SourceError::SlotInUse { .. }) => {
                    standby::mark_session(pg, None).await?;
                    continue;
                }
                r => {
                    return Ok(SlotStart::Existing {
                        confirmed_flush: r?.confirmed_flush,
                    });
                }
            }
        }
        return create_slot(pg, es, cfg).await;
    }
}

/// No slot. A first start creates it; a start after the initial load
/// finished means the slot was lost, and rebuilding in place would leave
/// the index silently wrong.
async fn create_slot(
    pg: &tokio_postgres::Client,
    es: &Elasticsearch,
    cfg: &Config,
) -> Result<SlotStart, SourceError> {
    if let Some(refusal) = crate::app::load::lost_slot_refusal(cfg, es)
        .await
        .map_err(|e| SourceError::Protocol(format!("reading the snapshot state: {e}")))?
    {
        standby::mark_session(pg, None).await?;
        return Err(SourceError::Setup(refusal));
    }
    let export = cfg.snapshot.mode != SnapshotMode::Never;
    let action = if export {
        source::SnapshotAction::Export
    } else {
        source::SnapshotAction::NoExport
    };
    if export {
        // Marked before the slot exists, so a crash before the load finishes
        // is noticed on restart.
        crate::app::load::begin_initial(cfg, es)
            .await
            .map_err(|e| SourceError::Protocol(format!("recording the initial snapshot: {e}")))?;
    }
    let mut conn = source::ReplicationConnection::connect(&cfg.postgres).await?;
    let created = conn.create_slot(&cfg.slot, false, action).await?;
    tracing::info!(slot = %created.slot_name, consistent_point = %created.consistent_point, "created the replication slot");
    Ok(SlotStart::Created {
        consistent_point: created.consistent_point,
        conn,
        snapshot_name: if export { created.snapshot_name } else { None },
    })
}

/// `sluice run` from the CLI: returns the process exit code.
pub async fn main(config_path: &Path) -> i32 {
    match run(config_path).await {
        Ok(()) => 0,
        Err(f) => {
            tracing::error!(error = %f, "sluice run failed");
            eprintln!("sluice run: {f}");
            f.exit_code()
        }
    }
}

/// A shutdown signal shared by every task: flips to `true` once.
fn shutdown_on_signals(ready: ReadyState, health: Health) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight work"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: finishing in-flight work"),
        }
        ready.set(PipelineState::Stopping);
        health.begin_shutdown();
        let _ = tx.send(true);
    });
    rx
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

pub async fn run(config_path: &Path) -> Result<(), Failure> {
    let mut cfg = Config::load(config_path).map_err(|e| Failure::Config(e.to_string()))?;

    let ready = ReadyState::new();
    let health = Health::new();
    let shutdown = shutdown_on_signals(ready.clone(), health.clone());
    let metrics = crate::ops::metrics::install().context("installing the metrics recorder")?;
    let listener = crate::ops::http::bind(cfg.http.listen)
        .await
        .map_err(|e| Failure::Config(format!("[http] listen: {e}")))?;
    let page = crate::ops::http::StatusPage::new();
    let handles = HttpHandles {
        metrics: metrics.clone(),
        health: health.clone(),
        ready: ready.clone(),
        page: page.clone(),
        ui_token: cfg.http.ui_token.clone(),
    };
    crate::ops::http::serve_on_own_thread(listener, handles, wait_true(shutdown.clone()))
        .context("starting the HTTP endpoint")?;
    // The status page runs from the start, so an initial snapshot shows
    // its progress; its client connects only when it first reads.
    let ui_es = crate::sink::client::build_client(&cfg.elasticsearch)
        .map_err(|e| Failure::Config(format!("[elasticsearch]: {e}")))?;
    let ui =
        crate::app::ui::UiSetup::new(&cfg, ui_es, page, ready.clone(), health.clone(), metrics);
    tokio::spawn(health.supervise(
        "status page",
        crate::app::ui::run(ui, wait_true(shutdown.clone())),
    ));

    // Start-up (checks, publication, slot, the initial snapshot) listens to
    // SIGTERM as streaming does: a snapshot of a large table takes hours,
    // and an orchestrator's grace period is seconds. Dropping it midway is
    // safe: chunks are recorded done only once Elasticsearch acknowledged
    // them, the `initial|<slot>` marker stays pending, and the next start
    // resumes the remaining chunks (the crash-resume path).
    let started = tokio::select! {
        r = start_up(&mut cfg, &ready) => r?,
        _ = wait_true(shutdown.clone()) => {
            let mode = cfg.snapshot.mode;
            tracing::info!("stopped during start-up on request; the next start resumes where this one left off (an interrupted initial snapshot continues with its remaining chunks)");
            // `initial_only` exits 0 only once its snapshot is done.
            return if mode == SnapshotMode::InitialOnly {
                Err(Failure::Runtime(anyhow!(
                    "stopped before the initial snapshot was done; the next start resumes it"
                )))
            } else {
                Ok(())
            };
        }
    };
    let Some(started) = started else {
        return Ok(());
    };
    stream(cfg, started, ready, Signals { health, shutdown }).await
}

/// What start-up hands the stream.
struct Started {
    pg: tokio_postgres::Client,
    es: Elasticsearch,
    /// Where streaming starts.
    start: Lsn,
    /// The mapped tables' OIDs (`oid → schema.table`) from the catalog
    /// that start-up checked: read then, before the initial snapshot, and
    /// not after it, when a table renamed meanwhile would no longer be
    /// found under its mapped name and its changes would look unmapped.
    relation_ids: Vec<(u32, String)>,
    /// The publication's identity the stream must keep (see `publication_guard`).
    publication: PublicationIdentity,
}

/// Everything before streaming: the servers and mappings checked, the
/// publication, indices and slot made sure of, and the initial snapshot
/// taken or resumed. `None` when the mode says not to stream.
async fn start_up(cfg: &mut Config, ready: &ReadyState) -> Result<Option<Started>, Failure> {
    let (mut pg, mut relation_ids, mut seen) = prepare_postgres(cfg).await?;

    // Elasticsearch: target indices (or templates) and the dead-letter index.
    let es = crate::sink::client::build_client(&cfg.elasticsearch)
        .map_err(|e| Failure::Config(format!("[elasticsearch]: {e}")))?;
    // Checked before the indices are made sure of, which would create a
    // deleted one anew and hide that it was lost.
    if let Some(refusal) = crate::app::index_guard::refusal(cfg, &es).await? {
        return Err(Failure::Config(refusal));
    }
    prepare_indices(cfg, &es, None).await?;

    // A standby has checked everything above (so a broken configuration
    // fails at deploy time, not at takeover) and waits here. Checking is
    // all it does: the publication and indices it made sure of match what
    // the active process uses (same configuration). After a wait, which
    // may have lasted days, the catalog is read and checked again.
    let slot_name = format!("replication slot `{}`", cfg.slot);
    if wait_while_held(&pg, cfg, ready)
        .await
        .map_err(|e| source_failure(e, &slot_name))?
    {
        (pg, relation_ids, seen) = prepare_postgres(cfg).await?;
        prepare_indices(cfg, &es, None).await?;
    }

    // The slot: create it (with an exported snapshot for the initial load) or resume it.
    let slot = open_slot(&pg, &es, cfg, ready)
        .await
        .map_err(|e| source_failure(e, &slot_name))?;
    let slot_existed = matches!(slot, SlotStart::Existing { .. });
    check_publication_since_last_run(cfg, &es, slot_existed, &seen).await?;
    let start = load_initial(cfg, &es, &pg, slot, ready).await?;
    // Loaded: a standby may now pass the gate and race this process to
    // START_REPLICATION, which one of them wins (the other waits on).
    standby::mark_session(&pg, None)
        .await
        .map_err(|e| source_failure(e, &slot_name))?;
    if cfg.snapshot.mode == SnapshotMode::InitialOnly {
        tracing::warn!(
            slot = %cfg.slot,
            "snapshot mode `initial_only`: the snapshot is done, not streaming. The replication slot stays \
             and holds WAL on the database server from this point on until a `sluice run` streams from it \
             or `sluice teardown --yes-drop-slot` removes it; run this mode as a one-off Job, not a \
             Deployment (which would restart it on this exit 0, forever)"
        );
        return Ok(None);
    }
    Ok(Some(Started {
        pg,
        es,
        start,
        relation_ids,
        publication: seen.after,
    }))
}

/// PostgreSQL before anything is written: the server, the mappings against
/// the live catalog, the tables, and the publication made sure of. Returns
/// the session and the mapped tables' OIDs from the catalog it checked.
async fn prepare_postgres(
    cfg: &mut Config,
) -> Result<(tokio_postgres::Client, Vec<(u32, String)>, PublicationSeen), Failure> {
    let pg = source::connect_sql(&cfg.postgres)
        .await
        .map_err(|e| source_failure(e, &format!("connecting to PostgreSQL {}", cfg.postgres)))?;
    source::check_server(&pg)
        .await
        .map_err(|e| source_failure(e, "PostgreSQL server"))?;
    if cfg.heartbeat_interval.is_some() {
        source::heartbeat::preflight(&pg, &cfg.postgres.user)
            .await
            .map_err(|e| source_failure(e, "heartbeat"))?;
    }
    // The same fatal checks as `sluice check`, before anything is created or
    // altered: a refused row filter must never reach the publication, where
    // it would make the application's own UPDATE and DELETE fail.
    preflight(cfg, crate::app::check::Preflight::Run).await?;
    let catalog = source::catalog::read_schemas(&pg, &cfg.mappings.schemas())
        .await
        .map_err(anyhow::Error::from)?;
    (cfg.mappings.validate_against_catalog(&catalog)).map_err(anyhow::Error::from)?;
    let published = cfg.mappings.publication_tables();
    source::check_tables(&pg, &published)
        .await
        .map_err(|e| source_failure(e, "published tables"))?;
    let pub_name = format!("publication `{}`", cfg.publication);
    let before = read_identity(&pg, &cfg.publication)
        .await
        .map_err(|e| source_failure(e, &pub_name))?;
    source::ensure_publication(&pg, &cfg.publication, &published)
        .await
        .map_err(|e| source_failure(e, &pub_name))?;
    let after = read_identity(&pg, &cfg.publication)
        .await
        .map_err(|e| source_failure(e, &pub_name))?
        .ok_or_else(|| {
            Failure::Runtime(anyhow!(
                "{pub_name} vanished right after it was made sure of"
            ))
        })?;
    // Every mapped table is in the catalog: validation refused a missing one.
    let relation_ids = cfg
        .mappings
        .tables()
        .iter()
        .filter_map(|t| {
            let name = t.qualified_name();
            catalog.tables.get(&name).map(|found| (found.oid, name))
        })
        .collect();
    Ok((pg, relation_ids, PublicationSeen { before, after }))
}

/// The publication's identity as start-up found it and as it left it.
struct PublicationSeen {
    /// Before start-up made sure of it (`None`: it did not exist).
    before: Option<PublicationIdentity>,
    after: PublicationIdentity,
}

/// Every table the stream needs (`schema.table`): what the publication
/// must keep carrying.
fn mapped_tables(cfg: &Config) -> Vec<String> {
    let tables = cfg.mappings.tables();
    tables.iter().map(|t| t.qualified_name()).collect()
}

/// Changes made to the publication while Sluice was stopped: compare what
/// start-up found with what the previous run streamed with (recorded in the
/// state index), if the slot those changes wait in still exists; then record
/// the identity this run streams with. A gap stops with the rebuild.
async fn check_publication_since_last_run(
    cfg: &Config,
    es: &Elasticsearch,
    slot_existed: bool,
    seen: &PublicationSeen,
) -> Result<(), Failure> {
    let state = StateStore::new(es.clone(), crate::config::STATE_INDEX);
    state.ensure().await.context("creating the state index")?;
    let id = crate::app::load::publication_record_id(&cfg.slot, &cfg.postgres);
    if slot_existed
        && let Some(doc) = state.get(&id).await.context("reading the state index")?
        && let Ok(was) = serde_json::from_value::<PublicationIdentity>(doc["identity"].clone())
        && let Some(what) = publication_guard::what_changed(
            &cfg.publication,
            &was,
            seen.before.as_ref(),
            &mapped_tables(cfg),
        )
    {
        let e = publication_guard::gap_error(&cfg.slot, &format!("since the last run, {what}"));
        return Err(source_failure(
            e,
            &format!("publication `{}`", cfg.publication),
        ));
    }
    let doc =
        serde_json::json!({ "kind": "publication", "slot": cfg.slot, "identity": seen.after });
    state
        .put(&id, &doc)
        .await
        .context("recording the publication in the state index")?;
    Ok(())
}

/// Take the initial snapshot from a slot just created, or finish one an
/// interrupted start left pending; returns where streaming starts.
async fn load_initial(
    cfg: &Config,
    es: &Elasticsearch,
    pg: &tokio_postgres::Client,
    slot: SlotStart,
    ready: &ReadyState,
) -> Result<Lsn, Failure> {
    match slot {
        SlotStart::Existing { confirmed_flush } => {
            tracing::info!(slot = %cfg.slot, %confirmed_flush, "resuming from the replication slot");
            if cfg.snapshot.mode != SnapshotMode::Never
                && crate::app::load::initial_pending(cfg, es)
                    .await
                    .context("reading the snapshot state")?
            {
                tracing::info!(
                    "the initial snapshot was interrupted: resuming its remaining chunks"
                );
                ready.set(PipelineState::Snapshotting);
                crate::app::load::initial_load(cfg, es, pg, None).await?;
            }
            Ok(confirmed_flush)
        }
        SlotStart::Created {
            consistent_point,
            conn,
            snapshot_name,
        } => {
            match snapshot_name {
                None => tracing::info!(
                    slot = %cfg.slot, %consistent_point,
                    "created the replication slot; snapshot mode `never`: streaming from here, existing rows are not loaded"
                ),
                Some(name) => {
                    ready.set(PipelineState::Snapshotting);
                    crate::app::load::initial_load(
                        cfg,
                        es,
                        pg,
                        Some((conn, name, consistent_point)),
                    )
                    .await?;
                }
            }
            Ok(consistent_point)
        }
    }
}

/// The signals every streaming task shares.
struct Signals {
    health: Health,
    shutdown: watch::Receiver<bool>,
}

impl Signals {
    /// Spawn a long-running task supervised: one that ends or panics before
    /// shutdown turns /health to 503.
    fn spawn<T: Send + 'static>(
        &self,
        name: &'static str,
        task: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        tokio::spawn(self.health.supervise(name, task))
    }

    fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        wait_true(self.shutdown.clone())
    }
}

async fn stream(
    cfg: Config,
    started: Started,
    ready: ReadyState,
    signals: Signals,
) -> Result<(), Failure> {
    let Started {
        pg,
        es,
        start,
        relation_ids,
        publication,
    } = started;
    let (events_tx, events_rx) = mpsc::channel(4096);
    let (confirmed_tx, confirmed_rx) = watch::channel(start);
    let (reader_stop_tx, reader_stop_rx) = watch::channel(false);

    let pg = Arc::new(pg);
    let step = StepSetup {
        pg_cfg: cfg.postgres.clone(),
        pg: pg.clone(),
        dead_letter_index: cfg.pipeline.dead_letter_index.as_str().into(),
        relation_ids,
    };
    let dual = DualWrite::new(step.dead_letter_index.clone());
    let mut background = vec![
        start_reindex_poller(&cfg, &es, &pg, &step, &dual, start, &confirmed_rx, &signals).await?,
    ];
    let mut reader_cfg = ReaderConfig::new(
        cfg.postgres.clone(),
        cfg.slot.clone(),
        vec![cfg.publication.clone()],
    );
    reader_cfg.start_lsn = start;
    reader_cfg.standby = ready.standby();
    reader_cfg.guard = Some(PublicationGuard {
        publication: cfg.publication.clone(),
        slot: cfg.slot.clone(),
        expected: publication,
        mapped: mapped_tables(&cfg),
        every: PUBLICATION_CHECK_EVERY,
    });
    let reader = signals.spawn(
        "replication reader",
        source::run_reader(
            reader_cfg,
            None,
            events_tx,
            confirmed_rx.clone(),
            reader_stop_rx,
        ),
    );
    background.extend(spawn_side_tasks(&cfg, &es, &signals, confirmed_rx));

    let nested = NestedStream::new(
        &cfg.mappings,
        cfg.postgres.clone(),
        pg.clone(),
        step.dead_letter_index.clone(),
    )
    .map_err(|e| Failure::Runtime(anyhow!("nested mappings: {e}")))?
    .with_reindexes(dual.clone());
    let transform = dual.wrap(transform_step(&cfg.mappings, step));
    let mut indexer_cfg = indexer_config(&cfg);
    indexer_cfg.holds = ready.holds();
    let (ack_tx, acks) = mpsc::unbounded_channel();
    // A target index deleted under the stream stops it (see index_guard).
    let (watcher, stop, lost_rx) = watch_indices(&cfg, &es, &signals);
    background.push(watcher);
    let guard_es = es.clone();
    let indexer = Indexer::start(es, indexer_cfg, ack_tx);
    let pipeline =
        Pipeline::new(indexer, acks, PipelineConfig::default()).with_nested(Some(nested));
    ready.set(PipelineState::Streaming);
    tracing::info!(slot = %cfg.slot, publication = %cfg.publication, %start, "streaming");
    let result = pipeline
        .run(start, events_rx, transform, confirmed_tx, stop)
        .await;

    // The pipeline has published its final LSN; now let the reader send it.
    let _ = reader_stop_tx.send(true);
    let reader_result = reader.await;
    for task in background {
        task.abort();
    }
    let summary = result.context("pipeline")?;
    tracing::info!(confirmed = %summary.confirmed, drained = summary.drained, ops = summary.ops_submitted, "stopped");
    let lost = lost_rx.borrow().clone();
    if let Some(lost) = lost {
        crate::app::index_guard::record(&cfg, &guard_es, &lost).await?;
        return Err(Failure::Config(crate::app::index_guard::message(
            &cfg,
            &lost.index,
            lost.what,
        )));
    }
    match reader_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(source_failure(e, "replication stream")),
        Err(e) => Err(Failure::Runtime(anyhow!(
            "the replication reader panicked: {e}"
        ))),
    }
}

/// The task watching the target indices for a deletion, the pipeline's
/// stop (a signal, or a lost index), and the lost index once there is one.
#[allow(clippy::type_complexity)]
fn watch_indices(
    cfg: &Config,
    es: &Elasticsearch,
    signals: &Signals,
) -> (
    JoinHandle<()>,
    impl Future<Output = ()> + Send + 'static,
    watch::Receiver<Option<crate::sink::index_watch::LostIndex>>,
) {
    let (lost_tx, lost_rx) = watch::channel(None);
    let watched = crate::sink::index_watch::watch(
        es.clone(),
        cfg.mappings.fixed_indices(),
        crate::app::index_guard::WATCH_EVERY,
    );
    let task = signals.spawn("index watch", async move {
        let _ = lost_tx.send(Some(watched.await));
    });
    let (stopping, mut lost) = (signals.stopping(), lost_rx.clone());
    let stop = async move {
        tokio::select! {
            _ = stopping => {}
            _ = lost.wait_for(Option::is_some) => {}
        }
    };
    (task, stop, lost_rx)
}

/// Reindexes: polled once before any change is transformed (so a restart
/// during a reindex dual-writes everything it replays), then every second
/// by the task returned (see `dual_write`).
#[allow(clippy::too_many_arguments)]
async fn start_reindex_poller(
    cfg: &Config,
    es: &Elasticsearch,
    pg: &Arc<tokio_postgres::Client>,
    step: &StepSetup,
    dual: &DualWrite,
    start: Lsn,
    confirmed: &watch::Receiver<Lsn>,
    signals: &Signals,
) -> Result<JoinHandle<()>, Failure> {
    let make_transform: MakeTransform = {
        let step = step.clone();
        Box::new(move |m| Box::new(transform_step(m, step.clone())))
    };
    let mut poller = Poller::new(PollerSetup {
        dual: dual.clone(),
        state: StateStore::new(es.clone(), crate::config::STATE_INDEX),
        pg: pg.clone(),
        loaded: cfg.mappings.clone(),
        make_transform,
        slot: cfg.slot.clone(),
        start,
        confirmed: confirmed.clone(),
    });
    poller
        .poll()
        .await
        .context("reading running reindexes from the state index")?;
    Ok(signals.spawn(
        "reindex poller",
        poller.run(Duration::from_secs(1), signals.stopping()),
    ))
}

/// The tasks beside the pipeline: slot gauges, the last verify's drift
/// gauges, heartbeat messages (when configured) and the progress beat.
fn spawn_side_tasks(
    cfg: &Config,
    es: &Elasticsearch,
    signals: &Signals,
    confirmed: watch::Receiver<Lsn>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![signals.spawn(
        "slot gauges",
        crate::app::status::run_slot_gauges(
            cfg.postgres.clone(),
            cfg.slot.clone(),
            Duration::from_secs(15),
            signals.stopping(),
        ),
    )];
    // The last `sluice verify` per index, for alerts on drift.
    tasks.push(signals.spawn(
        "verify gauges",
        crate::app::verify::run_verify_gauges(
            es.clone(),
            cfg.mappings.fixed_indices(),
            Duration::from_secs(10),
            signals.stopping(),
        ),
    ));
    // Heartbeat messages let the slot advance while only unpublished tables
    // write (see source::heartbeat); the checkpoint confirms them in order.
    if let Some(every) = cfg.heartbeat_interval {
        tasks.push(signals.spawn(
            "heartbeat messages",
            source::heartbeat::run_heartbeat(cfg.postgres.clone(), every, signals.stopping()),
        ));
    }
    // Beaten on a timer by its own task: overdue only when the runtime is
    // blocked (a stuck worker thread), not when Elasticsearch is down.
    let heartbeat = signals
        .health
        .heartbeat("pipeline", Duration::from_secs(120));
    tasks.push(signals.spawn("progress", report_progress(heartbeat, confirmed)));
    tasks
}

/// Beat the pipeline's heartbeat, export the confirmed position, and log a
/// line a minute, so a log shows whether the stream moves.
async fn report_progress(heartbeat: Heartbeat, mut confirmed: watch::Receiver<Lsn>) {
    let mut last_report = (tokio::time::Instant::now(), *confirmed.borrow());
    loop {
        heartbeat.beat();
        let now_confirmed = *confirmed.borrow();
        crate::ops::metrics::record_confirmed_flush(now_confirmed);
        if last_report.0.elapsed() >= PROGRESS_LOG_EVERY {
            let advanced = now_confirmed.0.saturating_sub(last_report.1.0);
            tracing::info!(confirmed = %now_confirmed, advanced_bytes = advanced, "progress");
            last_report = (tokio::time::Instant::now(), now_confirmed);
        }
        tokio::select! {
            r = confirmed.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// How often the stream checks that its publication was not changed by hand.
const PUBLICATION_CHECK_EVERY: Duration = Duration::from_secs(2);

/// How often `sluice run` logs its confirmed position.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(60);
