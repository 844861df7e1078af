//! The reader task: replication stream → decoded `SourceEvent`s → a bounded
//! channel, with standby status updates and reconnects.
//!
//! Invariants kept here:
//! - Only `flushed` (what the checkpoint says is durable downstream) is ever
//!   confirmed to the slot (DESIGN invariant 1); status updates go out on a
//!   timer and at once when a keepalive asks, also while the reader is
//!   blocked on a full channel (it then reads up to `MAX_READ_AHEAD` messages
//!   ahead, in order), so backpressure never gets the connection killed by
//!   `wal_sender_timeout`.
//! - Changes are forwarded one by one as they are decoded (invariant 7).
//! - A connection the server stopped talking on (a half-open TCP
//!   connection) is given up after `receive_timeout` (see `liveness`).
//! - After a connection loss the stream restarts from the slot's confirmed
//!   position: a transaction that was open when the connection dropped is
//!   sent again from its Begin. Consumers therefore may see `Begin` while a
//!   previous transaction is still open, and must treat that as "the open
//!   transaction was cut off and will be replayed whole" — its changes are
//!   resent with the same version, so idempotent writes make it harmless.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::time::{Interval, MissedTickBehavior};

use crate::model::RetryPolicy;
use crate::model::change::{Change, Relation, SourceEvent};
use crate::model::lsn::Lsn;
use crate::ops::metrics::names;
use crate::source::decoder::Decoder;
use crate::source::error::{SourceError, is_retryable};
use crate::source::liveness::{Liveness, RECEIVE_TIMEOUT, Verdict};
use crate::source::pg_config::PgConnectConfig;
use crate::source::publication_guard::{PublicationGuard, gap_error, is_publication_missing};
use crate::source::replication::{ReplMessage, ReplicationConnection, ReplicationStream};
use crate::source::standby::slot_in_use;
use crate::source::types::TypeCatalog;
use crate::source::value::ValueOptions;

#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub pg: PgConnectConfig,
    pub slot: String,
    pub publications: Vec<String>,
    /// Where to start if the checkpoint has nothing newer (the slot's
    /// confirmed position wins on the server side anyway).
    pub start_lsn: Lsn,
    /// Forward `pg_logical_emit_message` messages.
    pub messages: bool,
    /// Standby status update period; keep it well under `wal_sender_timeout`.
    pub status_interval: Duration,
    /// How long the server may stay silent before the connection is
    /// presumed dead and reopened (see `liveness`).
    pub receive_timeout: Duration,
    pub value_options: ValueOptions,
    /// How reconnects wait; its `max_times` is how many consecutive failed
    /// reconnects to give up after (`None`: never).
    pub reconnect: RetryPolicy,
    /// Where a refused `START_REPLICATION` (the slot is active for another
    /// process) is recorded: the reader then waits as a standby, retrying
    /// with [`RetryPolicy::STANDBY`], without counting a failure.
    pub standby: crate::ops::Standby,
    /// Stop (with the rebuild) if the publication changes under the
    /// stream: checked before each start of replication and on its timer.
    pub guard: Option<PublicationGuard>,
}

impl ReaderConfig {
    pub fn new(
        pg: PgConnectConfig,
        slot: impl Into<String>,
        publications: Vec<String>,
    ) -> ReaderConfig {
        ReaderConfig {
            pg,
            slot: slot.into(),
            publications,
            start_lsn: Lsn::ZERO,
            messages: true,
            status_interval: Duration::from_secs(10),
            receive_timeout: RECEIVE_TIMEOUT,
            value_options: ValueOptions::default(),
            reconnect: RetryPolicy::RECONNECT,
            standby: crate::ops::Standby::new(),
            guard: None,
        }
    }
}

enum End {
    Shutdown,
}

