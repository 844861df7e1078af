//! Configuration errors that name the file, the line and the key, and say
//! what would be right (DESIGN invariant 8).
//!
//! Every problem found while loading is collected, so a user fixes all of
//! them in one round instead of one per run.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

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

/// Turn a `toml` parse/deserialize error into a located `ConfigError`,
/// with a did-you-mean for unknown keys.
pub fn from_toml_error(file: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let line = err.span().map(|s: Range<usize>| line_of(text, s.start));
    let msg = err.message().trim().to_string();
    // serde's wording: "unknown field `totl`, expected one of `a`, `b`"
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let candidates: Vec<&str> = expected
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s)
            .collect();
        let hint = did_you_mean(field, candidates.iter().copied()).or_else(|| {
            (!candidates.is_empty()).then(|| {
                format!(
                    "known keys here: {}",
                    candidates
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        });
        return ConfigError::new(file, "unknown key")
            .at(line)
            .key(field)
            .hint_opt(hint);
    }
    ConfigError::new(file, msg).at(line)
}

#[cfg(test)]
mod tests {
    use super::*;

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
