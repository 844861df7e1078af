//! The bulk indexer: batches `BulkOp`s into `_bulk` requests, sends several
//! at once, and resolves every item to done (acknowledged), retried or
//! dead-lettered.
//!
//! Ops are partitioned by (index, _id) over `concurrency` workers; each worker
//! has one request in flight and resolves a batch fully before the next, so
//! writes to one document reach Elasticsearch in stream order (DESIGN
//! invariant 2). Retryable failures are retried (only the failed items, plus
//! later items of the same document) with jittered exponential backoff for as
//! long as it takes; other rejections go to the dead-letter index (invariant
//! 5). Memory is bounded by a byte budget and a count of op slots, both held
//! from `submit` until the op is acknowledged (invariant 7).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::{BufMut, Bytes, BytesMut};
use elasticsearch::Elasticsearch;
use elasticsearch::http::Method;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use tokio::sync::{OnceCell, Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::batch::{BatchLimits, Inbox, collect_batch};
use super::bulk::{self, ItemResult};
use super::classify::{
    ActionKind, ItemOutcome, RequestOutcome, classify_item, classify_request, request_error_type,
};
use super::dead_letter;
use super::hold::Holds;
use super::indices::ensure_index;
use super::seam::Sink;
pub use super::seam::{Ack, IndexerClosed};
use crate::model::BulkOp;

/// How the indexer batches and sends.
#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// Bulk requests in flight at once (one per worker).
    pub concurrency: usize,
    /// A batch closes at this many ops...
    pub max_batch_docs: usize,
    /// ...or this many body bytes...
    pub max_batch_bytes: usize,
    /// ...or this long after its first op arrived.
    pub linger: Duration,
    /// Bytes of ops accepted but not yet acknowledged; `submit` waits beyond.
    pub max_in_flight_bytes: usize,
    /// Where rejected documents go.
    pub dead_letter_index: String,
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// Where workers report writes they hold back because of the cluster's
    /// configuration (read by `/ready`).
    pub holds: Holds,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            concurrency: 4,
            max_batch_docs: 5_000,
            max_batch_bytes: 8 << 20,
            linger: Duration::from_millis(20),
            max_in_flight_bytes: 128 << 20,
            dead_letter_index: "sluice-dead-letters".into(),
            retry_min_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(10),
            holds: Holds::new(),
        }
    }
}

impl IndexerConfig {
    /// Roughly the most memory the indexer holds: ops accepted but not yet
    /// acknowledged, plus one rendered request body per worker.
    pub fn memory_estimate(&self) -> usize {
        self.max_in_flight_bytes + self.concurrency.max(1) * self.max_batch_bytes
    }

    /// Size the budgets so `memory_estimate()` stays within `bytes`: request
    /// bodies get at most a quarter of it, queued ops the rest.
    pub fn fit_memory(mut self, bytes: usize) -> Self {
        let workers = self.concurrency.max(1);
        let per_body = (bytes / 4 / workers).clamp(64 << 10, self.max_batch_bytes);
        self.max_batch_bytes = per_body;
        self.max_in_flight_bytes = bytes.saturating_sub(per_body * workers).max(1 << 20);
        self
    }
}

struct Item {
    op: BulkOp,
    tag: u64,
    cost: u32,
}

/// Most ops handed to the workers per budget acquisition: one wake-up of a
/// worker per chunk rather than per op (which cost more than the op itself).
const SUBMIT_CHUNK_OPS: usize = 1024;

/// Handle to the running workers.
pub struct Indexer {
    /// Each worker receives its ops in chunks, in stream order.
    workers: Vec<mpsc::UnboundedSender<Vec<Item>>>,
    handles: Vec<JoinHandle<()>>,
    budget: Arc<Semaphore>,
    budget_total: u32,
    /// Ops accepted but not yet acknowledged, at most two batches per
    /// worker: enough for the next batch to fill while one is in flight.
    /// More read-ahead only costs memory (the byte budget alone let a
    /// backlog fill hundreds of MB) and gains nothing once Elasticsearch is
    /// the bottleneck.
    slots: Arc<Semaphore>,
    slots_total: usize,
}

