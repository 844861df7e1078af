//! Elasticsearch over TLS: stunnel (Debian's stunnel4) terminates TLS in
//! front of the test Elasticsearch with a certificate from a CA this test
//! makes with openssl. The client must accept that CA and refuse others.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice::sink::EsConfig;
use sluice::sink::{build_client, describe_es_error};

use crate::support::private_pg::PrivatePg;
use crate::support::sluice::{Sluice, SluiceToml, mapping};
use crate::support::{free_port, services, unique_name, wait_until};

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>-ca.crt`) and, if `server`, a certificate it signed for
/// 127.0.0.1 and localhost (`<name>-server.crt/.key`).
fn make_ca(dir: &Path, name: &str, server: bool) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            &format!("/CN=sluice test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
        ])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt")));
    if !server {
        return;
    }
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.crt")));
}

/// stunnel's path, or `None` (with a loud message) when it cannot be had.
fn stunnel() -> Option<PathBuf> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ensure-stunnel.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run ensure-stunnel.sh");
    match out.status.code() {
        Some(0) => Some(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())),
        Some(77) => {
            eprintln!(
                "\n!!!!! SKIPPED: Elasticsearch TLS test: stunnel is missing and cannot be installed \
                 (no apt-get). Install Debian's stunnel4 to run it. !!!!!\n"
            );
            None
        }
        other => panic!("scripts/ensure-stunnel.sh failed ({other:?})"),
    }
}

/// A log sink for one assertion.
struct Writer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Terminator {
    child: std::process::Child,
    port: u16,
}

impl Drop for Terminator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_terminator(bin: &Path, dir: &Path, backend: &str) -> Terminator {
    let port = free_port();
    let conf = dir.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\ndebug = 4\n[es]\naccept = 127.0.0.1:{port}\nconnect = {backend}\n\
             cert = {}\nkey = {}\n",
            dir.join("good-server.crt").display(),
            dir.join("good-server.key").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start stunnel");
    let t = Terminator { child, port };
    wait_until(Duration::from_secs(20), "stunnel to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    t
}

async fn health_via(es: &EsConfig) -> Result<u16, String> {
    let client = build_client(es).map_err(|e| e.to_string())?;
    client
        .cluster()
        .health(elasticsearch::cluster::ClusterHealthParts::None)
        .send()
        .await
        .map(|r| r.status_code().as_u16())
        .map_err(|e| describe_es_error(&e))
}

#[tokio::test]
async fn elasticsearch_over_tls_accepts_the_right_ca_and_refuses_a_wrong_one() {
    let Some(bin) = stunnel() else { return };
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "good", true);
    make_ca(dir.path(), "wrong", false);
    let backend = services()
        .es_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let tls = start_terminator(&bin, dir.path(), &backend).await;
    let https = |host: &str| EsConfig {
        urls: vec![format!("https://{host}:{}", tls.port)],
        ..Default::default()
    };

    // The right CA: verified, host name included (IP SAN and DNS SAN).
    for host in ["127.0.0.1", "localhost"] {
        let es = EsConfig {
            ca_file: Some(dir.path().join("good-ca.crt")),
            ..https(host)
        };
        assert_eq!(health_via(&es).await, Ok(200), "via {host}");
    }

    // A CA that did not sign the server's certificate: refused, clearly.
    let es = EsConfig {
        ca_file: Some(dir.path().join("wrong-ca.crt")),
        ..https("127.0.0.1")
    };
    let err = health_via(&es)
        .await
        .expect_err("a wrong CA must be refused");
    assert!(err.contains("TLS certificate verification failed"), "{err}");
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );
    assert!(err.contains("ca_file"), "{err}");
    eprintln!("wrong CA refused with: {err}");

    // No CA configured: the public roots do not know our CA either.
    let err = health_via(&https("127.0.0.1"))
        .await
        .expect_err("untrusted certificate");
    assert!(err.contains("TLS certificate verification failed"), "{err}");

    // The explicit, loud escape hatch: it connects, and says so at WARN.
    let es = EsConfig {
        insecure_skip_verify: true,
        ..https("127.0.0.1")
    };
    let logged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = logged.clone();
    let d = sluice::ops::logging::dispatch(
        sluice::cli::LogFormat::Human,
        tracing_subscriber::EnvFilter::new("warn"),
        move || Writer(sink.clone()),
        false,
    );
    tracing::dispatcher::with_default(&d, || build_client(&es).unwrap());
    let warning = String::from_utf8(logged.lock().unwrap().clone()).unwrap();
    assert!(
        warning.contains("WARN") && warning.contains("TLS CERTIFICATE VERIFICATION IS DISABLED"),
        "{warning}"
    );
    assert_eq!(health_via(&es).await, Ok(200));

    // A CA file that is not there, or not PEM: a configuration error up front.
    let es = EsConfig {
        ca_file: Some(dir.path().join("missing.crt")),
        ..https("127.0.0.1")
    };
    let err = health_via(&es).await.unwrap_err();
    assert!(
        err.contains("missing.crt") && err.contains("CA file"),
        "{err}"
    );
    std::fs::write(dir.path().join("garbage.crt"), "not a certificate").unwrap();
    let es = EsConfig {
        ca_file: Some(dir.path().join("garbage.crt")),
        ..https("127.0.0.1")
    };
    let err2 = health_via(&es).await.unwrap_err();
    assert!(err2.contains("no PEM certificate"), "{err2}");
}

/// A server certificate signed by `<ca>`'s key, valid only for `host`.
fn server_cert_for(dir: &Path, ca: &str, name: &str, host: &str) {
    let p = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj"])
        .arg(format!("/CN={host}"))
        .arg("-keyout")
        .arg(p(&format!("{name}.key")))
        .arg("-out")
        .arg(p(&format!("{name}.csr"))));
    std::fs::write(
        p(&format!("{name}.cnf")),
        format!("subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(p(&format!("{name}.csr")))
        .arg("-CA")
        .arg(p(&format!("{ca}-ca.crt")))
        .arg("-CAkey")
        .arg(p(&format!("{ca}-ca.key")))
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(p(&format!("{name}.cnf")))
        .arg("-out")
        .arg(p(&format!("{name}.crt"))));
}

/// `sluice status` against a private PostgreSQL with `ssl = on` and a
/// certificate from a CA this test makes: `sslmode=verify-full` with that
/// CA connects (encrypted); another CA, or a certificate for another host
/// name, is refused with an error that says so; nothing falls back to
/// plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_with_a_test_ca_connects_and_refuses_a_wrong_ca_or_host() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    make_ca(dir, "good", true);
    make_ca(dir, "wrong", false);
    server_cert_for(dir, "good", "other-host", "db.example");
    run(Command::new("chown").arg("-R").arg("postgres").arg(dir));
    run(Command::new("chmod").arg("755").arg(dir));
    for key in ["good-server.key", "other-host.key"] {
        run(Command::new("chmod").arg("600").arg(dir.join(key)));
    }
    let pg = PrivatePg::start_with(&format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        dir.join("good-server.crt").display(),
        dir.join("good-server.key").display()
    ));
    let url = |host: &str, ca: &str| {
        format!(
            "postgres://postgres@{host}:{}/postgres?sslmode=verify-full&sslrootcert={}",
            pg.port,
            dir.join(ca).display()
        )
    };
    let status = |pg_url: String| {
        let config = SluiceToml::new(pg_url, "sluice_tls".into(), unique_name("tls-dead"));
        let sluice = Sluice::with_config(&config, &[("t.toml", mapping("public.t", "tls-t", ""))]);
        let ran = sluice.command(&["status", "--json"]);
        (ran.code, ran.text())
    };

    for host in ["127.0.0.1", "localhost"] {
        let (code, out) = status(url(host, "good-ca.crt"));
        assert_eq!(code, Some(0), "verify-full to {host}: {out}");
        assert!(out.contains("sluice_tls"), "{out}");
    }
    // The same settings through the library: the session is encrypted.
    let cfg = sluice::source::PgConnectConfig::parse(&url("localhost", "good-ca.crt")).unwrap();
    let client = sluice::source::connect_sql(&cfg).await.unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    // A replication connection too.
    sluice::source::ReplicationConnection::connect(&cfg)
        .await
        .expect("replication connection with verify-full")
        .identify_system()
        .await
        .unwrap();

    let (code, out) = status(url("127.0.0.1", "wrong-ca.crt"));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("certificate")
            && (out.contains("UnknownIssuer") || out.contains("unknown issuer")),
        "a wrong CA is refused, saying why: {out}"
    );
    eprintln!("wrong CA: {out}");

    // The right CA, but the server's certificate names another host.
    std::fs::copy(dir.join("other-host.crt"), dir.join("good-server.crt")).unwrap();
    std::fs::copy(dir.join("other-host.key"), dir.join("good-server.key")).unwrap();
    run(Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{}/psql", services().pg_bin))
        .arg(pg.url())
        .args(["-c", "SELECT pg_reload_conf()"]));
    let (code, out) = wait_until(Duration::from_secs(20), "the new certificate", || {
        let r = status(url("127.0.0.1", "good-ca.crt"));
        async move { (r.0 != Some(0)).then_some(r) }
    })
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("certificate") && out.to_lowercase().contains("name"),
        "a certificate for another host is refused, saying why: {out}"
    );
    eprintln!("wrong host: {out}");
}
