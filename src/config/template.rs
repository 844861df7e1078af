//! `{column}` / `{commit_time:%Y.%m}` templates used by index names and
//! concatenated fields. Parsed once at load time into literal and
//! placeholder parts, so rendering is a walk over a short vector.

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// A column's value (NULL renders as the empty string).
    Column(String),
    /// The transaction's commit time in UTC, formatted with chrono's
    /// strftime syntax (`%Y.%m.%d`).
    CommitTime(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub source: String,
    pub parts: Vec<TemplatePart>,
}

impl Template {
    /// Parse `orders-{region}`, `logs-{commit_time:%Y.%m}`,
    /// `"{first_name} {last_name}"`. `{{` and `}}` are literal braces.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(format!("unmatched `}}` at position {i} (write `}}}}`)")),
                '{' => {
                    let rest = &s[i + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("`{{` at position {i} is never closed"))?;
                    let inner = &rest[..end];
                    for _ in 0..inner.chars().count() + 1 {
                        chars.next();
                    }
                    if !lit.is_empty() {
                        parts.push(TemplatePart::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(placeholder(inner)?);
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(TemplatePart::Literal(lit));
        }
        Ok(Template {
            source: s.to_string(),
            parts,
        })
    }

    /// True when the template has no placeholders.
    pub fn is_fixed(&self) -> bool {
        self.parts
            .iter()
            .all(|p| matches!(p, TemplatePart::Literal(_)))
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Column(c) => Some(c.as_str()),
            _ => None,
        })
    }

    pub fn uses_commit_time(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, TemplatePart::CommitTime(_)))
    }

    /// The template with each placeholder replaced by `*` (`orders-*`), for
    /// index templates and alias patterns.
    pub fn wildcard(&self) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                TemplatePart::Literal(l) => out.push_str(l),
                _ if out.ends_with('*') => {}
                _ => out.push('*'),
            }
        }
        out
    }
}

fn placeholder(inner: &str) -> Result<TemplatePart, String> {
    let inner = inner.trim();
    if let Some(fmt) = inner.strip_prefix("commit_time") {
        let fmt = match fmt.strip_prefix(':') {
            Some(f) => f,
            None if fmt.is_empty() => "%Y-%m-%dT%H:%M:%S%.6fZ",
            None => return Err(format!("`{{{inner}}}`: write `{{commit_time:%Y.%m}}`")),
        };
        check_strftime(fmt)?;
        return Ok(TemplatePart::CommitTime(fmt.to_string()));
    }
    if inner.is_empty() {
        return Err("empty `{}` placeholder; put a column name inside".into());
    }
    Ok(TemplatePart::Column(inner.to_string()))
}

/// Reject a strftime format chrono cannot render, at load time rather than
/// as a panic while streaming.
pub fn check_strftime(fmt: &str) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(fmt).any(|i| matches!(i, Item::Error)) {
        return Err(format!("`{fmt}` is not a valid strftime format"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use TemplatePart::*;

    #[test]
    fn parses_columns_commit_time_and_literals() {
        let t = Template::parse("orders-{region}-{commit_time:%Y.%m}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Literal("orders-".into()),
                Column("region".into()),
                Literal("-".into()),
                CommitTime("%Y.%m".into())
            ]
        );
        assert_eq!(t.wildcard(), "orders-*-*");
        assert!(!t.is_fixed());
    }

    #[test]
    fn doubled_braces_are_literal() {
        let t = Template::parse("{{x}} {a}").unwrap();
        assert_eq!(t.parts, vec![Literal("{x} ".into()), Column("a".into())]);
    }

    #[test]
    fn broken_templates_are_rejected() {
        assert!(Template::parse("a-{b").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{}").is_err());
        assert!(Template::parse("{commit_time:%Q}").is_err());
    }
}