/// Stream the slot into `tx` until `shutdown` turns true (or its sender is
/// dropped), `tx` is closed, or a non-retryable error occurs.
///
/// `initial` lets a caller that created the slot (and did snapshot work on
/// that connection) hand over its connection for the first session.
pub async fn run_reader(
    cfg: ReaderConfig,
    initial: Option<ReplicationConnection>,
    tx: mpsc::Sender<SourceEvent>,
    flushed: watch::Receiver<Lsn>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let mut backoff = cfg.reconnect.backoff();
    let mut standby_backoff = RetryPolicy::STANDBY.backoff();
    let mut failures = 0usize;
    let mut decoder = Decoder::new(cfg.value_options, TypeCatalog::new());
    let mut initial = initial;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let mut progressed = false;
        let result = session(
            &cfg,
            initial.take(),
            &mut decoder,
            &tx,
            &flushed,
            &mut shutdown,
            &mut progressed,
        )
        .await;
        let result = result.map_err(|e| {
            if is_publication_missing(&e) {
                gap_error(&cfg.slot, &format!("the publication was dropped ({e})"))
            } else {
                e
            }
        });
        match result {
            Ok(End::Shutdown) => return Ok(()),
            // Another process streams from the slot: wait as a standby. Not
            // a failure (no retry counted, no give-up): the wait ends when
            // that process lets go, and the next try takes over.
            Err(e) if slot_in_use(&e).is_some() => {
                cfg.standby.wait(slot_in_use(&e).flatten());
                let delay = standby_backoff
                    .next()
                    .unwrap_or(RetryPolicy::STANDBY.max_delay);
                tracing::debug!(error = %e, retry_in = ?delay, "the replication slot is held by another process");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
            Err(e) if is_retryable(&e) => {
                if progressed {
                    backoff = cfg.reconnect.backoff();
                    failures = 0;
                }
                failures += 1;
                // Past `max_times` consecutive failures the backoff ends.
                let Some(delay) = backoff.next() else {
                    return Err(e);
                };
                tracing::warn!(error = %e, retry_in = ?delay, attempt = failures, "replication connection failed; reconnecting");
                metrics::counter!(names::RETRIES_TOTAL).increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

async fn send_status(
    stream: &mut ReplicationStream,
    flushed: &watch::Receiver<Lsn>,
) -> Result<(), SourceError> {
    let lsn = *flushed.borrow();
    stream.send_status(lsn, lsn, lsn, false).await
}

/// The status timer: a status update, asking for an answer once the server
/// has been quiet a while; a connection quiet for too long ends the session
/// (a retryable connection loss, see `liveness`).
async fn on_timer(
    stream: &mut ReplicationStream,
    flushed: &watch::Receiver<Lsn>,
    liveness: &Liveness,
) -> Result<(), SourceError> {
    let ask = match liveness.check(Instant::now()) {
        Verdict::Alive => false,
        Verdict::AskForReply => true,
        Verdict::Dead { quiet } => return Err(SourceError::Io(Liveness::dead_error(quiet))),
    };
    let lsn = *flushed.borrow();
    stream.send_status(lsn, lsn, lsn, ask).await
}

/// How long a shutdown waits for the server to acknowledge the end of the
/// stream before simply closing the socket.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Send the final confirmed LSN and end the stream cleanly. Errors here are
/// only logged: the status update is already written, and the next start
/// resumes from whatever the slot recorded, so nothing can be lost.
async fn close(mut stream: ReplicationStream, flushed: &watch::Receiver<Lsn>) -> End {
    let result = match send_status(&mut stream, flushed).await {
        Ok(()) => stream.finish(CLOSE_TIMEOUT).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => tracing::info!(confirmed = %*flushed.borrow(), "replication stream closed"),
        Err(e) => tracing::warn!(error = %e, "replication stream did not close cleanly"),
    }
    End::Shutdown
}

/// `START_REPLICATION` at `start`, bounded by the receive timeout: a
/// connection that died after the handshake would leave it waiting for an
/// answer forever.
async fn start_within_timeout(
    cfg: &ReaderConfig,
    conn: ReplicationConnection,
    start: Lsn,
) -> Result<ReplicationStream, SourceError> {
    let started = conn.start_replication(&cfg.slot, start, &cfg.publications, cfg.messages);
    tokio::time::timeout(cfg.receive_timeout, started)
        .await
        .map_err(|_| {
            SourceError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer to START_REPLICATION within {:?}",
                    cfg.receive_timeout
                ),
            ))
        })?
}

async fn session(
    cfg: &ReaderConfig,
    conn: Option<ReplicationConnection>,
    decoder: &mut Decoder,
    tx: &mpsc::Sender<SourceEvent>,
    flushed: &watch::Receiver<Lsn>,
    shutdown: &mut watch::Receiver<bool>,
    progressed: &mut bool,
) -> Result<End, SourceError> {
    let conn = match conn {
        Some(c) => c,
        None => ReplicationConnection::connect(&cfg.pg).await?,
    };
    let mut sql: Option<tokio_postgres::Client> = None;
    // Changes the publication stopped carrying while the reader was away
    // must not be streamed past (see `publication_guard`).
    check_guard(cfg, &mut sql).await?;
    let start = cfg.start_lsn.max(*flushed.borrow());
    let mut stream = start_within_timeout(cfg, conn, start).await?;
    let mut liveness = Liveness::new(cfg.receive_timeout, Instant::now());
    cfg.standby.clear();
    tracing::info!(slot = %cfg.slot, %start, "replication started");
    // Whatever was open is resent whole from its Begin.
    decoder.reset_transaction();
    let mut timer = tokio::time::interval(cfg.status_interval);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut out = Vec::with_capacity(8);
    let mut guard_timer = tokio::time::interval(
        cfg.guard
            .as_ref()
            .map_or(Duration::from_secs(3600), |g| g.every),
    );
    guard_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stop_watch = StopWatch::default();
    // Messages read while blocked on a full channel (see `forward`).
    let mut pending: VecDeque<ReplMessage> = VecDeque::new();
    let mut received = ReceivedCounters::default();
    loop {
        let msg = match pending.pop_front() {
            Some(m) => m,
            None => tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(close(stream, flushed).await),
                _ = timer.tick() => {
                    on_timer(&mut stream, flushed, &liveness).await?;
                    continue;
                }
                _ = guard_timer.tick(), if cfg.guard.is_some() => {
                    check_guard(cfg, &mut sql).await?;
                    continue;
                }
                msg = stream.recv() => match msg? {
                    None => return Err(SourceError::Closed),
                    Some(m) => {
                        liveness.heard(Instant::now());
                        m
                    }
                },
            },
        };
        match msg {
            ReplMessage::Keepalive {
                wal_end,
                reply_requested,
            } => {
                if reply_requested {
                    send_status(&mut stream, flushed).await?;
                    let confirmed = *flushed.borrow();
                    stop_watch.reply_requested(cfg, wal_end, confirmed).await?;
                }
                if !decoder.in_transaction() {
                    // Only an optimization (lets idle slots advance): never block on it.
                    let _ = tx.try_send(SourceEvent::Keepalive { wal_end });
                }
            }
            ReplMessage::XLogData {
                data, wal_start, ..
            } => {
                *progressed = true;
                decoder
                    .decode(&data, &mut out)
                    .map_err(|source| SourceError::Decode { wal_start, source })?;
                if !decoder.pending_types().is_empty() {
                    resolve_types(cfg, decoder, &mut sql).await;
                }
                for ev in out.drain(..) {
                    if let SourceEvent::Change(c) = &ev {
                        received.count(c);
                    }
                    let mut link = Link {
                        stream: &mut stream,
                        timer: &mut timer,
                        flushed,
                        pending: &mut pending,
                        stop_watch: &mut stop_watch,
                        liveness: &mut liveness,
                        cfg,
                    };
                    if !forward(ev, tx, &mut link, shutdown).await? {
                        if tx.is_closed() {
                            linger(&mut stream, &mut timer, flushed, shutdown).await?;
                        }
                        return Ok(close(stream, flushed).await);
                    }
                }
            }
        }
    }
}

