//! A mapping's `[relations.*]` bound to the live catalog: each related
//! table exists, its join columns too (from `on`, or the one foreign key
//! PostgreSQL knows between the two tables), and the result is the plain
//! `model::DocTree` the SQL builder and the stream walk.
//!
//! It refuses (DESIGN invariant 8: fail before any data moves) what would
//! make an exact rebuild impossible: a join column a DELETE or UPDATE would
//! not carry (outside the table's replica identity, so a removed or moved
//! child could not name the parent it left), a table that is its own
//! ancestor (a cycle), a mapping option that locates a document by a
//! column only the changed row knows (`routing`, a column-templated
//! index). A join column without an index is only a warning: correct, but
//! every rebuild scans.

use std::sync::Arc;

use super::catalog::unknown_columns;
use super::diag::{ConfigError, ConfigErrors, did_you_mean};
use super::doc_shape::document_fields;
use super::mapping::{IndexName, Mapping, RelatedMapping, RelationKind};
use crate::model::{
    Catalog, CatalogTable, Column, DocChild, DocNode, DocTree, JoinPairs, Link, ReplicaIdentity,
    TableRef,
};

/// Bind `m`'s relations (it has some) and set `m.tree`. Problems go to
/// `errors`; join columns without an index are returned as warnings.
pub fn bind(m: &mut Mapping, catalog: &Catalog, errors: &mut ConfigErrors) -> Vec<String> {
    let Some(root_table) = catalog.tables.get(&*m.qualified_table) else {
        return Vec::new(); // reported by the flat checks
    };
    let err = |line: usize, key: &str, msg: String, hint: Option<String>| {
        ConfigError::new(&m.file, msg)
            .at(Some(line))
            .key(key)
            .hint_opt(hint)
    };
    if m.routing.is_some() {
        errors.push(err(m.table_line, "routing", "`routing` cannot be used with `relations`: a rebuilt document is found by its key alone".into(), None));
    }
    if let IndexName::Template(t) = &m.index
        && t.columns().next().is_some()
    {
        errors.push(err(m.index_line, "index", "an index named from columns cannot be used with `relations`: a rebuilt document is found by its key alone".into(), Some("use a fixed index name (or one from the commit time only)".into())));
    }
    let key = m
        .id_columns
        .clone()
        .unwrap_or_else(|| root_table.primary_key.clone());
    let mut b = Binder {
        catalog,
        errors,
        warnings: Vec::new(),
        file: &m.file,
    };
    let mut root = node(root_table, key, m.filter.clone(), Vec::new());
    let mut ancestors = vec![root_table.table.clone()];
    root.children = b.children(&mut m.relations, root_table, &mut ancestors, true);
    for f in &m.relations {
        if document_fields(m, &columns(root_table))
            .is_ok_and(|fs| fs.iter().any(|d| d.path == [f.field.clone()]))
        {
            b.errors.push(err(
                f.line,
                &format!("relations.{}", f.field),
                format!(
                    "field `{}` is also a column of {} in the document",
                    f.field, m.qualified_table
                ),
                Some("exclude or rename that column".into()),
            ));
        }
    }
    let warnings = b.warnings;
    m.tree = Some(Arc::new(DocTree { root }));
    warnings
}

struct Binder<'a> {
    catalog: &'a Catalog,
    errors: &'a mut ConfigErrors,
    warnings: Vec<String>,
    file: &'a std::path::Path,
}

fn columns(t: &CatalogTable) -> Vec<&str> {
    t.columns.iter().map(|c| c.name.as_str()).collect()
}

/// A node of `t` reading its (not generated) columns.
fn node(
    t: &CatalogTable,
    key: Vec<String>,
    filter: Option<String>,
    order_by: Vec<String>,
) -> DocNode {
    let order_by = if order_by.is_empty() {
        key.clone()
    } else {
        order_by
    };
    DocNode {
        table: t.table.clone(),
        columns: t
            .columns
            .iter()
            .filter(|c| !c.generated)
            .map(|c| Column {
                name: c.name.clone(),
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                is_key: key.contains(&c.name),
            })
            .collect(),
        key,
        filter,
        order_by,
        children: Vec::new(),
    }
}

