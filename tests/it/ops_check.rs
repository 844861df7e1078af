//! `sluice check` against the real servers: a clean setup passes, and each
//! kind of problem is reported (all of them in one run).

use std::path::PathBuf;

use serde_json::json;
use sluice::app::check::{Report, check};
use sluice::config::Config;

use crate::support::private_pg::PrivatePg;
use crate::support::sluice::{shipped_mappings, sluice_command};
use crate::support::{DEMO_SCHEMA, Es, TestDb, services, unique_name, with_database};

/// A config directory for `sluice check`: `sluice.toml` (a slot of its
/// own) and the given mapping files, with index names given this test's
/// prefix.
struct CheckConfig {
    dir: tempfile::TempDir,
}

impl CheckConfig {
    /// This test's database as the replication role, the shared
    /// Elasticsearch, no TLS.
    fn for_db<N: AsRef<str>>(db: &TestDb, mappings: &[(N, String)]) -> CheckConfig {
        CheckConfig::new(db, &db.repl_url(), &services().es_url, mappings)
    }

    /// Another PostgreSQL URL or Elasticsearch, no TLS.
    fn new<N: AsRef<str>>(
        db: &TestDb,
        pg_url: &str,
        es_url: &str,
        mappings: &[(N, String)],
    ) -> CheckConfig {
        CheckConfig::with_tls(db, pg_url, es_url, mappings, "sslmode = \"disable\"")
    }

    /// Like `new`, with `tls` (sslmode, ssl_root_cert) in `[postgres]`.
    fn with_tls<N: AsRef<str>>(
        db: &TestDb,
        pg_url: &str,
        es_url: &str,
        mappings: &[(N, String)],
        tls: &str,
    ) -> CheckConfig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mappings")).unwrap();
        std::fs::write(
            dir.path().join("sluice.toml"),
            format!(
                "[postgres]\nurl = \"{pg_url}\"\n{tls}\nslot = \"{}\"\n[elasticsearch]\nurls = [\"{es_url}\"]\nrequest_timeout_ms = 5000\n",
                unique_name("slot")
            ),
        )
        .unwrap();
        for (name, text) in mappings {
            let text = text.replace("index = \"", &format!("index = \"{}", db.index_prefix));
            std::fs::write(dir.path().join("mappings").join(name.as_ref()), text).unwrap();
        }
        CheckConfig { dir }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluice.toml")
    }

    async fn check(&self) -> Report {
        let mut config = Config::load(&self.config_path()).unwrap_or_else(|e| panic!("{e}"));
        check(&mut config).await
    }
}

fn messages(r: &Report) -> String {
    r.problems
        .iter()
        .map(|p| p.message.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_reports(r: &Report, wants: &[&str]) {
    let all = messages(r);
    for w in wants {
        assert!(all.contains(w), "expected {w:?} among the problems:\n{all}");
    }
}

async fn orders_db() -> TestDb {
    let db = TestDb::new().await;
    db.sql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, total numeric(12,2), note text);",
    )
    .await;
    db
}

fn orders_mapping(extra: &str) -> Vec<(&'static str, String)> {
    vec![(
        "orders.toml",
        format!("table = \"public.orders\"\nindex = \"orders\"\n{extra}"),
    )]
}

#[tokio::test]
async fn the_demo_schema_and_shipped_mappings_pass_with_exit_code_zero() {
    let db = TestDb::new().await;
    db.sql(DEMO_SCHEMA).await;
    // The tables' owner publishes them (the replication role may not).
    db.sql("CREATE PUBLICATION sluice FOR ALL TABLES").await;
    let setup = CheckConfig::for_db(&db, &shipped_mappings(""));
    let config = setup.config_path();
    let out = sluice_command(&["check", "--config", config.to_str().unwrap()], &[]);
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert_eq!(out.code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("all good"), "{stdout}");
    assert!(stdout.contains("PostgreSQL 15"), "{stdout}");
    let server = Es::new().server_version().await;
    assert!(
        stdout.contains(&server),
        "expected `{server}` in:\n{stdout}"
    );
}

#[tokio::test]
async fn missing_tables_and_columns_are_named_with_a_suggestion() {
    let db = orders_db().await;
    let mut mappings = orders_mapping("\ninclude = [\"id\", \"totl\"]\n");
    mappings.push((
        "other.toml",
        "table = \"public.ordrs\"\nindex = \"x\"\n".into(),
    ));
    mappings.push((
        "schema.toml",
        "table = \"pubic.orders\"\nindex = \"y\"\n".into(),
    ));
    let setup = CheckConfig::for_db(&db, &mappings);
    let r = setup.check().await;
    assert_reports(
        &r,
        &[
            "orders.toml line 4: `include`: column `totl` does not exist in public.orders; did you mean `total`?",
            "other.toml line 1: `table`: table `public.ordrs` does not exist; did you mean `public.orders`?",
            "schema.toml line 1: `table`: table `pubic.orders` does not exist; did you mean `public.orders`?",
        ],
    );
    assert_eq!(r.exit_code(), 2);
}