impl Indexer {
    /// Start the workers. Acknowledgements arrive on `acks` (unbounded so a
    /// worker never waits on the consumer, which may itself wait in `submit`;
    /// its size is bounded by the ops in flight).
    pub fn start(
        client: Elasticsearch,
        config: IndexerConfig,
        acks: mpsc::UnboundedSender<Vec<Ack>>,
    ) -> Indexer {
        let concurrency = config.concurrency.max(1);
        let budget_total = config.max_in_flight_bytes.clamp(1 << 16, u32::MAX as usize) as u32;
        let budget = Arc::new(Semaphore::new(budget_total as usize));
        let slots_total =
            (2 * concurrency * config.max_batch_docs.max(1)).max(2 * SUBMIT_CHUNK_OPS);
        let slots = Arc::new(Semaphore::new(slots_total));
        let config = Arc::new(config);
        let dead_letter_ready = Arc::new(OnceCell::new());
        let mut workers = Vec::with_capacity(concurrency);
        let mut handles = Vec::with_capacity(concurrency);
        for id in 0..concurrency {
            // Unbounded: what is queued is bounded by the byte budget and
            // the op slots taken in `submit_all`.
            let (tx, rx) = mpsc::unbounded_channel();
            let w = Worker {
                id,
                client: client.clone(),
                config: config.clone(),
                rx: Inbox::new(rx),
                acks: acks.clone(),
                budget: budget.clone(),
                slots: slots.clone(),
                dead_letter_ready: dead_letter_ready.clone(),
                body: Default::default(),
            };
            workers.push(tx);
            handles.push(tokio::spawn(w.run()));
        }
        Indexer {
            workers,
            handles,
            budget,
            budget_total,
            slots,
            slots_total,
        }
    }

    /// Queue one op; `tag` comes back in its `Ack`. Waits while the in-flight
    /// byte budget is spent. Ops for one document must be submitted in stream
    /// order (from one task).
    pub async fn submit(&self, op: BulkOp, tag: u64) -> Result<(), IndexerClosed> {
        self.submit_all(vec![op], tag).await
    }

    /// Queue several ops, in order, all with `tag`. Same contract as
    /// `submit`, with one budget acquisition and one message per worker for
    /// each chunk of ops instead of per op.
    pub async fn submit_all(&self, ops: Vec<BulkOp>, tag: u64) -> Result<(), IndexerClosed> {
        let workers = self.workers.len();
        // A chunk never needs more than an eighth of the budget, so several
        // submitters' chunks and the workers' batches can all fit.
        let chunk_bytes = (self.budget_total / 8).max(1) as u64;
        let mut parts: Vec<Vec<Item>> = (0..workers).map(|_| Vec::new()).collect();
        let (mut bytes, mut count) = (0u64, 0usize);
        for op in ops {
            let cost = (op.approx_size().min(self.budget_total as usize)) as u32;
            if count > 0 && (count >= SUBMIT_CHUNK_OPS || bytes + cost as u64 > chunk_bytes) {
                self.hand_over(&mut parts, bytes).await?;
                (bytes, count) = (0, 0);
            }
            let w = bulk::partition(&op, workers);
            parts[w].push(Item { op, tag, cost });
            bytes += cost as u64;
            count += 1;
        }
        if count > 0 {
            self.hand_over(&mut parts, bytes).await?;
        }
        Ok(())
    }

