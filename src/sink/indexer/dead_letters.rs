//! Storing the ops Elasticsearch rejected for good in the dead-letter index
//! (DESIGN invariant 5: nothing is dropped silently). An op is acknowledged
//! only once its record is stored, so the slot passes its change only then
//! (invariant 1). A record the dead-letter index refuses is tried again as
//! text; refused even so, it is held (and `/ready` says why) until the index
//! is fixed — a log line is no place to keep a change.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

use super::Item;
use super::items::hold_reason;
use super::worker::{Worker, log_request_failure};
use crate::ops::metrics::names;
use crate::sink::bulk::{self, ItemResult};
use crate::sink::classify::{ActionKind, ItemOutcome, classify_item};
use crate::sink::dead_letter;
use crate::sink::indices::ensure_index;

/// One dead letter on its way to the dead-letter index.
struct Record {
    /// Its op's place in the rejected batch.
    item: usize,
    /// The record's `_id` (a digest of the rejected write).
    id: String,
    body: Value,
    /// The document is already stored as text (the index refused it as an
    /// object once).
    as_text: bool,
}

impl Worker {
    /// Store rejected items in the dead-letter index (retrying until it
    /// worked), then acknowledge them.
    pub(super) async fn dead_letter(&self, dead: Vec<(Item, ItemResult)>) {
        self.ensure_dead_letter_index().await;
        let mut records = self.records(&dead);
        let mut backoff = self.backoff();
        let mut attempt = 0;
        while !records.is_empty() {
            attempt += 1;
            self.pause(&mut backoff, attempt).await;
            let sent = self.send(self.render_records(&records)).await;
            let results = match &sent {
                Ok((s, body)) if (200..300).contains(s) => bulk::parse_response(body)
                    .ok()
                    .filter(|r| r.len() == records.len()),
                _ => None,
            };
            let Some(results) = results else {
                if matches!(&sent, Ok((413, _))) && self.shrink(&mut records) {
                    continue;
                }
                self.note_request_refusal(&sent);
                log_request_failure(self.id, &sent, records.len(), attempt);
                continue;
            };
            records = self.unstored(records, results, &dead, attempt);
        }
        let items: Vec<Item> = dead.into_iter().map(|(i, _)| i).collect();
        self.config.holds.clear(self.id);
        self.ack(&items);
    }

    /// The records refused as too large for the cluster (HTTP 413): cut
    /// their documents in half and say so; false when none can shrink.
    fn shrink(&self, records: &mut [Record]) -> bool {
        let mut any = false;
        for r in records.iter_mut() {
            if dead_letter::shrink(&mut r.body) {
                r.as_text = true;
                any = true;
            }
        }
        if any {
            tracing::warn!(
                worker = self.id,
                records = records.len(),
                "dead-letter records exceed the cluster's http.max_content_length; storing less of their documents"
            );
        }
        any
    }

    /// Create the dead-letter index at the first dead letter, so it gets its
    /// unindexed-document mapping rather than whatever dynamic mapping the
    /// first record would cause.
    async fn ensure_dead_letter_index(&self) {
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
    }

    /// The records of `dead`, each logged as it is made.
    fn records(&self, dead: &[(Item, ItemResult)]) -> Vec<Record> {
        let dl_index = &self.config.dead_letter_index;
        dead.iter()
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
                Record {
                    item: i,
                    id: dead_letter::record_id(&item.op),
                    body: dead_letter::record(&item.op, res.status, &kind, &reason),
                    as_text: false,
                }
            })
            .collect()
    }

    /// The bulk body that stores `records`. `create`: a replayed write finds
    /// its record already there (409, counted as done) instead of storing a
    /// duplicate.
    fn render_records(&self, records: &[Record]) -> Bytes {
        let index = serde_json::to_string(&self.config.dead_letter_index).expect("string");
        let mut buf = BytesMut::new();
        for r in records {
            buf.put_slice(b"{\"create\":{\"_index\":");
            buf.put_slice(index.as_bytes());
            buf.put_slice(b",\"_id\":\"");
            buf.put_slice(r.id.as_bytes());
            buf.put_slice(b"\"}}\n");
            serde_json::to_writer((&mut buf).writer(), &r.body).expect("a Value serializes");
            buf.put_u8(b'\n');
        }
        buf.freeze()
    }

    /// Sort the records by their results; returns those to send again.
    fn unstored(
        &self,
        records: Vec<Record>,
        results: Vec<ItemResult>,
        dead: &[(Item, ItemResult)],
        attempt: u32,
    ) -> Vec<Record> {
        let mut still = Vec::new();
        for (mut rec, res) in records.into_iter().zip(results) {
            let err_type = res.error.as_ref().and_then(|e| e.kind.as_deref());
            let err_reason = res.error.as_ref().and_then(|e| e.reason.as_deref());
            let item = &dead[rec.item].0;
            match classify_item(ActionKind::Index, res.status, err_type, err_reason) {
                ItemOutcome::Done | ItemOutcome::Conflict => {
                    metrics::counter!(names::DEAD_LETTERS_TOTAL, "table" => item.op.origin.table.to_string())
                        .increment(1);
                    metrics::counter!(names::BULK_ITEMS_TOTAL, "outcome" => "dead_lettered")
                        .increment(1);
                }
                ItemOutcome::Retry => still.push(rec),
                ItemOutcome::Hold => {
                    self.hold_dead_letter(&res, attempt);
                    still.push(rec);
                }
                ItemOutcome::DeadLetter if !rec.as_text => {
                    // The dead-letter index itself refused it (e.g. it was
                    // created by hand with another mapping): keep the
                    // document as a plain string and try again.
                    tracing::warn!(error = ?res.error, dead_letter_index = %self.config.dead_letter_index,
                        "the dead-letter index refused a record; retrying with the document as text");
                    rec.body["doc"] = Value::String(rec.body["doc"].to_string());
                    rec.as_text = true;
                    still.push(rec);
                }
                ItemOutcome::DeadLetter => {
                    // Even as text: the dead-letter index itself is
                    // misconfigured. A log line is no place to keep a
                    // change, so it is held until that is fixed.
                    metrics::counter!(names::DEAD_LETTER_WRITE_FAILURES_TOTAL).increment(1);
                    self.hold_dead_letter(&res, attempt);
                    still.push(rec);
                }
            }
        }
        still
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
}
