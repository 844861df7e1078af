//! `sluice.toml`: connections and tuning, parsed strictly (unknown keys are
//! errors) into the shared `PgConnectConfig` / `EsConfig` plus typed tuning.
//!
//! Secrets come from `${ENV}` interpolation or `password_file`, never need to
//! sit in the file, and never appear in errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::diag::{ConfigErrors, FileErrors, deserialize_all};
use crate::sink::{EsAuth, EsConfig};
use crate::source::{PgConnectConfig, SslMode};

/// `[pipeline]`: batching and back-pressure.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Flush a bulk request at this many documents.
    pub batch_max_docs: usize,
    /// Flush a bulk request at this many body bytes.
    pub batch_max_bytes: usize,
    /// Flush a partial batch after this long.
    pub linger: Duration,
    /// Concurrent bulk requests in flight.
    pub concurrency: usize,
    /// Upper bound for bytes of changes/ops held between stages.
    pub memory_bound_bytes: usize,
    /// Where rejected documents go (DESIGN invariant 5).
    pub dead_letter_index: String,
    /// `index.gc_deletes` for indices Sluice creates: must cover the longest
    /// replay window (DESIGN invariant 3).
    pub gc_deletes: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_max_docs: 5_000,
            batch_max_bytes: 10 * 1024 * 1024,
            linger: Duration::from_millis(25),
            concurrency: 4,
            memory_bound_bytes: 256 * 1024 * 1024,
            dead_letter_index: "sluice-dead-letters".into(),
            gc_deletes: Duration::from_secs(24 * 3600),
        }
    }
}

impl PipelineConfig {
    /// The value for the `index.gc_deletes` setting (`"86400s"`).
    pub fn gc_deletes_setting(&self) -> String {
        format!("{}s", self.gc_deletes.as_secs().max(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Snapshot every mapped table when the slot is first created, then stream.
    #[default]
    Initial,
    /// Never snapshot; stream only.
    Never,
    /// Snapshot, then exit without streaming.
    InitialOnly,
}

/// `[snapshot]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotConfig {
    pub mode: SnapshotMode,
    pub parallel_readers: usize,
    pub chunk_rows: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            mode: SnapshotMode::Initial,
            parallel_readers: 4,
            chunk_rows: 50_000,
        }
    }
}

/// `[http]`: metrics and health endpoints, and the status page.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// `ui_token` / `ui_token_file`: when set, `/ui` and `/status.json`
    /// need `Authorization: Bearer <token>` or basic auth with the token as
    /// password (any user name); `/metrics`, `/health` and `/ready` stay open.
    pub ui_token: Option<crate::model::secret::Secret>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:9187".parse().unwrap(),
            ui_token: None,
        }
    }
}

/// Everything in `sluice.toml` except the mappings themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub postgres: PgConnectConfig,
    /// Replication slot name (default `sluice`).
    pub slot: String,
    /// Publication name (default `sluice`).
    pub publication: String,
    /// `[postgres] heartbeat_interval_ms`: how often `sluice run` writes a
    /// heartbeat message into the WAL (`None`: never, the default).
    pub heartbeat_interval: Option<Duration>,
    pub elasticsearch: EsConfig,
    pub pipeline: PipelineConfig,
    pub snapshot: SnapshotConfig,
    pub http: HttpConfig,
    /// Absolute, or relative to the directory of `sluice.toml`, resolved.
    pub mappings_dir: PathBuf,
}

// ---- raw file shape -------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    mappings_dir: Option<String>,
    #[serde(default)]
    postgres: RawPostgres,
    #[serde(default)]
    elasticsearch: RawElasticsearch,
    #[serde(default)]
    pipeline: RawPipeline,
    #[serde(default)]
    snapshot: RawSnapshot,
    #[serde(default)]
    http: RawHttp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    port: Option<u16>,
    user: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    dbname: Option<Spanned<String>>,
    sslmode: Option<SslMode>,
    ssl_root_cert: Option<String>,
    application_name: Option<String>,
    connect_timeout_secs: Option<u64>,
    allow_cleartext_password: Option<bool>,
    slot: Option<Spanned<String>>,
    publication: Option<Spanned<String>>,
    heartbeat_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawElasticsearch {
    urls: Option<Spanned<Vec<String>>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    api_key: Option<Spanned<String>>,
    api_key_file: Option<Spanned<String>>,
    ca_file: Option<String>,
    insecure_skip_verify: Option<bool>,
    request_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    batch_max_docs: Option<Spanned<usize>>,
    batch_max_bytes: Option<Spanned<usize>>,
    linger_ms: Option<u64>,
    concurrency: Option<Spanned<usize>>,
    memory_bound_bytes: Option<Spanned<usize>>,
    dead_letter_index: Option<Spanned<String>>,
    gc_deletes_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshot {
    mode: Option<SnapshotMode>,
    parallel_readers: Option<Spanned<usize>>,
    chunk_rows: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
    ui_token: Option<Spanned<String>>,
    ui_token_file: Option<Spanned<String>>,
}

/// Reads environment variables; a seam so tests need not touch the process env.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Replace every `${NAME}` with the variable's value. `$${` stays a literal `${`.
pub fn interpolate(value: &str, env: &dyn Env) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| "`${` without a closing `}`".to_string())?;
            let name = &tail[..end];
            let v = env
                .var(name)
                .ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&v);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

