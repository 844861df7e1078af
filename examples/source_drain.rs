//! Drain a slot with the Sluice reader into a null sink, for
//! `scripts/bench-source.sh`: `source_drain <url> <slot> <publication> <end-lsn>`.
//! Confirms every commit at once and exits once the stream reaches `end-lsn`;
//! prints `changes seconds`.

use std::time::Instant;

use sluice::Lsn;
use sluice::model::SourceEvent;
use sluice::source::{PgConnectConfig, ReaderConfig, run_reader};
use tokio::sync::{mpsc, watch};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 5,
        "usage: source_drain <url> <slot> <publication> <end-lsn>"
    );
    let cfg = PgConnectConfig::parse(&args[1])?;
    let end: Lsn = args[4].parse()?;
    let rcfg = ReaderConfig::new(cfg, args[2].clone(), vec![args[3].clone()]);
    let (tx, mut rx) = mpsc::channel(4096);
    let (flushed_tx, flushed) = watch::channel(Lsn::ZERO);
    let (stop, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let reader = tokio::spawn(run_reader(rcfg, None, tx, flushed, stop_rx));
    let mut changes = 0u64;
    while let Some(ev) = rx.recv().await {
        match ev {
            SourceEvent::Change(_) => changes += 1,
            SourceEvent::Commit { end_lsn, .. } => {
                flushed_tx.send_replace(end_lsn);
                if end_lsn >= end {
                    break;
                }
            }
            SourceEvent::Keepalive { wal_end } if wal_end >= end => break,
            _ => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    drop(rx);
    reader.await??;
    println!("{changes} {secs:.3}");
    Ok(())
}
