//! A TCP proxy in front of a shared server (Elasticsearch, or PostgreSQL:
//! it forwards bytes and knows no protocol) that a test can break the ways
//! a network breaks, without touching the server others use.
//!
//! - `cut`: connections are refused and open ones closed (a node that is down).
//! - `hang`: connections are accepted but nothing flows either way, on new
//!   and already open connections alike (a network partition that drops
//!   packets): only the client's request timeout gets it out. `restore`
//!   lets the held bytes flow (the partition heals, TCP retransmits).
//! - `set(Fault::Latency(d))`: each chunk of bytes waits `d` before it is
//!   passed on, in each direction (a slow link; a connection then moves at
//!   most 64 KiB per `d` each way).
//! - `set(Fault::Bandwidth(rate))`: each direction, all connections
//!   together, is paced to `rate` bytes per second.
//! - `set(Fault::ResetMidRequest)`: the next chunk to arrive on each
//!   connection, either way, is passed on in part (half of it), then both
//!   of the connection's ends get a TCP reset. New connections too (their
//!   first message is cut in half).
//! - `set(Fault::HalfOpen)`: at the next chunk either way, the server's end
//!   of a connection is closed and the client's end stays open and never
//!   hears anything again, not even after `restore` (a peer that vanished
//!   without a FIN or RST ever reaching the client). Connections made during
//!   the fault are accepted and never answered. Only the client's own
//!   timeouts get it out.
//! - `restore`: forward again, unharmed, on new connections and on the open
//!   ones that were not broken.
//! - `hold_next_bulk`, `start_breaking_over`: HTTP-aware faults for
//!   Elasticsearch (see `http`).
//!
//! `faulted` counts the connections a reset or half-open fault broke, so a
//! test can check that its fault met the client at all.

mod http;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use http::HeldBulk;

/// How the proxy treats the bytes it forwards (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Hang,
    Latency(Duration),
    /// Bytes per second, each direction.
    Bandwidth(u32),
    ResetMidRequest,
    HalfOpen,
}

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Set by `cut`: the listener is gone until `restore` binds it again.
    refusing: AtomicBool,
    /// Set by `start_breaking_over`: the largest bulk body let through.
    bulk_limit: Option<usize>,
    /// Bulk requests refused for their size so far.
    pub broken: Arc<AtomicUsize>,
}

/// What every connection of one proxy shares.
struct Shared {
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    /// One pacer per direction (to the server, to the client).
    pacers: [Pacer; 2],
    hold: http::Hold,
    faulted: AtomicUsize,
}

/// Which way bytes go.
#[derive(Debug, Clone, Copy)]
enum Dir {
    ToServer = 0,
    ToClient = 1,
}

/// How one direction of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The sender closed (or failed): its close was passed on.
    Closed,
    /// The other direction broke the connection.
    Stopped,
    Reset,
    HalfOpen,
}

impl Proxy {
    /// Start forwarding a free local port to `upstream_url`'s host:port
    /// (`http://...` or `postgres://...`).
    pub async fn start(upstream_url: &str) -> Proxy {
        Proxy::start_with(upstream_url, None).await
    }

    /// A proxy refusing bulk bodies over `limit` bytes (see the module docs).
    pub async fn start_breaking_over(upstream_url: &str, limit: usize) -> Proxy {
        Proxy::start_with(upstream_url, Some(limit)).await
    }

