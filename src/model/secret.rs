//! Which names hold secrets: a rule shared by config's error messages
//! (never show a secret's value) and ops' log redaction. It lives here
//! because both import `model` and neither may import the other: config
//! does not import ops, and ops importing config would close the folder
//! loop config → sink → ops → config.

/// Whether a key names a secret (`password`, `api_key`, `token`, ...), in
/// a configuration file, a DSN or a URL query: its value is never shown.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    matches!(
        k.as_str(),
        "password" | "passwd" | "pwd" | "apikey" | "api_key" | "api-key" | "token" | "secret"
    ) || k.ends_with("password")
        || k.ends_with("secret")
}

/// A secret value from the configuration (a password, an API key, the
/// status page's token). `Debug` and `Display` never show it; only
/// [`Secret::expose`] does, at the one place that must send or compare it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: for the one place that sends or compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` equals the secret, in time that does not depend
    /// on where the first difference is (a token compared on every
    /// request should not leak its prefix through timing).
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        let mut diff = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            diff |= usize::from(x ^ y);
        }
        diff == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_and_compares_exactly() {
        let s = Secret::new("t0ken-value");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert!(s.matches("t0ken-value"));
        assert!(!s.matches("t0ken-valuE"));
        assert!(!s.matches("t0ken-value-and-more"));
        assert!(!s.matches(""));
        assert_eq!(s.expose(), "t0ken-value");
    }
}
