//! One bulk worker: collects a batch from its inbox, sends it, and resolves
//! every op of it — acknowledged, retried with backoff, or dead-lettered —
//! before it takes the next batch, so writes to one document (always the
//! same worker's) reach Elasticsearch in stream order (DESIGN invariant 2).
//! What the request as a whole says (retry, halve, split) is decided here;
//! per-item results in `items`, dead letters in `dead_letters`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use elasticsearch::Elasticsearch;
use elasticsearch::http::Method;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use tokio::sync::{OnceCell, Semaphore, mpsc};

use super::batch::{BatchLimits, Inbox, collect_batch};
use super::{Ack, IndexerConfig, Item};
use crate::ops::metrics::names;
use crate::sink::bulk::{self, ItemResult};
use crate::sink::classify::{RequestOutcome, classify_request, request_error_type};

pub(super) struct Worker {
    pub(super) id: usize,
    pub(super) client: Elasticsearch,
    pub(super) config: Arc<IndexerConfig>,
    pub(super) rx: Inbox<Item>,
    pub(super) acks: mpsc::UnboundedSender<Vec<Ack>>,
    pub(super) budget: Arc<Semaphore>,
    pub(super) slots: Arc<Semaphore>,
    /// Set once the dead-letter index was ensured (lazily, at the first
    /// dead letter), so it gets its unindexed-document mapping rather than
    /// whatever dynamic mapping the first record would cause.
    pub(super) dead_letter_ready: Arc<OnceCell<()>>,
    /// Request body buffer, reused from one request to the next.
    pub(super) body: std::sync::Mutex<BytesMut>,
}

/// The raw outcome of one HTTP request.
pub(super) type Sent = Result<(u16, Bytes), elasticsearch::Error>;

impl Worker {
    pub(super) async fn run(mut self) {
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

    pub(super) fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        self.config.retry.backoff()
    }

    /// Wait out the next delay of `backoff` before attempt `attempt` (none
    /// before the first).
    pub(super) async fn pause(&self, backoff: &mut impl Iterator<Item = Duration>, attempt: u32) {
        if attempt > 1 {
            let delay = backoff.next().unwrap_or(self.config.retry.max_delay);
            metrics::counter!(names::RETRIES_TOTAL).increment(1);
            tokio::time::sleep(delay).await;
        }
    }

    /// Resolve every item of `items` (ack, dead-letter) before returning.
    async fn process(&self, mut items: Vec<Item>, size_hint: usize) {
        let mut backoff = self.backoff();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.pause(&mut backoff, attempt).await;
            let sent = self.send(self.render(&items, size_hint)).await;
            match self.settle(items, sent, size_hint, attempt).await {
                Some(again) => items = again,
                None => return,
            }
        }
    }

    /// Act on what the request as a whole says: the items to send again, or
    /// `None` once all are resolved.
    async fn settle(
        &self,
        mut items: Vec<Item>,
        sent: Sent,
        size_hint: usize,
        attempt: u32,
    ) -> Option<Vec<Item>> {
        let status = sent.as_ref().ok().map(|(s, _)| *s);
        let error_type = match &sent {
            Ok((s, body)) if !(200..300).contains(s) => request_error_type(body),
            _ => None,
        };
        match classify_request(status, error_type.as_deref()) {
            RequestOutcome::RetryAll => {
                self.note_request_refusal(&sent);
                log_request_failure(self.id, &sent, items.len(), attempt);
                metrics::counter!(names::BULK_ITEMS_TOTAL, "outcome" => "retried")
                    .increment(items.len() as u64);
                Some(items)
            }
            RequestOutcome::Halve if items.len() > 1 => {
                tracing::warn!(
                    worker = self.id,
                    items = items.len(),
                    error_type = ?error_type,
                    "bulk request too large for the cluster right now; sending it in halves"
                );
                self.in_halves(items, size_hint).await;
                None
            }
            RequestOutcome::Halve => {
                // One document alone: nothing left to split; the pressure
                // may ease, so retry it as it is.
                log_request_failure(self.id, &sent, 1, attempt);
                metrics::counter!(names::BULK_ITEMS_TOTAL, "outcome" => "retried").increment(1);
                Some(items)
            }
            RequestOutcome::Split => {
                let Ok((status, body)) = &sent else {
                    unreachable!("a split needs a response")
                };
                if items.len() == 1 {
                    let item = items.pop().expect("one item");
                    self.dead_letter(vec![(item, refused_whole(*status, body))])
                        .await;
                    return None;
                }
                tracing::warn!(
                    worker = self.id,
                    status,
                    items = items.len(),
                    "bulk request refused as a whole; splitting it to find the bad item"
                );
                self.in_halves(items, size_hint).await;
                None
            }
            RequestOutcome::Items => {
                let (_, body) = sent.as_ref().expect("items need a response");
                self.by_item(items, body, attempt).await
            }
        }
    }

    /// Process the halves in order, the first resolved before the second:
    /// writes to one document keep stream order.
    async fn in_halves(&self, mut items: Vec<Item>, size_hint: usize) {
        let second = items.split_off(items.len() / 2);
        Box::pin(self.process(items, size_hint / 2)).await;
        Box::pin(self.process(second, size_hint / 2)).await;
    }

    /// Resolve items by the response's per-item results; all of them are
    /// sent again if the response cannot be read.
    async fn by_item(&self, items: Vec<Item>, body: &Bytes, attempt: u32) -> Option<Vec<Item>> {
        match bulk::parse_response(body) {
            Ok(results) if results.len() == items.len() => {
                let again = self.resolve(items, results, attempt).await;
                (!again.is_empty()).then_some(again)
            }
            other => {
                tracing::error!(
                    worker = self.id,
                    sent = items.len(),
                    got = ?other.as_ref().map(|r| r.len()).map_err(|e| e.to_string()),
                    "unreadable bulk response; retrying the whole request"
                );
                Some(items)
            }
        }
    }

    /// A request refused as a whole for credentials or privileges is held
    /// like an item refused for them: say so where `/ready` shows it.
    pub(super) fn note_request_refusal(&self, sent: &Sent) {
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

    /// Acknowledge settled items and give back their budget.
    pub(super) fn ack(&self, items: &[Item]) {
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

    pub(super) async fn send(&self, body: Bytes) -> Sent {
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
        metrics::histogram!(names::BULK_REQUEST_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok((s, _)) if (200..300).contains(s) => "ok",
            _ => "error",
        };
        metrics::counter!(names::BULK_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
        if outcome == "ok" {
            metrics::counter!(names::BULK_BYTES_SENT_TOTAL).increment(len);
        }
        result
    }
}

/// A lone op whose request was refused as a whole: the refusal is its
/// result.
fn refused_whole(status: u16, body: &Bytes) -> ItemResult {
    let text = String::from_utf8_lossy(body);
    // Elasticsearch answers a request over `http.max_content_length` with a
    // bare 413: the dead letter must still say why.
    let reason = match (status, text.trim().is_empty()) {
        (413, true) => "the document alone is larger than the cluster accepts in one request \
                        (HTTP 413 Request Entity Too Large: see http.max_content_length)"
            .to_string(),
        (_, true) => {
            format!("the request holding only this document was refused with HTTP {status}")
        }
        _ => truncate(&text, 4096),
    };
    ItemResult {
        status,
        error: Some(bulk::ItemError {
            kind: Some(format!("http_{status}")),
            reason: Some(reason),
        }),
    }
}

pub(super) fn log_request_failure(worker: usize, sent: &Sent, items: usize, attempt: u32) {
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

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
