//! The HTTP-aware parts of the proxy, for Elasticsearch tests: a bulk
//! request taken off its connection and sent later (`hold_next_bulk`), and
//! bulk bodies over a size refused the way a circuit breaker refuses them
//! (`start_breaking_over`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::oneshot;

/// What the connection that takes the hold reports and waits for.
pub(super) struct HoldArm {
    held: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
    landed: oneshot::Sender<String>,
}

/// Armed by `hold_next_bulk`: taken by the first bulk request to arrive.
pub(super) type Hold = Arc<Mutex<Option<HoldArm>>>;

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

/// Arm `hold` for the next bulk request; the test's end of it.
pub(super) fn arm(hold: &Hold) -> HeldBulk {
    let (held_tx, held) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    let (landed_tx, landed) = oneshot::channel();
    *hold.lock().unwrap() = Some(HoldArm {
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

/// If `first` (the first bytes of a client chunk) starts a bulk request and
/// the hold is armed, take that request off the connection: read it whole,
/// keep it (so its client times out), and send it on a connection of its
/// own once released. True when the request was taken.
pub(super) async fn take_held_bulk(
    hold: &Hold,
    first: &[u8],
    from: &mut OwnedReadHalf,
    upstream: SocketAddr,
) -> bool {
    if !first.starts_with(b"POST /_bulk") {
        return false;
    }
    let Some(arm) = hold.lock().unwrap().take() else {
        return false;
    };
    let mut request = first.to_vec();
    let mut buf = vec![0u8; 64 * 1024];
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
    true
}

/// Serve one client connection request by request: a bulk request with a
/// body over `limit` gets a 429 circuit-breaker refusal, any other request
/// is sent upstream alone and its response relayed.
pub(super) async fn serve_breaking(
    mut inbound: TcpStream,
    upstream: SocketAddr,
    limit: usize,
    broken: Arc<AtomicUsize>,
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
            broken.fetch_add(1, Ordering::SeqCst);
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