struct Ctx<'a> {
    out: FileErrors<'a>,
    env: &'a dyn Env,
}

impl Ctx<'_> {
    fn err(&mut self, span: std::ops::Range<usize>, key: &str, msg: impl Into<String>) {
        self.out.push(span, key, msg, None);
    }

    fn interp(&mut self, v: &Spanned<String>, key: &str) -> String {
        match interpolate(v.get_ref(), self.env) {
            Ok(s) => s,
            Err(m) => {
                self.err(v.span(), key, m);
                String::new()
            }
        }
    }

    fn read_secret_file(&mut self, v: &Spanned<String>, key: &str) -> String {
        let p = resolve(self.out.file, v.get_ref());
        match std::fs::read_to_string(&p) {
            Ok(s) => s.trim_end_matches(['\n', '\r']).to_string(),
            Err(e) => {
                self.err(v.span(), key, format!("cannot read {}: {e}", p.display()));
                String::new()
            }
        }
    }

    /// A secret given inline (`key`, with `${ENV}` interpolation) or in a
    /// file (`key_file`, first line); both at once is an error.
    fn secret(
        &mut self,
        inline: &Option<Spanned<String>>,
        file: &Option<Spanned<String>>,
        key: &str,
    ) -> Option<String> {
        let name = key.rsplit('.').next().unwrap_or(key);
        match (inline, file) {
            (Some(v), Some(_)) => {
                self.err(
                    v.span(),
                    key,
                    format!("`{name}` and `{name}_file` are both set; keep one"),
                );
                None
            }
            (Some(v), None) => Some(self.interp(v, key)),
            (None, Some(f)) => Some(self.read_secret_file(f, &format!("{key}_file"))),
            (None, None) => None,
        }
    }

    fn positive<T: PartialOrd + Default + Copy>(
        &mut self,
        v: &Option<Spanned<T>>,
        key: &str,
        default: T,
    ) -> T {
        match v {
            Some(s) if *s.get_ref() <= T::default() => {
                self.err(s.span(), key, "must be greater than zero");
                default
            }
            Some(s) => *s.get_ref(),
            None => default,
        }
    }
}

/// A path from the config file, relative to the file's directory.
pub fn resolve(config_file: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        config_file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Parse `sluice.toml` text. `file` is used for messages and relative paths.
pub fn parse_settings(file: &Path, text: &str, env: &dyn Env) -> Result<Settings, ConfigErrors> {
    let (raw, errors) = deserialize_all::<RawSettings>(file, text);
    let Some(raw) = raw else { return Err(errors) };
    let mut cx = Ctx {
        out: FileErrors::new(file, text, errors),
        env,
    };
    let postgres = postgres(&mut cx, &raw.postgres);
    let slot = pg_name(&mut cx, &raw.postgres.slot, "postgres.slot");
    let publication = pg_name(&mut cx, &raw.postgres.publication, "postgres.publication");
    let heartbeat_interval = raw
        .postgres
        .heartbeat_interval_ms
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis);
    let elasticsearch = elasticsearch(&mut cx, &raw.elasticsearch);
    let pipeline = pipeline(&mut cx, &raw.pipeline);
    let snapshot = snapshot(&mut cx, &raw.snapshot);
    let http = http(&mut cx, &raw.http);
    let mappings_dir = resolve(file, raw.mappings_dir.as_deref().unwrap_or("mappings"));
    let settings = Settings {
        postgres,
        slot,
        publication,
        heartbeat_interval,
        elasticsearch,
        pipeline,
        snapshot,
        http,
        mappings_dir,
    };
    cx.out.errors.sort_by_place();
    cx.out.errors.into_result(settings)
}

