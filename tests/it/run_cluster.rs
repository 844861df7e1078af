//! `sluice run` against a three-node Elasticsearch cluster (private, one
//! replica per shard) with every node in `[elasticsearch] urls`: a node
//! SIGKILLed mid-stream and brought back later costs no change and needs no
//! manual step; the index equals the table at the end.

use std::time::Duration;

use rand::RngExt;

use crate::support::es_cluster::EsCluster;
use crate::support::sluice::{SNAPSHOT_NEVER, SluiceToml};
use crate::support::workload::accounts_under_load;
use crate::support::{Es, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_in_a_three_node_cluster_costs_no_change() {
    let cluster = EsCluster::start(3).await;
    let urls = cluster.urls();
    let es = Es::at(&urls[0]);
    let db = TestDb::new().await;
    let index = db.index("accounts");
    db.sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
         CREATE PUBLICATION sluice FOR TABLE accounts;",
    )
    .await;
    let setup = SluiceToml {
        // `urls = ["{es_url}"]` in the test config: the three nodes, quoted.
        es_url: urls.join("\", \""),
        es_extra: "request_timeout_ms = 3000".into(),
        extra: SNAPSHOT_NEVER.into(),
        ..SluiceToml::for_db(&db)
    };
    let (mut sluice, workload) = accounts_under_load(&db, &es, &setup, &index).await;
    cluster.wait_green().await;

    // Any node, the elected master included: a new election must not cost a change.
    let victim = rand::rng().random_range(1..=3);
    let before = workload.committed();
    eprintln!("killing node-{victim} after {before} transactions");
    cluster.kill(victim);
    sluice
        .wait_for(
            Duration::from_secs(60),
            "the workload to go on writing with a node down",
            async || workload.committed() > before + 200,
        )
        .await;
    assert_eq!(sluice.get("/health").0, 200, "alive with a node down");
    cluster.start_node(victim);
    cluster.wait_for_nodes(3).await;
    let committed = workload.stop().await;
    eprintln!("{committed} transactions during the test");
    // Node 1 may be the one that was down: read through a node that stayed up.
    let reader = Es::at(&urls[victim % 3]);
    sluice
        .wait_converged(&db, &reader, &index, "SELECT * FROM accounts")
        .await;
    sluice.stop_cleanly();
}
