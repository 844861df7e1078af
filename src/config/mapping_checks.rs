//! The checks a mapping file must pass that need no database: index and
//! alias names, document field paths, conversion names, keys that exclude
//! each other, what an index named by the commit time can take, and
//! fields that clash in every document.
//!
//! Each check says what is wrong in the user's terms and, where it can,
//! what would be right (DESIGN invariant 8); `mapping_parse` calls them as
//! it reads each key, so every problem carries the line that caused it.

use std::ops::Range;

use toml::Spanned;

use super::diag::{ConfigError, ConfigErrors, FileErrors, did_you_mean};
use super::doc_shape::check_static_paths;
use super::mapping::{IndexName, Mapping, OnDelete};
use super::template::{Template, TemplatePart};

/// The values `convert` accepts.
pub const CONVERSIONS: [&str; 7] = [
    "float",
    "integer",
    "string",
    "timestamp",
    "epoch_millis",
    "split",
    "json",
];

/// The hint for an unknown conversion: the likely one, else the list.
pub fn conversion_hint(unknown: &str) -> Option<String> {
    did_you_mean(unknown, CONVERSIONS)
        .or_else(|| Some(format!("use one of: {}", CONVERSIONS.join(", "))))
}

/// Split a target path `customer.name` into its parts.
pub fn parse_path(s: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = s.split('.').map(str::to_string).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{s}` is not a field path like `customer.name`"));
    }
    if parts[0].starts_with('_') {
        return Err(format!(
            "`{s}`: fields starting with `_` are reserved by Elasticsearch"
        ));
    }
    Ok(parts)
}

/// Check an Elasticsearch index name's literal characters.
pub fn index_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("index name is empty".into());
    }
    if name != name.to_lowercase() {
        return Some(format!("index name `{name}` must be lower-case"));
    }
    if let Some(c) = name.chars().find(|c| {
        matches!(
            c,
            '\\' | '/' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':' | '*'
        )
    }) {
        return Some(format!("index name `{name}` must not contain `{c}`"));
    }
    if name.starts_with(['-', '_', '+']) {
        return Some(format!(
            "index name `{name}` must not start with `-`, `_` or `+`"
        ));
    }
    None
}

/// Problems in the literal parts of an index name template, in order.
pub fn index_template_problems(t: &Template) -> Vec<String> {
    let mut out = Vec::new();
    for (i, p) in t.parts.iter().enumerate() {
        if let TemplatePart::Literal(l) = p {
            // Only the name's first characters may not be `-_+`.
            let probe = if i == 0 { l.clone() } else { format!("x{l}") };
            if let Some(m) = index_name_problem(&probe) {
                out.push(m.replace(&probe, l));
            }
        }
    }
    out
}

/// `include` and `exclude` cannot both select the copied columns.
pub fn include_and_exclude<T>(
    out: &mut FileErrors,
    include: Option<&Spanned<Vec<T>>>,
    exclude: Option<&Spanned<Vec<T>>>,
) {
    if let (Some(inc), Some(exc)) = (include, exclude) {
        out.push(
            exc.span(),
            "exclude",
            "`include` and `exclude` are both set",
            Some(format!(
                "keep one (include lists {} columns)",
                inc.get_ref().len()
            )),
        );
    }
}

/// A document written under last month's name cannot be found from this
/// month's: deletes and soft deletes would miss it and leave it behind.
pub fn commit_time_index(
    out: &mut FileErrors,
    index: &IndexName,
    index_span: Range<usize>,
    on_delete: OnDelete,
    soft_delete_column: Option<&Spanned<String>>,
) {
    let IndexName::Template(t) = index else {
        return;
    };
    if !t.uses_commit_time() {
        return;
    }
    if on_delete == OnDelete::Delete {
        out.push(
            index_span,
            "index",
            "an index named by the commit time cannot take deletes: a row deleted (or updated) in a later period would leave its earlier document behind",
            Some("set `on_delete = \"ignore\"` (every period keeps its documents), or name the index by columns".into()),
        );
    }
    if let Some(c) = soft_delete_column {
        out.push(
            c.span(),
            "soft_delete_column",
            "an index named by the commit time cannot take soft deletes: the delete would go to the current period's index, not the document's",
            Some("remove it, or name the index by columns".into()),
        );
    }
}

/// Two `[rename]`/`[fields]` targets that clash whatever the table's
/// columns, reported at the line that wrote the later one.
pub fn static_paths(mapping: &Mapping, errors: &mut ConfigErrors) {
    if let Err(c) = check_static_paths(mapping) {
        let (key, line) = mapping.target_place(&c.path);
        errors.push(ConfigError::new(&mapping.file, c.message).key(key).at(line));
    }
}

/// Forget problems inside an entry that was dropped for a syntax or type
/// error (`dropped`: the dropped entries' keys): they would only echo it.
pub fn forget_echoes(errors: &mut ConfigErrors, dropped: &[String]) {
    let echoes = |e: &ConfigError| {
        e.key.as_ref().is_some_and(|k| {
            dropped.iter().any(|d| {
                d.len() > k.len() && d.starts_with(k.as_str()) && d[k.len()..].starts_with('.')
            })
        })
    };
    errors.0.retain(|e| !echoes(e));
}
