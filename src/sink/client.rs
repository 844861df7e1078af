//! Building the Elasticsearch client from `EsConfig` (the one builder every
//! command uses): rustls, an optional CA file, basic auth or API key, a
//! request timeout, and round-robin over several node URLs. Errors and logs
//! pass through `redact_url`, so credentials in a URL never show.

use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{
    MultiNodeConnectionPool, SingleNodeConnectionPool, TransportBuilder,
};
use url::Url;

use super::es_config::{EsAuth, EsConfig};
use crate::ops::logging::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no Elasticsearch URL configured")]
    NoUrl,
    #[error("`{url}` is not a valid Elasticsearch URL: {source}")]
    BadUrl {
        url: String,
        source: url::ParseError,
    },
    #[error("cannot read the CA file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the CA file {path} has no PEM certificate in it")]
    NoPem { path: String },
    #[error("the CA file {path} holds no usable PEM certificate: {source}")]
    CaPem {
        path: String,
        source: elasticsearch::Error,
    },
    #[error("cannot build the Elasticsearch client: {0}")]
    Build(#[from] elasticsearch::http::transport::BuildError),
}

/// Build the client. Several URLs are used round-robin (no sniffing: the
/// configured list is what the operator allowed us to reach).
pub fn build_client(cfg: &EsConfig) -> Result<Elasticsearch, ClientError> {
    let urls = cfg
        .urls
        .iter()
        .map(|u| {
            Url::parse(u).map_err(|source| ClientError::BadUrl {
                url: redact_url(u),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder = match urls.len() {
        0 => return Err(ClientError::NoUrl),
        1 => TransportBuilder::new(SingleNodeConnectionPool::new(urls[0].clone())),
        _ => TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls.clone(), None)),
    };
    builder = builder.timeout(cfg.request_timeout);

    // Credentials embedded in a URL would be sent by reqwest as they are; the
    // configured auth takes precedence.
    match &cfg.auth {
        EsAuth::None => {}
        EsAuth::Basic { username, password } => {
            builder = builder.auth(Credentials::Basic(username.clone(), password.clone()));
        }
        EsAuth::ApiKey(encoded) => {
            builder = builder.auth(Credentials::EncodedApiKey(encoded.clone()));
        }
    }

    if cfg.insecure_skip_verify {
        tracing::warn!(
            urls = ?urls.iter().map(|u| redact_url(u.as_str())).collect::<Vec<_>>(),
            "TLS CERTIFICATE VERIFICATION IS DISABLED for Elasticsearch \
             (insecure_skip_verify = true): anyone on the network path can read \
             and alter the data. Use a CA file instead."
        );
        builder = builder.cert_validation(CertificateValidation::None);
    } else if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
            path: path.display().to_string(),
            source,
        })?;
        // `from_pem` accepts a file without any certificate in it; such a
        // file would silently mean "system roots only".
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(ClientError::NoPem {
                path: path.display().to_string(),
            });
        }
        let cert = Certificate::from_pem(&pem).map_err(|source| ClientError::CaPem {
            path: path.display().to_string(),
            source,
        })?;
        builder = builder.cert_validation(CertificateValidation::Full(cert));
    }

    Ok(Elasticsearch::new(builder.build()?))
}

/// One line for an Elasticsearch client error, with its whole cause chain
/// (where TLS failures hide) and a hint for certificate problems.
pub fn describe_es_error(e: &elasticsearch::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let part = inner.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        src = inner.source();
    }
    let lower = s.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        s = format!(
            "TLS certificate verification failed ({s}); set the Elasticsearch ca_file to the CA \
             that signed the server's certificate"
        );
    }
    redact_url(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_printed_without_their_password() {
        let cfg = EsConfig {
            urls: vec!["https://elastic:s3cret@es :9200/".into()],
            ..EsConfig::default()
        };
        let err = build_client(&cfg).unwrap_err().to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn a_client_needs_at_least_one_valid_url() {
        let mut cfg = EsConfig {
            urls: vec![],
            ..EsConfig::default()
        };
        assert!(matches!(build_client(&cfg), Err(ClientError::NoUrl)));
        cfg.urls = vec!["::nope".into()];
        assert!(matches!(
            build_client(&cfg),
            Err(ClientError::BadUrl { .. })
        ));
        cfg.urls = vec!["http://a:9200".into(), "http://b:9200".into()];
        assert!(build_client(&cfg).is_ok());
    }

    #[test]
    fn a_missing_ca_file_is_reported_by_path() {
        let cfg = EsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..EsConfig::default()
        };
        let e = build_client(&cfg).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
