//! The operator endpoint: `/metrics`, `/health`, `/ready`.
//!
//! Owns the HTTP server on the `[http]` listen address and the two handles
//! the rest of the process uses to tell it how things are:
//! - [`Health`] (liveness, `/health`): 200 while the process and its
//!   long-running tasks are alive. Long-running tasks run under
//!   [`Health::supervise`]: one that ends or panics before shutdown began is
//!   reported dead. Tasks may also register a [`Heartbeat`] and beat it from
//!   their loops; a heartbeat silent for longer than its allowance (a blocked
//!   runtime), a dead task, or `set_alive(false)` turns `/health` into 503 so
//!   an orchestrator restarts the process. Waiting on a server that is down
//!   is not a liveness failure (a restart would not help).
//! - [`ReadyState`] (readiness, `/ready`): 200 only while the pipeline is
//!   connected and Snapshotting or Streaming and no write is held back for
//!   the cluster's configuration (`ops::Holds`); 503 naming the state and
//!   the reason otherwise.
//!
//! `/metrics` renders the Prometheus recorder installed by `metrics::install`.
//! Nothing here prints configuration, so no secret can leak through it.
//! `/ui` (and `/`, which redirects there) and `/status.json` serve what the
//! app published on the [`StatusPage`] board, behind the optional token.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::model::secret::Secret;
use crate::ops::status_page;
pub use crate::ops::status_page::StatusPage;

/// Where the pipeline is. Readiness is true in `Snapshotting` and `Streaming`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum PipelineState {
    /// Connecting, preflight checks, creating the slot and publication.
    Starting = 0,
    /// Connected and backfilling tables (the stream may run alongside).
    Snapshotting = 1,
    /// Connected and applying the live stream.
    Streaming = 2,
    /// Shutting down: finishing in-flight batches, confirming the final LSN.
    Stopping = 3,
    /// Waiting for another process to release the replication slot (see
    /// `ops::standby`); reported while the [`crate::ops::Standby`] board
    /// holds a wait, whatever the pipeline was doing.
    Standby = 4,
}

impl PipelineState {
    fn from_u8(v: u8) -> PipelineState {
        match v {
            1 => PipelineState::Snapshotting,
            2 => PipelineState::Streaming,
            3 => PipelineState::Stopping,
            4 => PipelineState::Standby,
            _ => PipelineState::Starting,
        }
    }

    pub fn is_ready(self) -> bool {
        matches!(self, PipelineState::Snapshotting | PipelineState::Streaming)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Starting => "starting",
            PipelineState::Snapshotting => "snapshotting",
            PipelineState::Streaming => "streaming",
            PipelineState::Stopping => "stopping",
            PipelineState::Standby => "standby",
        }
    }
}

/// Shared readiness state; clone it into the pipeline, which calls `set` on
/// each transition. Starts in `Starting`.
#[derive(Debug, Clone, Default)]
pub struct ReadyState(Arc<AtomicU8>, crate::ops::Holds, crate::ops::Standby);

impl ReadyState {
    pub fn new() -> ReadyState {
        ReadyState::default()
    }

    /// Where the bulk workers report held writes; give it to the indexer.
    pub fn holds(&self) -> crate::ops::Holds {
        self.1.clone()
    }

    /// Where the start-up gate and the reader record a standby's wait.
    pub fn standby(&self) -> crate::ops::Standby {
        self.2.clone()
    }

    pub fn set(&self, state: PipelineState) {
        let old = PipelineState::from_u8(self.0.swap(state as u8, Ordering::SeqCst));
        if old != state {
            tracing::info!(from = old.as_str(), to = state.as_str(), "pipeline state");
        }
    }

    /// The state `/ready` reports: `Standby` while waiting for the slot
    /// (unless stopping).
    pub fn get(&self) -> PipelineState {
        let state = PipelineState::from_u8(self.0.load(Ordering::SeqCst));
        if state != PipelineState::Stopping && self.2.waiting().is_some() {
            return PipelineState::Standby;
        }
        state
    }
}

#[derive(Debug)]
struct Beat {
    last: Instant,
    allowance: Duration,
    /// Which registration owns the entry, so dropping a replaced heartbeat
    /// does not unregister its successor.
    generation: u64,
}

