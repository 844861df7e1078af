//! `PgConnectConfig`: how to reach PostgreSQL, for both the replication
//! connection and ordinary SQL connections.
//!
//! Plain data filled by the config layer (from a URL or key/value fields).
//! Its `Debug` never prints the password.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Clone, PartialEq)]
pub struct PgConnectConfig {
    /// Host name, IP address, or a Unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// CA certificate (PEM) for `verify-ca` / `verify-full`.
    pub ssl_root_cert: Option<PathBuf>,
    /// `application_name` reported to the server.
    pub application_name: String,
    pub connect_timeout_secs: u64,
    /// Send the password when the server asks for it in clear text even
    /// though TLS is not verified (`[postgres] allow_cleartext_password`);
    /// see `auth_guard`.
    pub allow_cleartext_password: bool,
}

impl Default for PgConnectConfig {
    fn default() -> Self {
        PgConnectConfig {
            host: "localhost".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            dbname: "postgres".into(),
            sslmode: SslMode::Prefer,
            ssl_root_cert: None,
            application_name: "sluice".into(),
            connect_timeout_secs: 10,
            allow_cleartext_password: false,
        }
    }
}

impl fmt::Debug for PgConnectConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnectConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .finish()
    }
}

impl fmt::Display for PgConnectConfig {
    /// `user@host:port/dbname`: safe for logs and errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgConfigError {
    #[error("PostgreSQL connection string is not valid: {0}")]
    Invalid(String),
    #[error("unknown sslmode `{0}` (use disable, prefer, require, verify-ca or verify-full)")]
    SslMode(String),
    #[error("cannot read the PostgreSQL password from {source_name}: {reason}")]
    Password { source_name: String, reason: String },
}

impl std::str::FromStr for SslMode {
    type Err = PgConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(PgConfigError::SslMode(other.into())),
        })
    }
}

/// One value of the key/value form and the text after it; `None` if a
/// quote is never closed. Never echoes the value (it may be a password).
fn key_value(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    let quoted = s.starts_with('\'');
    if quoted {
        chars.next();
    }
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?.1),
            '\'' if quoted => return Some((out, &s[i + 1..])),
            c if !quoted && c.is_whitespace() => return Some((out, &s[i..])),
            c => out.push(c),
        }
    }
    (!quoted).then_some((out, ""))
}

