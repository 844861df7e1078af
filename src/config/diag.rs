//! Configuration errors that name the file, the line and the key, and say
//! what would be right (DESIGN invariant 8).
//!
//! Every problem found while loading is collected, so a user fixes all of
//! them in one round instead of one per run.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

use crate::model::secret::is_secret_key;

/// One problem in a configuration or mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the problem points at a place in the file.
    pub line: Option<usize>,
    /// The key (dotted path) the problem is about.
    pub key: Option<String>,
    pub message: String,
    /// What would be right, e.g. "did you mean `total`?".
    pub hint: Option<String>,
}

impl ConfigError {
    pub fn new(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            key: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn at(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn key_opt(mut self, key: Option<&str>) -> Self {
        self.key = key.map(str::to_string);
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found, one per line when printed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    /// Order by file, then line (problems without a line last), keeping
    /// the discovery order otherwise: reads like the files top to bottom.
    pub fn sort_by_place(&mut self) {
        self.0.sort_by(|a, b| {
            (&a.file, a.line.unwrap_or(usize::MAX)).cmp(&(&b.file, b.line.unwrap_or(usize::MAX)))
        });
    }

    pub fn into_result<T>(self, ok: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() { Ok(ok) } else { Err(self) }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// Problems found in one file, each placed at the line where a span of the
/// file's text starts (the parsers of `sluice.toml` and of mapping files
/// both collect through it).
pub struct FileErrors<'a> {
    pub file: &'a Path,
    text: &'a str,
    pub errors: ConfigErrors,
}

impl<'a> FileErrors<'a> {
    /// Start from `errors` already found (e.g. by `deserialize_all`).
    pub fn new(file: &'a Path, text: &'a str, errors: ConfigErrors) -> Self {
        FileErrors { file, text, errors }
    }

    /// The 1-based line where `span` starts.
    pub fn line(&self, span: Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    /// A problem with `key` at the line of `span`.
    pub fn push(
        &mut self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let line = self.line(span);
        self.errors.push(
            ConfigError::new(self.file, message)
                .at(Some(line))
                .key(key)
                .hint_opt(hint),
        );
    }
}

/// The 1-based line of a byte offset in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    memchr::memchr_iter(b'\n', &text.as_bytes()[..end]).count() + 1
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// Deserialize a whole file into `T`, collecting every problem: after each
/// error the entry it points at is dropped and deserialization retried, so a
/// file with three typos gets three messages in one run. Returns `None` when
/// what is left still does not deserialize (a required key is missing or
/// was itself wrong); the errors then say why.
pub fn deserialize_all<T: DeserializeOwned>(file: &Path, text: &str) -> (Option<T>, ConfigErrors) {
    let (v, mut errors) = deserialize_each_error::<T>(file, text);
    errors.sort_by_place();
    (v, errors)
}

fn deserialize_each_error<T: DeserializeOwned>(
    file: &Path,
    text: &str,
) -> (Option<T>, ConfigErrors) {
    let mut errors = ConfigErrors::default();
    let (mut doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in &syntax {
            errors.push(from_toml_error(file, text, e, None));
        }
        return (None, errors);
    }
    let mut dropped: Vec<String> = Vec::new();
    // Each round removes one entry, so this ends; the bound is a backstop.
    for _ in 0..256 {
        let e = match T::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(v) => return (Some(v), errors),
            Err(e) => e,
        };
        if let Some(rest) = e.message().strip_prefix("missing field `")
            && let Some((field, _)) = rest.split_once('`')
        {
            let echo = dropped
                .iter()
                .any(|d| d == field || d.ends_with(&format!(".{field}")))
                || errors
                    .0
                    .iter()
                    .any(|x| x.hint.as_deref() == Some(&format!("did you mean `{field}`?")));
            // Missing only because an earlier error dropped it, or a typo
            // already suggested it: said already.
            if !echo {
                errors.push(
                    ConfigError::new(file, format!("required key `{field}` is missing"))
                        .hint(format!("add `{field} = ...`")),
                );
            }
            return (None, errors);
        }
        let path = match e.span() {
            Some(span) if !e.message().starts_with("missing field") => {
                drop_entry_at(doc.get_mut(), &span, "")
            }
            _ => None,
        };
        errors.push(from_toml_error(file, text, &e, path.as_deref()));
        match path {
            Some(p) => dropped.push(p),
            None => return (None, errors),
        }
    }
    (None, errors)
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start < outer.end && outer.start <= inner.start && inner.end <= outer.end
}

/// `a.b` for bare keys, `a."x.y"` for keys that need quotes.
pub fn join_key(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("\"{}\"", key.replace('"', "\\\""))
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// Remove the innermost key/value entry whose key or value covers `span`;
/// its dotted path, if one was found.
fn drop_entry_at(table: &mut DeTable<'_>, span: &Range<usize>, prefix: &str) -> Option<String> {
    // Sub-tables first: a `[section]`'s span is only its header line, so
    // it does not cover the entries below it.
    let keys: Vec<_> = table.keys().cloned().collect();
    for k in &keys {
        if let Some(v) = table.get_mut(k)
            && let DeValue::Table(inner) = v.get_mut()
            && let Some(p) = drop_entry_at(inner, span, &join_key(prefix, k.get_ref()))
        {
            return Some(p);
        }
    }
    let key = table
        .iter()
        .find(|(k, v)| covers(&k.span(), span) || covers(&v.span(), span))
        .map(|(k, _)| k.clone())?;
    table.remove(&key);
    Some(join_key(prefix, key.get_ref()))
}

/// Whether the value at dotted key `path` may be or contain a secret: a
/// password or API key, or a URL (which may carry `user:password@`).
fn holds_secret(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path).trim_matches('"');
    is_secret_key(last) || matches!(last, "url" | "urls")
}

/// serde's "invalid type: integer `12345678`, expected a string" without
/// the value: "invalid type: integer (not shown: ...), expected a string".
fn without_value(msg: &str) -> String {
    const HIDDEN: &str = "(not shown: it may be a secret)";
    let expected = msg.find(", expected").map_or("", |i| &msg[i..]);
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            let kind = rest.split([' ', ',']).next().unwrap_or("value");
            return format!("{prefix}{kind} {HIDDEN}{expected}");
        }
    }
    if msg.contains('`') || msg.contains('"') {
        return format!("invalid value {HIDDEN}{expected}");
    }
    msg.to_string()
}

/// serde's type names, as a user who writes TOML knows them.
fn plain_type_words(msg: &str) -> String {
    let mut m = msg.to_string();
    // "expected struct RawPipeline": the user wrote a value for a section.
    if let Some(i) = m.find("expected struct ") {
        m.truncate(i);
        m.push_str("expected a table");
    }
    for (from, to) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number up to 65535"),
        ("expected i64", "expected a whole number"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("integer `", "number `"),
        ("string \"", "text \""),
    ] {
        m = m.replace(from, to);
    }
    m
}

/// `(word, candidates)` from serde's "unknown field `x`, expected one of `a`, `b`".
fn unknown_word<'m>(msg: &'m str, prefix: &str) -> Option<(&'m str, Vec<&'m str>)> {
    let rest = msg.strip_prefix(prefix)?;
    let (word, expected) = rest.split_once('`')?;
    let candidates = expected
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    Some((word, candidates))
}

fn known_list(candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Turn a `toml` parse/deserialize error into a located `ConfigError`,
/// with a did-you-mean for unknown keys and values. `path` is the dotted
/// key the error is about, when known.
pub fn from_toml_error(
    file: &Path,
    text: &str,
    err: &toml::de::Error,
    path: Option<&str>,
) -> ConfigError {
    let line = err.span().map(|s: Range<usize>| line_of(text, s.start));
    let msg = err.message().trim().to_string();
    // serde echoes the value it refused (`password = 12345678` -> "integer
    // `12345678`"); for a secret that is the secret, printed to a log.
    let msg = match path.is_some_and(holds_secret) {
        true => without_value(&msg),
        false => msg,
    };
    // serde's wording: "unknown field `totl`, expected one of `a`, `b`"
    if let Some((field, candidates)) = unknown_word(&msg, "unknown field `") {
        let hint = did_you_mean(field, candidates.iter().copied()).or_else(|| {
            (!candidates.is_empty())
                .then(|| format!("known keys here: {}", known_list(&candidates)))
        });
        return ConfigError::new(file, "unknown key")
            .at(line)
            .key(path.unwrap_or(field))
            .hint_opt(hint);
    }
    if let Some((value, candidates)) = unknown_word(&msg, "unknown variant `") {
        let hint = did_you_mean(value, candidates.iter().copied())
            .or_else(|| Some(format!("use one of {}", known_list(&candidates))));
        return ConfigError::new(file, format!("`{value}` is not a valid value"))
            .at(line)
            .key_opt(path)
            .hint_opt(hint);
    }
    ConfigError::new(file, plain_type_words(&msg))
        .at(line)
        .key_opt(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_error_on_a_secret_never_echoes_the_value() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Es {
            password: String,
            urls: Vec<String>,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Root {
            elasticsearch: Es,
        }
        let text = "[elasticsearch]\npassword = 12345678\nurls = [87654321]\n";
        let (_, errors) = deserialize_all::<Root>(Path::new("sluice.toml"), text);
        let shown = errors.to_string();
        assert!(!shown.contains("12345678"), "{shown}");
        assert!(!shown.contains("87654321"), "{shown}");
        assert!(shown.contains("password"), "still names the key: {shown}");
        assert!(
            shown.contains("expected"),
            "still says what is wrong: {shown}"
        );
    }

    #[test]
    fn lines_count_from_one() {
        let t = "a = 1\nb = 2\nc = 3\n";
        assert_eq!(line_of(t, 0), 1);
        assert_eq!(line_of(t, 6), 2);
        assert_eq!(line_of(t, 12), 3);
    }

    #[test]
    fn a_typo_gets_a_suggestion_and_a_stranger_does_not() {
        assert_eq!(
            did_you_mean("totl", ["id", "total", "status"]).as_deref(),
            Some("did you mean `total`?")
        );
        assert_eq!(did_you_mean("zzzz", ["id", "total"]), None);
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        #[serde(default)]
        section: Section,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        size_bytes: Option<u64>,
        mode: Option<Mode>,
        tags: Option<Vec<String>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Initial,
        Never,
    }

    fn all(text: &str) -> (bool, Vec<String>) {
        let (v, e) = deserialize_all::<Doc>(Path::new("f.toml"), text);
        (v.is_some(), e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn every_wrong_entry_of_a_file_is_reported_in_one_pass() {
        let (ok, msgs) =
            all("name = \"x\"\n[section]\nsize_byte = 1\nmode = \"initail\"\ntags = \"a\"\n");
        assert!(ok, "the rest still deserializes");
        assert_eq!(
            msgs,
            [
                "f.toml line 3: `section.size_byte`: unknown key; did you mean `size_bytes`?",
                "f.toml line 4: `section.mode`: `initail` is not a valid value; did you mean `initial`?",
                "f.toml line 5: `section.tags`: invalid type: text \"a\", expected an array",
            ]
        );
        let (_, msgs) = all("name = \"x\"\n[section]\nsize_bytes = -1\n");
        assert_eq!(
            msgs,
            [
                "f.toml line 3: `section.size_bytes`: invalid value: number `-1`, expected a whole number"
            ]
        );
    }

    #[test]
    fn a_required_key_is_missing_once_and_not_after_its_own_typo() {
        let (ok, msgs) = all("[section]\n");
        assert!(!ok);
        assert_eq!(
            msgs,
            ["f.toml: required key `name` is missing; add `name = ...`"]
        );
        let (_, msgs) = all("nme = \"x\"\n");
        assert_eq!(
            msgs,
            ["f.toml line 1: `nme`: unknown key; did you mean `name`?"]
        );
        let (_, msgs) = all("name = \"x\"\nsection = 5\n");
        assert_eq!(
            msgs,
            ["f.toml line 2: `section`: invalid type: number `5`, expected a table"]
        );
        let (_, msgs) = all("name = 3\n");
        assert_eq!(
            msgs,
            ["f.toml line 1: `name`: invalid type: number `3`, expected a string"]
        );
    }

    #[test]
    fn syntax_errors_stop_before_deserializing() {
        let (ok, msgs) = all("name = \"x\n");
        assert!(!ok);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(msgs[0].starts_with("f.toml line 1: "), "{msgs:?}");
    }

    #[test]
    fn errors_print_file_line_key_and_hint() {
        let e = ConfigError::new(Path::new("mappings/orders.toml"), "column does not exist")
            .at(Some(7))
            .key("include")
            .hint("did you mean `total`?");
        assert_eq!(
            e.to_string(),
            "mappings/orders.toml line 7: `include`: column does not exist; did you mean `total`?"
        );
    }
}
