//! A TCP proxy in front of the shared Elasticsearch that a test can cut,
//! freeze and restore, to simulate an outage without stopping the shared
//! server.
//!
//! - `cut`: connections are refused and open ones reset (a node that is down).
//! - `hang`: connections are accepted but nothing flows either way, on new
//!   and already open connections alike (a network partition that drops
//!   packets): only the client's request timeout gets it out.
//! - `restore`: forward again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// `true` while hanging: every pump holds its bytes.
    frozen: watch::Sender<bool>,
}

impl Proxy {
    /// Start forwarding a free local port to `upstream_url`'s host:port.
    pub async fn start(upstream_url: &str) -> Proxy {
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
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let frozen = frozen.subscribe();
                let conn = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(upstream).await {
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = outbound.into_split();
                        tokio::join!(pump(ri, wo, frozen.clone()), pump(ro, wi, frozen.clone()));
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
