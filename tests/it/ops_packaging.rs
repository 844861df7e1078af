//! The packaging files (Dockerfile, compose, Kubernetes, Grafana) cannot run
//! here; `scripts/check-packaging.sh` checks what can be checked, and these
//! tests run it, on the real tree and on a broken copy (so the checks are
//! known to fail when they should).

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn check(root: &Path) -> (bool, String) {
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join("scripts/check-packaging.sh"))
        .env("SLUICE_BIN", env!("CARGO_BIN_EXE_sluice"))
        .env("SLUICE_PACKAGING_ROOT", root)
        .output()
        .expect("run scripts/check-packaging.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_packaging_files_parse_and_match_the_binary_and_the_metrics() {
    let (ok, text) = check(Path::new(ROOT));
    assert!(ok, "scripts/check-packaging.sh failed:\n{text}");
    assert!(!text.contains("SKIPPED"), "checks were skipped:\n{text}");
    assert!(text.contains("readinessProbe -> /ready"), "{text}");
    assert!(
        text.contains("metric recordings, all by names:: constants the catalogue describes"),
        "{text}"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn the_packaging_check_fails_on_unknown_metrics_flags_env_and_probes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for dir in ["docker", "deploy", "dashboards", "docs", "src"] {
        copy_tree(&Path::new(ROOT).join(dir), &root.join(dir));
    }
    edit(
        &root.join("dashboards/grafana-sluice.json"),
        "sum(rate(sluice_retries_total",
        "sum(rate(sluice_made_up_total",
    );
    edit(
        &root.join("dashboards/grafana-sluice.json"),
        "sum by (outcome) (rate(sluice_bulk_items_total",
        "sum by (result) (rate(sluice_bulk_items_total",
    );
    edit(
        &root.join("src/sink/indexer/worker.rs"),
        "counter!(names::RETRIES_TOTAL)",
        "counter!(names::RETRY_TOTAL)",
    );
    edit(
        &root.join("src/stream/pipeline/coordinator.rs"),
        "gauge!(names::CONFIRMED_FLUSH_LSN)",
        r#"gauge!("sluice_confirmed_flush_lsn")"#,
    );
    let deployment = root.join("deploy/k8s/deployment.yaml");
    edit(
        &deployment,
        r#""--log-format", "json""#,
        r#""--no-such-flag""#,
    );
    edit(
        &deployment,
        "- name: SLUICE_LOG\n",
        "- name: SLUICE_UNREAD\n",
    );
    edit(&deployment, "path: \"/ready?", "path: \"/health?");
    edit(
        &root.join("docker/Dockerfile"),
        "USER 65532:65532",
        "USER root",
    );
    edit(
        &root.join("docker/compose.yml"),
        "command: [\"run\"",
        "command: [\"runn\"",
    );

    let (ok, text) = check(root);
    assert!(!ok, "the broken copy passed:\n{text}");
    for expected in [
        "metric sluice_made_up_total is not described",
        "metric sluice_retries_total is described but no dashboard panel shows it",
        "uses label result, which none of its metrics has",
        "src/sink/indexer/worker.rs: records metric names::RETRY_TOTAL, which src/ops/metrics.rs does not name",
        "src/stream/pipeline/coordinator.rs: records a metric named by `\"sluice_confirmed_flush_lsn\"`, not by a names:: constant",
        "has no flag --no-such-flag",
        "env SLUICE_UNREAD is given to sluice but nothing reads it",
        "readinessProbe must GET /ready",
        "must end with a non-root USER",
        "`sluice runn` is not a subcommand",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
}

/// The compose demo as far as it runs here: the demo schema, then
/// `docker/initdb/10-sluice.sql` (its least-privilege grants and the
/// publication the table owner creates; the role itself exists already),
/// then `sluice check` with `docker/sluice.toml` and the shipped mappings,
/// pointed at the test servers: the grants suffice and the publication is
/// what the mappings need.
#[tokio::test]
async fn the_compose_grants_publication_and_config_pass_sluice_check() {
    use crate::support::sluice::{shipped_mappings, sluice_command};
    use crate::support::{DEMO_SCHEMA, TestDb, services};
    let db = TestDb::new().await;
    db.sql(DEMO_SCHEMA).await;
    let initdb =
        std::fs::read_to_string(Path::new(ROOT).join("docker/initdb/10-sluice.sql")).unwrap();
    let create_role = initdb
        .lines()
        .find(|l| l.starts_with("CREATE ROLE sluice "))
        .expect("10-sluice.sql creates the role");
    db.sql(&initdb.replace(create_role, "")).await;

    let dir = tempfile::tempdir().unwrap();
    let mappings = dir.path().join("mappings");
    std::fs::create_dir(&mappings).unwrap();
    // Index names of this test only (the shared Elasticsearch).
    for (name, text) in shipped_mappings(&db.index_prefix) {
        std::fs::write(mappings.join(name), text).unwrap();
    }
    let repl = url::Url::parse(&db.repl_url()).unwrap();
    let toml = std::fs::read_to_string(Path::new(ROOT).join("docker/sluice.toml")).unwrap();
    let mut edited = toml.clone();
    for (from, to) in [
        (
            "mappings_dir = \"/etc/sluice/mappings\"".to_string(),
            format!("mappings_dir = \"{}\"", mappings.display()),
        ),
        (
            "host = \"postgres\"".into(),
            format!("host = \"{}\"", repl.host_str().unwrap()),
        ),
        (
            "port = 5432".into(),
            format!("port = {}", repl.port().unwrap()),
        ),
        (
            "dbname = \"app\"".into(),
            format!("dbname = \"{}\"", db.name),
        ),
        (
            "urls = [\"http://elasticsearch:9200\"]".into(),
            format!("urls = [\"{}\"]", services().es_url),
        ),
    ] {
        assert!(edited.contains(&from), "{from:?} not in docker/sluice.toml");
        edited = edited.replace(&from, &to);
    }
    assert!(edited.contains("user = \"sluice\""));
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, edited).unwrap();
    let out = sluice_command(
        &["check", "--config", config.to_str().unwrap()],
        &[("SLUICE_PG_PASSWORD", repl.password().unwrap())],
    );
    let text = out.text();
    assert_eq!(out.code, Some(0), "{text}");
    assert!(text.contains("all good"), "{text}");
}