#[derive(Debug)]
struct HealthInner {
    alive: AtomicBool,
    generation: std::sync::atomic::AtomicU64,
    beats: Mutex<BTreeMap<String, Beat>>,
    /// Supervised tasks that ended or panicked before shutdown, with how.
    dead: Mutex<BTreeMap<String, &'static str>>,
    stopping: AtomicBool,
}

/// Liveness: cloneable; `set_alive(false)` when a fatal error leaves the
/// process unable to recover by itself, and [`Health::heartbeat`] for each
/// long-running task.
#[derive(Debug, Clone)]
pub struct Health(Arc<HealthInner>);

impl Default for Health {
    fn default() -> Self {
        Health(Arc::new(HealthInner {
            alive: AtomicBool::new(true),
            generation: std::sync::atomic::AtomicU64::new(0),
            beats: Mutex::new(BTreeMap::new()),
            dead: Mutex::new(BTreeMap::new()),
            stopping: AtomicBool::new(false),
        }))
    }
}

/// One task's heartbeat. Beat it at least once per `allowance` from the
/// task's loop (also while it waits: select on a timer). Dropping it
/// unregisters the task (a task that ends normally is not a liveness failure;
/// one that panics should be noticed by its owner, which calls `set_alive`).
#[derive(Debug)]
pub struct Heartbeat {
    health: Health,
    name: String,
    generation: u64,
}

impl Heartbeat {
    pub fn beat(&self) {
        if let Some(b) = self.health.beats().get_mut(&self.name)
            && b.generation == self.generation
        {
            b.last = Instant::now();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let mut beats = self.health.beats();
        if beats.get(&self.name).map(|b| b.generation) == Some(self.generation) {
            beats.remove(&self.name);
        }
    }
}

/// What `/health` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    pub alive: bool,
    /// Tasks whose heartbeat is overdue.
    pub stalled: Vec<String>,
    /// Supervised tasks that ended (`name: ended`) or panicked
    /// (`name: panicked`) while the process was not shutting down.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dead: Vec<String>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    fn beats(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Beat>> {
        self.0.beats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_alive(&self, alive: bool) {
        self.0.alive.store(alive, Ordering::SeqCst);
    }

    /// Shutdown began: supervised tasks ending from now on are expected.
    pub fn begin_shutdown(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
    }

    fn task_died(&self, name: &str, how: &'static str) {
        if self.0.stopping.load(Ordering::SeqCst) {
            return;
        }
        tracing::error!(
            task = name,
            how,
            "a long-running task stopped; /health reports it"
        );
        self.0
            .dead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), how);
    }

    /// Wraps a long-running task (spawn the result): if it returns or
    /// panics before [`Health::begin_shutdown`], `/health` reports it dead
    /// from then on. Aborting it (dropping the future) is not a death: its
    /// owner decided. A panic is passed on to the task's `JoinHandle`.
    pub fn supervise<F>(&self, name: &str, task: F) -> impl Future<Output = F::Output> + use<F>
    where
        F: Future,
    {
        use futures::FutureExt;
        let health = self.clone();
        let name = name.to_string();
        async move {
            match std::panic::AssertUnwindSafe(task).catch_unwind().await {
                Ok(out) => {
                    health.task_died(&name, "ended");
                    out
                }
                Err(panic) => {
                    health.task_died(&name, "panicked");
                    std::panic::resume_unwind(panic)
                }
            }
        }
    }

    /// Registers a task by name; `/health` fails if it does not beat within
    /// `allowance`. Registering a name again replaces the old registration.
    pub fn heartbeat(&self, name: &str, allowance: Duration) -> Heartbeat {
        let generation = self.0.generation.fetch_add(1, Ordering::SeqCst);
        self.beats().insert(
            name.to_string(),
            Beat {
                last: Instant::now(),
                allowance,
                generation,
            },
        );
        Heartbeat {
            health: self.clone(),
            name: name.to_string(),
            generation,
        }
    }

    pub fn report(&self) -> HealthReport {
        let now = Instant::now();
        let stalled = self
            .beats()
            .iter()
            .filter(|(_, b)| now.duration_since(b.last) > b.allowance)
            .map(|(n, _)| n.clone())
            .collect();
        let dead = self
            .0
            .dead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, how)| format!("{n}: {how}"))
            .collect();
        HealthReport {
            alive: self.0.alive.load(Ordering::SeqCst),
            stalled,
            dead,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.report().is_healthy()
    }
}