impl Binder<'_> {
    fn error(&mut self, r: &RelatedMapping, key: &str, msg: String, hint: Option<String>) {
        let key = if key.is_empty() {
            format!("relations.{}", r.field)
        } else {
            format!("relations.{}.{key}", r.field)
        };
        self.errors.push(
            ConfigError::new(self.file, msg)
                .at(Some(r.line))
                .key(key)
                .hint_opt(hint),
        );
    }

    fn table(&mut self, r: &RelatedMapping, t: &TableRef, key: &str) -> Option<&'_ CatalogTable> {
        let found = self.catalog.tables.get(&t.qualified_name());
        if found.is_none() {
            let names = self
                .catalog
                .tables
                .keys()
                .chain(&self.catalog.all_table_names)
                .map(String::as_str);
            let hint = did_you_mean(&t.qualified_name(), names);
            self.error(
                r,
                key,
                format!("table `{}` does not exist", t.qualified_name()),
                hint,
            );
        }
        self.catalog.tables.get(&t.qualified_name())
    }

    fn children(
        &mut self,
        rels: &mut [RelatedMapping],
        parent: &CatalogTable,
        ancestors: &mut Vec<TableRef>,
        under_root: bool,
    ) -> Vec<DocChild> {
        let mut out = Vec::new();
        for r in rels.iter_mut() {
            if r.required && !under_root {
                self.error(
                    r,
                    "required",
                    "`required` is only for relations directly under the root".into(),
                    None,
                );
            }
            if ancestors.contains(&r.shape.table) {
                self.error(
                    r,
                    "table",
                    format!(
                        "{} is already an ancestor of `{}`: relations must not form a cycle",
                        r.shape.table.qualified_name(),
                        r.field
                    ),
                    None,
                );
                continue;
            }
            let Some(t) = self.table(r, &r.shape.table.clone(), "table") else {
                continue;
            };
            let t = t.clone();
            let mut errs = ConfigErrors::default();
            unknown_columns(&r.shape, &t, &mut errs);
            if let Err(c) = document_fields(&r.shape, &columns(&t)) {
                errs.push(ConfigError::new(self.file, c.message).at(Some(r.line)));
            }
            self.errors.0.extend(errs.0);
            let Some(link) = self.link(r, parent, &t) else {
                continue;
            };
            r.shape.primary_key = Some(t.primary_key.clone());
            r.shape.replica_identity = Some((t.replica_identity, t.replica_identity_columns()));
            let key = if t.primary_key.is_empty() {
                t.replica_identity_columns()
            } else {
                t.primary_key.clone()
            };
            let mut n = node(&t, key, r.shape.filter.clone(), r.order_by.clone());
            ancestors.push(t.table.clone());
            n.children = self.children(&mut r.shape.relations, &t, ancestors, false);
            ancestors.pop();
            out.push(DocChild {
                field: r.field.clone(),
                link,
                required: r.required,
                node: n,
            });
        }
        out
    }

    /// The join, explicit or from the foreign key, with its columns checked.
    fn link(
        &mut self,
        r: &RelatedMapping,
        parent: &CatalogTable,
        child: &CatalogTable,
    ) -> Option<Link> {
        let link = match r.kind {
            RelationKind::ManyToOne => Link::ManyToOne {
                on: self.pairs(r, "on", r.on.clone(), parent, child, false)?,
            },
            RelationKind::OneToMany => Link::OneToMany {
                on: self.pairs(r, "on", r.on.clone(), parent, child, true)?,
            },
            RelationKind::ManyToMany => {
                let through_ref = r.through.clone()?;
                let through = self.table(r, &through_ref, "through")?.clone();
                let parent_on = self.pairs(r, "on", r.on.clone(), parent, &through, true)?;
                let child_on = self.pairs(
                    r,
                    "through_on",
                    r.through_on.clone(),
                    &through,
                    child,
                    false,
                )?;
                self.identity(
                    r,
                    &through,
                    parent_on
                        .iter()
                        .map(|p| &p.1)
                        .chain(child_on.iter().map(|p| &p.0)),
                );
                self.index(&through, parent_on.iter().map(|p| p.1.clone()).collect());
                Link::Through {
                    table: through.table.clone(),
                    parent_on,
                    child_on,
                }
            }
        };
        match &link {
            // A child row names its parent by its own columns.
            Link::OneToMany { on } => {
                self.identity(r, child, on.iter().map(|p| &p.1));
                self.index(child, on.iter().map(|p| p.1.clone()).collect());
            }
            // The target row is found by its columns; roots are found
            // through the parent's.
            Link::ManyToOne { on } => {
                self.identity(r, child, on.iter().map(|p| &p.1));
                self.index(child, on.iter().map(|p| p.1.clone()).collect());
                self.index(parent, on.iter().map(|p| p.0.clone()).collect());
            }
            Link::Through { child_on, .. } => {
                self.identity(r, child, child_on.iter().map(|p| &p.1));
            }
        }
        Some(link)
    }

    /// Join pairs `(upper column, lower column)`: the explicit ones, else
    /// the one foreign key between the two tables (`lower_refs`: the lower
    /// table holds it, else the upper one).
    fn pairs(
        &mut self,
        r: &RelatedMapping,
        key: &str,
        explicit: Option<JoinPairs>,
        upper: &CatalogTable,
        lower: &CatalogTable,
        lower_refs: bool,
    ) -> Option<JoinPairs> {
        let pairs = match explicit {
            Some(p) => p,
            None => {
                let (holder, target) = if lower_refs {
                    (lower, upper)
                } else {
                    (upper, lower)
                };
                let fks: Vec<_> = holder
                    .foreign_keys
                    .iter()
                    .filter(|f| f.references == target.table.qualified_name())
                    .collect();
                if fks.len() != 1 {
                    let (u, l) = (upper.table.qualified_name(), lower.table.qualified_name());
                    let what = if fks.is_empty() {
                        "no foreign key"
                    } else {
                        "several foreign keys"
                    };
                    self.error(
                        r,
                        key,
                        format!(
                            "{what} from {} to {}: say how {u} joins {l}",
                            holder.table.qualified_name(),
                            target.table.qualified_name()
                        ),
                        Some(format!("set `{key} = {{ {u}_column = \"{l}_column\" }}`")),
                    );
                    return None;
                }
                let f = fks[0];
                let zipped = f.columns.iter().cloned().zip(f.ref_columns.iter().cloned());
                if lower_refs {
                    zipped.map(|(h, t)| (t, h)).collect()
                } else {
                    zipped.collect()
                }
            }
        };
        let mut ok = !pairs.is_empty();
        for (u, l) in &pairs {
            for (t, c) in [(upper, u), (lower, l)] {
                if t.column(c).is_none() {
                    ok = false;
                    let hint = did_you_mean(c, columns(t));
                    self.error(
                        r,
                        key,
                        format!(
                            "column `{c}` does not exist in {}",
                            t.table.qualified_name()
                        ),
                        hint,
                    );
                }
            }
        }
        ok.then_some(pairs)
    }

    /// The columns a change of `t` must carry in its old row to name the
    /// rows above it: they must be in its replica identity.
    fn identity<'c>(
        &mut self,
        r: &RelatedMapping,
        t: &CatalogTable,
        cols: impl Iterator<Item = &'c String>,
    ) {
        if t.replica_identity == ReplicaIdentity::Full {
            return;
        }
        let ident = t.replica_identity_columns();
        let q = t.table.qualified_name();
        for c in cols {
            if !ident.contains(c) {
                self.error(r, "", format!("column `{c}` of {q} joins it into `{}` but is not in its replica identity: a DELETE or an UPDATE moving the row would not say which row it belonged to, and that document would keep it", r.field), Some(format!("run `ALTER TABLE {q} REPLICA IDENTITY FULL;`")));
            }
        }
    }

    fn index(&mut self, t: &CatalogTable, cols: Vec<String>) {
        if cols.is_empty() || t.has_index_on(&cols) {
            return;
        }
        let q = t.table.qualified_name();
        let name = format!("{}_{}_idx", t.table.name, cols.join("_"));
        let w = format!(
            "no index on {q} ({}): every rebuild of a document that joins it scans the table; consider `CREATE INDEX {name} ON {q} ({});`",
            cols.join(", "),
            cols.join(", ")
        );
        if !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }
}

#[cfg(test)]
mod tests;
