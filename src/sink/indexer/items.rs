//! Per-item results of a bulk response: each op is done (written, or a 409
//! for a write already applied), retried, held (the cluster's configuration
//! refuses it; `/ready` says why), or dead-lettered — and once one write of
//! a document must be retried, its later writes in the batch are retried
//! with it, so they cannot land out of order (DESIGN invariant 2).

use std::collections::HashSet;

use super::Item;
use super::worker::{Worker, truncate};
use crate::model::BulkOp;
use crate::ops::metrics::names;
use crate::sink::bulk::{self, ItemResult};
use crate::sink::classify::{ItemOutcome, classify_item};

impl Worker {
    /// Sort items by their results: ack the done ones, dead-letter the bad
    /// ones, return those to send again.
    pub(super) async fn resolve(
        &self,
        items: Vec<Item>,
        results: Vec<ItemResult>,
        attempt: u32,
    ) -> Vec<Item> {
        let fates = triage(items.iter().map(|i| &i.op), &results);
        if fates
            .iter()
            .all(|f| matches!(f, ItemOutcome::Done | ItemOutcome::Conflict))
        {
            // The common case: acknowledge in place, no moving of items.
            self.all_done(&items, &fates);
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
        metrics::counter!(names::BULK_ITEMS_TOTAL, "outcome" => "ok").increment(ok);
        metrics::counter!(names::BULK_ITEMS_TOTAL, "outcome" => "conflict").increment(conflict);
        self.ack(&done);
        drop(done);
        if !dead.is_empty() {
            self.dead_letter(dead).await;
        }
        self.report_retries(&retry, held, attempt);
        retry.into_iter().map(|(i, _)| i).collect()
    }

    /// Every item is done (written, or already applied).
    fn all_done(&self, items: &[Item], fates: &[ItemOutcome]) {
        self.config.holds.clear(self.id);
        let conflict = fates
            .iter()
            .filter(|f| matches!(f, ItemOutcome::Conflict))
            .count() as u64;
        metrics::counter!(names::BULK_ITEMS_TOTAL, "outcome" => "ok")
            .increment(items.len() as u64 - conflict);
        metrics::counter!(names::BULK_ITEMS_TOTAL, "outcome" => "conflict").increment(conflict);
        self.ack(items);
    }

    /// Count and log the items going out again; a write held because of the
    /// cluster's configuration is reported where `/ready` shows it (and
    /// cleared once nothing is held).
    fn report_retries(&self, retry: &[(Item, ItemResult)], held: Option<String>, attempt: u32) {
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
            metrics::counter!(names::BULK_ITEMS_TOTAL, "outcome" => "retried")
                .increment(retry.len() as u64);
            tracing::warn!(
                worker = self.id,
                items = retry.len(),
                status = first.status,
                error = ?first.error,
                "bulk items failed transiently; retrying them"
            );
        }
    }
}

/// The fate of each item of a bulk response, in request order: its
/// classification, except that once an item of a document must be retried,
/// every later item of that document is retried too, even if it succeeded —
/// otherwise the retried earlier write could land after it (items of one
/// transaction share a version, so `external_gte` would accept it).
pub(crate) fn triage<'a>(
    ops: impl Iterator<Item = &'a BulkOp>,
    results: &[ItemResult],
) -> Vec<ItemOutcome> {
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
pub(super) fn hold_reason(index: &str, res: &ItemResult) -> String {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
}
