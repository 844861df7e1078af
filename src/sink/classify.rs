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
    /// Retrying cannot fix it: store it in the dead-letter index.
    DeadLetter,
}

impl ItemOutcome {
    /// Whether the item may be acknowledged to the checkpoint as it is.
    pub fn is_done(self) -> bool {
        matches!(self, ItemOutcome::Done | ItemOutcome::Conflict)
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

/// Classify one item of a bulk response by its status and error type.
pub fn classify_item(action: ActionKind, status: u16, error_type: Option<&str>) -> ItemOutcome {
    if let Some(t) = error_type
        && RETRYABLE_TYPES.contains(&t)
    {
        return ItemOutcome::Retry;
    }
    match status {
        200..=299 => ItemOutcome::Done,
        409 => ItemOutcome::Conflict,
        // Deleting what is not there (or whose index is gone) is done.
        404 if action == ActionKind::Delete => ItemOutcome::Done,
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
}

/// Classify a bulk request by its HTTP status; `None` means no response at
/// all (connection refused or reset, timeout), which is always retried.
pub fn classify_request(status: Option<u16>) -> RequestOutcome {
    match status {
        None => RequestOutcome::RetryAll,
        Some(200..=299) => RequestOutcome::Items,
        // 400 and 413 name the request body, which splitting narrows down.
        Some(400 | 413) => RequestOutcome::Split,
        // 401/403 (credentials, privileges), 404 (proxy), 429, 5xx: nothing
        // is wrong with the data, so hold it until the cluster is fixed.
        Some(_) => RequestOutcome::RetryAll,
    }
}

#[cfg(test)]
mod tests {
    use super::ActionKind::{Delete, Index};
    use super::ItemOutcome::*;
    use super::*;

    #[test]
    fn success_statuses_are_done() {
        assert_eq!(classify_item(Index, 200, None), Done);
        assert_eq!(classify_item(Index, 201, None), Done);
        assert_eq!(classify_item(Delete, 200, None), Done);
    }

    #[test]
    fn a_version_conflict_is_already_applied() {
        let c = classify_item(Index, 409, Some("version_conflict_engine_exception"));
        assert_eq!(c, Conflict);
        assert!(c.is_done());
        assert_eq!(
            classify_item(Delete, 409, Some("version_conflict_engine_exception")),
            Conflict
        );
    }

    #[test]
    fn deleting_a_missing_document_is_done() {
        assert_eq!(classify_item(Delete, 404, None), Done);
        assert_eq!(
            classify_item(Delete, 404, Some("index_not_found_exception")),
            Done
        );
    }

    #[test]
    fn indexing_into_a_missing_index_is_a_dead_letter() {
        assert_eq!(
            classify_item(Index, 404, Some("index_not_found_exception")),
            DeadLetter
        );
    }

    #[test]
    fn overload_and_server_errors_are_retried() {
        assert_eq!(
            classify_item(Index, 429, Some("es_rejected_execution_exception")),
            Retry
        );
        assert_eq!(classify_item(Index, 429, None), Retry);
        assert_eq!(classify_item(Index, 500, Some("whatever")), Retry);
        assert_eq!(
            classify_item(Index, 503, Some("unavailable_shards_exception")),
            Retry
        );
        assert_eq!(classify_item(Delete, 408, None), Retry);
        assert!(!Retry.is_done());
    }

    #[test]
    fn a_cluster_block_is_retried_even_with_a_client_error_status() {
        assert_eq!(
            classify_item(Index, 403, Some("cluster_block_exception")),
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
            assert_eq!(classify_item(Index, 400, Some(t)), DeadLetter, "{t}");
        }
        assert_eq!(classify_item(Index, 413, None), DeadLetter);
        assert!(!DeadLetter.is_done());
    }

    #[test]
    fn no_response_or_an_unavailable_cluster_retries_the_whole_request() {
        assert_eq!(classify_request(None), RequestOutcome::RetryAll);
        for s in [401, 403, 404, 408, 429, 500, 502, 503, 504] {
            assert_eq!(classify_request(Some(s)), RequestOutcome::RetryAll, "{s}");
        }
    }

    #[test]
    fn a_refused_request_body_is_split() {
        assert_eq!(classify_request(Some(413)), RequestOutcome::Split);
        assert_eq!(classify_request(Some(400)), RequestOutcome::Split);
        assert_eq!(classify_request(Some(200)), RequestOutcome::Items);
    }
}
