//! Elasticsearch credentials against a real secured Elasticsearch: the test
//! server runs with security off, so this starts a private node of the same
//! distribution with `xpack.security.enabled` (HTTP without TLS: the TLS
//! part is `ops_tls`) and a file-realm user. Basic auth (password from a
//! file) must authenticate, through the library and the binary, and a
//! wrong credential must be a clear error.
//!
//! API keys: this (integration-test) distribution cannot create them — the
//! `.security` index needs the `analysis-common` module it lacks — so here
//! Elasticsearch can only show that it received an API key credential and
//! refused it as unknown (not as missing); `ops_run` checks the exact
//! `Authorization: ApiKey <encoded>` header on the wire.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sluice::sink::{EsAuth, EsConfig, build_client};

use crate::support::sluice::{sluice_command, table_mapping};
use crate::support::{TestDb, free_port, unique_name, wait_until};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (./dev services env)"))
}

fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private single-node Elasticsearch with security on, killed on drop.
struct SecuredEs {
    dir: tempfile::TempDir,
    port: u16,
}

const ADMIN_PASSWORD: &str = "admin-Pw-for-tests";

impl SecuredEs {
    fn start() -> SecuredEs {
        let home = PathBuf::from(env("SLUICE_TEST_ES_HOME"));
        let user = env("SLUICE_TEST_ES_USER");
        let dir = tempfile::Builder::new()
            .prefix("sluice-es-")
            .tempdir()
            .unwrap();
        let conf = dir.path().join("config");
        ok(Command::new("cp")
            .arg("-r")
            .arg(home.join("config"))
            .arg(&conf));
        let port = free_port();
        std::fs::write(
            conf.join("elasticsearch.yml"),
            format!(
                "cluster.name: sluice-secured\nnode.name: secured-1\npath.data: {d}/data\npath.logs: {d}/logs\n\
                 network.host: 127.0.0.1\nhttp.port: {port}\ntransport.port: {t}\ndiscovery.type: single-node\n\
                 xpack.security.enabled: true\nxpack.security.http.ssl.enabled: false\n\
                 xpack.security.transport.ssl.enabled: false\nxpack.security.authc.api_key.enabled: true\n\
                 xpack.ml.enabled: false\ncluster.routing.allocation.disk.threshold_enabled: false\n",
                d = dir.path().display(),
                t = free_port(),
            ),
        )
        .unwrap();
        std::fs::write(
            conf.join("jvm.options.d/heap.options"),
            "-Xms384m\n-Xmx384m\n",
        )
        .unwrap();
        ok(Command::new("chown").arg("-R").arg(&user).arg(dir.path()));
        let es_env = |c: &mut Command| {
            c.args(["-u", &user, "--", "env"])
                .arg(format!("ES_JAVA_HOME={}", env("SLUICE_TEST_ES_JAVA_HOME")))
                .arg(format!("ES_PATH_CONF={}", conf.display()))
                .arg("ES_JAVA_OPTS=-Xms384m -Xmx384m");
        };
        let mut useradd = Command::new("runuser");
        es_env(&mut useradd);
        ok(useradd.arg(home.join("bin/elasticsearch-users")).args([
            "useradd",
            "admin",
            "-p",
            ADMIN_PASSWORD,
            "-r",
            "superuser",
        ]));
        let mut start = Command::new("runuser");
        es_env(&mut start);
        let status = start
            .arg(home.join("bin/elasticsearch"))
            .args(["-d", "-p"])
            .arg(dir.path().join("es.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let es = SecuredEs { dir, port };
        assert!(
            status.success(),
            "the secured Elasticsearch did not start: {}",
            es.log()
        );
        es
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/sluice-secured.log")).unwrap_or_default()
    }

    fn config(&self, auth: EsAuth) -> EsConfig {
        EsConfig {
            urls: vec![self.url()],
            auth,
            ..Default::default()
        }
    }

    fn admin(&self) -> EsConfig {
        self.config(EsAuth::Basic {
            username: "admin".into(),
            password: ADMIN_PASSWORD.into(),
        })
    }
}

impl Drop for SecuredEs {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("es.pid")) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}

/// Status and the body's error reason of `GET /_security/_authenticate`.
async fn authenticate(es: &EsConfig) -> (u16, Value) {
    let client = build_client(es).unwrap();
    let r = client
        .send(
            elasticsearch::http::Method::Get,
            "/_security/_authenticate",
            elasticsearch::http::headers::HeaderMap::new(),
            Option::<&()>::None,
            Option::<&[u8]>::None,
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{}", sluice::sink::describe_es_error(&e)));
    let status = r.status_code().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// `sluice check --config <config>`: (exit code, stdout + stderr).
fn sluice_check(config: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let ran = sluice_command(&["check", "--config", config.to_str().unwrap()], env);
    (ran.code.unwrap_or(-1), ran.text())
}

/// A config directory with the mapping `t.toml`: `public.t` into this
/// test's index `t` (each test writes its own `sluice.toml` variants).
fn config_dir_mapping_t(db: &TestDb) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    let (file, text) = table_mapping("t", &db.index("t"));
    std::fs::write(dir.path().join("mappings").join(file), text).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_authenticate_against_a_secured_elasticsearch_and_wrong_ones_are_clear_errors()
{
    let es = SecuredEs::start();
    wait_until(
        Duration::from_secs(120),
        "the secured Elasticsearch",
        || async {
            let client = build_client(&es.admin()).unwrap();
            let r = client.security().authenticate().send().await;
            r.is_ok_and(|r| r.status_code().as_u16() == 200)
                .then_some(())
        },
    )
    .await;

    let (code, me) = authenticate(&es.admin()).await;
    assert_eq!(
        (code, &me["username"]),
        (200, &Value::from("admin")),
        "{me}"
    );
    let reason = |v: &Value| v["error"]["reason"].as_str().unwrap_or("").to_string();
    let (code, none) = authenticate(&es.config(EsAuth::None)).await;
    assert_eq!(code, 401);
    assert!(
        reason(&none).contains("missing authentication credentials"),
        "{none}"
    );
    let wrong = es.config(EsAuth::Basic {
        username: "admin".into(),
        password: "not-it".into(),
    });
    assert_eq!(authenticate(&wrong).await.0, 401);
    // An API key the server does not know: received as a credential, refused.
    use base64::Engine as _;
    let unknown_key = base64::engine::general_purpose::STANDARD.encode("no-such-id:no-such-key");
    let (code, refused) = authenticate(&es.config(EsAuth::ApiKey(unknown_key.clone()))).await;
    assert_eq!(code, 401, "{refused}");
    assert!(
        reason(&refused).contains("unable to authenticate with provided credentials"),
        "{refused}"
    );

    // Through the binary: `sluice check` with the password from a file, a
    // wrong password, and an unknown API key from the environment.
    let db = TestDb::new().await;
    db.sql(
        "CREATE TABLE t (id bigint PRIMARY KEY, v text);
         CREATE PUBLICATION sluice FOR TABLE t;",
    )
    .await;
    let dir = config_dir_mapping_t(&db);
    std::fs::write(dir.path().join("good"), format!("{ADMIN_PASSWORD}\n")).unwrap();
    std::fs::write(dir.path().join("bad"), "not-it\n").unwrap();
    let config = |auth_lines: &str| {
        let path = dir.path().join(format!("{}.toml", unique_name("c")));
        std::fs::write(
            &path,
            format!(
                "[postgres]\nurl = \"{}\"\nsslmode = \"disable\"\nslot = \"sluice_{}\"\npublication = \"sluice\"\n\
                 [elasticsearch]\nurls = [\"{}\"]\n{auth_lines}\n",
                db.repl_url(),
                db.name,
                es.url()
            ),
        )
        .unwrap();
        path
    };
    let (code, out) = sluice_check(
        &config("username = \"admin\"\npassword_file = \"good\""),
        &[],
    );
    assert_eq!(code, 0, "basic auth with a password file: {out}");
    assert!(out.contains("all good"), "{out}");
    let (code, out) = sluice_check(
        &config("username = \"admin\"\npassword_file = \"bad\""),
        &[],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("answered HTTP 401") && out.contains("password"),
        "a wrong password is a clear error: {out}"
    );
    let (code, out) = sluice_check(
        &config("api_key = \"${SLUICE_TEST_KEY}\""),
        &[("SLUICE_TEST_KEY", &unknown_key)],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("answered HTTP 401") && out.contains("api_key"),
        "{out}"
    );
    for secret in [ADMIN_PASSWORD, unknown_key.as_str()] {
        assert!(!out.contains(secret), "{out}");
    }
}

/// `sluice check` prints where it connects and every configuration error:
/// a password in an Elasticsearch URL, and a password or API key of the
/// wrong type in `sluice.toml`, appear in neither (issue 14, secrets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_config_errors_never_print_a_url_password_or_a_mistyped_secret() {
    let db = TestDb::new().await;
    db.sql(
        "CREATE TABLE t (id bigint PRIMARY KEY, v text);
         CREATE PUBLICATION sluice FOR TABLE t;",
    )
    .await;
    let dir = config_dir_mapping_t(&db);
    // The shared test server has security off: it ignores the credentials,
    // so `check` gets as far as printing the server it reached.
    let es_url = crate::support::services()
        .es_url
        .replacen("://", "://elastic:Url-Pw-0001@", 1);
    let config = |es_lines: &str| {
        let path = dir.path().join(format!("{}.toml", unique_name("c")));
        std::fs::write(
            &path,
            format!(
                "[postgres]\nurl = \"{}\"\nslot = \"sluice_{}\"\npublication = \"sluice\"\n\
                 [elasticsearch]\nurls = [\"{es_url}\"]\n{es_lines}\n",
                db.repl_url(),
                db.name,
            ),
        )
        .unwrap();
        path
    };
    let (code, out) = sluice_check(&config(""), &[]);
    assert!(
        out.contains("at http://elastic:"),
        "check says where: {out}"
    );
    assert!(!out.contains("Url-Pw-0001"), "exit {code}: {out}");
    for (line, secret) in [
        ("password = 12345678", "12345678"),
        ("api_key = 87654321", "87654321"),
    ] {
        let (code, out) = sluice_check(&config(line), &[]);
        assert_eq!(code, 2, "a configuration error: {out}");
        assert!(out.contains(line.split(' ').next().unwrap()), "{out}");
        assert!(!out.contains(secret), "{out}");
    }
}
