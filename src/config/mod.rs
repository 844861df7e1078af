//! Configuration: `sluice.toml` and `mappings/*.toml` into validated, typed
//! config. Errors name the file, line and key (DESIGN invariant 8), and every
//! problem is reported at once.
//!
//! Entry points: [`Config::load`] reads everything; [`Mappings::publication_tables`]
//! says what to publish (with row filters and column lists);
//! [`Mappings::validate_against_catalog`] checks column names against the
//! live catalog; [`Mappings::index_specs`] says how to create indices.
//!
//! Config runs no SQL and opens no connection: the catalog comes in as
//! plain data (`model::Catalog`, read by `source::catalog`).

pub mod catalog;
pub mod diag;
pub mod doc_shape;
pub mod mapping;
pub mod mapping_checks;
pub mod mapping_parse;
pub mod nested;
pub mod settings;
pub mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use diag::{ConfigError, ConfigErrors};
pub use mapping::{
    Conversion, Field, FieldSource, IndexName, Mapping, OnDelete, OnTruncate, RelatedMapping,
    RelationKind,
};
pub use mapping_parse::parse_mapping;
pub use settings::{
    Env, HttpConfig, PipelineConfig, ProcessEnv, Settings, SnapshotConfig, SnapshotMode,
    parse_settings,
};
pub use template::{Template, TemplatePart};

use crate::model::{Catalog, PublishedTable, ReplicaIdentity, TableRef};
use crate::sink::EsConfig;
use crate::source::PgConnectConfig;

/// The Elasticsearch index where Sluice keeps its own state (snapshot
/// progress, running reindexes).
pub const STATE_INDEX: &str = "sluice-state";

/// Everything Sluice needs to run, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `sluice.toml` it came from.
    pub file: PathBuf,
    pub postgres: PgConnectConfig,
    pub slot: String,
    pub publication: String,
    /// Heartbeat messages while streaming (`None`: off).
    pub heartbeat_interval: Option<std::time::Duration>,
    pub elasticsearch: EsConfig,
    pub pipeline: PipelineConfig,
    pub snapshot: SnapshotConfig,
    pub http: HttpConfig,
    pub mappings_dir: PathBuf,
    pub mappings: Mappings,
}

impl Config {
    /// Read `sluice.toml` and every `*.toml` in its `mappings_dir`, with
    /// `${ENV}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Self::load_with_env(path, &ProcessEnv)
    }

    pub fn load_with_env(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path, format!("cannot read the configuration file: {e}"))
                .hint("pass `--config <file>` or set SLUICE_CONFIG")
        })?;
        // A broken sluice.toml does not hide the mappings' problems: both
        // are reported in one run.
        let (s, mappings) = match parse_settings(path, &text, env) {
            Ok(s) => {
                let m = Mappings::load_dir(&s.mappings_dir)?;
                (s, m)
            }
            Err(mut errors) => {
                if let Some(dir) = settings::mappings_dir_of(path, &text)
                    && let Err(e) = Mappings::load_dir(&dir)
                {
                    errors.0.extend(e.0);
                }
                return Err(errors);
            }
        };
        Ok(Config {
            file: path.to_path_buf(),
            postgres: s.postgres,
            slot: s.slot,
            publication: s.publication,
            heartbeat_interval: s.heartbeat_interval,
            elasticsearch: s.elasticsearch,
            pipeline: s.pipeline,
            snapshot: s.snapshot,
            http: s.http,
            mappings_dir: s.mappings_dir,
            mappings,
        })
    }
}

/// How to create one target index (or, for a templated name, an index
/// template matching `pattern`).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    /// The index name, or a wildcard pattern (`orders-*`) when templated.
    pub pattern: String,
    pub templated: bool,
    /// Ready-made create-index body (`settings` incl. `index.gc_deletes`,
    /// `mappings`, `aliases`); for templates, use it as `template`.
    pub body: serde_json::Value,
    pub alias: Option<String>,
}

/// Every mapping, validated together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mappings {
    pub list: Vec<Mapping>,
}

/// What nested mappings cannot share: a root with another nested mapping
/// (the snapshot reads a root's rows once, as one tree's documents), and a
/// related table with a mapping that filters rows (the publication's row
/// filter would hide changes the documents above it need).
fn nested_sharing(list: &[Mapping], errors: &mut ConfigErrors) {
    for m in list.iter().filter(|m| m.is_nested()) {
        let clash = list
            .iter()
            .find(|o| o.is_nested() && o.qualified_table == m.qualified_table && o.file != m.file);
        if let Some(other) = clash {
            errors.push(
                ConfigError::new(
                    &other.file,
                    format!(
                        "{} is already the root of {}, which has `relations`; one table roots one nested mapping",
                        m.qualified_table,
                        m.file.display()
                    ),
                )
                .at(Some(other.table_line))
                .key("table"),
            );
        }
        let mut related = Vec::new();
        related_tables(&m.relations, &mut |t: &TableRef| related.push(t.clone()));
        for o in list
            .iter()
            .filter(|o| o.filter.is_some() && related.contains(&o.table))
        {
            errors.push(
                ConfigError::new(
                    &o.file,
                    format!(
                        "{} is joined into the documents of {}, so its changes must all be published: it cannot have a row filter",
                        o.qualified_table,
                        m.file.display()
                    ),
                )
                .at(o.filter_line)
                .key("filter"),
            );
        }
    }
}