#[tokio::test]
async fn a_table_without_primary_key_or_full_identity_is_reported() {
    let db = TestDb::new().await;
    db.sql("CREATE TABLE events (id bigint, body text);").await;
    let setup = CheckConfig::for_db(
        &db,
        &[(
            "events.toml",
            "table = \"public.events\"\nindex = \"events\"\n".into(),
        )],
    );
    assert_reports(
        &setup.check().await,
        &["public.events has no primary key", "REPLICA IDENTITY FULL"],
    );
    // With REPLICA IDENTITY FULL and chosen id columns it is fine.
    db.sql("ALTER TABLE events REPLICA IDENTITY FULL; CREATE PUBLICATION sluice FOR TABLE events")
        .await;
    let setup = CheckConfig::for_db(
        &db,
        &[(
            "events.toml",
            "table = \"public.events\"\nindex = \"events\"\nid = [\"id\"]\n".into(),
        )],
    );
    let r = setup.check().await;
    assert!(r.problems.is_empty(), "{}", messages(&r));
}

#[tokio::test]
async fn a_table_the_role_cannot_read_is_reported() {
    let db = orders_db().await;
    db.sql("REVOKE SELECT ON orders FROM sluice").await;
    let setup = CheckConfig::for_db(&db, &orders_mapping(""));
    assert_reports(
        &setup.check().await,
        &[
            "may not read public.orders",
            "GRANT SELECT ON \"public\".\"orders\" TO sluice",
        ],
    );
}

#[tokio::test]
async fn a_publication_the_role_cannot_create_is_reported_with_the_sql_to_run() {
    let db = orders_db().await;
    let setup = CheckConfig::for_db(
        &db,
        &orders_mapping("include = [\"id\", \"total\"]\nfilter = \"id > 0\"\n"),
    );
    let r = setup.check().await;
    assert_reports(
        &r,
        &[
            "publication `sluice` does not exist and role `sluice` cannot create it (it does not own public.orders); as the tables' owner run: CREATE PUBLICATION sluice FOR TABLE \"public\".\"orders\" (\"id\", \"total\") WHERE (id > 0) WITH (publish_via_partition_root = true);",
        ],
    );
    // The SQL it suggests works, and then the check passes.
    let sql = messages(&r);
    let sql = &sql[sql.find("CREATE PUBLICATION").unwrap()..];
    db.sql(sql).await;
    let r = setup.check().await;
    assert!(r.problems.is_empty(), "{}", messages(&r));
}

#[tokio::test]
async fn a_role_without_replication_is_reported() {
    let db = orders_db().await;
    let role = unique_name("norepl");
    db.sql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT SELECT ON orders TO {role};"
    ))
    .await;
    let mut url = url::Url::parse(&with_database(&services().pg_url, &db.name)).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("pw")).unwrap();
    let setup = CheckConfig::new(&db, url.as_str(), &services().es_url, &orders_mapping(""));
    let r = setup.check().await;
    db.sql(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await;
    assert_reports(
        &r,
        &[&format!("role `{role}` lacks the REPLICATION privilege")],
    );
}

#[tokio::test]
async fn row_filters_are_parsed_by_postgresql_and_must_read_key_columns_only() {
    let db = orders_db().await;
    let setup = CheckConfig::for_db(&db, &orders_mapping("filter = \"totl > 1\"\n"));
    assert_reports(
        &setup.check().await,
        &[
            "orders.toml line 3: `filter`: PostgreSQL rejects the row filter: column \"totl\" does not exist; did you mean `total`?",
        ],
    );
    let setup = CheckConfig::for_db(&db, &orders_mapping("filter = \"status <> 'draft'\"\n"));
    let r = setup.check().await;
    assert_reports(
        &r,
        &["reads `status` outside public.orders's replica identity"],
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("may not create publications")),
        "the role cannot try the filter in a publication: {:?}",
        r.warnings
    );

    // Valid in a WHERE clause, refused in a publication (a mutable
    // function): a role that may create publications finds out now.
    db.sql(&format!("GRANT CREATE ON DATABASE {} TO sluice", db.name))
        .await;
    let setup = CheckConfig::for_db(
        &db,
        &orders_mapping("filter = \"id > extract(epoch from now())\"\n"),
    );
    let r = setup.check().await;
    assert_reports(
        &r,
        &[
            "orders.toml line 3: `filter`: PostgreSQL refuses it as a publication row filter: invalid publication WHERE expression (User-defined or built-in mutable functions are not allowed.)",
        ],
    );
    db.sql(&format!(
        "REVOKE CREATE ON DATABASE {} FROM sluice",
        db.name
    ))
    .await;
    let published: i64 = db
        .admin
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 0, "the trial publication was rolled back");

    db.sql("CREATE PUBLICATION sluice FOR TABLE orders WHERE (id > 10)")
        .await;
    let setup = CheckConfig::for_db(&db, &orders_mapping("filter = \"id > 10\"\n"));
    let r = setup.check().await;
    assert!(r.problems.is_empty(), "{}", messages(&r));
    // Only the test server's unverified connection is warned about.
    assert!(
        r.warnings
            .iter()
            .all(|w| w.starts_with("[postgres] sslmode = ")),
        "{:?}",
        r.warnings
    );
}