impl HealthReport {
    pub fn is_healthy(&self) -> bool {
        self.alive && self.stalled.is_empty() && self.dead.is_empty()
    }
}

/// Everything the server shows. Clone the `health` and `ready` handles into
/// the tasks that update them before passing this to [`serve`].
#[derive(Clone)]
pub struct HttpHandles {
    pub metrics: PrometheusHandle,
    pub health: Health,
    pub ready: ReadyState,
    /// The status page the app renders in the background.
    pub page: StatusPage,
    /// `[http] ui_token`: guards `/ui` and `/status.json` when set.
    pub ui_token: Option<Secret>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "cannot listen on {addr} for /metrics, /health and /ready: {source} \
         (change [http] listen in the configuration)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP endpoint failed: {0}")]
    Serve(#[source] std::io::Error),
}

pub fn router(handles: HttpHandles) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health_handler))
        .route("/ready", get(ready_handler))
        .route("/", get(root_handler))
        .route("/ui", get(ui_handler))
        .route("/status.json", get(status_json_handler))
        .with_state(handles)
}

async fn metrics_handler(State(h): State<HttpHandles>) -> Response {
    let body = crate::ops::metrics::render(&h.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn root_handler(State(h): State<HttpHandles>, headers: HeaderMap) -> Response {
    if !status_page::authorized(h.ui_token.as_ref(), &headers) {
        return status_page::unauthorized();
    }
    axum::response::Redirect::to("/ui").into_response()
}

async fn ui_handler(State(h): State<HttpHandles>, headers: HeaderMap) -> Response {
    if !status_page::authorized(h.ui_token.as_ref(), &headers) {
        return status_page::unauthorized();
    }
    status_page::html_response(&h.page)
}

async fn status_json_handler(State(h): State<HttpHandles>, headers: HeaderMap) -> Response {
    if !status_page::authorized(h.ui_token.as_ref(), &headers) {
        return status_page::unauthorized();
    }
    status_page::json_response(&h.page)
}

async fn health_handler(State(h): State<HttpHandles>) -> Response {
    let report = h.health.report();
    let code = if report.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(report)).into_response()
}

#[derive(Serialize)]
struct ReadyBody {
    ready: bool,
    state: PipelineState,
    /// Why changes are held back, while they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<String>,
    /// Why a standby is not streaming: `slot held by pid N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// `/ready`: 200 only while this process snapshots or streams (no write
/// held). `/ready?standby=ok` also answers 200 for a standby waiting for
/// the slot: for an orchestrator that runs the pair (a Kubernetes
/// Deployment of 2 replicas), a healthy standby is a ready member, or a
/// rolling update would wait forever for the new Pod (a standby until the
/// old one goes) and a PodDisruptionBudget would never let the active one
/// be evicted. The body still says `"state":"standby"` and why.
async fn ready_handler(
    State(h): State<HttpHandles>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let state = h.ready.get();
    let held = h.ready.holds().reason();
    let standby_ok = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|kv| kv == "standby=ok"));
    let ready =
        (state.is_ready() || (standby_ok && state == PipelineState::Standby)) && held.is_none();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let reason = (state == PipelineState::Standby)
        .then(|| h.ready.standby().waiting().map(|w| w.reason()))
        .flatten();
    let body = ReadyBody {
        ready,
        state,
        held,
        reason,
    };
    (code, axum::Json(body)).into_response()
}

/// Binds the listen address; a busy or forbidden address is a clear error.
/// Separate from [`serve_on`] so the caller learns the bound port (`:0`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves until `shutdown` completes, then finishes in-flight requests.
pub async fn serve_on(
    listener: TcpListener,
    handles: HttpHandles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /health, /ready and the status page /ui");
    }
    axum::serve(listener, router(handles))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(HttpError::Serve)
}

