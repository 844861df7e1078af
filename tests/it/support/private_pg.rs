//! A throwaway PostgreSQL cluster on a free port, for tests that must
//! restart, crash, stop or reconfigure the server (never the shared one):
//! trust auth, `wal_level = logical` unless the extra settings say
//! otherwise, stopped (immediately) on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use sluice::source::{PgConnectConfig, SslMode};

use super::{free_port, services};

pub struct PrivatePg {
    dir: tempfile::TempDir,
    pub port: u16,
}

fn pg_ctl(args: &[&str]) -> std::process::ExitStatus {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{}/pg_ctl", services().pg_bin))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("pg_ctl")
}

impl PrivatePg {
    pub fn start() -> PrivatePg {
        PrivatePg::start_with("")
    }

    /// Start with extra `postgresql.conf` lines (they win over the defaults
    /// above them).
    pub fn start_with(extra_conf: &str) -> PrivatePg {
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .unwrap();
        let st = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        let data = dir.path().join("data");
        let st = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{}/initdb", services().pg_bin))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "initdb");
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\nfsync = off\nshared_buffers = 64MB\n{extra_conf}\n",
            dir.path().display()
        );
        std::fs::write(data.join("postgresql.auto.conf"), conf).unwrap();
        let pg = PrivatePg { dir, port };
        pg.pg_ctl_start();
        pg
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `unix_socket_directories` of this cluster.
    pub fn socket_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn pg_ctl_start(&self) {
        let log = self.dir.path().join("log");
        let st = pg_ctl(&[
            "-D",
            self.data().to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ]);
        assert!(
            st.success(),
            "private PostgreSQL did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m <mode> -t <secs>`: whether it stopped in time.
    pub fn pg_ctl_stop(&self, mode: &str, secs: u32) -> bool {
        pg_ctl(&[
            "-D",
            self.data().to_str().unwrap(),
            "-m",
            mode,
            "-t",
            &secs.to_string(),
            "-w",
            "stop",
        ])
        .success()
    }

    /// `pg_ctl reload` (pg_hba.conf, reloadable settings).
    pub fn reload(&self) {
        assert!(pg_ctl(&["-D", self.data().to_str().unwrap(), "reload"]).success());
    }

    /// Stop (fast: active connections are cut) and start again.
    pub fn restart(&self) {
        self.restart_mode("fast");
    }

    /// Stop with `pg_ctl stop -m <mode>` (`fast`, or `immediate`: a crash,
    /// recovered from the WAL at the start) and start again.
    pub fn restart_mode(&self, mode: &str) {
        assert!(self.pg_ctl_stop(mode, 120), "pg_ctl stop -m {mode}");
        self.pg_ctl_start();
    }

    /// Superuser URL of the `postgres` database (trust auth, no TLS).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    pub fn config(&self) -> PgConnectConfig {
        PgConnectConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "postgres".into(),
            dbname: "postgres".into(),
            sslmode: SslMode::Disable,
            ..Default::default()
        }
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        pg_ctl(&[
            "-D",
            self.data().to_str().unwrap(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }
}
