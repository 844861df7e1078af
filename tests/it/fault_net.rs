//! Fault matrix (issue 18): TCP faults between Sluice and Elasticsearch and
//! between Sluice and PostgreSQL, through the test proxy, under a random
//! workload; each case ends with the index equal to the table.
//!
//! Each case runs the real `sluice run` with one link going through a
//! `Proxy` (the other link, the workload and the test's own queries go
//! direct), breaks that link one way for `HOLD`, heals it, measures how long
//! the slot takes to confirm everything written up to the heal, stops the
//! workload and compares the whole index with the table. Sluice runs with
//! its default timeouts, so the recovery figures are what an operator gets.

use std::time::{Duration, Instant};

use crate::support::faults::{FaultCase, catch_up, report};
use crate::support::proxy::{Fault, Proxy};
use crate::support::slot::confirmed_flush;
use crate::support::sluice::{SNAPSHOT_NEVER, Sluice, SluiceToml};
use crate::support::workload::accounts_under_load;
use crate::support::{Es, TestDb, services};

const ACCOUNTS: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
     CREATE PUBLICATION sluice FOR TABLE accounts;";

/// How long each fault is held before it heals.
const HOLD: Duration = Duration::from_secs(12);

/// Which of Sluice's links goes through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Elasticsearch,
    Postgres,
}

impl Link {
    fn area(self) -> &'static str {
        match self {
            Link::Elasticsearch => "Sluice→Elasticsearch",
            Link::Postgres => "Sluice→PostgreSQL",
        }
    }
}

/// The fault put on the link, as the proxy applies it.
#[derive(Debug, Clone, Copy)]
enum NetFault {
    /// 200 ms added each way.
    Latency,
    /// 64 KiB/s each way.
    Bandwidth,
    /// RST after half of the next chunk, on every connection.
    ResetMidRequest,
    /// The server's end gone, the client's end never answered.
    HalfOpen,
    /// Connections refused, open ones closed.
    Refused,
}

impl NetFault {
    fn name(self) -> &'static str {
        match self {
            NetFault::Latency => "200 ms latency each way",
            NetFault::Bandwidth => "bandwidth limited to 64 KiB/s each way",
            NetFault::ResetMidRequest => "connections reset (RST) mid-request",
            NetFault::HalfOpen => "half-open connections that never answer",
            NetFault::Refused => "connections refused",
        }
    }

    fn apply(self, proxy: &Proxy) {
        match self {
            NetFault::Latency => proxy.set(Fault::Latency(Duration::from_millis(200))),
            NetFault::Bandwidth => proxy.set(Fault::Bandwidth(64 * 1024)),
            NetFault::ResetMidRequest => proxy.set(Fault::ResetMidRequest),
            NetFault::HalfOpen => proxy.set(Fault::HalfOpen),
            NetFault::Refused => proxy.cut(),
        }
    }

    /// A slow link slows Sluice down; it must not stop it.
    fn is_slow_link(self) -> bool {
        matches!(self, NetFault::Latency | NetFault::Bandwidth)
    }
}

