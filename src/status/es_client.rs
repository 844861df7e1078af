//! A minimal Elasticsearch client builder from `EsConfig` for status and
//! teardown (the sink has its own; the two are to be merged).
//!
//! TLS: https URLs are verified against the system roots plus `ca_file`;
//! `insecure_skip_verify` turns verification off and says so loudly. Errors
//! and logs pass through `redact_url`, so credentials in a URL never show.

use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{
    MultiNodeConnectionPool, SingleNodeConnectionPool, TransportBuilder,
};
use url::Url;

use crate::logging::redact_url;
use crate::sink::{EsAuth, EsConfig};

#[derive(Debug, thiserror::Error)]
pub enum EsClientError {
    #[error("no Elasticsearch URL configured")]
    NoUrl,
    #[error("Elasticsearch URL {url} is not valid: {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot use the Elasticsearch CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot build the Elasticsearch client: {0}")]
    Build(String),
}

/// Builds a client for every URL in `es` (round robin, no sniffing).
pub fn build_es_client(es: &EsConfig) -> Result<Elasticsearch, EsClientError> {
    let urls = es
        .urls
        .iter()
        .map(|u| {
            Url::parse(u).map_err(|e| EsClientError::BadUrl {
                url: redact_url(u),
                message: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder = match urls.len() {
        0 => return Err(EsClientError::NoUrl),
        1 => TransportBuilder::new(SingleNodeConnectionPool::new(urls[0].clone())),
        _ => TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls, None)),
    };
    builder = builder.timeout(es.request_timeout);
    match &es.auth {
        EsAuth::None => {}
        EsAuth::Basic { username, password } => {
            builder = builder.auth(Credentials::Basic(username.clone(), password.clone()));
        }
        EsAuth::ApiKey(encoded) => {
            builder = builder.auth(Credentials::EncodedApiKey(encoded.clone()));
        }
    }
    if es.insecure_skip_verify {
        tracing::warn!(
            "TLS certificate verification for Elasticsearch is OFF (insecure_skip_verify): \
             anyone on the network path can read and change the data and credentials Sluice sends"
        );
        builder = builder.cert_validation(CertificateValidation::None);
    } else if let Some(path) = &es.ca_file {
        let ca_err = |message: String| EsClientError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(ca_err("no PEM certificate in the file".into()));
        }
        let cert = Certificate::from_pem(&pem).map_err(|e| ca_err(e.to_string()))?;
        builder = builder.cert_validation(CertificateValidation::Full(cert));
    }
    let transport = builder
        .build()
        .map_err(|e| EsClientError::Build(redact_url(&e.to_string())))?;
    Ok(Elasticsearch::new(transport))
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
