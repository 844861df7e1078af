//! The guard between a mapping's `filter` text and the SQL it ends up in.
//!
//! A row filter is written by a person and pasted into SQL that Sluice's
//! role runs (the publication's `WHERE (...)`, the snapshot's COPY). It must
//! be exactly one boolean expression: a `;` or an unbalanced parenthesis
//! would let the text close Sluice's statement and run its own. Two layers
//! keep that from happening:
//!
//! 1. [`single_expression`] (pure): outside string literals and quoted
//!    identifiers the text has no `;`, no comment that could swallow the
//!    closing parenthesis, and parentheses that balance without ever
//!    closing one the text did not open.
//! 2. [`validate_row_filter`]: PostgreSQL parses it as the WHERE clause of
//!    a SELECT on the table that is *prepared only, never executed*; the
//!    extended protocol accepts exactly one statement, so nothing else can
//!    run even if the lexical check were fooled.
//!
//! The DDL that carries a filter is then sent as one statement through the
//! extended protocol as well (never spliced into a multi-statement string).

use tokio_postgres::Client;

use crate::source::error::SourceError;
use crate::source::sql::quote_ident;

/// Why a filter is not exactly one expression, in words for the user.
pub fn single_expression(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err("the row filter is empty".into());
    }
    let b = filter.as_bytes();
    let mut depth: usize = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev_ident = i > 0 && is_ident_byte(b[i - 1]);
        match c {
            b'\'' => {
                // E'…' strings take backslash escapes; others only ''.
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && !(i > 1 && is_ident_byte(b[i - 2]));
                i = skip_quoted(b, i, b'\'', escapes)
                    .ok_or("the row filter has an unterminated string literal")?;
                continue;
            }
            b'"' => {
                i = skip_quoted(b, i, b'"', false)
                    .ok_or("the row filter has an unterminated quoted identifier")?;
                continue;
            }
            b'$' if !prev_ident => {
                if let Some(end) = skip_dollar_quoted(b, i)? {
                    i = end;
                    continue;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                return Err("the row filter contains a comment (`--`)".into());
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                return Err("the row filter contains a comment (`/*`)".into());
            }
            b';' => {
                return Err(
                    "the row filter contains `;`: it must be one expression, not statements".into(),
                );
            }
            b'(' => depth += 1,
            b')' => {
                depth = depth.checked_sub(1).ok_or(
                    "the row filter closes a parenthesis it did not open: it must be one expression",
                )?;
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return Err("the row filter leaves a parenthesis open".into());
    }
    Ok(())
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// The index after the closing quote of the literal opened at `start`.
fn skip_quoted(b: &[u8], start: usize, quote: u8, escapes: bool) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// A `$tag$ … $tag$` string starting at `start`: the index after it, or
/// `None` when the `$` opens no dollar quote (a parameter like `$1`).
fn skip_dollar_quoted(b: &[u8], start: usize) -> Result<Option<usize>, String> {
    let mut j = start + 1;
    if b.get(j).is_some_and(|c| c.is_ascii_digit()) {
        return Ok(None);
    }
    while j < b.len() && b[j] != b'$' {
        if !(b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
            return Ok(None);
        }
        j += 1;
    }
    if j >= b.len() {
        return Ok(None);
    }
    let tag = &b[start..=j];
    let body = &b[j + 1..];
    match body.windows(tag.len()).position(|w| w == tag) {
        Some(p) => Ok(Some(j + 1 + p + tag.len())),
        None => Err("the row filter has an unterminated dollar-quoted string".into()),
    }
}

/// Check `filter` as exactly one expression over `schema.table`: first
/// lexically, then by PostgreSQL, which parses (prepares) a SELECT with it
/// as the WHERE clause without running it. `Setup` errors say what is wrong.
pub async fn validate_row_filter(
    client: &Client,
    schema: &str,
    table: &str,
    filter: &str,
) -> Result<(), SourceError> {
    let q = format!("{schema}.{table}");
    single_expression(filter)
        .map_err(|why| SourceError::Setup(format!("row filter of {q} `{filter}`: {why}")))?;
    let sql = format!(
        "SELECT 1 FROM ONLY {}.{} AS sluice_filter WHERE ({filter})",
        quote_ident(schema),
        quote_ident(table)
    );
    client.prepare(&sql).await.map_err(|e| {
        let why = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string());
        SourceError::Setup(format!(
            "row filter of {q} `{filter}`: PostgreSQL rejects it: {why}"
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_filters_are_one_expression() {
        for ok in [
            "status <> 'hidden'",
            "id > 0 AND (total > 10 OR note = 'a;b)')",
            r#""Weird;Name)" = 1"#,
            "note = E'it\\'s; fine)'",
            "note = $x$ ; ) $x$",
            "id = ANY('{1,2}'::int[])",
            "a$b > 0",
            "total - 1 > 0",
            "total / 2 > 0",
        ] {
            assert_eq!(single_expression(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn statements_comments_and_unbalanced_parentheses_are_refused() {
        for (bad, why) in [
            ("id > 0); DROP TABLE victim; --", "closes a parenthesis"),
            ("true; CREATE TABLE pwned()", "contains `;`"),
            ("id > 0) OR (true", "closes a parenthesis"),
            ("id > 0 --", "comment"),
            ("id > 0 /* x */", "comment"),
            ("(id > 0", "left open"),
            ("note = 'open", "unterminated string"),
            ("note = $q$ open", "unterminated dollar"),
            ("  ", "empty"),
        ] {
            let e = single_expression(bad).expect_err(bad);
            assert!(
                e.contains(why) || (why == "left open" && e.contains("open")),
                "{bad}: {e}"
            );
        }
    }
}