/// A slot or publication name (default `sluice`).
fn pg_name(cx: &mut Ctx, v: &Option<Spanned<String>>, key: &str) -> String {
    match v {
        Some(s) if !valid_pg_name(s.get_ref()) => {
            cx.err(
                s.span(),
                key,
                "must be lower-case letters, digits and `_`, at most 63 characters",
            );
            String::new()
        }
        Some(s) => s.get_ref().clone(),
        None => "sluice".to_string(),
    }
}

/// `[pipeline]`, with the defaults for what it leaves out.
fn pipeline(cx: &mut Ctx, p: &RawPipeline) -> PipelineConfig {
    let d = PipelineConfig::default();
    PipelineConfig {
        batch_max_docs: cx.positive(
            &p.batch_max_docs,
            "pipeline.batch_max_docs",
            d.batch_max_docs,
        ),
        batch_max_bytes: cx.positive(
            &p.batch_max_bytes,
            "pipeline.batch_max_bytes",
            d.batch_max_bytes,
        ),
        linger: p.linger_ms.map(Duration::from_millis).unwrap_or(d.linger),
        concurrency: cx.positive(&p.concurrency, "pipeline.concurrency", d.concurrency),
        memory_bound_bytes: cx.positive(
            &p.memory_bound_bytes,
            "pipeline.memory_bound_bytes",
            d.memory_bound_bytes,
        ),
        dead_letter_index: match &p.dead_letter_index {
            None => d.dead_letter_index,
            Some(n) => {
                if let Some(m) = super::mapping_checks::index_name_problem(n.get_ref()) {
                    cx.err(n.span(), "pipeline.dead_letter_index", m);
                }
                n.get_ref().clone()
            }
        },
        gc_deletes: Duration::from_secs(cx.positive(
            &p.gc_deletes_secs,
            "pipeline.gc_deletes_secs",
            d.gc_deletes.as_secs(),
        )),
    }
}

/// `[snapshot]`, with the defaults for what it leaves out.
fn snapshot(cx: &mut Ctx, raw: &RawSnapshot) -> SnapshotConfig {
    let ds = SnapshotConfig::default();
    SnapshotConfig {
        mode: raw.mode.unwrap_or_default(),
        parallel_readers: cx.positive(
            &raw.parallel_readers,
            "snapshot.parallel_readers",
            ds.parallel_readers,
        ),
        chunk_rows: cx.positive(&raw.chunk_rows, "snapshot.chunk_rows", ds.chunk_rows),
    }
}

/// `[http]`: where the operator endpoints listen.
fn http(cx: &mut Ctx, raw: &RawHttp) -> HttpConfig {
    let ui_token = cx
        .secret(&raw.ui_token, &raw.ui_token_file, "http.ui_token")
        .map(crate::model::secret::Secret::new);
    if let (Some(t), Some(v)) = (
        &ui_token,
        raw.ui_token.as_ref().or(raw.ui_token_file.as_ref()),
    ) && t.expose().is_empty()
    {
        cx.err(
            v.span(),
            "http.ui_token",
            "is empty; remove it to leave the page open",
        );
    }
    let Some(l) = &raw.listen else {
        return HttpConfig {
            ui_token,
            ..HttpConfig::default()
        };
    };
    match l.get_ref().parse::<SocketAddr>() {
        Ok(listen) => HttpConfig { listen, ui_token },
        Err(_) => {
            cx.err(
                l.span(),
                "http.listen",
                format!(
                    "`{}` is not an address:port like `0.0.0.0:9187`",
                    l.get_ref()
                ),
            );
            HttpConfig::default()
        }
    }
}

/// Where the mappings are, read leniently from a `sluice.toml` that may
/// have other problems, so its mappings can be checked in the same run.
/// `None` when `mappings_dir` itself is unusable.
pub fn mappings_dir_of(file: &Path, text: &str) -> Option<PathBuf> {
    let (doc, _) = toml::de::DeTable::parse_recoverable(text);
    match doc.get_ref().get("mappings_dir").map(|v| v.get_ref()) {
        None => Some(resolve(file, "mappings")),
        Some(toml::de::DeValue::String(d)) => Some(resolve(file, d)),
        Some(_) => None,
    }
}

