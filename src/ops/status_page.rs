//! Serving the status page (`/ui`, `/` and `/status.json`) from a board the
//! command writes to.
//!
//! What the page shows is gathered and rendered by `app::ui` in the
//! background (PostgreSQL and Elasticsearch are read on a timer there, never
//! per request); it publishes the finished HTML and JSON bytes here, and a
//! request only clones them. So a request costs a lock read and a copy of
//! a pointer, whatever the servers are doing, and a scrape can never add
//! load on PostgreSQL or Elasticsearch.
//!
//! The page never holds a secret (the app renders a redacted configuration);
//! an optional token (`[http] ui_token`) guards it, as a bearer token or as
//! the password of basic auth, which a browser asks for by itself.

use std::sync::{Arc, RwLock};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;

use crate::model::secret::Secret;

/// The page and JSON last published.
#[derive(Debug, Clone, Default)]
pub struct PageBodies {
    pub html: Bytes,
    pub json: Bytes,
}

/// Where the app publishes the rendered page; cloneable, cheap to read.
#[derive(Debug, Clone, Default)]
pub struct StatusPage(Arc<RwLock<Arc<PageBodies>>>);

impl StatusPage {
    pub fn new() -> StatusPage {
        StatusPage::default()
    }

    /// Replace what the endpoints serve.
    pub fn publish(&self, html: impl Into<Bytes>, json: impl Into<Bytes>) {
        let bodies = Arc::new(PageBodies {
            html: html.into(),
            json: json.into(),
        });
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = bodies;
    }

    /// What is published now (empty bodies before the first publish).
    pub fn current(&self) -> Arc<PageBodies> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Whether a request may see the page: always without a token; with one,
/// `Authorization: Bearer <token>` or basic auth whose password is it.
pub fn authorized(token: Option<&Secret>, headers: &HeaderMap) -> bool {
    let Some(token) = token else { return true };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(bearer) = value.strip_prefix("Bearer ") {
        return token.matches(bearer.trim());
    }
    let Some(basic) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
        return false;
    };
    let text = String::from_utf8_lossy(&decoded);
    text.split_once(':')
        .is_some_and(|(_, password)| token.matches(password))
}

/// 401 that makes a browser ask for credentials.
pub fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (
                header::WWW_AUTHENTICATE,
                "Basic realm=\"sluice status\", charset=\"UTF-8\"",
            ),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        ],
        "the status page needs the token of [http] ui_token (bearer, or as the basic-auth password)\n",
    )
        .into_response()
}

/// The HTML page, or 503 before the first publish.
pub fn html_response(page: &StatusPage) -> Response {
    let b = page.current();
    if b.html.is_empty() {
        return starting();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        b.html.clone(),
    )
        .into_response()
}

/// The JSON, or 503 before the first publish.
pub fn json_response(page: &StatusPage) -> Response {
    let b = page.current();
    if b.json.is_empty() {
        return starting();
    }
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        b.json.clone(),
    )
        .into_response()
}

fn starting() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        "the status page is being prepared\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn without_a_token_anyone_may_look() {
        assert!(authorized(None, &HeaderMap::new()));
    }

    #[test]
    fn a_token_is_accepted_as_bearer_or_basic_password_only() {
        let t = Secret::new("s3cr3t");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(!authorized(Some(&t), &HeaderMap::new()));
        assert!(authorized(Some(&t), &auth("Bearer s3cr3t")));
        assert!(!authorized(Some(&t), &auth("Bearer s3cr3")));
        assert!(authorized(
            Some(&t),
            &auth(&format!("Basic {}", b64("ops:s3cr3t")))
        ));
        assert!(!authorized(
            Some(&t),
            &auth(&format!("Basic {}", b64("s3cr3t:x")))
        ));
        assert!(!authorized(Some(&t), &auth("Basic !!notbase64")));
        assert!(!authorized(Some(&t), &auth("s3cr3t")));
    }

    #[test]
    fn the_board_serves_what_was_published_last() {
        let page = StatusPage::new();
        assert_eq!(
            html_response(&page).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        page.publish("<p>one</p>", "{}");
        page.publish("<p>two</p>", "{\"a\":1}");
        assert_eq!(&page.current().html[..], b"<p>two</p>");
        assert_eq!(json_response(&page).status(), StatusCode::OK);
    }
}