/// The consumer stopped taking events before `shutdown` (it stops reading
/// first, then finishes its in-flight writes and publishes their LSN on
/// `flushed`, then signals `shutdown`). Closing now would send a stale
/// position, and the restart would replay what was applied during the
/// drain; so keep the connection alive (status on the timer, replies to
/// keepalive requests, data discarded: nothing past `flushed` is confirmed)
/// until `shutdown`, or until its sender is gone.
async fn linger(
    stream: &mut ReplicationStream,
    timer: &mut tokio::time::Interval,
    flushed: &watch::Receiver<Lsn>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), SourceError> {
    while !*shutdown.borrow() {
        tokio::select! {
            biased;
            r = shutdown.changed() => if r.is_err() { break },
            _ = timer.tick() => send_status(stream, flushed).await?,
            msg = stream.recv() => match msg? {
                None => return Err(SourceError::Closed),
                Some(ReplMessage::Keepalive { reply_requested: true, .. }) => {
                    send_status(stream, flushed).await?;
                }
                Some(_) => {}
            },
        }
    }
    Ok(())
}

/// How many stream messages `forward` may read ahead while the channel is
/// full (to answer keepalive requests at once); beyond that only the timer
/// keeps the connection alive.
const MAX_READ_AHEAD: usize = 128;