fn valid_pg_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn postgres(cx: &mut Ctx, raw: &RawPostgres) -> PgConnectConfig {
    let mut pg = PgConnectConfig::default();
    if let Some(u) = &raw.url {
        for (set, key) in [
            (raw.host.is_some(), "host"),
            (raw.port.is_some(), "port"),
            (raw.user.is_some(), "user"),
            (raw.dbname.is_some(), "dbname"),
        ] {
            if set {
                cx.err(
                    u.span(),
                    "postgres.url",
                    format!("`url` and `{key}` are both set"),
                );
                cx.out.errors.0.last_mut().unwrap().hint = Some(format!(
                    "put the {key} in the URL or drop `url` and use fields"
                ));
            }
        }
        let url = cx.interp(u, "postgres.url");
        // The source layer's parser, so the config and `sluice status`
        // read a URL alike (percent-decoding as libpq does, socket dirs).
        match PgConnectConfig::from_url(&url) {
            Ok(parsed) => pg = parsed,
            Err(e) => cx.err(u.span(), "postgres.url", e.to_string()),
        }
    }
    if let Some(v) = &raw.host {
        pg.host = cx.interp(v, "postgres.host");
    }
    if let Some(p) = raw.port {
        pg.port = p;
    }
    if let Some(v) = &raw.user {
        pg.user = cx.interp(v, "postgres.user");
    }
    if let Some(v) = &raw.dbname {
        pg.dbname = cx.interp(v, "postgres.dbname");
    }
    if let Some(p) = cx.secret(&raw.password, &raw.password_file, "postgres.password") {
        pg.password = Some(p);
    }
    if let Some(m) = raw.sslmode {
        pg.sslmode = m;
    }
    if let Some(ca) = &raw.ssl_root_cert {
        pg.ssl_root_cert = Some(resolve(cx.out.file, ca));
    }
    if let Some(a) = &raw.application_name {
        pg.application_name = a.clone();
    }
    if let Some(t) = raw.connect_timeout_secs {
        pg.connect_timeout_secs = t;
    }
    if let Some(a) = raw.allow_cleartext_password {
        pg.allow_cleartext_password = a;
    }
    pg
}

fn elasticsearch(cx: &mut Ctx, raw: &RawElasticsearch) -> EsConfig {
    let mut es = EsConfig::default();
    if let Some(urls) = &raw.urls {
        if urls.get_ref().is_empty() {
            cx.err(urls.span(), "elasticsearch.urls", "needs at least one URL");
        }
        let mut out = Vec::new();
        for u in urls.get_ref() {
            let s = Spanned::new(urls.span(), u.clone());
            let v = cx.interp(&s, "elasticsearch.urls");
            match url::Url::parse(&v) {
                Ok(p) if p.scheme() == "http" || p.scheme() == "https" => out.push(v),
                _ => cx.err(
                    urls.span(),
                    "elasticsearch.urls",
                    format!(
                        "`{}` is not an http:// or https:// URL",
                        // Whatever precedes an `@` may be a password.
                        u.rsplit_once('@')
                            .map_or(u.clone(), |(_, h)| format!("…@{h}"))
                    ),
                ),
            }
        }
        es.urls = out;
    }
    let password = cx.secret(&raw.password, &raw.password_file, "elasticsearch.password");
    let api_key = cx.secret(&raw.api_key, &raw.api_key_file, "elasticsearch.api_key");
    es.auth = match (&raw.username, password, api_key) {
        (Some(u), _, Some(_)) => {
            cx.err(
                u.span(),
                "elasticsearch.username",
                "basic auth and `api_key` are both set; keep one",
            );
            EsAuth::None
        }
        (Some(u), password, None) => EsAuth::Basic {
            username: cx.interp(u, "elasticsearch.username"),
            password: password.unwrap_or_default(),
        },
        (None, Some(_), _) => {
            let span = raw
                .password
                .as_ref()
                .map(|p| p.span())
                .or(raw.password_file.as_ref().map(|p| p.span()))
                .unwrap_or(0..0);
            cx.err(
                span,
                "elasticsearch.password",
                "a password without `username`; add `username`",
            );
            EsAuth::None
        }
        (None, None, Some(k)) => EsAuth::ApiKey(k),
        (None, None, None) => EsAuth::None,
    };
    if let Some(ca) = &raw.ca_file {
        es.ca_file = Some(resolve(cx.out.file, ca));
    }
    es.insecure_skip_verify = raw.insecure_skip_verify.unwrap_or(false);
    if let Some(t) = raw.request_timeout_ms {
        es.request_timeout = Duration::from_millis(t);
    }
    es
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
