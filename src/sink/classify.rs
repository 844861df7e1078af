//! What a bulk result means for an item: the one pure place that decides
//! done, retry or dead letter (DESIGN invariants 2 and 5).

/// The fate of one bulk item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Written (or, for a delete, already gone).
    Done,
    /// Refused as stale (409): a newer or equal version is already there, so
    /// this write is already applied in effect.
    Conflict,
    /// A transient failure: send this item again later.
    Retry,
    /// The cluster is set up so that no write to this target can succeed
    /// (privileges, a closed or missing index, a missing ingest pipeline, an
    /// alias without a write index): nothing is wrong with the document, so
    /// it is held and sent again until an operator fixes the cluster, loudly
    /// (logs, `/ready`), never dead-lettered and confirmed.
    Hold,
    /// Retrying cannot fix it: store it in the dead-letter index.
    DeadLetter,
}

impl ItemOutcome {
    /// Whether the item may be acknowledged to the checkpoint as it is.
    pub fn is_done(self) -> bool {
        matches!(self, ItemOutcome::Done | ItemOutcome::Conflict)
    }

    /// Whether the item must be sent again (now or after a fix).
    pub fn is_retried(self) -> bool {
        matches!(self, ItemOutcome::Retry | ItemOutcome::Hold)
    }
}

/// The bulk action an item was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Index,
    Delete,
}

/// Error types that mean "try again later" whatever status carries them:
/// overload, unavailable shards, blocks (e.g. the disk flood-stage block).
const RETRYABLE_TYPES: &[&str] = &[
    "es_rejected_execution_exception",
    "circuit_breaking_exception",
    "cluster_block_exception",
    "unavailable_shards_exception",
    "no_shard_available_action_exception",
    "node_not_connected_exception",
    "node_disconnected_exception",
    "process_cluster_event_timeout_exception",
    "connect_transport_exception",
    "receive_timeout_transport_exception",
    "timeout_exception",
];

/// Error types that name the cluster's configuration, not the document.
const CONFIGURATION_TYPES: &[&str] = &[
    "security_exception",
    "index_closed_exception",
    "index_not_found_exception",
];

/// Reasons of an `illegal_argument_exception` that name the configuration
/// (the same type also means "bad document", so the reason decides).
const CONFIGURATION_REASONS: &[&str] = &[
    // A missing ingest pipeline: "pipeline with id [p] does not exist".
    "pipeline with id [",
    // "no write index is defined for alias [a]. The write index may be
    // explicitly disabled using is_write_index=false or the alias points to
    // multiple indices without one being designated as a write index"
    "no write index is defined for alias",
];

/// Classify one item of a bulk response by its status, error type and
/// reason. The one place that decides done, retry, hold or dead letter.
pub fn classify_item(
    action: ActionKind,
    status: u16,
    error_type: Option<&str>,
    reason: Option<&str>,
) -> ItemOutcome {
    if let Some(t) = error_type
        && RETRYABLE_TYPES.contains(&t)
    {
        return ItemOutcome::Retry;
    }
    // Deleting what is not there (or whose index is gone) is done.
    if status == 404 && action == ActionKind::Delete {
        return ItemOutcome::Done;
    }
    if let Some(t) = error_type
        && CONFIGURATION_TYPES.contains(&t)
    {
        return ItemOutcome::Hold;
    }
    if error_type == Some("illegal_argument_exception")
        && let Some(r) = reason
        && CONFIGURATION_REASONS.iter().any(|c| r.contains(c))
    {
        return ItemOutcome::Hold;
    }
    match status {
        200..=299 => ItemOutcome::Done,
        409 => ItemOutcome::Conflict,
        // Credentials or privileges, whatever the error type says.
        401 | 403 => ItemOutcome::Hold,
        404 => ItemOutcome::Hold,
        408 | 429 => ItemOutcome::Retry,
        500..=599 => ItemOutcome::Retry,
        _ => ItemOutcome::DeadLetter,
    }
}