impl PgConnectConfig {
    /// Parse a `postgres://user:pass@host:port/db?sslmode=...` URL or a
    /// libpq key/value string (`host=... port=... dbname=...`). Parameters:
    /// host, port, user, password, dbname, sslmode, sslrootcert,
    /// application_name, connect_timeout. A `host` query parameter starting
    /// with `/` selects a Unix socket directory.
    pub fn parse(s: &str) -> Result<PgConnectConfig, PgConfigError> {
        let s = s.trim();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Self::from_url(s)
        } else {
            Self::from_key_values(s)
        }
    }

    pub fn from_url(s: &str) -> Result<PgConnectConfig, PgConfigError> {
        // Never echo the URL back: it may hold the password.
        let u = url::Url::parse(s).map_err(|e| PgConfigError::Invalid(e.to_string()))?;
        if !matches!(u.scheme(), "postgres" | "postgresql") {
            return Err(PgConfigError::Invalid(format!(
                "unsupported scheme `{}`",
                u.scheme()
            )));
        }
        let mut cfg = PgConnectConfig::default();
        // Percent-decoding only: in a URL's user info and path `+` is a plus
        // sign, not the space form encoding makes of it.
        let dec = |s: &str| {
            url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        if let Some(h) = u.host_str() {
            // `postgresql://%2Fvar%2Frun%2Fpostgresql/db` names a socket directory.
            cfg.host = dec(h.trim_start_matches('[').trim_end_matches(']'));
        }
        if let Some(p) = u.port() {
            cfg.port = p;
        }
        if !u.username().is_empty() {
            cfg.user = dec(u.username());
        }
        cfg.password = u.password().map(dec);
        let db = u.path().trim_start_matches('/');
        if !db.is_empty() {
            cfg.dbname = dec(db);
        }
        // As libpq does: percent-decoding, `+` stays a plus sign.
        for pair in u.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            cfg.set(&dec(k), &dec(v))?;
        }
        Ok(cfg)
    }

    /// libpq's key/value form: `key = value` pairs separated by spaces; a
    /// value may be single-quoted (to hold spaces) and a backslash escapes
    /// the next character, as in `password='it\'s secret'`.
    pub fn from_key_values(s: &str) -> Result<PgConnectConfig, PgConfigError> {
        let mut cfg = PgConnectConfig::default();
        let mut rest = s.trim_start();
        while !rest.is_empty() {
            let key_end = rest
                .find(|c: char| c == '=' || c.is_whitespace())
                .unwrap_or(rest.len());
            let key = &rest[..key_end];
            rest = rest[key_end..].trim_start();
            let Some(after_eq) = rest.strip_prefix('=') else {
                return Err(PgConfigError::Invalid(format!("`{key}` is not key=value")));
            };
            let (value, after) = key_value(after_eq.trim_start()).ok_or_else(|| {
                PgConfigError::Invalid(format!("unterminated quoted value of `{key}`"))
            })?;
            cfg.set(key, &value)?;
            rest = after.trim_start();
        }
        Ok(cfg)
    }

    fn set(&mut self, key: &str, v: &str) -> Result<(), PgConfigError> {
        match key {
            "host" => self.host = v.into(),
            "port" => {
                self.port = v
                    .parse()
                    .map_err(|_| PgConfigError::Invalid(format!("port `{v}` is not a number")))?
            }
            "user" => self.user = v.into(),
            "password" => self.password = Some(v.into()),
            "dbname" => self.dbname = v.into(),
            "sslmode" => self.sslmode = v.parse()?,
            "sslrootcert" => self.ssl_root_cert = Some(v.into()),
            "application_name" => self.application_name = v.into(),
            "connect_timeout" => {
                self.connect_timeout_secs = v.parse().map_err(|_| {
                    PgConfigError::Invalid(format!("connect_timeout `{v}` is not a number"))
                })?
            }
            other => {
                return Err(PgConfigError::Invalid(format!(
                    "unknown parameter `{other}`"
                )));
            }
        }
        Ok(())
    }

    /// Take the password from an environment variable (if set) or a file
    /// (first line), overriding any password in the URL.
    pub fn with_password_from(
        mut self,
        env_var: Option<&str>,
        file: Option<&std::path::Path>,
    ) -> Result<PgConnectConfig, PgConfigError> {
        if let Some(var) = env_var {
            match std::env::var(var) {
                Ok(p) => {
                    self.password = Some(p);
                    return Ok(self);
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(PgConfigError::Password {
                        source_name: format!("${var}"),
                        reason: "not valid UTF-8".into(),
                    });
                }
                Err(std::env::VarError::NotPresent) => {}
            }
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| PgConfigError::Password {
                source_name: path.display().to_string(),
                reason: e.to_string(),
            })?;
            self.password = Some(text.lines().next().unwrap_or("").to_string());
        }
        Ok(self)
    }

    /// True when `host` names a Unix socket directory.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_url_with_tls_parameters_and_encoded_password() {
        let c = PgConnectConfig::parse(
            "postgres://sluice:p%40ss@db.example:6543/app?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str()),
            ("db.example", 6543, "sluice")
        );
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.dbname, "app");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.ssl_root_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.application_name, "x");
    }

    #[test]
    fn parses_key_values_and_unix_socket_hosts() {
        let c = PgConnectConfig::parse(
            "host=/var/run/postgresql port=5433 user=u dbname=d sslmode=disable",
        )
        .unwrap();
        assert!(c.is_unix_socket());
        assert_eq!((c.port, c.sslmode), (5433, SslMode::Disable));
        let u = PgConnectConfig::parse("postgresql:///d?host=/tmp&user=u").unwrap();
        assert_eq!(u.host, "/tmp");
    }

    #[test]
    fn rejects_bad_sslmode_and_unknown_keys_without_echoing_secrets() {
        let e = PgConnectConfig::parse("postgres://u:secret@h/d?sslmode=maybe").unwrap_err();
        assert!(e.to_string().contains("maybe") && !e.to_string().contains("secret"));
        assert!(PgConnectConfig::parse("host=h bogus=1").is_err());
        assert!(PgConnectConfig::parse("mysql://h").is_err());
    }

    #[test]
    fn debug_and_display_never_print_the_password() {
        let c = PgConnectConfig::parse("postgres://u:hunter2@h/d").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.to_string().contains("hunter2"));
    }

    #[test]
    fn key_values_allow_spaces_around_equals_quoted_values_and_escapes() {
        let c = PgConnectConfig::parse(
            r"host = db.example  port=6543 user='app user' password='it\'s a \\ secret' dbname=a\ b",
        )
        .unwrap();
        assert_eq!((c.host.as_str(), c.port), ("db.example", 6543));
        assert_eq!(c.user, "app user");
        assert_eq!(c.password.as_deref(), Some(r"it's a \ secret"));
        assert_eq!(c.dbname, "a b");
        assert_eq!(
            PgConnectConfig::parse("password=''")
                .unwrap()
                .password
                .as_deref(),
            Some("")
        );
        let e = PgConnectConfig::parse("user=u password='never closed").unwrap_err();
        assert!(e.to_string().contains("password") && !e.to_string().contains("never"));
        assert!(PgConnectConfig::parse("host").is_err());
    }

    #[test]
    fn a_plus_sign_in_a_url_password_stays_a_plus_sign() {
        let c = PgConnectConfig::parse(
            "postgres://u:p+ss%2Bw%20d@h/d?sslrootcert=/certs/a+b%20c.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(c.password.as_deref(), Some("p+ss+w d"));
        assert_eq!(c.ssl_root_cert, Some(PathBuf::from("/certs/a+b c.pem")));
    }

    #[test]
    fn a_url_may_name_a_unix_socket_directory_percent_encoded() {
        let c = PgConnectConfig::parse("postgresql://u@%2Fvar%2Frun%2Fpostgresql:5433/d").unwrap();
        assert_eq!(c.host, "/var/run/postgresql");
        assert!(c.is_unix_socket());
        assert_eq!(c.port, 5433);
    }

    #[test]
    fn password_comes_from_an_environment_variable_before_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        // Cargo sets CARGO_PKG_NAME for test processes; no test mutates the environment.
        let c = PgConnectConfig::parse("postgres://u:old@h/d")
            .unwrap()
            .with_password_from(Some("CARGO_PKG_NAME"), Some(&f))
            .unwrap();
        assert_eq!(c.password.as_deref(), Some(env!("CARGO_PKG_NAME")));
        let missing = dir.path().join("absent");
        let e = PgConnectConfig::parse("postgres://u@h/d")
            .unwrap()
            .with_password_from(None, Some(&missing))
            .unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
    }

    #[test]
    fn password_comes_from_a_file_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c = PgConnectConfig::parse("postgres://u:old@h/d")
            .unwrap()
            .with_password_from(Some("SLUICE_SURELY_UNSET_VAR"), Some(&f))
            .unwrap();
        assert_eq!(c.password.as_deref(), Some("s3cret"));
    }
}