/// Stream `accounts` with `link` through a proxy, hold `fault` on it for
/// `HOLD` under the random workload, heal, and check the end state exactly.
async fn fault_case(test: &str, link: Link, fault: NetFault) {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("accounts");
    db.sql(ACCOUNTS).await;
    let base = SluiceToml {
        extra: SNAPSHOT_NEVER.into(),
        ..SluiceToml::for_db(&db)
    };
    let (proxy, setup) = match link {
        Link::Elasticsearch => {
            let proxy = Proxy::start(&services().es_url).await;
            let es_url = proxy.url();
            (proxy, SluiceToml { es_url, ..base })
        }
        Link::Postgres => {
            let proxy = Proxy::start(&services().pg_url).await;
            let pg_url = proxy.pg_url(&base.pg_url);
            (proxy, SluiceToml { pg_url, ..base })
        }
    };
    let (mut sluice, workload) = accounts_under_load(&db, &es, &setup, &index).await;

    let retries_before = sluice.metric("sluice_retries_total");
    let confirmed_before = confirmed_flush(&db, &sluice.slot).await;
    let committed_before = workload.committed();
    fault.apply(&proxy);
    let started = Instant::now();
    hold(&mut sluice, started).await;
    let confirmed_during = confirmed_flush(&db, &sluice.slot).await;
    proxy.restore().await;
    let held = started.elapsed();
    let slot = sluice.slot.clone();
    let recovery = catch_up(&db, &slot, &mut sluice, Duration::from_secs(180)).await;
    eprintln!(
        "{test}: held {held:?}, recovery {recovery:?}, {} transactions during the fault",
        workload.committed() - committed_before
    );

    let committed = workload.stop().await;
    eprintln!("{committed} transactions during the test");
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM accounts")
        .await;
    check_the_fault_met_sluice(&mut sluice, &proxy, fault, retries_before);
    if fault.is_slow_link() {
        assert!(
            confirmed_during > confirmed_before,
            "{test}: the slot stayed at {confirmed_before} through {held:?} of a slow link: \
             Sluice stopped instead of slowing down\n{}",
            sluice.log_text()
        );
    }
    report(
        test,
        &FaultCase {
            area: link.area(),
            fault: fault.name(),
            held,
            recovery,
            outcome: "exact",
        },
    );
    sluice.stop_cleanly();
}

/// Hold the fault for `HOLD`; Sluice must stay up (and healthy) throughout.
async fn hold(sluice: &mut Sluice, started: Instant) {
    while started.elapsed() < HOLD {
        if let Some(code) = sluice.exited() {
            panic!(
                "sluice exited ({code}) during the fault:\n{}",
                sluice.log_text()
            );
        }
        assert_eq!(sluice.get("/health").0, 200, "alive while the link is bad");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A case that never touched Sluice's traffic would prove nothing: the
/// broken connections were Sluice's, and Sluice retried.
fn check_the_fault_met_sluice(
    sluice: &mut Sluice,
    proxy: &Proxy,
    fault: NetFault,
    retries_before: f64,
) {
    if matches!(fault, NetFault::ResetMidRequest | NetFault::HalfOpen) {
        assert!(
            proxy.faulted() > 0,
            "{fault:?}: the proxy broke no connection"
        );
    }
    if !fault.is_slow_link() {
        let retries = sluice.metric("sluice_retries_total") - retries_before;
        assert!(
            retries > 0.0,
            "{fault:?}: Sluice counted no retry\n{}",
            sluice.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_link_with_200ms_latency_converges() {
    let test = "elasticsearch_link_with_200ms_latency_converges";
    fault_case(test, Link::Elasticsearch, NetFault::Latency).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_link_limited_to_64kib_per_s_converges() {
    let test = "elasticsearch_link_limited_to_64kib_per_s_converges";
    fault_case(test, Link::Elasticsearch, NetFault::Bandwidth).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_connections_reset_mid_request_converge() {
    let test = "elasticsearch_connections_reset_mid_request_converge";
    fault_case(test, Link::Elasticsearch, NetFault::ResetMidRequest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_half_open_connections_time_out_and_converge() {
    let test = "elasticsearch_half_open_connections_time_out_and_converge";
    fault_case(test, Link::Elasticsearch, NetFault::HalfOpen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_connections_refused_then_restored_converge() {
    let test = "elasticsearch_connections_refused_then_restored_converge";
    fault_case(test, Link::Elasticsearch, NetFault::Refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_link_with_200ms_latency_converges() {
    let test = "postgres_link_with_200ms_latency_converges";
    fault_case(test, Link::Postgres, NetFault::Latency).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_link_limited_to_64kib_per_s_converges() {
    let test = "postgres_link_limited_to_64kib_per_s_converges";
    fault_case(test, Link::Postgres, NetFault::Bandwidth).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_reset_mid_request_converge() {
    let test = "postgres_connections_reset_mid_request_converge";
    fault_case(test, Link::Postgres, NetFault::ResetMidRequest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_half_open_replication_connection_is_noticed_and_converges() {
    let test = "postgres_half_open_replication_connection_is_noticed_and_converges";
    fault_case(test, Link::Postgres, NetFault::HalfOpen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_refused_then_restored_converge() {
    let test = "postgres_connections_refused_then_restored_converge";
    fault_case(test, Link::Postgres, NetFault::Refused).await;
}