/// What a whole bulk request's HTTP outcome means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The response lists per-item results: classify each.
    Items,
    /// Nothing was applied and trying again may work: retry every item.
    RetryAll,
    /// The request as a whole was refused (too large, unparseable): split it
    /// until the offending item stands alone, then dead-letter that one.
    Split,
    /// The request is too big for the cluster right now (a circuit breaker
    /// tripped on it): halve it, down to single items, and retry each part;
    /// a single item is retried as it is (the pressure may ease), never
    /// dead-lettered.
    Halve,
}

/// Classify a bulk request by its HTTP status and, for a refusal, the
/// `error.type` of its body; `None` means no response at all (connection
/// refused or reset, timeout), which is always retried.
pub fn classify_request(status: Option<u16>, error_type: Option<&str>) -> RequestOutcome {
    match status {
        None => RequestOutcome::RetryAll,
        Some(200..=299) => RequestOutcome::Items,
        // 400 and 413 name the request body, which splitting narrows down.
        Some(400 | 413) => RequestOutcome::Split,
        // A request-level breaker trips on the size of the request: sending
        // the same bytes again would trip it forever.
        Some(429) if error_type == Some("circuit_breaking_exception") => RequestOutcome::Halve,
        // 401/403 (credentials, privileges), 404 (proxy), 429, 5xx: nothing
        // is wrong with the data, so hold it until the cluster is fixed.
        Some(_) => RequestOutcome::RetryAll,
    }
}

/// Whether an index-admin call (create, check, alias) that failed with
/// `status` (`None`: no answer at all — refused, reset, timed out) may
/// succeed if made again unchanged: no answer, too many requests, or a
/// gateway/cluster not ready. Any other status refuses the request itself.
pub fn admin_call_is_transient(status: Option<u16>) -> bool {
    matches!(status, None | Some(429 | 502 | 503 | 504))
}

