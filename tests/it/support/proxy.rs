//! A TCP proxy in front of the shared Elasticsearch that a test can cut,
//! freeze and restore, to simulate an outage without stopping the shared
//! server.
//!
//! - `cut`: connections are refused and open ones reset (a node that is down).
//! - `hang`: connections are accepted but nothing flows either way, on new
//!   and already open connections alike (a network partition that drops
//!   packets): only the client's request timeout gets it out.
//! - `restore`: forward again.
//! - `hold_next_bulk`: the next `POST /_bulk` is taken off its connection and
//!   kept whole (the client sees no response and times out); `release` sends
//!   it to Elasticsearch later, on a connection of its own, the way a request
//!   the client gave up on can still apply long after.
//! - `start_breaking_over`: a proxy whose bulk requests with a body larger
//!   than a limit are refused with 429 `circuit_breaking_exception`, the way
//!   Elasticsearch's request breaker refuses an oversize request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// `true` while hanging: every pump holds its bytes.
    frozen: watch::Sender<bool>,
    /// Armed by `hold_next_bulk`: taken by the first bulk request to arrive.
    hold: Arc<Mutex<Option<HoldArm>>>,
    /// Set by `start_breaking_over`: the largest bulk body let through.
    bulk_limit: Option<usize>,
    /// Bulk requests refused for their size so far.
    pub broken: Arc<std::sync::atomic::AtomicUsize>,
}

/// What the connection that takes the hold reports and waits for.
struct HoldArm {
    held: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
    landed: oneshot::Sender<String>,
}

/// The test's end of a held bulk request.
pub struct HeldBulk {
    held: oneshot::Receiver<()>,
    release: Option<oneshot::Sender<()>>,
    landed: oneshot::Receiver<String>,
}

impl HeldBulk {
    /// Wait until a bulk request arrived whole and is being held.
    pub async fn held(&mut self) {
        (&mut self.held)
            .await
            .expect("the proxy holds a bulk request");
    }

    /// Send the held request to Elasticsearch now, and wait for its
    /// response (returned as text: status line, headers and body).
    pub async fn release_and_wait(mut self) -> String {
        let _ = self.release.take().expect("released once").send(());
        self.landed.await.expect("the held request got a response")
    }
}

impl Proxy {
    /// Start forwarding a free local port to `upstream_url`'s host:port.
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
        let addr = listener.local_addr().unwrap();
        let p = Proxy {
            addr,
            upstream,
            tasks: Arc::new(Mutex::new(Vec::new())),
            frozen: watch::channel(false).0,
            hold: Arc::new(Mutex::new(None)),
            bulk_limit,
            broken: Default::default(),
        };
        p.serve(listener);
        p
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream;
        let tasks = self.tasks.clone();
        let frozen = self.frozen.clone();
        let hold = self.hold.clone();
        let (bulk_limit, broken) = (self.bulk_limit, self.broken.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let frozen = frozen.subscribe();
                let hold = hold.clone();
                let broken = broken.clone();
                let conn = tokio::spawn(async move {
                    if let Some(limit) = bulk_limit {
                        return serve_breaking(inbound, upstream, limit, broken).await;
                    }
                    if let Ok(outbound) = TcpStream::connect(upstream).await {
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = outbound.into_split();
                        tokio::join!(
                            pump_requests(ri, wo, frozen.clone(), hold, upstream),
                            pump(ro, wi, frozen.clone())
                        );
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Refuse new connections and reset open ones.
    pub fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Keep accepting, but let nothing through in either direction, on open
    /// connections too, until `restore`.
    pub fn hang(&self) {
        self.frozen.send_replace(true);
    }

    /// Hold the next bulk request (see the module docs).
    pub fn hold_next_bulk(&self) -> HeldBulk {
        let (held_tx, held) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        let (landed_tx, landed) = oneshot::channel();
        *self.hold.lock().unwrap() = Some(HoldArm {
            held: held_tx,
            release: release_rx,
            landed: landed_tx,
        });
        HeldBulk {
            held,
            release: Some(release),
            landed,
        }
    }

    /// Forward again: after `cut`, accept on the same port; after `hang`,
    /// let the held bytes flow.
    pub async fn restore(&self) {
        if self.frozen.send_replace(false) {
            return;
        }
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind proxy port");
        self.serve(listener);
    }
}

/// `pump` for the client's side of a connection, which also takes the
/// armed hold when a bulk request starts: that request is read whole and
/// kept off the connection (so its client times out), then sent on a
/// connection of its own once released.
async fn pump_requests(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    hold: Arc<Mutex<Option<HoldArm>>>,
    upstream: SocketAddr,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let arm = if buf[..n].starts_with(b"POST /_bulk") {
            hold.lock().unwrap().take()
        } else {
            None
        };
        if let Some(arm) = arm {
            let mut request = buf[..n].to_vec();
            while message_len(&request).is_none() {
                match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = arm.held.send(());
            let _ = arm.release.await;
            let response = send_alone(upstream, &request).await;
            let _ = arm
                .landed
                .send(String::from_utf8_lossy(&response).into_owned());
            return;
        }
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Serve one client connection request by request: a bulk request with a
/// body over `limit` gets a 429 circuit-breaker refusal, any other request
/// is sent upstream alone and its response relayed.
async fn serve_breaking(
    mut inbound: TcpStream,
    upstream: SocketAddr,
    limit: usize,
    broken: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while message_len(&pending).is_none() {
            match inbound.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
        let len = message_len(&pending).expect("a whole request");
        let request: Vec<u8> = pending.drain(..len).collect();
        let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let response = if request.starts_with(b"POST /_bulk") && len - head_end > limit {
            broken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = r#"{"error":{"root_cause":[{"type":"circuit_breaking_exception","reason":"[parent] Data too large"}],"type":"circuit_breaking_exception","reason":"[parent] Data too large, data for [<http_request>] would be larger than the limit","bytes_wanted":1,"bytes_limit":1,"durability":"TRANSIENT"},"status":429}"#;
            format!(
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        } else {
            send_alone(upstream, &request).await
        };
        if inbound.write_all(&response).await.is_err() {
            return;
        }
    }
}

/// The length of the first whole HTTP/1.1 message (with a
/// `Content-Length` body) in `buf`, once it is all there.
fn message_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= end + 4 + len).then_some(end + 4 + len)
}

/// Send one whole request on a fresh connection and read its whole
/// response. The request loses its `Accept-Encoding`, so the response comes
/// back as plain text a test can read.
async fn send_alone(upstream: SocketAddr, request: &[u8]) -> Vec<u8> {
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole request");
    let head = String::from_utf8_lossy(&request[..head_end]);
    let mut plain: Vec<u8> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("accept-encoding:"))
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes();
    plain.extend_from_slice(&request[head_end..]);
    let mut c = TcpStream::connect(upstream)
        .await
        .expect("connect upstream");
    c.write_all(&plain).await.expect("send the request");
    let mut resp = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !is_whole_response(&resp) {
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
        }
    }
    resp
}

/// Whether `resp` is a whole response: its `Content-Length` body, or the
/// last chunk of a chunked one.
fn is_whole_response(resp: &[u8]) -> bool {
    let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        return resp.ends_with(b"\r\n0\r\n\r\n");
    }
    message_len(resp).is_some()
}

/// Copy `from` → `to`, holding everything while `frozen` is true.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read just before a freeze are held too.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}
