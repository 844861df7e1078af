//! A private Elasticsearch cluster of several nodes on this machine, started
//! from the same distribution as the shared node (`SLUICE_TEST_ES_HOME`), for
//! tests that lose a node. Each node has its own config directory, data path
//! and ports; killing one is a SIGKILL (no graceful leave), and it can be
//! started again on the same data. Everything is killed and deleted on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::free_port;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run through ./dev test"))
}

pub struct EsCluster {
    dir: tempfile::TempDir,
    http: Vec<u16>,
    home: PathBuf,
    user: String,
}

impl EsCluster {
    /// Start `n` master-eligible data nodes (256 MB heap each) and wait until
    /// all of them have joined.
    pub async fn start(n: usize) -> EsCluster {
        EsCluster::start_with(n, "").await
    }

    /// [`EsCluster::start`] with `settings` (`elasticsearch.yml` lines, e.g.
    /// `thread_pool.write.queue_size: 1`) added to every node's config.
    pub async fn start_with(n: usize, settings: &str) -> EsCluster {
        let home = PathBuf::from(env("SLUICE_TEST_ES_HOME"));
        let user = env("SLUICE_TEST_ES_USER");
        let dir = tempfile::Builder::new()
            .prefix("sluice-cluster-")
            .tempdir()
            .unwrap();
        let http: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let transport: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let seeds = transport
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let masters = (1..=n)
            .map(|i| format!("\"node-{i}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for i in 0..n {
            let node = dir.path().join(format!("node-{}", i + 1));
            let conf = node.join("config");
            std::fs::create_dir_all(&node).unwrap();
            run(Command::new("cp")
                .arg("-r")
                .arg(home.join("config"))
                .arg(&conf));
            std::fs::write(
                conf.join("elasticsearch.yml"),
                format!(
                    "cluster.name: sluice-cluster\nnode.name: node-{k}\npath.data: {d}/data\n\
                     path.logs: {d}/logs\nnetwork.host: 127.0.0.1\nhttp.port: {h}\n\
                     transport.port: {t}\ndiscovery.seed_hosts: [{seeds}]\n\
                     cluster.initial_master_nodes: [{masters}]\nxpack.security.enabled: false\n\
                     xpack.ml.enabled: false\ncluster.routing.allocation.disk.threshold_enabled: false\n\
                     {settings}\n",
                    k = i + 1,
                    d = node.display(),
                    h = http[i],
                    t = transport[i],
                ),
            )
            .unwrap();
            std::fs::write(
                conf.join("jvm.options.d/heap.options"),
                "-Xms256m\n-Xmx256m\n",
            )
            .unwrap();
        }
        run(Command::new("chown").arg("-R").arg(&user).arg(dir.path()));
        run(Command::new("chmod").arg("755").arg(dir.path()));
        let cluster = EsCluster {
            dir,
            http,
            home,
            user,
        };
        for i in 1..=n {
            cluster.start_node(i);
        }
        cluster.wait_for_nodes(n).await;
        cluster
    }

    /// The HTTP URL of every node, node 1 first.
    pub fn urls(&self) -> Vec<String> {
        self.http
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{i}"))
    }

    /// Start node `i` (1-based), also again after [`EsCluster::kill`].
    pub fn start_node(&self, i: usize) {
        let node = self.node_dir(i);
        let status = Command::new("runuser")
            .args(["-u", &self.user, "--", "env"])
            .arg(format!("ES_JAVA_HOME={}", env("SLUICE_TEST_ES_JAVA_HOME")))
            .arg(format!("ES_PATH_CONF={}", node.join("config").display()))
            .arg("ES_JAVA_OPTS=-Xms256m -Xmx256m")
            .arg(self.home.join("bin/elasticsearch"))
            .args(["-d", "-p"])
            .arg(node.join("es.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "node-{i} did not start: {}", self.log(i));
    }

    /// SIGKILL node `i`: no graceful leave, like a lost machine.
    pub fn kill(&self, i: usize) {
        let pid_file = self.node_dir(i).join("es.pid");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        run(Command::new("kill").args(["-KILL", pid.trim()]));
        let _ = std::fs::remove_file(pid_file);
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(i).join("logs/sluice-cluster.log"))
            .unwrap_or_default()
    }

    /// `_cluster/health` as answered by the first node that answers.
    pub async fn health(&self) -> Option<Value> {
        for url in self.urls() {
            let es = super::Es::at(&url);
            let r = es
                .client
                .cluster()
                .health(elasticsearch::cluster::ClusterHealthParts::None)
                .request_timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(r) = r
                && let Ok(v) = r.json::<Value>().await
            {
                return Some(v);
            }
        }
        None
    }

    /// Wait until `n` nodes are in the cluster (and a master is elected).
    pub async fn wait_for_nodes(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(240);
        loop {
            if let Some(h) = self.health().await
                && h["number_of_nodes"].as_u64() == Some(n as u64)
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster did not reach {n} nodes in 240 s:\n{}",
                self.log(1)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Wait until the cluster is green (every replica assigned again).
    pub async fn wait_green(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while std::time::Instant::now() < deadline {
            if let Some(h) = self.health().await
                && h["status"] == "green"
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!(
            "the cluster did not turn green in 180 s: {:?}",
            self.health().await
        );
    }
}

impl Drop for EsCluster {
    fn drop(&mut self) {
        for i in 1..=self.http.len() {
            if let Ok(pid) = std::fs::read_to_string(self.node_dir(i).join("es.pid")) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