/// Serves on a thread of its own with its own single-threaded runtime, so
/// `/ui`, `/status.json`, `/metrics` and the probes answer in milliseconds
/// even while the pipeline keeps every worker of the main runtime busy
/// (a snapshot or a catch-up at full speed): their answers are ready-made
/// bytes or atomics, and only a free thread was missing.
pub fn serve_on_own_thread(
    listener: TcpListener,
    handles: HttpHandles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<(), HttpError>>, HttpError> {
    let std_listener = listener.into_std().map_err(HttpError::Serve)?;
    std::thread::Builder::new()
        .name("sluice-http".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(HttpError::Serve)?;
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).map_err(HttpError::Serve)?;
                serve_on(listener, handles, shutdown).await
            })
        })
        .map_err(HttpError::Serve)
}

/// Binds `addr` and serves until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    handles: HttpHandles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let listener = bind(addr).await?;
    serve_on(listener, handles, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_snapshotting_and_streaming_are_ready() {
        let r = ReadyState::new();
        assert_eq!(r.get(), PipelineState::Starting);
        assert!(!r.get().is_ready());
        r.set(PipelineState::Snapshotting);
        assert!(r.get().is_ready());
        r.set(PipelineState::Streaming);
        assert!(r.get().is_ready());
        r.set(PipelineState::Stopping);
        assert!(!r.get().is_ready());
    }

    #[test]
    fn a_standby_is_not_ready_until_it_has_the_slot() {
        let r = ReadyState::new();
        r.set(PipelineState::Streaming);
        r.standby().wait(Some(7));
        assert_eq!(r.get(), PipelineState::Standby);
        assert!(!r.get().is_ready());
        r.standby().clear();
        assert_eq!(r.get(), PipelineState::Streaming);
        r.standby().wait(Some(7));
        r.set(PipelineState::Stopping);
        assert_eq!(r.get(), PipelineState::Stopping, "stopping wins");
    }

    #[test]
    fn a_heartbeat_past_its_allowance_makes_the_process_unhealthy() {
        let h = Health::new();
        let beat = h.heartbeat("stream", Duration::from_millis(20));
        assert!(h.is_healthy());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(h.report().stalled, ["stream"]);
        beat.beat();
        assert!(h.is_healthy());
    }

    #[test]
    fn a_dropped_heartbeat_no_longer_counts() {
        let h = Health::new();
        let beat = h.heartbeat("snapshot", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert!(!h.is_healthy());
        drop(beat);
        assert!(h.is_healthy());
    }

    #[test]
    fn dropping_a_replaced_heartbeat_keeps_its_successor() {
        let h = Health::new();
        let old = h.heartbeat("stream", Duration::from_secs(60));
        let _new = h.heartbeat("stream", Duration::ZERO);
        drop(old);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(h.report().stalled, ["stream"]);
    }

    #[tokio::test]
    async fn a_supervised_task_that_ends_or_panics_before_shutdown_is_dead() {
        let h = Health::new();
        tokio::spawn(h.supervise("gauges", async {})).await.unwrap();
        let panicked = tokio::spawn(h.supervise("poller", async { panic!("boom") })).await;
        assert!(
            panicked.unwrap_err().is_panic(),
            "the panic reaches the JoinHandle"
        );
        let r = h.report();
        assert_eq!(r.dead, ["gauges: ended", "poller: panicked"]);
        assert!(!r.is_healthy());
    }

    #[tokio::test]
    async fn supervised_tasks_may_end_at_shutdown_or_be_aborted() {
        let h = Health::new();
        let forever = tokio::spawn(h.supervise("beat", std::future::pending::<()>()));
        forever.abort();
        assert!(forever.await.unwrap_err().is_cancelled());
        h.begin_shutdown();
        assert_eq!(
            tokio::spawn(h.supervise("reader", async { 7 }))
                .await
                .unwrap(),
            7
        );
        assert!(h.is_healthy(), "{:?}", h.report());
    }

    #[test]
    fn set_alive_false_is_unhealthy() {
        let h = Health::new();
        h.clone().set_alive(false);
        assert!(!h.is_healthy());
    }
}