    /// Take `bytes` of the budget (waiting while it is spent), then send each
    /// worker its part. A chunk holds at most an eighth of the budget, or one
    /// op whose cost is clamped to the whole budget, so `bytes` always fits.
    async fn hand_over(&self, parts: &mut [Vec<Item>], bytes: u64) -> Result<(), IndexerClosed> {
        debug_assert!(bytes <= self.budget_total as u64);
        let count: usize = parts.iter().map(Vec::len).sum();
        debug_assert!(count <= self.slots_total);
        self.slots
            .acquire_many(count.min(self.slots_total) as u32)
            .await
            .map_err(|_| IndexerClosed)?
            .forget();
        self.budget
            .acquire_many(bytes.min(self.budget_total as u64) as u32)
            .await
            .map_err(|_| IndexerClosed)?
            .forget();
        for (w, part) in parts.iter_mut().enumerate() {
            if !part.is_empty() {
                self.workers[w]
                    .send(std::mem::take(part))
                    .map_err(|_| IndexerClosed)?;
            }
        }
        Ok(())
    }

    /// Bytes currently accepted but not acknowledged.
    pub fn in_flight_bytes(&self) -> usize {
        self.budget_total as usize - self.budget.available_permits()
    }

    /// Stop taking ops, send everything queued and wait until every op is
    /// resolved, for at most `timeout` (retries can last as long as
    /// Elasticsearch is down). Returns false if it timed out: the workers are
    /// then aborted and their unacknowledged ops are simply never confirmed.
    pub async fn finish(self, timeout: Duration) -> bool {
        drop(self.workers);
        let mut handles = self.handles;
        let all = futures::future::join_all(handles.iter_mut());
        match tokio::time::timeout(timeout, all).await {
            Ok(results) => {
                for r in results {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "bulk worker failed");
                    }
                }
                true
            }
            Err(_) => {
                tracing::warn!(
                    timeout_secs = timeout.as_secs_f64(),
                    "in-flight bulks did not finish in time; they will be replayed on restart"
                );
                for h in &handles {
                    h.abort();
                }
                false
            }
        }
    }
}

impl Sink for Indexer {
    async fn submit_all(&self, ops: Vec<BulkOp>, tag: u64) -> Result<(), IndexerClosed> {
        Indexer::submit_all(self, ops, tag).await
    }

    async fn finish(self, timeout: Duration) -> bool {
        Indexer::finish(self, timeout).await
    }
}

struct Worker {
    id: usize,
    client: Elasticsearch,
    config: Arc<IndexerConfig>,
    rx: Inbox<Item>,
    acks: mpsc::UnboundedSender<Vec<Ack>>,
    budget: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    /// Set once the dead-letter index was ensured (lazily, at the first
    /// dead letter), so it gets its unindexed-document mapping rather than
    /// whatever dynamic mapping the first record would cause.
    dead_letter_ready: Arc<OnceCell<()>>,
    /// Request body buffer, reused from one request to the next.
    body: std::sync::Mutex<BytesMut>,
}

/// The raw outcome of one HTTP request.
type Sent = Result<(u16, Bytes), elasticsearch::Error>;

