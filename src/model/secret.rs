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