/// Every table named under `relations` (join tables included), depth first.
fn related_tables(rels: &[RelatedMapping], add: &mut impl FnMut(&TableRef)) {
    for r in rels {
        if let Some(t) = &r.through {
            add(t);
        }
        add(&r.shape.table);
        related_tables(&r.shape.relations, add);
    }
}

impl Mappings {
    /// Load every `*.toml` file of `dir` (sorted by name).
    pub fn load_dir(dir: &Path) -> Result<Mappings, ConfigErrors> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            ConfigError::new(dir, format!("cannot read the mappings directory: {e}"))
                .key("mappings_dir")
                .hint("set `mappings_dir` in sluice.toml (relative to it)")
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ConfigError::new(
                dir,
                "no mapping files (*.toml) in the mappings directory",
            )
            .key("mappings_dir")
            .hint("add one per table and index; see mappings/README.md in the Sluice repository")
            .into());
        }
        let mut texts = Vec::new();
        let mut errors = ConfigErrors::default();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(t) => texts.push((f, t)),
                Err(e) => errors.push(ConfigError::new(&f, format!("cannot read: {e}"))),
            }
        }
        let refs: Vec<(&Path, &str)> = texts
            .iter()
            .map(|(f, t)| (f.as_path(), t.as_str()))
            .collect();
        match Self::from_texts(&refs) {
            Ok(m) if errors.is_empty() => Ok(m),
            Ok(_) => Err(errors),
            Err(e) => {
                errors.0.extend(e.0);
                Err(errors)
            }
        }
    }

    /// Parse mapping texts (`(file, text)`), then check them together.
    pub fn from_texts(files: &[(&Path, &str)]) -> Result<Mappings, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut list = Vec::new();
        for (f, t) in files {
            match parse_mapping(f, t) {
                Ok(m) => list.push(m),
                Err(e) => errors.0.extend(e.0),
            }
        }
        if files.is_empty() {
            errors.push(
                ConfigError::new(Path::new("mappings"), "no mapping files (*.toml) found")
                    .hint("add one, e.g. copy mappings/orders.toml from the Sluice repository"),
            );
        }
        nested_sharing(&list, &mut errors);
        // All mappings of one table share one publication entry, so they
        // must agree on its row filter: PostgreSQL evaluates the filter, the
        // transformer cannot.
        let mut first_filter: BTreeMap<&str, &Mapping> = BTreeMap::new();
        for m in &list {
            match first_filter.get(&*m.qualified_table) {
                None => {
                    first_filter.insert(&m.qualified_table, m);
                }
                Some(first) if first.filter != m.filter => errors.push(
                    ConfigError::new(
                        &m.file,
                        format!(
                            "row filter differs from {}'s for the same table {} ({:?} vs {:?})",
                            first.file.display(),
                            m.qualified_table,
                            m.filter,
                            first.filter
                        ),
                    )
                    .at(m.filter_line.or(Some(m.table_line)))
                    .key("filter")
                    .hint("mappings of one table must use the same `filter` (the publication holds one per table); filter with a view or split the table"),
                ),
                Some(_) => {}
            }
        }
        let mappings = Mappings { list };
        if let Err(e) = mappings.index_specs_checked("86400s") {
            errors.0.extend(e.0);
        }
        errors.into_result(mappings)
    }

    /// The tables whose changes the stream needs, each once, in mapping
    /// order: the mapped tables and every table joined into a nested
    /// document.
    pub fn tables(&self) -> Vec<TableRef> {
        let mut out: Vec<TableRef> = Vec::new();
        for m in &self.list {
            let mut add = |t: &TableRef| {
                if !out.contains(t) {
                    out.push(t.clone());
                }
            };
            add(&m.table);
            related_tables(&m.relations, &mut add);
        }
        out
    }

    /// The index names the mappings write to, sorted, once each; a
    /// templated name (one index per period or value) has no single index.
    pub fn fixed_indices(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .list
            .iter()
            .filter_map(|m| match &m.index {
                IndexName::Fixed(n) => Some(n.to_string()),
                IndexName::Template(_) => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Schemas the mappings use (what `source::catalog::read_schemas` reads).
    pub fn schemas(&self) -> Vec<String> {
        let mut s: Vec<String> = self.list.iter().map(|m| m.table.schema.clone()).collect();
        s.sort();
        s.dedup();
        s
    }

    /// The mappings fed by `schema.table`.
    pub fn for_table<'a>(&'a self, qualified: &'a str) -> impl Iterator<Item = &'a Mapping> {
        self.list
            .iter()
            .filter(move |m| &*m.qualified_table == qualified)
    }

    /// Check every mapping against the live catalog and bind primary keys
    /// and replica identities. Call at start-up (and from `check`) before
    /// `publication_tables` and before building the transformer.
    pub fn validate_against_catalog(&mut self, catalog: &Catalog) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::default();
        for m in &mut self.list {
            catalog::validate_mapping(m, catalog, &mut errors);
            if m.is_nested() {
                for w in nested::bind(m, catalog, &mut errors) {
                    tracing::warn!(mapping = %m.name, "{w}");
                }
            }
        }
        errors.sort_by_place();
        errors.into_result(())
    }

    /// One publication entry per table. Column lists are used only when
    /// every mapping of the table lists its columns (`include`) and the
    /// replica identity is known and not FULL (PostgreSQL requires the list
    /// to cover the replica identity); otherwise the whole row is published.
    pub fn publication_tables(&self) -> Vec<PublishedTable> {
        self.tables()
            .into_iter()
            .map(|table| {
                let q = table.qualified_name();
                let ms: Vec<&Mapping> = self.for_table(&q).collect();
                // A table only joined into nested documents publishes every
                // row (their filters apply in the reads); a nested root
                // keeps its mappings' filter but every column (its related
                // fields are read, not published).
                if ms.is_empty() {
                    return PublishedTable::whole(table);
                }
                let row_filter = ms[0].filter.clone();
                if ms.iter().any(|m| m.is_nested()) {
                    return PublishedTable {
                        table,
                        row_filter,
                        columns: None,
                    };
                }
                let columns = ms.iter().try_fold(Vec::<String>::new(), |mut acc, m| {
                    let inc = m.include.as_ref()?;
                    let (ident, ident_cols) = m.replica_identity.as_ref()?;
                    if *ident == ReplicaIdentity::Full {
                        return None;
                    }
                    if m.id_columns.is_none() {
                        acc.extend(m.primary_key.clone()?);
                    }
                    acc.extend(ident_cols.iter().cloned());
                    acc.extend(inc.iter().cloned());
                    acc.extend(m.referenced_columns().map(str::to_string));
                    Some(acc)
                });
                let columns = columns.map(|mut c| {
                    let mut seen = std::collections::HashSet::new();
                    c.retain(|x| seen.insert(x.clone()));
                    c
                });
                PublishedTable {
                    table,
                    row_filter,
                    columns,
                }
            })
            .collect()
    }

    /// How to create each target index: settings (with `index.gc_deletes`),
    /// mappings and alias, one entry per distinct index name or pattern.
    pub fn index_specs(&self, gc_deletes_setting: &str) -> Vec<IndexSpec> {
        self.index_specs_checked(gc_deletes_setting)
            .unwrap_or_else(|_| unreachable!("index specs were checked at load time"))
    }

    fn index_specs_checked(&self, gc: &str) -> Result<Vec<IndexSpec>, ConfigErrors> {
        let mut out: Vec<(IndexSpec, &Mapping)> = Vec::new();
        let mut errors = ConfigErrors::default();
        for m in &self.list {
            let pattern = m.index_pattern();
            let spec = IndexSpec {
                templated: matches!(m.index, IndexName::Template(_)),
                body: m.create_index_body(gc),
                alias: m.alias.clone(),
                pattern,
            };
            match out.iter_mut().find(|(s, _)| s.pattern == spec.pattern) {
                None => out.push((spec, m)),
                Some((existing, first)) => {
                    let explicit = |x: &Mapping| {
                        x.index_settings.is_some()
                            || x.index_mappings.is_some()
                            || x.alias.is_some()
                    };
                    if !explicit(m) {
                        continue;
                    }
                    if !explicit(first) {
                        *existing = spec;
                        *first = m;
                    } else if existing.body != spec.body {
                        errors.push(
                            ConfigError::new(
                                &m.file,
                                format!(
                                    "index `{}` is also configured by {} with different settings, mappings or alias",
                                    spec.pattern,
                                    first.file.display()
                                ),
                            )
                            .at(Some(m.index_line))
                            .key("index")
                            .hint("configure a shared index in one mapping file only"),
                        );
                    }
                }
            }
        }
        errors.into_result(out.into_iter().map(|(s, _)| s).collect())
    }
}

#[cfg(test)]
mod tests;