impl Worker {
    async fn run(mut self) {
        let limits = BatchLimits {
            docs: self.config.max_batch_docs.max(1),
            bytes: self.config.max_batch_bytes,
            linger: self.config.linger,
        };
        loop {
            let waiting = Instant::now();
            let Some(batch) = collect_batch(&mut self.rx, |i| i.op.approx_size(), limits).await
            else {
                break;
            };
            let (docs, bytes) = (batch.items.len(), batch.bytes);
            let collected = Instant::now();
            self.process(batch.items, batch.bytes).await;
            // Where a worker's time goes: waiting for ops (the input is the
            // bottleneck) or for Elasticsearch.
            tracing::debug!(
                worker = self.id,
                docs,
                bytes,
                collect_ms = (collected - waiting).as_secs_f64() * 1e3,
                request_ms = collected.elapsed().as_secs_f64() * 1e3,
                "bulk batch done"
            );
            if batch.closed {
                break;
            }
        }
        tracing::debug!(worker = self.id, "bulk worker done");
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.config.retry_min_delay)
            .with_max_delay(self.config.retry_max_delay)
            .without_max_times()
            .build()
    }

    /// Resolve every item of `items` (ack, dead-letter) before returning.
    async fn process(&self, mut items: Vec<Item>, size_hint: usize) {
        let mut backoff = self.backoff();
        let mut attempt = 0u32;
        loop {
            if attempt > 0 {
                let delay = backoff.next().unwrap_or(self.config.retry_max_delay);
                metrics::counter!("sluice_retries_total").increment(1);
                tokio::time::sleep(delay).await;
            }
            attempt += 1;
            let body = self.render(&items, size_hint);
            let sent = self.send(body).await;
            let status = sent.as_ref().ok().map(|(s, _)| *s);
            let error_type = match &sent {
                Ok((s, body)) if !(200..300).contains(s) => request_error_type(body),
                _ => None,
            };
            match classify_request(status, error_type.as_deref()) {
                RequestOutcome::RetryAll => {
                    self.note_request_refusal(&sent);
                    log_request_failure(self.id, &sent, items.len(), attempt);
                    metrics::counter!("sluice_bulk_items_total", "outcome" => "retried")
                        .increment(items.len() as u64);
                }
                RequestOutcome::Halve if items.len() > 1 => {
                    tracing::warn!(
                        worker = self.id,
                        items = items.len(),
                        error_type = ?error_type,
                        "bulk request too large for the cluster right now; sending it in halves"
                    );
                    // The halves in order, the first resolved before the
                    // second: writes to one document keep stream order.
                    let second = items.split_off(items.len() / 2);
                    Box::pin(self.process(items, size_hint / 2)).await;
                    Box::pin(self.process(second, size_hint / 2)).await;
                    return;
                }
                RequestOutcome::Halve => {
                    // One document alone: nothing left to split; the
                    // pressure may ease, so retry it as it is.
                    log_request_failure(self.id, &sent, 1, attempt);
                    metrics::counter!("sluice_bulk_items_total", "outcome" => "retried")
                        .increment(1);
                }
                RequestOutcome::Split => {
                    let (status, text) = match &sent {
                        Ok((s, b)) => (*s, String::from_utf8_lossy(b).into_owned()),
                        Err(_) => unreachable!("a split needs a response"),
                    };
                    if items.len() == 1 {
                        let item = items.pop().expect("one item");
                        let reason = truncate(&text, 4096);
                        let res = ItemResult {
                            status,
                            error: Some(bulk::ItemError {
                                kind: Some(format!("http_{status}")),
                                reason: Some(reason),
                            }),
                        };
                        self.dead_letter(vec![(item, res)]).await;
                        return;
                    }
                    tracing::warn!(
                        worker = self.id,
                        status,
                        items = items.len(),
                        "bulk request refused as a whole; splitting it to find the bad item"
                    );
                    let second = items.split_off(items.len() / 2);
                    Box::pin(self.process(items, size_hint / 2)).await;
                    Box::pin(self.process(second, size_hint / 2)).await;
                    return;
                }
                RequestOutcome::Items => {
                    let (_, body) = sent.as_ref().expect("items need a response");
                    match bulk::parse_response(body) {
                        Ok(results) if results.len() == items.len() => {
                            items = self.resolve(items, results, attempt).await;
                            if items.is_empty() {
                                return;
                            }
                        }
                        other => {
                            tracing::error!(
                                worker = self.id,
                                sent = items.len(),
                                got = ?other.as_ref().map(|r| r.len()).map_err(|e| e.to_string()),
                                "unreadable bulk response; retrying the whole request"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Sort items by their results: ack the done ones, dead-letter the bad
    /// ones, return those to send again.
    async fn resolve(&self, items: Vec<Item>, results: Vec<ItemResult>, attempt: u32) -> Vec<Item> {
        let fates = triage(items.iter().map(|i| &i.op), &results);
        if fates
            .iter()
            .all(|f| matches!(f, ItemOutcome::Done | ItemOutcome::Conflict))
        {
            self.config.holds.clear(self.id);
            // The common case: acknowledge in place, no moving of items.
            let conflict = fates
                .iter()
                .filter(|f| matches!(f, ItemOutcome::Conflict))
                .count() as u64;
            metrics::counter!("sluice_bulk_items_total", "outcome" => "ok")
                .increment(items.len() as u64 - conflict);
            metrics::counter!("sluice_bulk_items_total", "outcome" => "conflict")
                .increment(conflict);
            self.ack(&items);
            return Vec::new();
        }
        let mut done = Vec::with_capacity(items.len());
        let mut dead = Vec::new();
        let mut retry = Vec::new();
        let mut held: Option<String> = None;
        let (mut ok, mut conflict) = (0u64, 0u64);
        for ((item, res), fate) in items.into_iter().zip(results).zip(fates) {
            match fate {
                ItemOutcome::Retry => retry.push((item, res)),
                ItemOutcome::Hold => {
                    if held.is_none() {
                        held = Some(hold_reason(&item.op.index, &res));
                    }
                    retry.push((item, res));
                }
                ItemOutcome::DeadLetter => dead.push((item, res)),
                ItemOutcome::Done => {
                    ok += 1;
                    done.push(item);
                }
                ItemOutcome::Conflict => {
                    conflict += 1;
                    done.push(item);
                }
            }
        }
        metrics::counter!("sluice_bulk_items_total", "outcome" => "ok").increment(ok);
        metrics::counter!("sluice_bulk_items_total", "outcome" => "conflict").increment(conflict);
        self.ack(&done);
        drop(done);
        if !dead.is_empty() {
            self.dead_letter(dead).await;
        }
        match held {
            Some(reason) => {
                if attempt <= 3 || attempt.is_power_of_two() {
                    tracing::error!(worker = self.id, items = retry.len(), attempt, %reason,
                        "Elasticsearch refuses these writes because of its configuration; \
                         holding them (the slot keeps the WAL) and retrying until it is fixed");
                }
                self.config.holds.set(self.id, reason);
            }
            None => self.config.holds.clear(self.id),
        }
        if let Some((_, first)) = retry.first() {
            metrics::counter!("sluice_bulk_items_total", "outcome" => "retried")
                .increment(retry.len() as u64);
            tracing::warn!(
                worker = self.id,
                items = retry.len(),
                status = first.status,
                error = ?first.error,
                "bulk items failed transiently; retrying them"
            );
        }
        retry.into_iter().map(|(i, _)| i).collect()
    }

    /// Store rejected items in the dead-letter index (retrying until it
    /// worked), then acknowledge them.
    async fn dead_letter(&self, dead: Vec<(Item, ItemResult)>) {
        let dl_index = &self.config.dead_letter_index;
        self.dead_letter_ready
            .get_or_init(|| async {
                let spec = dead_letter::index_spec(dl_index);
                if let Err(e) = ensure_index(&self.client, &spec, Duration::from_secs(60)).await {
                    tracing::warn!(error = %e, dead_letter_index = %dl_index,
                        "cannot prepare the dead-letter index; writing to it anyway");
                }
            })
            .await;
        let mut records: Vec<(usize, String, serde_json::Value, bool)> = dead
            .iter()
            .enumerate()
            .map(|(i, (item, res))| {
                let (kind, reason) = res
                    .error
                    .as_ref()
                    .map(|e| {
                        (
                            e.kind.clone().unwrap_or_default(),
                            e.reason.clone().unwrap_or_default(),
                        )
                    })
                    .unwrap_or_default();
                tracing::error!(
                    index = %item.op.index,
                    id = %item.op.id,
                    table = %item.op.origin.table,
                    key = %item.op.origin.key,
                    lsn = %item.op.origin.lsn,
                    status = res.status,
                    error_type = %kind,
                    reason = %reason,
                    dead_letter_index = %dl_index,
                    "Elasticsearch rejected a document; storing it as a dead letter"
                );
                let rec = dead_letter::record(&item.op, res.status, &kind, &reason);
                (i, dead_letter::record_id(&item.op), rec, false)
            })
            .collect();
        let mut backoff = self.backoff();
        let mut attempt = 0;
        while !records.is_empty() {
            if attempt > 0 {
                let delay = backoff.next().unwrap_or(self.config.retry_max_delay);
                metrics::counter!("sluice_retries_total").increment(1);
                tokio::time::sleep(delay).await;
            }
            attempt += 1;
            let mut buf = BytesMut::new();
            for (_, id, rec, _) in &records {
                // `create`: a replayed write finds its record already there
                // (409, counted as done) instead of storing a duplicate.
                buf.put_slice(b"{\"create\":{\"_index\":");
                buf.put_slice(serde_json::to_string(dl_index).expect("string").as_bytes());
                buf.put_slice(b",\"_id\":\"");
                buf.put_slice(id.as_bytes());
                buf.put_slice(b"\"}}\n");
                serde_json::to_writer((&mut buf).writer(), rec).expect("a Value serializes");
                buf.put_u8(b'\n');
            }
            let sent = self.send(buf.freeze()).await;
            let results = match &sent {
                Ok((s, body)) if (200..300).contains(s) => bulk::parse_response(body)
                    .ok()
                    .filter(|r| r.len() == records.len()),
                _ => None,
            };
            let Some(results) = results else {
                self.note_request_refusal(&sent);
                log_request_failure(self.id, &sent, records.len(), attempt);
                continue;
            };
            let mut still = Vec::new();
            for ((i, id, mut rec, simplified), res) in records.into_iter().zip(results) {
                let err_type = res.error.as_ref().and_then(|e| e.kind.as_deref());
                let err_reason = res.error.as_ref().and_then(|e| e.reason.as_deref());
                let item = &dead[i].0;
                match classify_item(ActionKind::Index, res.status, err_type, err_reason) {
                    ItemOutcome::Done | ItemOutcome::Conflict => {
                        metrics::counter!("sluice_dead_letters_total", "table" => item.op.origin.table.to_string())
                            .increment(1);
                        metrics::counter!("sluice_bulk_items_total", "outcome" => "dead_lettered")
                            .increment(1);
                    }
                    ItemOutcome::Retry => still.push((i, id, rec, simplified)),
                    ItemOutcome::Hold => {
                        self.hold_dead_letter(&res, attempt);
                        still.push((i, id, rec, simplified));
                    }
                    ItemOutcome::DeadLetter if !simplified => {
                        // The dead-letter index itself refused it (e.g. it was
                        // created by hand with another mapping): keep the
                        // document as a plain string and try again.
                        tracing::warn!(error = ?res.error, dead_letter_index = %dl_index,
                            "the dead-letter index refused a record; retrying with the document as text");
                        rec["doc"] = serde_json::Value::String(rec["doc"].to_string());
                        still.push((i, id, rec, true));
                    }
                    ItemOutcome::DeadLetter => {
                        // Even as text: the dead-letter index itself is
                        // misconfigured. A log line is no place to keep a
                        // change, so it is held until that is fixed.
                        metrics::counter!("sluice_dead_letter_write_failures_total").increment(1);
                        self.hold_dead_letter(&res, attempt);
                        still.push((i, id, rec, simplified));
                    }
                }
            }
            records = still;
        }
        let items: Vec<Item> = dead.into_iter().map(|(i, _)| i).collect();
        self.config.holds.clear(self.id);
        self.ack(&items);
    }

    /// The dead-letter index refuses a record: hold it (and its change),
    /// loudly, until the index takes it.
    fn hold_dead_letter(&self, res: &ItemResult, attempt: u32) {
        let dl_index = &self.config.dead_letter_index;
        let reason = format!("the dead-letter index: {}", hold_reason(dl_index, res));
        if attempt <= 3 || attempt.is_power_of_two() {
            tracing::error!(worker = self.id, attempt, %reason,
                "the dead-letter index refuses a record; holding the change (the slot keeps \
                 the WAL) and retrying until it is fixed");
        }
        self.config.holds.set(self.id, reason);
    }

    /// A request refused as a whole for credentials or privileges is held
    /// like an item refused for them: say so where `/ready` shows it.
    fn note_request_refusal(&self, sent: &Sent) {
        if let Ok((status @ (401 | 403), body)) = sent {
            self.config.holds.set(
                self.id,
                format!(
                    "Elasticsearch refuses bulk requests with HTTP {status} (credentials or \
                     privileges): {}",
                    truncate(&String::from_utf8_lossy(body), 300)
                ),
            );
        }
    }

    /// Render a request body into the worker's reused buffer: once the
    /// previous body is dropped (its request done), `reserve` takes its
    /// allocation back, so a worker does not fault in fresh pages for every
    /// multi-megabyte body.
    fn render(&self, items: &[Item], size_hint: usize) -> Bytes {
        let mut buf = self.body.lock().expect("body buffer");
        buf.reserve(size_hint);
        for i in items {
            bulk::render_op(&mut buf, &i.op);
        }
        buf.split().freeze()
    }

    fn ack(&self, items: &[Item]) {
        if items.is_empty() {
            return;
        }
        let mut acks: Vec<Ack> = Vec::new();
        let mut cost = 0usize;
        for it in items {
            cost += it.cost as usize;
            match acks.last_mut() {
                Some(a) if a.tag == it.tag => a.count += 1,
                _ => acks.push(Ack {
                    tag: it.tag,
                    count: 1,
                }),
            }
        }
        // A closed ack channel means the consumer is gone (shutting down):
        // nothing is confirmed then, which is the safe side.
        let _ = self.acks.send(acks);
        self.budget.add_permits(cost);
        self.slots.add_permits(items.len());
    }

    async fn send(&self, body: Bytes) -> Sent {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        let len = body.len() as u64;
        let started = Instant::now();
        let result = async {
            let resp = self
                .client
                .send(
                    Method::Post,
                    "/_bulk",
                    headers,
                    Some(&[("filter_path", bulk::BULK_FILTER_PATH)]),
                    Some(body),
                    None,
                )
                .await?;
            let status = resp.status_code().as_u16();
            let bytes = resp.bytes().await?;
            Ok((status, bytes))
        }
        .await;
        metrics::histogram!("sluice_bulk_request_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok((s, _)) if (200..300).contains(s) => "ok",
            _ => "error",
        };
        metrics::counter!("sluice_bulk_requests_total", "outcome" => outcome).increment(1);
        if outcome == "ok" {
            metrics::counter!("sluice_bulk_bytes_sent_total").increment(len);
        }
        result
    }
}

/// The fate of each item of a bulk response, in request order: its
/// classification, except that once an item of a document must be retried,
/// every later item of that document is retried too, even if it succeeded —
/// otherwise the retried earlier write could land after it (items of one
/// transaction share a version, so `external_gte` would accept it).
fn triage<'a>(ops: impl Iterator<Item = &'a BulkOp>, results: &[ItemResult]) -> Vec<ItemOutcome> {
    let mut retry_docs: HashSet<(&str, &str)> = HashSet::new();
    ops.zip(results)
        .map(|(op, res)| {
            let outcome = classify_item(
                bulk::action_kind(op),
                res.status,
                res.error.as_ref().and_then(|e| e.kind.as_deref()),
                res.error.as_ref().and_then(|e| e.reason.as_deref()),
            );
            let doc = (&*op.index, op.id.as_str());
            match outcome {
                ItemOutcome::Retry | ItemOutcome::Hold => {
                    retry_docs.insert(doc);
                    outcome
                }
                ItemOutcome::Done | ItemOutcome::Conflict
                    if !retry_docs.is_empty() && retry_docs.contains(&doc) =>
                {
                    ItemOutcome::Retry
                }
                other => other,
            }
        })
        .collect()
}

/// What `/ready` and the log say about a write held for `index`.
fn hold_reason(index: &str, res: &ItemResult) -> String {
    let (kind, reason) = res
        .error
        .as_ref()
        .map(|e| {
            (
                e.kind.as_deref().unwrap_or(""),
                e.reason.as_deref().unwrap_or(""),
            )
        })
        .unwrap_or_default();
    format!(
        "Elasticsearch refuses writes to `{index}` (HTTP {}, {kind}: {}); fix the cluster \
         (privileges, closed or missing index, ingest pipeline, alias write index) and \
         the held changes are written",
        res.status,
        truncate(reason, 300)
    )
}

fn log_request_failure(worker: usize, sent: &Sent, items: usize, attempt: u32) {
    // The first failures are routine (a node restarting); keep repeating
    // ones visible without flooding the log.
    let loud = attempt <= 3 || attempt.is_power_of_two();
    match sent {
        Err(e) if loud => tracing::warn!(
            worker, items, attempt, error = %e, timeout = e.is_timeout(),
            "bulk request failed; retrying with backoff"
        ),
        Ok((status, body)) if loud => tracing::warn!(
            worker, items, attempt, status, body = %truncate(&String::from_utf8_lossy(body), 512),
            "bulk request refused; retrying with backoff"
        ),
        _ => {}
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::lsn::Lsn;
    use crate::model::{OpAction, OpOrigin};

    fn op(id: &str) -> BulkOp {
        BulkOp {
            action: OpAction::Index {
                doc: b"{}".to_vec(),
            },
            index: Arc::from("i"),
            id: id.into(),
            routing: None,
            pipeline: None,
            version: 1,
            origin: OpOrigin {
                table: Arc::from("public.t"),
                key: String::new(),
                lsn: Lsn(1),
            },
        }
    }

    fn res(status: u16, kind: Option<&str>) -> ItemResult {
        ItemResult {
            status,
            error: kind.map(|k| bulk::ItemError {
                kind: Some(k.into()),
                reason: None,
            }),
        }
    }

    #[test]
    fn later_items_of_a_retried_document_are_retried_even_if_they_succeeded() {
        let ops = [op("a"), op("b"), op("a"), op("a"), op("b"), op("c")];
        let results = [
            res(429, Some("es_rejected_execution_exception")),
            res(201, None),
            res(200, None),
            res(409, Some("version_conflict_engine_exception")),
            res(200, None),
            res(400, Some("document_parsing_exception")),
        ];
        use ItemOutcome::*;
        assert_eq!(
            triage(ops.iter(), &results),
            vec![Retry, Done, Retry, Retry, Done, DeadLetter]
        );
    }

    #[test]
    fn an_earlier_success_of_a_retried_document_stays_done() {
        let ops = [op("a"), op("a")];
        let results = [res(200, None), res(503, None)];
        use ItemOutcome::*;
        assert_eq!(triage(ops.iter(), &results), vec![Done, Retry]);
    }

    #[test]
    fn a_memory_bound_splits_between_queued_ops_and_request_bodies() {
        let c = IndexerConfig::default().fit_memory(64 << 20);
        assert!(c.memory_estimate() <= 64 << 20);
        assert_eq!(c.max_batch_bytes, 4 << 20, "a quarter over 4 workers");
        assert_eq!(c.max_in_flight_bytes, 48 << 20);
        let big = IndexerConfig::default().fit_memory(1 << 30);
        assert_eq!(big.max_batch_bytes, 8 << 20, "never above the batch size");
        assert!(big.memory_estimate() <= 1 << 30);
    }
}
