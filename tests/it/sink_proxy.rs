//! A TCP proxy in front of the shared Elasticsearch that a test can cut and
//! restore, to simulate an outage without stopping the shared server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
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
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
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

    /// Accept connections again on the same port.
    pub async fn restore(&self) {
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
