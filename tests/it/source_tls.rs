//! The replication and SQL connections against a private PostgreSQL whose
//! TLS certificate was signed by a CA this test generates: `verify-full`,
//! `verify-ca`, `require`, `prefer` falling back to plaintext the way libpq
//! does (server refuses TLS in pg_hba.conf, handshake fails, TLS off), and
//! the Unix socket (where sslmode is ignored). SCRAM as non-superuser roles.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice::source::{PgConnectConfig, ReplicationConnection, SourceError, SslMode, connect_sql};

use crate::support::private_pg::PrivatePg;
use crate::support::{services, wait_until};

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ca.crt` and a server certificate it signed for DNS:localhost only (so
/// 127.0.0.1 passes `verify-ca` but not `verify-full`), owned by postgres.
fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-subj",
        "/CN=sluice source test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&ca, dir);
    let mut csr = vec!["req", "-nodes"];
    csr.extend(ec);
    csr.extend([
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&csr, dir);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ],
        dir,
    );
    let st = Command::new("chown")
        .args(["postgres:postgres", "server.key", "server.crt"])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(
        dir.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
}

fn role(pg: &PrivatePg, user: &str, host: &str, sslmode: SslMode) -> PgConnectConfig {
    PgConnectConfig {
        host: host.into(),
        user: user.into(),
        password: Some(format!("{user}-pw")),
        sslmode,
        connect_timeout_secs: 5,
        ..pg.config()
    }
}

/// Replication connection + IDENTIFY_SYSTEM, and a SQL connection that
/// reports whether it is encrypted.
async fn connect_both(cfg: &PgConnectConfig) -> Result<bool, SourceError> {
    ReplicationConnection::connect(cfg)
        .await?
        .identify_system()
        .await?;
    let sql = connect_sql(cfg).await?;
    let ssl: bool = sql
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    Ok(ssl)
}

/// Run `ALTER SYSTEM` statements (one at a time: none may share a
/// transaction) and reload.
async fn reload(pg: &PrivatePg, conf: &[&str]) {
    let admin = connect_sql(&pg.config()).await.unwrap();
    for stmt in conf {
        admin.batch_execute(stmt).await.unwrap();
    }
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_follow_libpq_against_a_server_with_a_test_generated_ca() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let d = certs.path().display();
    let extra =
        format!("ssl = on\nssl_cert_file = '{d}/server.crt'\nssl_key_file = '{d}/server.key'\n");
    // The temp dir must be enterable by postgres to read the certificate.
    std::fs::set_permissions(
        certs.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pg = tokio::task::spawn_blocking(move || PrivatePg::start_with(&extra))
        .await
        .unwrap();
    let admin = connect_sql(&pg.config()).await.unwrap();
    admin
        .batch_execute(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE tlsonly LOGIN REPLICATION PASSWORD 'tlsonly-pw';
             CREATE ROLE plainonly LOGIN REPLICATION PASSWORD 'plainonly-pw';
             CREATE ROLE either LOGIN REPLICATION PASSWORD 'either-pw';",
        )
        .await
        .unwrap();
    std::fs::write(
        pg.data().join("pg_hba.conf"),
        "local all all trust\nlocal replication all trust\n\
         hostnossl all postgres 127.0.0.1/32 trust\n\
         hostssl all tlsonly 127.0.0.1/32 scram-sha-256\n\
         hostssl replication tlsonly 127.0.0.1/32 scram-sha-256\n\
         hostnossl all plainonly 127.0.0.1/32 scram-sha-256\n\
         hostnossl replication plainonly 127.0.0.1/32 scram-sha-256\n\
         host all either 127.0.0.1/32 scram-sha-256\n\
         host replication either 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let ca = certs.path().join("ca.crt");
    let verify_full = PgConnectConfig {
        ssl_root_cert: Some(ca.clone()),
        ..role(&pg, "tlsonly", "localhost", SslMode::VerifyFull)
    };
    // verify-full with the test CA, by host name: SCRAM over TLS, both connections.
    let encrypted = wait_until(Duration::from_secs(10), "pg_hba.conf reload", || async {
        connect_both(&verify_full).await.ok()
    })
    .await;
    assert!(encrypted, "verify-full is encrypted");

    // The certificate names localhost only: verify-full to 127.0.0.1 is
    // refused, verify-ca (chain only) accepts it.
    let by_ip = PgConnectConfig {
        host: "127.0.0.1".into(),
        ..verify_full.clone()
    };
    let err = ReplicationConnection::connect(&by_ip).await.err().unwrap();
    assert!(matches!(err, SourceError::Tls { .. }), "{err}");
    assert!(
        connect_sql(&by_ip).await.is_err(),
        "SQL verify-full to an unnamed IP"
    );
    let verify_ca = PgConnectConfig {
        sslmode: SslMode::VerifyCa,
        ..by_ip.clone()
    };
    assert!(connect_both(&verify_ca).await.unwrap());

    // Another CA (the shared test server's) never signed this certificate.
    let wrong_ca = PgConnectConfig {
        ssl_root_cert: Some(services().pg_ca.clone().into()),
        ..verify_full.clone()
    };
    let err = ReplicationConnection::connect(&wrong_ca)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, SourceError::Tls { reason, .. } if reason.contains("certificate")),
        "{err}"
    );
    assert!(connect_sql(&wrong_ca).await.is_err());

    // require encrypts without checking; prefer uses TLS when it can.
    for mode in [SslMode::Require, SslMode::Prefer] {
        let cfg = role(&pg, "tlsonly", "127.0.0.1", mode);
        assert!(connect_both(&cfg).await.unwrap(), "{mode:?} is encrypted");
    }

    // pg_hba.conf refuses TLS for this role: prefer retries without it
    // (libpq does the same), require fails with the server's auth error.
    let plain = role(&pg, "plainonly", "127.0.0.1", SslMode::Prefer);
    assert!(!connect_both(&plain).await.unwrap(), "prefer fell back");
    let required = PgConnectConfig {
        sslmode: SslMode::Require,
        ..plain.clone()
    };
    let err = ReplicationConnection::connect(&required)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, SourceError::Auth { reason, .. } if reason.contains("28000")),
        "{err}"
    );
    let mut wrong_pw = plain.clone();
    wrong_pw.password = Some("nope".into());
    let err = ReplicationConnection::connect(&wrong_pw)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");

    // The Unix socket: no TLS there whatever sslmode says (as in libpq).
    let socket = PgConnectConfig {
        host: pg.socket_dir().display().to_string(),
        password: None,
        ..role(&pg, "either", "", SslMode::Require)
    };
    let mut conn = ReplicationConnection::connect(&socket)
        .await
        .expect("replication over the Unix socket");
    let sys = conn.identify_system().await.unwrap();
    assert_eq!(sys.dbname.as_deref(), Some("postgres"));
    connect_sql(&socket)
        .await
        .expect("SQL over the Unix socket");

    // A handshake that cannot succeed (the server offers only TLS ≤ 1.1,
    // which rustls refuses): prefer connects without TLS, require fails.
    reload(
        &pg,
        &[
            "ALTER SYSTEM SET ssl_min_protocol_version = 'TLSv1'",
            "ALTER SYSTEM SET ssl_max_protocol_version = 'TLSv1.1'",
        ],
    )
    .await;
    let either = role(&pg, "either", "127.0.0.1", SslMode::Prefer);
    wait_until(Duration::from_secs(10), "TLS 1.1 cap", || async {
        let required = PgConnectConfig {
            sslmode: SslMode::Require,
            ..either.clone()
        };
        matches!(
            ReplicationConnection::connect(&required).await,
            Err(SourceError::Tls { .. })
        )
        .then_some(())
    })
    .await;
    assert!(
        !connect_both(&either).await.unwrap(),
        "prefer after a failed handshake"
    );

    // TLS off: prefer is plain, require says the server does not do TLS.
    reload(
        &pg,
        &[
            "ALTER SYSTEM RESET ssl_min_protocol_version",
            "ALTER SYSTEM RESET ssl_max_protocol_version",
            "ALTER SYSTEM SET ssl = off",
        ],
    )
    .await;
    let err = wait_until(Duration::from_secs(10), "ssl = off", || async {
        let required = PgConnectConfig {
            sslmode: SslMode::Require,
            ..either.clone()
        };
        match ReplicationConnection::connect(&required).await {
            Err(e @ SourceError::Tls { .. }) if e.to_string().contains("does not accept TLS") => {
                Some(e)
            }
            _ => None,
        }
    })
    .await;
    assert!(err.to_string().contains("Require"), "{err}");
    assert!(!connect_both(&either).await.unwrap(), "prefer without TLS");
}