#[tokio::test]
async fn an_existing_index_mapping_that_would_reject_our_documents_is_reported() {
    let db = orders_db().await;
    let es = Es::new();
    let index = db.index("orders");
    es.create_index(
        &index,
        json!({"mappings": {"properties": {
            "note": {"type": "long"},
            "total": {"type": "double"},
            "meta": {"type": "keyword"}
        }}}),
    )
    .await;
    db.sql("CREATE PUBLICATION sluice FOR TABLE orders").await;
    let setup = CheckConfig::for_db(&db, &orders_mapping("[rename]\nstatus = \"meta.status\"\n"));
    let r = setup.check().await;
    assert_reports(
        &r,
        &[
            &format!(
                "orders.toml: field `note` would receive text (from column `note`) but index `{index}` maps it as `long`"
            ),
            &format!(
                "field `meta` would receive a JSON object (it holds `meta.status`) but index `{index}` maps it as `keyword`"
            ),
        ],
    );
    assert_eq!(
        r.problems.len(),
        2,
        "total (numeric → double) is fine:\n{}",
        messages(&r)
    );
}

#[tokio::test]
async fn wrong_credentials_or_a_missing_database_are_configuration_problems() {
    let db = orders_db().await;
    let mut url = url::Url::parse(&db.repl_url()).unwrap();
    url.set_password(Some("wrong")).unwrap();
    let r = CheckConfig::new(&db, url.as_str(), &services().es_url, &orders_mapping(""))
        .check()
        .await;
    assert_reports(
        &r,
        &["password authentication failed for user \"sluice\" (SQLSTATE 28P01); check `password`"],
    );
    assert_eq!(r.exit_code(), 2, "fixed in the configuration");
    let missing = unique_name("nodb");
    let r = CheckConfig::new(
        &db,
        &with_database(&services().pg_repl_url, &missing),
        &services().es_url,
        &orders_mapping(""),
    )
    .check()
    .await;
    assert_reports(
        &r,
        &[&format!(
            "database \"{missing}\" does not exist (SQLSTATE 3D000); check `dbname`"
        )],
    );
    assert_eq!(r.exit_code(), 2);
}

#[tokio::test]
async fn postgres_tls_is_verified_against_the_configured_ca() {
    let db = orders_db().await;
    db.sql("CREATE PUBLICATION sluice FOR TABLE orders").await;
    let tls = |ca: &str| format!("sslmode = \"verify-full\"\nssl_root_cert = \"{ca}\"");
    let r = CheckConfig::with_tls(
        &db,
        &db.repl_url(),
        &services().es_url,
        &orders_mapping(""),
        &tls(&services().pg_ca),
    )
    .check()
    .await;
    assert!(r.problems.is_empty(), "{}", messages(&r));

    // A CA that did not sign the server's certificate.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.crt");
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=not the server's CA", "-keyout"])
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = CheckConfig::with_tls(
        &db,
        &db.repl_url(),
        &services().es_url,
        &orders_mapping(""),
        &tls(other.to_str().unwrap()),
    )
    .check()
    .await;
    assert_reports(&r, &["TLS to PostgreSQL", "invalid peer certificate"]);
    assert_eq!(r.exit_code(), 2, "{}", messages(&r));
}

#[tokio::test]
async fn an_index_mapping_sluice_would_create_must_take_the_documents_too() {
    let db = orders_db().await;
    db.sql("CREATE PUBLICATION sluice FOR TABLE orders").await;
    let setup = CheckConfig::for_db(
        &db,
        &orders_mapping(
            "[index_mappings.properties]\nstatus = { type = \"integer\" }\ntotal = { type = \"scaled_float\", scaling_factor = 100 }\n",
        ),
    );
    let r = setup.check().await;
    assert_reports(
        &r,
        &[&format!(
            "orders.toml: field `status` would receive text (from column `status`) but the index mapping configured for `{}` maps it as `integer`",
            db.index("orders")
        )],
    );
    assert_eq!(r.problems.len(), 1, "{}", messages(&r));
}

