//! `sluice.toml` parsing: defaults, URL and fields, secrets, located errors.

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "PGPASSWORD" => Some("s3cret".into()),
        "ES_KEY" => Some("a2V5".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Settings, ConfigErrors> {
    parse_settings(Path::new("/etc/sluice/sluice.toml"), text, &env)
}

#[test]
fn an_empty_file_means_every_default() {
    let s = parse("").unwrap();
    assert_eq!(s.slot, "sluice");
    assert_eq!(s.publication, "sluice");
    assert_eq!(s.postgres, PgConnectConfig::default());
    assert_eq!(s.elasticsearch, EsConfig::default());
    assert_eq!(s.pipeline, PipelineConfig::default());
    assert_eq!(s.snapshot.mode, SnapshotMode::Initial);
    assert_eq!(s.mappings_dir, PathBuf::from("/etc/sluice/mappings"));
    assert_eq!(s.heartbeat_interval, None);
}

#[test]
fn the_heartbeat_is_off_unless_an_interval_above_zero_is_set() {
    let on = parse("[postgres]\nheartbeat_interval_ms = 10000\n").unwrap();
    assert_eq!(on.heartbeat_interval, Some(Duration::from_secs(10)));
    let off = parse("[postgres]\nheartbeat_interval_ms = 0\n").unwrap();
    assert_eq!(off.heartbeat_interval, None);
}

#[test]
fn a_url_fills_every_connection_field_and_env_fills_the_password() {
    let s = parse(
        r#"
        [postgres]
        url = "postgres://app:${PGPASSWORD}@db.internal:5433/shop?sslmode=verify-full&sslrootcert=/ca.pem"
        slot = "shop_slot"
        "#,
    )
    .unwrap();
    let pg = &s.postgres;
    assert_eq!(
        (
            pg.host.as_str(),
            pg.port,
            pg.user.as_str(),
            pg.dbname.as_str()
        ),
        ("db.internal", 5433, "app", "shop")
    );
    assert_eq!(pg.password.as_deref(), Some("s3cret"));
    assert_eq!(pg.sslmode, SslMode::VerifyFull);
    assert_eq!(pg.ssl_root_cert, Some(PathBuf::from("/ca.pem")));
    assert_eq!(s.slot, "shop_slot");
}

#[test]
fn fields_work_without_a_url_and_relative_files_resolve_next_to_the_config() {
    let s = parse(
        r#"
        [postgres]
        host = "db"
        user = "sluice"
        dbname = "app"
        sslmode = "verify-ca"
        ssl_root_cert = "certs/ca.pem"
        [elasticsearch]
        urls = ["https://es1:9200", "https://es2:9200"]
        api_key = "${ES_KEY}"
        ca_file = "certs/es.pem"
        request_timeout_ms = 5000
        [pipeline]
        batch_max_docs = 100
        linger_ms = 50
        gc_deletes_secs = 3600
        [snapshot]
        mode = "initial_only"
        parallel_readers = 2
        [http]
        listen = "127.0.0.1:9999"
        "#,
    )
    .unwrap();
    assert_eq!(
        s.postgres.ssl_root_cert,
        Some(PathBuf::from("/etc/sluice/certs/ca.pem"))
    );
    assert_eq!(s.elasticsearch.urls.len(), 2);
    assert!(s.elasticsearch.auth == EsAuth::ApiKey("a2V5".into()));
    assert_eq!(s.elasticsearch.request_timeout, Duration::from_secs(5));
    assert_eq!(s.pipeline.batch_max_docs, 100);
    assert_eq!(s.pipeline.gc_deletes_setting(), "3600s");
    assert_eq!(s.snapshot.mode, SnapshotMode::InitialOnly);
    assert_eq!(s.snapshot.parallel_readers, 2);
    assert_eq!(s.http.listen.port(), 9999);
}

#[test]
fn an_unknown_key_names_the_line_and_suggests_the_right_one() {
    let e = parse("[pipeline]\nbatch_max_doc = 10\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("line 2"), "{msg}");
    assert!(msg.contains("batch_max_doc"), "{msg}");
    assert!(msg.contains("did you mean `batch_max_docs`?"), "{msg}");
}

#[test]
fn an_unset_variable_is_an_error_that_never_shows_a_secret() {
    let e = parse("[postgres]\nhost = \"h\"\npassword = \"${NOPE}\"\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("`NOPE` is not set"), "{msg}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = parse(
        "[pipeline]\nconcurrency = 0\n[snapshot]\nchunk_rows = 0\n[http]\nlisten = \"nope\"\n",
    )
    .unwrap_err();
    assert_eq!(e.0.len(), 3, "{e}");
}

#[test]
fn conflicting_credentials_are_rejected() {
    assert!(parse("[elasticsearch]\nusername = \"u\"\napi_key = \"k\"\n").is_err());
    assert!(parse("[postgres]\nurl = \"postgres://a@b/c\"\nhost = \"x\"\n").is_err());
    assert!(parse("[postgres]\nslot = \"Bad-Name\"\n").is_err());
    assert!(parse("[pipeline]\ndead_letter_index = \"Dead\"\n").is_err());
}

#[test]
fn password_files_are_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "hunter2\n").unwrap();
    let cfg = dir.path().join("sluice.toml");
    let s = parse_settings(
        &cfg,
        "[elasticsearch]\nusername = \"elastic\"\npassword_file = \"pw\"\n",
        &env,
    )
    .unwrap();
    assert!(
        s.elasticsearch.auth
            == EsAuth::Basic {
                username: "elastic".into(),
                password: "hunter2".into()
            }
    );
}

#[test]
fn interpolation_handles_escapes_and_missing_braces() {
    assert_eq!(interpolate("a$b", &env).unwrap(), "a$b");
    assert_eq!(interpolate("$${X}", &env).unwrap(), "${X}");
    assert!(interpolate("${X", &env).is_err());
}

#[test]
fn postgres_fields_take_env_values_and_a_password_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pg.pw"), "s3cret\n").unwrap();
    let cfg = dir.path().join("sluice.toml");
    let s = parse_settings(
        &cfg,
        "[postgres]\nhost = \"db-${PGPASSWORD}\"\nuser = \"app\"\npassword_file = \"pg.pw\"\n",
        &env,
    )
    .unwrap();
    assert_eq!(s.postgres.host, "db-s3cret");
    assert_eq!(s.postgres.password.as_deref(), Some("s3cret"));
    let e = parse_settings(
        &cfg,
        "[postgres]\npassword = \"x\"\npassword_file = \"pg.pw\"\n",
        &env,
    )
    .unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");
    assert!(
        !e.to_string().contains("s3cret"),
        "never echo a secret: {e}"
    );
    let e = parse_settings(
        &cfg,
        "[elasticsearch]\nurls = [\"elastic:s3cret@es:9200\"]\n",
        &env,
    )
    .unwrap_err();
    assert!(e.to_string().contains("`…@es:9200` is not an http"), "{e}");
}

