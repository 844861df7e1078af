//! Logging: `tracing` output for people and for log collectors, and the
//! redaction helper for anything that might hold a secret.
//!
//! Logs go to stderr (stdout carries command output such as
//! `sluice status --json`). `human` is the compact format with colours on a
//! terminal; `json` writes one JSON object per line. The filter comes from
//! `SLUICE_LOG`, else `RUST_LOG`, else `sluice=info`.
//!
//! Keeps the rule that no password, API key or connection-string secret ever
//! reaches a log: configs log through their redacting `Display`/`Debug`, and
//! any URL or DSN string goes through [`redact_url`] first.

use std::io::IsTerminal;

use tracing::Dispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// How logs are written: `human` on a terminal, `json` for log collectors.
/// (The command line offers these values as `--log-format`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

use crate::model::secret::is_secret_key;

/// Filter used when neither `SLUICE_LOG` nor `RUST_LOG` is set.
pub const DEFAULT_FILTER: &str = "sluice=info,warn";

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log filter in {var}: {message}")]
    Filter { var: &'static str, message: String },
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

/// The filter from `SLUICE_LOG`, `RUST_LOG` or the default.
pub fn env_filter() -> Result<EnvFilter, LoggingError> {
    for var in ["SLUICE_LOG", "RUST_LOG"] {
        if let Ok(spec) = std::env::var(var)
            && !spec.trim().is_empty()
        {
            return EnvFilter::builder()
                .parse(&spec)
                .map_err(|e| LoggingError::Filter {
                    var,
                    message: e.to_string(),
                });
        }
    }
    Ok(EnvFilter::new(DEFAULT_FILTER))
}

/// A subscriber writing to `writer` in `format`, as a `Dispatch` (for tests,
/// `tracing::dispatcher::with_default`; for `main`, [`init`]).
pub fn dispatch<W>(format: LogFormat, filter: EnvFilter, writer: W, ansi: bool) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Human => Dispatch::new(builder.with_ansi(ansi).with_target(false).finish()),
        LogFormat::Json => Dispatch::new(
            builder
                .json()
                .with_current_span(true)
                .flatten_event(true)
                .finish(),
        ),
    }
}

/// Installs the global logger: call once, first thing in `main`. Records of
/// crates that use `log` rather than `tracing` (tokio-postgres) are bridged
/// into it.
pub fn init(format: LogFormat) -> Result<(), LoggingError> {
    let filter = env_filter()?;
    let ansi = std::io::stderr().is_terminal();
    let d = dispatch(format, filter, std::io::stderr, ansi);
    d.try_init().map_err(|_| LoggingError::AlreadyInstalled)
}

const MASK: &str = "<redacted>";

/// Hides secrets in a connection string before it is printed:
/// - the password of `scheme://user:password@host` URLs (postgres, http(s), ...),
/// - `password`, `apikey`/`api_key`, `token` and `secret` query parameters,
/// - `password=...` key/value pairs of libpq DSNs (`host=x password='a b'`).
///
/// The rest stays readable, so the message still says where it connected.
pub fn redact_url(s: &str) -> String {
    let s = redact_userinfo(s);
    redact_key_values(&s)
}

fn redact_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace; its
        // userinfo ends at the last '@' inside it (passwords may contain '@'
        // when badly escaped).
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `key=value` pairs, in DSNs (space separated, values maybe single-quoted)
/// and URL query strings (`&` separated).
fn redact_key_values(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let Some(eq_rel) = s[i..].find('=') else {
            out.push_str(&s[i..]);
            break;
        };
        let eq = i + eq_rel;
        // The key is the run of word characters just before '='.
        let key_start = s[..eq]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |p| p + 1);
        let key_start = key_start.max(i);
        let key = &s[key_start..eq];
        out.push_str(&s[i..=eq]);
        let mut j = eq + 1;
        if !key.is_empty() && is_secret_key(key) {
            if bytes.get(j) == Some(&b'\'') {
                // libpq quoting: backslash escapes, closing quote ends it.
                j += 1;
                while j < s.len() {
                    match bytes[j] {
                        b'\\' => j += 2,
                        b'\'' => {
                            j += 1;
                            break;
                        }
                        _ => j += 1,
                    }
                }
                j = j.min(s.len());
            } else {
                while j < s.len() && !matches!(bytes[j], b' ' | b'&' | b'\t' | b'\n' | b'#') {
                    j += 1;
                }
            }
            out.push_str(MASK);
        }
        i = j;
    }
    out
}

/// An in-memory log writer for tests that assert on what was logged.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl CapturedLog {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[cfg(test)]
impl std::io::Write for CapturedLog {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_keeps_user_and_host_but_not_the_password() {
        assert_eq!(
            redact_url("postgres://sluice:s3cret@db.example:5432/app?sslmode=verify-full"),
            "postgres://sluice:<redacted>@db.example:5432/app?sslmode=verify-full"
        );
    }

    #[test]
    fn an_http_url_with_credentials_is_redacted() {
        assert_eq!(
            redact_url("https://elastic:pa%40ss@es:9200"),
            "https://elastic:<redacted>@es:9200"
        );
        assert_eq!(
            redact_url("error sending to http://u:p@h/_bulk: timeout"),
            "error sending to http://u:<redacted>@h/_bulk: timeout"
        );
    }

    #[test]
    fn a_password_with_an_at_sign_is_hidden_whole() {
        assert_eq!(
            redact_url("postgresql://u:p@ss@host/db"),
            "postgresql://u:<redacted>@host/db"
        );
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for s in [
            "http://localhost:9200",
            "postgres://sluice@db/app",
            "postgres:///app?host=/run/postgresql",
            "no url here",
            "",
        ] {
            assert_eq!(redact_url(s), s);
        }
    }

    #[test]
    fn dsn_passwords_are_hidden_quoted_or_not() {
        assert_eq!(
            redact_url("host=db user=sluice password=s3cret dbname=app"),
            "host=db user=sluice password=<redacted> dbname=app"
        );
        assert_eq!(
            redact_url(r"host=db password='it\'s a secret' dbname=app"),
            "host=db password=<redacted> dbname=app"
        );
    }

    #[test]
    fn query_string_secrets_are_hidden() {
        assert_eq!(
            redact_url("postgres://h/db?user=a&password=s3cret&sslmode=require"),
            "postgres://h/db?user=a&password=<redacted>&sslmode=require"
        );
        assert_eq!(
            redact_url("https://es:9200/?api_key=abc123"),
            "https://es:9200/?api_key=<redacted>"
        );
    }

    #[test]
    fn keys_that_merely_contain_a_secret_word_elsewhere_are_kept() {
        assert_eq!(
            redact_url("password_file=/run/secrets/pg"),
            "password_file=/run/secrets/pg"
        );
    }

    #[test]
    fn json_logs_carry_fields_as_json() {
        let buf = CapturedLog::default();
        let w = buf.clone();
        let d = dispatch(
            LogFormat::Json,
            EnvFilter::new("info"),
            move || w.clone(),
            false,
        );
        tracing::dispatcher::with_default(&d, || tracing::info!(slot = "s1", "hello"));
        let text = buf.text();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["message"], "hello");
        assert_eq!(v["slot"], "s1");
        assert_eq!(v["level"], "INFO");
    }
}