/// The `error.type` of a request-level error body (`{"error":{"type":..}}`).
pub fn request_error_type(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["error"]["type"].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::ActionKind::{Delete, Index};
    use super::ItemOutcome::*;
    use super::*;

    #[test]
    fn an_admin_call_without_answer_or_with_a_busy_cluster_is_tried_again() {
        for transient in [None, Some(429), Some(502), Some(503), Some(504)] {
            assert!(admin_call_is_transient(transient), "{transient:?}");
        }
        for refused in [
            Some(400),
            Some(401),
            Some(403),
            Some(404),
            Some(409),
            Some(500),
        ] {
            assert!(!admin_call_is_transient(refused), "{refused:?}");
        }
    }

    #[test]
    fn success_statuses_are_done() {
        assert_eq!(classify_item(Index, 200, None, None), Done);
        assert_eq!(classify_item(Index, 201, None, None), Done);
        assert_eq!(classify_item(Delete, 200, None, None), Done);
    }

    #[test]
    fn a_version_conflict_is_already_applied() {
        let c = classify_item(Index, 409, Some("version_conflict_engine_exception"), None);
        assert_eq!(c, Conflict);
        assert!(c.is_done());
        assert_eq!(
            classify_item(Delete, 409, Some("version_conflict_engine_exception"), None),
            Conflict
        );
    }

    #[test]
    fn deleting_a_missing_document_is_done() {
        assert_eq!(classify_item(Delete, 404, None, None), Done);
        assert_eq!(
            classify_item(Delete, 404, Some("index_not_found_exception"), None),
            Done
        );
    }

    #[test]
    fn indexing_into_a_missing_index_is_held() {
        assert_eq!(
            classify_item(Index, 404, Some("index_not_found_exception"), None),
            Hold
        );
        assert!(Hold.is_retried() && !Hold.is_done());
    }

    #[test]
    fn a_missing_privilege_is_held() {
        let reason = "action [indices:data/write/bulk[s]] is unauthorized for user [sluice]";
        assert_eq!(
            classify_item(Index, 403, Some("security_exception"), Some(reason)),
            Hold
        );
        assert_eq!(
            classify_item(Delete, 403, Some("security_exception"), None),
            Hold
        );
        assert_eq!(classify_item(Index, 401, None, None), Hold);
    }

    #[test]
    fn a_closed_index_is_held() {
        let reason = "closed";
        for action in [Index, Delete] {
            assert_eq!(
                classify_item(action, 400, Some("index_closed_exception"), Some(reason)),
                Hold
            );
        }
    }

    #[test]
    fn a_missing_ingest_pipeline_is_held() {
        assert_eq!(
            classify_item(
                Index,
                400,
                Some("illegal_argument_exception"),
                Some("pipeline with id [enrich] does not exist")
            ),
            Hold
        );
    }

    #[test]
    fn an_alias_without_a_write_index_is_held() {
        let reason = "no write index is defined for alias [items]. The write index may be \
                      explicitly disabled using is_write_index=false or the alias points to \
                      multiple indices without one being designated as a write index";
        assert_eq!(
            classify_item(Index, 400, Some("illegal_argument_exception"), Some(reason)),
            Hold
        );
    }

    #[test]
    fn another_illegal_argument_is_a_bad_document() {
        assert_eq!(
            classify_item(
                Index,
                400,
                Some("illegal_argument_exception"),
                Some("Limit of total fields [1000] has been exceeded")
            ),
            DeadLetter
        );
    }

    #[test]
    fn overload_and_server_errors_are_retried() {
        assert_eq!(
            classify_item(Index, 429, Some("es_rejected_execution_exception"), None),
            Retry
        );
        assert_eq!(classify_item(Index, 429, None, None), Retry);
        assert_eq!(classify_item(Index, 500, Some("whatever"), None), Retry);
        assert_eq!(
            classify_item(Index, 503, Some("unavailable_shards_exception"), None),
            Retry
        );
        assert_eq!(classify_item(Delete, 408, None, None), Retry);
        assert!(!Retry.is_done());
    }

    #[test]
    fn a_cluster_block_is_retried_even_with_a_client_error_status() {
        assert_eq!(
            classify_item(Index, 403, Some("cluster_block_exception"), None),
            Retry
        );
    }

    #[test]
    fn bad_documents_are_dead_letters() {
        for t in [
            "mapper_parsing_exception",
            "document_parsing_exception",
            "illegal_argument_exception",
            "strict_dynamic_mapping_exception",
        ] {
            assert_eq!(classify_item(Index, 400, Some(t), None), DeadLetter, "{t}");
        }
        assert_eq!(classify_item(Index, 413, None, None), DeadLetter);
        assert!(!DeadLetter.is_done());
    }

    #[test]
    fn no_response_or_an_unavailable_cluster_retries_the_whole_request() {
        assert_eq!(classify_request(None, None), RequestOutcome::RetryAll);
        for s in [401, 403, 404, 408, 429, 500, 502, 503, 504] {
            assert_eq!(
                classify_request(Some(s), None),
                RequestOutcome::RetryAll,
                "{s}"
            );
        }
    }

    #[test]
    fn a_request_tripping_a_circuit_breaker_is_halved() {
        assert_eq!(
            classify_request(Some(429), Some("circuit_breaking_exception")),
            RequestOutcome::Halve
        );
        assert_eq!(
            classify_request(Some(429), Some("es_rejected_execution_exception")),
            RequestOutcome::RetryAll
        );
        let body = br#"{"error":{"root_cause":[],"type":"circuit_breaking_exception","reason":"[parent] Data too large"},"status":429}"#;
        assert_eq!(
            request_error_type(body).as_deref(),
            Some("circuit_breaking_exception")
        );
        assert_eq!(request_error_type(b"<html>"), None);
    }

    #[test]
    fn a_refused_request_body_is_split() {
        assert_eq!(classify_request(Some(413), None), RequestOutcome::Split);
        assert_eq!(classify_request(Some(400), None), RequestOutcome::Split);
        assert_eq!(classify_request(Some(200), None), RequestOutcome::Items);
    }
}