/// The connection-side state `forward` needs while it waits.
struct Link<'a> {
    stream: &'a mut ReplicationStream,
    timer: &'a mut Interval,
    flushed: &'a watch::Receiver<Lsn>,
    pending: &'a mut VecDeque<ReplMessage>,
    stop_watch: &'a mut StopWatch,
    liveness: &'a mut Liveness,
    cfg: &'a ReaderConfig,
}

/// `sluice_changes_received_total` handles per relation and op: looking a
/// labelled counter up (and formatting its table label) for every change
/// cost as much as decoding the change.
#[derive(Default)]
struct ReceivedCounters {
    by_relation: HashMap<u32, (Arc<Relation>, [Option<metrics::Counter>; 4])>,
}

impl ReceivedCounters {
    fn count(&mut self, c: &Change) {
        use crate::model::change::ChangeKind::*;
        let (slot, op) = match c.kind {
            Insert { .. } => (0, "insert"),
            Update { .. } => (1, "update"),
            Delete { .. } => (2, "delete"),
            Truncate => (3, "truncate"),
        };
        let entry = self
            .by_relation
            .entry(c.relation.id)
            .or_insert_with(|| (c.relation.clone(), Default::default()));
        // A new Relation message (e.g. a rename) replaces the Arc.
        if !Arc::ptr_eq(&entry.0, &c.relation) {
            *entry = (c.relation.clone(), Default::default());
        }
        entry.1[slot]
            .get_or_insert_with(|| {
                metrics::counter!(names::CHANGES_RECEIVED_TOTAL,
                    "table" => c.relation.qualified_name(), "op" => op)
            })
            .increment(1);
    }
}

/// Send one event, keeping the connection alive while the channel is full:
/// status updates on the timer, and keepalive requests answered at once
/// (messages read meanwhile are queued in order in `pending`).
/// `Ok(false)`: shut down (or the consumer is gone).
async fn forward(
    ev: SourceEvent,
    tx: &mpsc::Sender<SourceEvent>,
    link: &mut Link<'_>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, SourceError> {
    // Fast path: room in the channel.
    let ev = match tx.try_send(ev) {
        Ok(()) => return Ok(true),
        Err(mpsc::error::TrySendError::Closed(_)) => return Ok(false),
        Err(mpsc::error::TrySendError::Full(ev)) => ev,
    };
    let blocked_since = std::time::Instant::now();
    loop {
        let can_read = link.pending.len() < MAX_READ_AHEAD;
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(false),
            permit = tx.reserve() => {
                return match permit {
                    Ok(p) => {
                        p.send(ev);
                        Ok(true)
                    }
                    Err(_) => Ok(false),
                };
            }
            _ = link.timer.tick() => {
                if !can_read {
                    // Not listening: unread messages say nothing yet.
                    link.liveness.heard(Instant::now());
                }
                on_timer(link.stream, link.flushed, link.liveness).await?;
                if blocked_since.elapsed() >= STALL_BEFORE_PROBE {
                    let confirmed = *link.flushed.borrow();
                    link.stop_watch.stalled(link.cfg, confirmed).await?;
                }
            }
            msg = link.stream.recv(), if can_read => match msg.inspect(|_| link.liveness.heard(Instant::now()))? {
                None => return Err(SourceError::Closed),
                Some(ReplMessage::Keepalive { wal_end, reply_requested: true }) => {
                    send_status(link.stream, link.flushed).await?;
                    let confirmed = *link.flushed.borrow();
                    link.stop_watch.reply_requested(link.cfg, wal_end, confirmed).await?;
                    link.pending.push_back(ReplMessage::Keepalive { wal_end, reply_requested: false });
                }
                Some(m) => link.pending.push_back(m),
            },
        }
    }
}