#[test]
fn an_api_key_comes_from_a_file_too_but_not_from_both() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "a2V5OnNlY3JldA==\n").unwrap();
    let cfg = dir.path().join("sluice.toml");
    let s = parse_settings(&cfg, "[elasticsearch]\napi_key_file = \"key\"\n", &env).unwrap();
    assert!(s.elasticsearch.auth == EsAuth::ApiKey("a2V5OnNlY3JldA==".into()));
    let both = "[elasticsearch]\napi_key = \"k\"\napi_key_file = \"key\"\n";
    assert!(parse_settings(&cfg, both, &env).is_err());
    let with_user = "[elasticsearch]\nusername = \"u\"\napi_key_file = \"key\"\n";
    assert!(parse_settings(&cfg, with_user, &env).is_err());
}

#[test]
fn the_url_is_read_like_libpq_reads_it() {
    let cfg = std::path::Path::new("sluice.toml");
    let s = parse_settings(
        cfg,
        "[postgres]\nurl = \"postgres://u:a+b%40c@%2Fvar%2Frun%2Fpostgresql/shop?sslmode=disable\"\n",
        &env,
    )
    .unwrap();
    let pg = &s.postgres;
    assert_eq!(
        pg.host, "/var/run/postgresql",
        "a percent-encoded socket directory"
    );
    assert_eq!(
        pg.password.as_deref(),
        Some("a+b@c"),
        "`+` stays a plus sign"
    );
    assert_eq!((pg.user.as_str(), pg.dbname.as_str()), ("u", "shop"));
}

#[test]
fn the_status_page_token_is_a_secret_and_unknown_http_keys_still_fail() {
    let s = parse("[http]\nui_token = \"tok-123\"\n").unwrap();
    let token = s.http.ui_token.expect("set");
    assert!(token.matches("tok-123"));
    assert_eq!(format!("{token:?}"), "<redacted>");
    assert_eq!(parse("").unwrap().http.ui_token, None);
    let e = parse("[http]\nui_token = \"\"\n").unwrap_err().to_string();
    assert!(e.contains("http.ui_token") && e.contains("empty"), "{e}");
    let e = parse("[http]\nui_tokn = \"tok-123\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("ui_tokn") && !e.contains("tok-123"), "{e}");
}
