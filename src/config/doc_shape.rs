//! Which fields a mapping's documents have, given the table's columns.
//!
//! Shared by load-time validation (against the catalog) and the transformer
//! (against each Relation), so both agree on one rule:
//! copied columns are `include` (or every column) minus `exclude` and
//! `merge`, each at its `rename` path or its own name; a `[fields]` entry at
//! the same path replaces the copied column; any other clash (two fields at
//! one path, or `customer` beside `customer.name`) is an error.

use super::mapping::{Conversion, Field, FieldSource, Mapping};

/// Two fields that cannot both be in a document; `path` is the later one
/// (dotted), so an error can point at the line that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clash {
    pub message: String,
    pub path: String,
}

impl std::fmt::Display for Clash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One field of the document, before column positions are resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DocField {
    pub path: Vec<String>,
    pub source: FieldSource,
}

/// The document's fields for a table with `columns`, in a stable order
/// (table order for copied columns, then `[fields]` in file order).
pub fn document_fields(mapping: &Mapping, columns: &[&str]) -> Result<Vec<DocField>, Clash> {
    let mut out: Vec<DocField> = Vec::new();
    let selected: Vec<&str> = match &mapping.include {
        Some(inc) => inc.iter().map(String::as_str).collect(),
        None => columns.to_vec(),
    };
    for col in selected {
        if mapping.exclude.iter().any(|e| e == col) || mapping.merge.iter().any(|m| m == col) {
            continue;
        }
        let path = mapping
            .renames
            .get(col)
            .cloned()
            .unwrap_or_else(|| vec![col.to_string()]);
        if mapping.fields.iter().any(|f| f.path == path) {
            continue;
        }
        out.push(DocField {
            path,
            source: FieldSource::Column {
                column: col.to_string(),
                convert: Conversion::None,
            },
        });
    }
    for Field { path, source } in &mapping.fields {
        out.push(DocField {
            path: path.clone(),
            source: source.clone(),
        });
    }
    check_clashes(out.iter().map(|f| &f.path))?;
    Ok(out)
}

fn check_clashes<'a>(paths: impl Iterator<Item = &'a Vec<String>>) -> Result<(), Clash> {
    let mut all: Vec<&Vec<String>> = paths.collect();
    all.sort();
    for w in all.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a == b {
            return Err(Clash {
                message: format!(
                    "two fields write `{}`; rename or exclude one of them",
                    a.join(".")
                ),
                path: a.join("."),
            });
        }
        if b.len() > a.len() && b[..a.len()] == a[..] {
            return Err(Clash {
                message: format!(
                    "`{}` is a value and also holds `{}`; rename one of them",
                    a.join("."),
                    b.join(".")
                ),
                path: b.join("."),
            });
        }
    }
    Ok(())
}

/// Clashes visible without knowing the table: renames and `[fields]`.
pub fn check_static_paths(mapping: &Mapping) -> Result<(), Clash> {
    let mut paths: Vec<&Vec<String>> = mapping.renames.values().collect();
    for f in &mapping.fields {
        // A field at a renamed column's path replaces it: not a clash.
        if !mapping.renames.values().any(|p| *p == f.path) {
            paths.push(&f.path);
        }
    }
    check_clashes(paths.into_iter())
}