/// Run the publication guard, if any, on the reader's SQL session.
async fn check_guard(
    cfg: &ReaderConfig,
    sql: &mut Option<tokio_postgres::Client>,
) -> Result<(), SourceError> {
    let Some(guard) = &cfg.guard else {
        return Ok(());
    };
    let check = async {
        if sql.as_ref().is_none_or(|c| c.is_closed()) {
            *sql = Some(crate::source::manage::connect_sql(&cfg.pg).await?);
        }
        guard.check(sql.as_ref().unwrap()).await
    };
    // The session waits on this check: a SQL connection that never answers
    // (half-open) must not hold the replication stream with it.
    match tokio::time::timeout(cfg.receive_timeout, check).await {
        Ok(result) => result,
        Err(_) => {
            *sql = None;
            Err(SourceError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the publication check got no answer within {:?}",
                    cfg.receive_timeout
                ),
            )))
        }
    }
}

/// Look up type OIDs that Relation messages named and the catalog did not
/// know (domains, enums, extension types). On failure the columns stay
/// text, with a warning, rather than stopping replication.
async fn resolve_types(
    cfg: &ReaderConfig,
    decoder: &mut Decoder,
    sql: &mut Option<tokio_postgres::Client>,
) {
    let mut catalog = decoder.types().clone();
    let result = async {
        if sql.as_ref().is_none_or(|c| c.is_closed()) {
            *sql = Some(crate::source::manage::connect_sql(&cfg.pg).await?);
        }
        catalog.refresh(sql.as_ref().unwrap()).await?;
        Ok::<_, SourceError>(())
    };
    let result = match tokio::time::timeout(cfg.receive_timeout, result).await {
        Ok(r) => r,
        Err(_) => {
            *sql = None;
            Err(SourceError::Protocol(format!(
                "no answer within {:?}",
                cfg.receive_timeout
            )))
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot read the type catalog; columns of unknown types are indexed as text");
    }
    decoder.set_types(catalog);
}

/// How many reply requests within `STOP_WINDOW` make the reader suspect a
/// server shutdown. A running walsender asks at most once per half
/// `wal_sender_timeout` (and we report every few seconds anyway); a stopping
/// one asks again as soon as each reply arrives.
const STOP_REQUESTS: usize = 4;
const STOP_WINDOW: Duration = Duration::from_secs(2);
/// How long the pipeline must have taken nothing before a stalled reader
/// asks the server whether it is shutting down.
const STALL_BEFORE_PROBE: Duration = Duration::from_secs(10);
/// After a probe found the server running, do not probe again for this long.
const STOP_PROBE_COOLDOWN: Duration = Duration::from_secs(15);

/// Notices a PostgreSQL shutdown that waits on us. A smart or fast shutdown
/// keeps each walsender alive until its client confirms everything sent,
/// asking for replies in a tight loop; while Elasticsearch is down we cannot
/// confirm, so without this the server would never finish stopping. When
/// the requests come that fast, the reader opens a second connection: if
/// the server answers "shutting down" (57P03), the session ends with that
/// (retryable) error and the socket is closed. Nothing is lost: the slot
/// keeps its confirmed position and the stream resumes from it after the
/// restart (versioned writes make the replay harmless).
#[derive(Default)]
struct StopWatch {
    requests: VecDeque<std::time::Instant>,
    quiet_until: Option<std::time::Instant>,
}

impl StopWatch {
    /// Record a reply request; true when it is time to probe the server.
    fn suspects_shutdown(&mut self, now: std::time::Instant, wal_end: Lsn, confirmed: Lsn) -> bool {
        if confirmed >= wal_end {
            // Caught up: a stopping server lets this walsender go by itself.
            self.requests.clear();
            return false;
        }
        if self.quiet_until.is_some_and(|t| now < t) {
            return false;
        }
        self.requests.push_back(now);
        while self
            .requests
            .front()
            .is_some_and(|t| now.duration_since(*t) > STOP_WINDOW)
        {
            self.requests.pop_front();
        }
        self.requests.len() >= STOP_REQUESTS
    }

    async fn reply_requested(
        &mut self,
        cfg: &ReaderConfig,
        wal_end: Lsn,
        confirmed: Lsn,
    ) -> Result<(), SourceError> {
        let now = std::time::Instant::now();
        if !self.suspects_shutdown(now, wal_end, confirmed) {
            return Ok(());
        }
        self.probe(cfg, now, confirmed).await
    }

    /// The pipeline has taken nothing for a long while (the sink is stuck):
    /// the server's reply requests may sit unread behind the read-ahead
    /// limit, so ask the server directly, at most once per cooldown.
    async fn stalled(&mut self, cfg: &ReaderConfig, confirmed: Lsn) -> Result<(), SourceError> {
        let now = std::time::Instant::now();
        if self.quiet_until.is_some_and(|t| now < t) {
            return Ok(());
        }
        self.probe(cfg, now, confirmed).await
    }

    async fn probe(
        &mut self,
        cfg: &ReaderConfig,
        now: std::time::Instant,
        confirmed: Lsn,
    ) -> Result<(), SourceError> {
        self.requests.clear();
        let probe = tokio::time::timeout(
            Duration::from_secs(5),
            ReplicationConnection::connect(&cfg.pg),
        )
        .await;
        match probe {
            Ok(Err(e)) if e.sqlstate() == Some("57P03") => {
                tracing::warn!(
                    %confirmed,
                    "PostgreSQL is shutting down and waits for changes Sluice cannot confirm yet; \
                     closing the replication connection so it can stop (the changes are re-sent after the restart)"
                );
                Err(e)
            }
            // Running (or unreachable for another reason): carry on.
            _ => {
                self.quiet_until = Some(now + STOP_PROBE_COOLDOWN);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod stop_watch_tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn reply_requests_in_a_tight_loop_while_behind_suggest_a_shutdown() {
        let mut w = StopWatch::default();
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        assert!(!w.suspects_shutdown(ms(0), Lsn(200), Lsn(100)));
        assert!(!w.suspects_shutdown(ms(10), Lsn(200), Lsn(100)));
        assert!(!w.suspects_shutdown(ms(20), Lsn(200), Lsn(100)));
        assert!(w.suspects_shutdown(ms(30), Lsn(200), Lsn(100)));
    }

    #[test]
    fn occasional_reply_requests_are_normal() {
        let mut w = StopWatch::default();
        let t = Instant::now();
        for i in 0..10 {
            let at = t + Duration::from_secs(30 * i);
            assert!(!w.suspects_shutdown(at, Lsn(200), Lsn(100)));
        }
    }

    #[test]
    fn a_caught_up_reader_never_suspects_anything() {
        let mut w = StopWatch::default();
        let t = Instant::now();
        for i in 0..10 {
            let at = t + Duration::from_millis(i);
            assert!(!w.suspects_shutdown(at, Lsn(200), Lsn(200)));
        }
    }

    #[test]
    fn after_a_probe_found_the_server_running_it_stays_quiet_for_a_while() {
        let mut w = StopWatch::default();
        let t = Instant::now();
        w.quiet_until = Some(t + STOP_PROBE_COOLDOWN);
        for i in 0..10 {
            assert!(!w.suspects_shutdown(t + Duration::from_millis(i), Lsn(200), Lsn(100)));
        }
        let later = t + STOP_PROBE_COOLDOWN + Duration::from_millis(1);
        for i in 0..3 {
            assert!(!w.suspects_shutdown(later + Duration::from_millis(i), Lsn(200), Lsn(100)));
        }
        assert!(w.suspects_shutdown(later + Duration::from_millis(3), Lsn(200), Lsn(100)));
    }
}