    async fn start_with(upstream_url: &str, bulk_limit: Option<usize>) -> Proxy {
        let u = url::Url::parse(upstream_url).expect("upstream URL");
        let upstream = tokio::net::lookup_host((
            u.host_str().expect("host"),
            u.port_or_known_default().expect("port"),
        ))
        .await
        .expect("resolve upstream")
        .next()
        .expect("an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let p = Proxy {
            addr: listener.local_addr().unwrap(),
            shared: Arc::new(Shared {
                upstream,
                fault: watch::channel(Fault::None).0,
                pacers: Default::default(),
                hold: Default::default(),
                faulted: AtomicUsize::new(0),
            }),
            tasks: Arc::new(Mutex::new(Vec::new())),
            refusing: AtomicBool::new(false),
            bulk_limit,
            broken: Default::default(),
        };
        p.serve(listener);
        p
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `url` (a PostgreSQL URL) with its host and port replaced by the
    /// proxy's, so a client connects through it.
    pub fn pg_url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("a PostgreSQL URL");
        u.set_host(Some(&self.addr.ip().to_string())).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        u.to_string()
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let tasks = self.tasks.clone();
        let (bulk_limit, broken) = (self.bulk_limit, self.broken.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                let broken = broken.clone();
                let conn = tokio::spawn(async move {
                    match bulk_limit {
                        Some(limit) => {
                            http::serve_breaking(inbound, shared.upstream, limit, broken).await
                        }
                        None => connection(inbound, &shared).await,
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Refuse new connections and close open ones.
    pub fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Keep accepting, but let nothing through in either direction, on open
    /// connections too, until `restore`.
    pub fn hang(&self) {
        self.set(Fault::Hang);
    }

    /// Treat the bytes from now on per `fault` (see the module docs).
    pub fn set(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    /// Connections a reset or half-open fault broke so far.
    pub fn faulted(&self) -> usize {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    /// Hold the next bulk request (see the module docs).
    pub fn hold_next_bulk(&self) -> HeldBulk {
        http::arm(&self.shared.hold)
    }

    /// Forward again: after `cut`, accept on the same port; after another
    /// fault, stop applying it.
    pub async fn restore(&self) {
        self.set(Fault::None);
        if !self.refusing.swap(false, Ordering::SeqCst) {
            return;
        }
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind proxy port");
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// One client connection: forwarded both ways until both sides closed, or
/// until a fault breaks it.
async fn connection(inbound: TcpStream, shared: &Shared) {
    if *shared.fault.borrow() == Fault::HalfOpen {
        shared.faulted.fetch_add(1, Ordering::SeqCst);
        return never_answer(inbound).await;
    }
    let Ok(outbound) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let (ri, wi) = inbound.into_split();
    let (ro, wo) = outbound.into_split();
    let broken = watch::channel(false).0;
    let ((up, ri, wo), (down, ro, wi)) = tokio::join!(
        pump(ri, wo, Dir::ToServer, shared, &broken),
        pump(ro, wi, Dir::ToClient, shared, &broken),
    );
    if [up, down].contains(&End::Reset) {
        shared.faulted.fetch_add(1, Ordering::SeqCst);
        // Closing a socket with SO_LINGER 0 sends RST instead of FIN.
        let _ = ri.as_ref().set_zero_linger();
        let _ = ro.as_ref().set_zero_linger();
    } else if [up, down].contains(&End::HalfOpen) {
        shared.faulted.fetch_add(1, Ordering::SeqCst);
        drop((ro, wo));
        never_answer(ri.reunite(wi).expect("one connection's halves")).await;
    }
}

/// Take whatever the client sends and answer nothing, until it closes.
async fn never_answer(mut client: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = client.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Copy one direction of a connection under the current fault; returns
/// how it ended, with its halves. `broken` tells the other direction that
/// this one broke the connection.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: Dir,
    shared: &Shared,
    broken: &watch::Sender<bool>,
) -> (End, OwnedReadHalf, OwnedWriteHalf) {
    let mut stop = broken.subscribe();
    let end = tokio::select! {
        end = copy(&mut from, &mut to, dir, shared) => end,
        _ = stop.wait_for(|b| *b) => End::Stopped,
    };
    if matches!(end, End::Reset | End::HalfOpen) {
        broken.send_replace(true);
    }
    (end, from, to)
}

async fn copy(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, dir: Dir, shared: &Shared) -> End {
    let mut fault = shared.fault.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Nothing is read while hanging.
        let _ = fault.wait_for(|f| *f != Fault::Hang).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return End::Closed;
            }
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if let Dir::ToServer = dir
            && http::take_held_bulk(&shared.hold, chunk, from, shared.upstream).await
        {
            return End::Closed;
        }
        if let Some(end) = deliver(chunk, to, dir, shared, &mut fault).await {
            return end;
        }
    }
}

/// Pass `chunk` on under the current fault; `Some` when the fault (or a
/// failed write) ends this direction.
async fn deliver(
    chunk: &[u8],
    to: &mut OwnedWriteHalf,
    dir: Dir,
    shared: &Shared,
    fault: &mut watch::Receiver<Fault>,
) -> Option<End> {
    let now = *fault.borrow_and_update();
    match now {
        // Bytes read just before a freeze are held too.
        Fault::Hang => {
            let _ = fault.wait_for(|f| *f != Fault::Hang).await;
            return Box::pin(deliver(chunk, to, dir, shared, fault)).await;
        }
        Fault::HalfOpen => return Some(End::HalfOpen),
        Fault::ResetMidRequest => {
            let _ = to.write_all(&chunk[..chunk.len() / 2]).await;
            return Some(End::Reset);
        }
        Fault::Latency(d) => tokio::time::sleep(d).await,
        Fault::Bandwidth(rate) => {
            // Small pieces, so the pace is smooth rather than bursts of 64 KiB.
            for piece in chunk.chunks(4096) {
                shared.pacers[dir as usize].wait(piece.len(), rate).await;
                if to.write_all(piece).await.is_err() {
                    return Some(End::Closed);
                }
            }
            return None;
        }
        Fault::None => {}
    }
    to.write_all(chunk).await.err().map(|_| End::Closed)
}

/// Paces one direction of all connections to a byte rate: each piece of
/// bytes goes when the link would have finished sending what went before.
#[derive(Default)]
struct Pacer {
    free_at: Mutex<Option<Instant>>,
}

impl Pacer {
    async fn wait(&self, bytes: usize, rate: u32) {
        let done = {
            let mut free_at = self.free_at.lock().unwrap();
            let now = Instant::now();
            let start = free_at.map_or(now, |t| t.max(now));
            let done = start + Duration::from_secs_f64(bytes as f64 / f64::from(rate.max(1)));
            *free_at = Some(done);
            done
        };
        tokio::time::sleep_until(done).await;
    }
}
