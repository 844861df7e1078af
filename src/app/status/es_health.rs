//! What `sluice status` says about the Elasticsearch side beyond Sluice's own
//! indices: the cluster's health and the state of every index the mappings
//! write to (read by `sink::health`). A red cluster, a closed index or an
//! alias without a write index makes `sluice run` hold the changes for that
//! index (the slot does not move past them, DESIGN invariant 1) until someone
//! fixes it; `status` is where an operator who was paged for a growing lag
//! finds the cause without the log.

pub use crate::sink::health::{ClusterHealth, EsStatus, IndexState, TargetIndex, classify, read};

/// Warnings for the operator: only states that hold changes. A yellow
/// cluster (a replica unassigned, say a single node) is shown in the report
/// but is not a warning: writes go on.
pub fn warnings(s: &EsStatus) -> Vec<String> {
    let mut w = vec![];
    if let Some(c) = &s.cluster
        && c.status == "red"
    {
        w.push(format!(
            "the Elasticsearch cluster is red ({} unassigned shards): writes to an index with an \
             unassigned primary fail and `sluice run` holds them until the cluster recovers",
            c.unassigned_shards
        ));
    }
    for t in &s.indices {
        match &t.state {
            IndexState::Closed { indices } => w.push(format!(
                "index {} is closed ({}): `sluice run` holds its changes, and the slot does not move \
                 past them, until it is reopened (POST /{}/_open)",
                t.name,
                indices.join(", "),
                indices.join(",")
            )),
            IndexState::NoWriteIndex { indices } => w.push(format!(
                "alias {} points at {} and none is its write index: `sluice run` holds its changes \
                 until one is set (is_write_index: true)",
                t.name,
                indices.join(", ")
            )),
            IndexState::Open { health } if health == "red" => w.push(format!(
                "index {} is red: a primary shard is unassigned; its writes are held until it recovers",
                t.name
            )),
            _ => {}
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_states_that_hold_changes_are_warnings() {
        let status = |cluster: &str, state: IndexState| EsStatus {
            cluster: Some(ClusterHealth {
                status: cluster.into(),
                number_of_nodes: 1,
                unassigned_shards: 3,
            }),
            indices: vec![TargetIndex {
                name: "orders".into(),
                state,
            }],
            error: None,
        };
        let open = || IndexState::Open {
            health: "yellow".into(),
        };
        assert!(warnings(&status("yellow", open())).is_empty());
        assert!(warnings(&status("green", IndexState::Missing)).is_empty());
        let red = warnings(&status("red", open()));
        assert_eq!(red.len(), 1);
        assert!(
            red[0].contains("cluster is red (3 unassigned shards)"),
            "{red:?}"
        );
        let closed = warnings(&status(
            "green",
            IndexState::Closed {
                indices: vec!["orders-v2".into()],
            },
        ));
        assert!(
            closed[0].contains("index orders is closed (orders-v2)")
                && closed[0].contains("POST /orders-v2/_open"),
            "{closed:?}"
        );
    }
}