#[tokio::test]
async fn a_missing_ingest_pipeline_is_reported_with_its_line() {
    let db = orders_db().await;
    db.sql("CREATE PUBLICATION sluice FOR TABLE orders").await;
    let es = Es::new();
    let pipeline = db.index("enrich");
    let setup = CheckConfig::for_db(
        &db,
        &orders_mapping(&format!("pipeline = \"{pipeline}\"\n")),
    );
    let r = setup.check().await;
    assert_reports(
        &r,
        &[&format!(
            "orders.toml line 3: `pipeline`: ingest pipeline `{pipeline}` does not exist in Elasticsearch"
        )],
    );
    es.client
        .ingest()
        .put_pipeline(elasticsearch::ingest::IngestPutPipelineParts::Id(&pipeline))
        .body(json!({"processors": []}))
        .send()
        .await
        .unwrap()
        .error_for_status_code()
        .unwrap();
    let r = setup.check().await;
    let _ = es
        .client
        .ingest()
        .delete_pipeline(elasticsearch::ingest::IngestDeletePipelineParts::Id(
            &pipeline,
        ))
        .send()
        .await;
    assert!(r.problems.is_empty(), "{}", messages(&r));
}

#[tokio::test]
async fn an_unreachable_elasticsearch_exits_with_the_runtime_code() {
    let db = orders_db().await;
    db.sql("CREATE PUBLICATION sluice FOR TABLE orders").await;
    let setup = CheckConfig::new(
        &db,
        &db.repl_url(),
        "http://127.0.0.1:9",
        &orders_mapping(""),
    );
    let r = setup.check().await;
    assert_reports(
        &r,
        &["Elasticsearch at http://127.0.0.1:9 is not reachable"],
    );
    assert_eq!(r.exit_code(), 1);
}

#[tokio::test]
async fn every_problem_is_reported_in_one_run() {
    let db = orders_db().await;
    db.sql("REVOKE SELECT ON orders FROM sluice").await;
    let setup = CheckConfig::new(
        &db,
        &db.repl_url(),
        "http://127.0.0.1:9",
        &orders_mapping("include = [\"id\", \"totl\"]\nfilter = \"nope(\"\n"),
    );
    let r = setup.check().await;
    assert_reports(
        &r,
        &[
            "`totl` does not exist",
            "may not read public.orders",
            "rejects the row filter",
            "not reachable",
        ],
    );
    assert_eq!(r.exit_code(), 2);
}

#[tokio::test]
async fn bad_configuration_exits_with_code_two_and_names_every_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        "[postgres]\nhost = \"x\"\n\n[pipeline]\nlinger = 5\nconcurrency = \"4\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("mappings/orders.toml"),
        "table = \"public.orders\"\nindex = \"orders\"\nrouteing = \"region\"\n",
    )
    .unwrap();
    let config = dir.path().join("sluice.toml");
    let out = sluice_command(&["check", "--config", config.to_str().unwrap()], &[]);
    let stderr = &out.stderr;
    assert_eq!(out.code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "sluice.toml line 5: `pipeline.linger`: unknown key; did you mean `linger_ms`?"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "sluice.toml line 6: `pipeline.concurrency`: invalid type: text \"4\", expected a whole number"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("orders.toml line 3: `routeing`: unknown key; did you mean `routing`?"),
        "{stderr}"
    );
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}

#[tokio::test]
async fn a_server_without_logical_wal_free_slots_or_wal_senders_is_reported() {
    // A private cluster: the shared one must not be reconfigured.
    let pg = PrivatePg::start_with(
        "wal_level = replica\nmax_replication_slots = 0\nmax_wal_senders = 0",
    );
    let client = crate::support::connect(&pg.url()).await;
    client
        .batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, total numeric)")
        .await
        .unwrap();
    let db = TestDb::new().await; // only for the index prefix and cleanup
    let setup = CheckConfig::new(&db, &pg.url(), &services().es_url, &orders_mapping(""));
    let r = setup.check().await;
    assert_reports(
        &r,
        &[
            "wal_level is `replica`: set `wal_level = logical`",
            "no free replication slot",
            "no free WAL sender",
        ],
    );
    assert_eq!(r.problems.len(), 3, "{}", messages(&r));
    assert_eq!(r.exit_code(), 2);
}
