//! `EsConfig`: how to reach Elasticsearch. Plain data filled by the config
//! layer; its `Debug` never prints secrets.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, PartialEq)]
pub enum EsAuth {
    None,
    Basic {
        username: String,
        password: String,
    },
    /// The base64 `id:key` form Elasticsearch returns as `encoded`.
    ApiKey(String),
}

#[derive(Clone, PartialEq)]
pub struct EsConfig {
    /// One or more node URLs (`http://host:9200`).
    pub urls: Vec<String>,
    pub auth: EsAuth,
    /// CA certificate (PEM) for https.
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification (loudly logged; never the default).
    pub insecure_skip_verify: bool,
    pub request_timeout: Duration,
}

impl Default for EsConfig {
    fn default() -> Self {
        EsConfig {
            urls: vec!["http://localhost:9200".into()],
            auth: EsAuth::None,
            ca_file: None,
            insecure_skip_verify: false,
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for EsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            EsAuth::None => "none",
            EsAuth::Basic { .. } => "basic <redacted>",
            EsAuth::ApiKey(_) => "api key <redacted>",
        };
        let urls: Vec<String> = self
            .urls
            .iter()
            .map(|u| crate::ops::logging::redact_url(u))
            .collect();
        f.debug_struct("EsConfig")
            .field("urls", &urls)
            .field("auth", &auth)
            .field("ca_file", &self.ca_file)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_a_password_in_a_url_nor_the_credentials() {
        let c = EsConfig {
            urls: vec!["https://elastic:s3cr3t-Pw@es.example:9200".into()],
            auth: EsAuth::Basic {
                username: "elastic".into(),
                password: "other-Pw".into(),
            },
            ..EsConfig::default()
        };
        let text = format!("{c:?}");
        assert!(
            !text.contains("s3cr3t-Pw") && !text.contains("other-Pw"),
            "{text}"
        );
        assert!(text.contains("es.example:9200"), "still says where: {text}");
    }
}
