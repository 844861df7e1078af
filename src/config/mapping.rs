//! One mapping file (`mappings/<name>.toml`) → one validated `Mapping`:
//! which table feeds which index, how rows become documents, and what
//! deletes and truncates do.
//!
//! Everything that can be checked without a database is checked here; names
//! of columns are checked against the catalog in `catalog.rs`. Every column
//! reference keeps its line so those later errors can point at it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::diag::{ConfigError, ConfigErrors, deserialize_all, did_you_mean, join_key, line_of};
use super::template::{Template, TemplatePart, check_strftime};

/// Separator between the values of a composite `_id` (`7|2`), unless the
/// mapping sets `id_separator`.
pub const DEFAULT_ID_SEPARATOR: &str = "|";

/// Where documents go.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexName {
    Fixed(Arc<str>),
    /// Rendered per row from column values and/or the commit time.
    Template(Template),
}

/// How a column's value is converted before it lands in the document.
#[derive(Debug, Clone, PartialEq)]
pub enum Conversion {
    /// As PostgreSQL sent it (already JSON).
    None,
    /// Numbers and numeric strings → a JSON float.
    Float,
    /// Numbers and numeric strings → a JSON integer (fractions rejected).
    Integer,
    /// Any scalar → its text.
    String,
    /// A timestamp → text in this strftime format (UTC).
    Timestamp(String),
    /// A timestamp → milliseconds since the epoch.
    EpochMillis,
    /// Text split on a separator into an array of trimmed, non-empty strings.
    Split(String),
    /// Text holding JSON → that JSON.
    Json,
}

/// Where a document field's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldSource {
    Column {
        column: String,
        convert: Conversion,
    },
    /// Text built from columns (`"{first_name} {last_name}"`).
    Template(Template),
    Constant(Value),
}

/// A computed field from `[fields]`: a target path and its source.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// `customer.name` → `["customer", "name"]`.
    pub path: Vec<String>,
    pub source: FieldSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    /// Delete the document.
    #[default]
    Delete,
    /// Keep the document (an archive index).
    Ignore,
}

/// What a `TRUNCATE` of the table does. A bulk request cannot express
/// "delete every document of this table", so Sluice never pretends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTruncate {
    /// Emit nothing, log an error naming the table and index, count it in
    /// `sluice_changes_received_total{op="truncate"}`; the index keeps the
    /// old documents until a `sluice snapshot --reindex`.
    #[default]
    Log,
    /// Stop the pipeline with an error (the slot keeps the WAL) so an
    /// operator decides.
    Fail,
}

/// A reference to a column in a mapping file, kept for catalog checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRef {
    pub column: String,
    pub key: String,
    pub line: usize,
}

/// One validated mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    /// The file stem (`orders` for `mappings/orders.toml`).
    pub name: Arc<str>,
    pub file: PathBuf,
    pub schema: String,
    pub table: String,
    /// `schema.table`.
    pub qualified_table: Arc<str>,
    pub index: IndexName,
    /// Columns forming `_id`; `None` means the primary key.
    pub id_columns: Option<Vec<String>>,
    pub id_separator: String,
    /// Prepended to every `_id` (several tables in one index need distinct ids).
    pub id_prefix: String,
    /// The table's primary key and replica identity, once bound from the
    /// catalog (`Mappings::validate_against_catalog`).
    pub primary_key: Option<Vec<String>>,
    pub replica_identity: Option<(crate::model::ReplicaIdentity, Vec<String>)>,
    /// Copy only these columns (`None`: every column).
    pub include: Option<Vec<String>>,
    pub exclude: Vec<String>,
    /// Column → target path, for copied columns.
    pub renames: BTreeMap<String, Vec<String>>,
    pub fields: Vec<Field>,
    /// jsonb columns whose keys are merged into the document root.
    pub merge: Vec<String>,
    /// SQL boolean expression for the publication row filter and snapshot WHERE.
    pub filter: Option<String>,
    pub routing: Option<String>,
    pub pipeline: Option<Arc<str>>,
    pub alias: Option<String>,
    /// Body parts for index creation (`settings`, `mappings`).
    pub index_settings: Option<Value>,
    pub index_mappings: Option<Value>,
    pub on_delete: OnDelete,
    /// A row whose value here is neither NULL nor `false` is deleted from
    /// the index (updates and inserts included).
    pub soft_delete_column: Option<String>,
    pub on_truncate: OnTruncate,
    /// Every column the file mentions, with its line.
    pub column_refs: Vec<ColumnRef>,
    /// Where each `[rename]` target and `[fields]` entry is written:
    /// dotted target path → (key, line), for errors about the document shape.
    pub target_lines: BTreeMap<String, (String, usize)>,
    /// Line of `table =`, `index =` and `filter =`, for later errors.
    pub table_line: usize,
    pub index_line: usize,
    pub pipeline_line: Option<usize>,
    pub filter_line: Option<usize>,
}

impl Mapping {
    /// The columns a document needs besides the copied ones: `_id`, routing,
    /// templates, conversions, merges, soft delete.
    pub fn referenced_columns(&self) -> impl Iterator<Item = &str> {
        self.column_refs
            .iter()
            .filter(|r| r.key != "exclude")
            .map(|r| r.column.as_str())
    }

    /// The key and line that put `path` (dotted) into the document; a
    /// column copied under its own name has neither, so `include`/`table`.
    pub fn target_place(&self, path: &str) -> (String, Option<usize>) {
        match self.target_lines.get(path) {
            Some((key, line)) => (key.clone(), Some(*line)),
            None => ("fields".to_string(), None),
        }
    }

    /// For templated indices, the wildcard pattern (`orders-*`) to use for
    /// an index template; for fixed ones, the name itself.
    pub fn index_pattern(&self) -> String {
        match &self.index {
            IndexName::Fixed(n) => n.to_string(),
            IndexName::Template(t) => t.wildcard(),
        }
    }

    /// The body for creating the target index (or an index template's
    /// `template` part): the user's settings and mappings, plus
    /// `index.gc_deletes` so delete tombstones outlive any replay
    /// (DESIGN invariant 3) unless the user set it explicitly.
    pub fn create_index_body(&self, gc_deletes_setting: &str) -> Value {
        let mut settings = self
            .index_settings
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        let has_gc = settings.get("index.gc_deletes").is_some()
            || settings
                .get("index")
                .and_then(|i| i.get("gc_deletes"))
                .is_some()
            || settings.get("gc_deletes").is_some();
        if !has_gc && let Value::Object(m) = &mut settings {
            m.insert(
                "index.gc_deletes".into(),
                Value::String(gc_deletes_setting.into()),
            );
        }
        let mut body = serde_json::json!({ "settings": settings });
        if let Some(m) = &self.index_mappings {
            body["mappings"] = m.clone();
        }
        if let Some(a) = &self.alias {
            body["aliases"] = serde_json::json!({ a: {} });
        }
        body
    }
}

// ---- raw file shape -------------------------------------------------------

/// A list of column names, each with its own place in the file (a list may
/// span lines; errors point at the element).
type Names = Spanned<Vec<Spanned<String>>>;

fn names(v: &Names) -> Vec<String> {
    v.get_ref().iter().map(|n| n.get_ref().clone()).collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    table: Spanned<String>,
    index: Spanned<String>,
    id: Option<Names>,
    id_separator: Option<Spanned<String>>,
    id_prefix: Option<String>,
    include: Option<Names>,
    exclude: Option<Names>,
    #[serde(default)]
    rename: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    fields: BTreeMap<Spanned<String>, Spanned<RawField>>,
    merge: Option<Names>,
    filter: Option<Spanned<String>>,
    routing: Option<Spanned<String>>,
    pipeline: Option<Spanned<String>>,
    alias: Option<Spanned<String>>,
    index_file: Option<Spanned<String>>,
    index_settings: Option<toml::Table>,
    index_mappings: Option<toml::Table>,
    on_delete: Option<OnDelete>,
    soft_delete_column: Option<Spanned<String>>,
    on_truncate: Option<OnTruncate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    column: Option<Spanned<String>>,
    template: Option<Spanned<String>>,
    value: Option<toml::Value>,
    convert: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    separator: Option<String>,
}

const CONVERSIONS: [&str; 7] = [
    "float",
    "integer",
    "string",
    "timestamp",
    "epoch_millis",
    "split",
    "json",
];

/// Turn a TOML value into JSON (datetimes become their text).
pub fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Split a target path `customer.name` into its parts.
fn parse_path(s: &str) -> Result<Vec<String>, String> {
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

/// Parse and validate one mapping file's text. `file` names it in errors and
/// anchors `index_file`.
pub fn parse_mapping(file: &Path, text: &str) -> Result<Mapping, ConfigErrors> {
    let (raw, mut errors) = deserialize_all::<RawMapping>(file, text);
    let Some(raw) = raw else { return Err(errors) };
    // Entries dropped for a syntax or type error: later checks of what
    // contains them would only echo that error.
    let dropped: Vec<String> = errors.0.iter().filter_map(|e| e.key.clone()).collect();
    let line = |span: std::ops::Range<usize>| line_of(text, span.start);
    let mut err = |span: std::ops::Range<usize>, key: &str, msg: String, hint: Option<String>| {
        errors.push(
            ConfigError::new(file, msg)
                .at(Some(line(span)))
                .key(key)
                .hint_opt(hint),
        );
    };
    let mut refs: Vec<ColumnRef> = Vec::new();
    let mut add_ref = |column: &str, key: &str, span: std::ops::Range<usize>| {
        refs.push(ColumnRef {
            column: column.to_string(),
            key: key.to_string(),
            line: line(span),
        })
    };

    let name: Arc<str> = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .into();

    let (schema, table) = match raw.table.get_ref().split_once('.') {
        Some((s, t)) if !s.is_empty() && !t.is_empty() && !t.contains('.') => {
            (s.to_string(), t.to_string())
        }
        None if !raw.table.get_ref().is_empty() => ("public".into(), raw.table.get_ref().clone()),
        _ => {
            err(
                raw.table.span(),
                "table",
                format!("`{}` is not `schema.table`", raw.table.get_ref()),
                Some("write e.g. `public.orders`".into()),
            );
            (String::new(), String::new())
        }
    };

    let index = match Template::parse(raw.index.get_ref()) {
        Err(m) => {
            err(raw.index.span(), "index", m, None);
            IndexName::Fixed("".into())
        }
        Ok(t) => {
            for (i, p) in t.parts.iter().enumerate() {
                match p {
                    TemplatePart::Literal(l) => {
                        // Only the name's first characters may not be `-_+`.
                        let probe = if i == 0 { l.clone() } else { format!("x{l}") };
                        if let Some(m) = index_name_problem(&probe) {
                            err(raw.index.span(), "index", m.replace(&probe, l), None);
                        }
                    }
                    TemplatePart::Column(c) => add_ref(c, "index", raw.index.span()),
                    TemplatePart::CommitTime(_) => {}
                }
            }
            if t.is_fixed() {
                IndexName::Fixed(raw.index.get_ref().as_str().into())
            } else {
                IndexName::Template(t)
            }
        }
    };

    let id_columns = raw.id.as_ref().map(|ids| {
        if ids.get_ref().is_empty() {
            err(
                ids.span(),
                "id",
                "is empty".into(),
                Some("remove `id` to use the primary key".into()),
            );
        }
        for c in ids.get_ref() {
            add_ref(c.get_ref(), "id", c.span());
        }
        names(ids)
    });
    let id_separator = raw
        .id_separator
        .as_ref()
        .map(|s| s.get_ref().clone())
        .unwrap_or_else(|| DEFAULT_ID_SEPARATOR.to_string());

    let include = raw.include.as_ref().map(|inc| {
        for c in inc.get_ref() {
            add_ref(c.get_ref(), "include", c.span());
        }
        names(inc)
    });
    let exclude = raw
        .exclude
        .as_ref()
        .map(|exc| {
            for c in exc.get_ref() {
                add_ref(c.get_ref(), "exclude", c.span());
            }
            names(exc)
        })
        .unwrap_or_default();
    if let (Some(inc), Some(exc)) = (&raw.include, &raw.exclude) {
        err(
            exc.span(),
            "exclude",
            "`include` and `exclude` are both set".into(),
            Some(format!(
                "keep one (include lists {} columns)",
                inc.get_ref().len()
            )),
        );
    }

    let mut renames = BTreeMap::new();
    let mut target_lines = BTreeMap::new();
    for (col, target) in &raw.rename {
        let key = join_key("rename", col.get_ref());
        add_ref(col.get_ref(), &key, col.span());
        match parse_path(target.get_ref()) {
            Ok(p) => {
                target_lines.insert(p.join("."), (key, line(target.span())));
                renames.insert(col.get_ref().clone(), p);
            }
            Err(m) => err(target.span(), &key, m, None),
        }
    }

    let mut fields = Vec::new();
    for (target, f) in &raw.fields {
        let key = join_key("fields", target.get_ref());
        let path = match parse_path(target.get_ref()) {
            Ok(p) => p,
            Err(m) => {
                err(target.span(), &key, m, None);
                continue;
            }
        };
        let rf = f.get_ref();
        let sources = [
            rf.column.is_some(),
            rf.template.is_some(),
            rf.value.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            err(
                f.span(),
                &key,
                "needs exactly one of `column`, `template`, `value`".into(),
                None,
            );
            continue;
        }
        if rf.column.is_none()
            && (rf.convert.is_some() || rf.format.is_some() || rf.separator.is_some())
        {
            err(
                f.span(),
                &key,
                "`convert`, `format` and `separator` apply only to `column`".into(),
                None,
            );
            continue;
        }
        let source = if let Some(c) = &rf.column {
            add_ref(c.get_ref(), &key, c.span());
            let convert_span = rf.convert.as_ref().map_or(f.span(), |c| c.span());
            let convert = match rf.convert.as_ref().map(|c| c.get_ref().as_str()) {
                None => Conversion::None,
                Some("float") => Conversion::Float,
                Some("integer") => Conversion::Integer,
                Some("string") => Conversion::String,
                Some("epoch_millis") => Conversion::EpochMillis,
                Some("json") => Conversion::Json,
                Some("timestamp") => {
                    let fmt = rf
                        .format
                        .as_ref()
                        .map(|f| f.get_ref().clone())
                        .unwrap_or_else(|| "%Y-%m-%dT%H:%M:%S%.fZ".to_string());
                    if let Err(m) = check_strftime(&fmt) {
                        let span = rf.format.as_ref().map_or(f.span(), |f| f.span());
                        err(span, &key, m, None);
                    }
                    Conversion::Timestamp(fmt)
                }
                Some("split") => Conversion::Split(rf.separator.clone().unwrap_or(",".into())),
                Some(other) => {
                    err(
                        convert_span,
                        &key,
                        format!("unknown conversion `{other}`"),
                        did_you_mean(other, CONVERSIONS)
                            .or_else(|| Some(format!("use one of: {}", CONVERSIONS.join(", ")))),
                    );
                    continue;
                }
            };
            if rf.format.is_some() && !matches!(convert, Conversion::Timestamp(_)) {
                err(
                    f.span(),
                    &key,
                    "`format` needs `convert = \"timestamp\"`".into(),
                    None,
                );
            }
            if rf.separator.is_some() && !matches!(convert, Conversion::Split(_)) {
                err(
                    f.span(),
                    &key,
                    "`separator` needs `convert = \"split\"`".into(),
                    None,
                );
            }
            FieldSource::Column {
                column: c.get_ref().clone(),
                convert,
            }
        } else if let Some(t) = &rf.template {
            match Template::parse(t.get_ref()) {
                Ok(tpl) => {
                    for c in tpl.columns() {
                        add_ref(c, &key, t.span());
                    }
                    FieldSource::Template(tpl)
                }
                Err(m) => {
                    err(t.span(), &key, m, None);
                    continue;
                }
            }
        } else {
            FieldSource::Constant(toml_to_json(rf.value.as_ref().unwrap()))
        };
        target_lines.insert(path.join("."), (key, line(target.span())));
        fields.push(Field { path, source });
    }

    let merge = raw
        .merge
        .as_ref()
        .map(|m| {
            for c in m.get_ref() {
                add_ref(c.get_ref(), "merge", c.span());
            }
            names(m)
        })
        .unwrap_or_default();

    let filter = raw.filter.as_ref().and_then(|f| {
        let t = f.get_ref().trim();
        if t.is_empty() {
            err(
                f.span(),
                "filter",
                "is empty".into(),
                Some("remove it".into()),
            );
            None
        } else {
            Some(t.to_string())
        }
    });
    let routing = raw.routing.as_ref().map(|r| {
        add_ref(r.get_ref(), "routing", r.span());
        r.get_ref().clone()
    });
    let soft_delete_column = raw.soft_delete_column.as_ref().map(|r| {
        add_ref(r.get_ref(), "soft_delete_column", r.span());
        r.get_ref().clone()
    });
    let alias = raw.alias.as_ref().map(|a| {
        if let Some(m) = index_name_problem(a.get_ref()) {
            err(a.span(), "alias", m.replace("index name", "alias"), None);
        }
        a.get_ref().clone()
    });

    let (mut index_settings, mut index_mappings) = (
        raw.index_settings
            .as_ref()
            .map(|t| toml_to_json(&toml::Value::Table(t.clone()))),
        raw.index_mappings
            .as_ref()
            .map(|t| toml_to_json(&toml::Value::Table(t.clone()))),
    );
    if let Some(f) = &raw.index_file {
        if index_settings.is_some() || index_mappings.is_some() {
            err(
                f.span(),
                "index_file",
                "`index_file` and inline `index_settings`/`index_mappings` are both set".into(),
                Some("keep one".into()),
            );
        }
        let path = file.parent().unwrap_or(Path::new(".")).join(f.get_ref());
        match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
        {
            Ok(Value::Object(mut o)) => {
                let unknown: Vec<String> = o
                    .keys()
                    .filter(|k| *k != "settings" && *k != "mappings")
                    .cloned()
                    .collect();
                if !unknown.is_empty() {
                    err(
                        f.span(),
                        "index_file",
                        format!(
                            "{} has keys {:?}; only `settings` and `mappings` are read",
                            path.display(),
                            unknown
                        ),
                        None,
                    );
                }
                index_settings = o.remove("settings");
                index_mappings = o.remove("mappings");
            }
            Ok(_) => err(
                f.span(),
                "index_file",
                format!("{} must hold a JSON object", path.display()),
                None,
            ),
            Err(e) => err(
                f.span(),
                "index_file",
                format!("cannot read {}: {e}", path.display()),
                None,
            ),
        }
    }

    // A document written under last month's name cannot be found from this
    // month's: deletes and soft deletes would miss it and leave it behind.
    if let IndexName::Template(t) = &index
        && t.uses_commit_time()
    {
        if raw.on_delete.unwrap_or_default() == OnDelete::Delete {
            err(
                raw.index.span(),
                "index",
                "an index named by the commit time cannot take deletes: a row deleted (or updated) in a later period would leave its earlier document behind".into(),
                Some("set `on_delete = \"ignore\"` (every period keeps its documents), or name the index by columns".into()),
            );
        }
        if let Some(c) = &raw.soft_delete_column {
            err(
                c.span(),
                "soft_delete_column",
                "an index named by the commit time cannot take soft deletes: the delete would go to the current period's index, not the document's".into(),
                Some("remove it, or name the index by columns".into()),
            );
        }
    }

    let mapping = Mapping {
        name,
        file: file.to_path_buf(),
        qualified_table: format!("{schema}.{table}").into(),
        schema,
        table,
        index,
        id_columns,
        id_separator,
        id_prefix: raw.id_prefix.unwrap_or_default(),
        primary_key: None,
        replica_identity: None,
        include,
        exclude,
        renames,
        fields,
        merge,
        filter,
        routing,
        pipeline: raw.pipeline.as_ref().map(|p| p.get_ref().as_str().into()),
        pipeline_line: raw.pipeline.as_ref().map(|p| line(p.span())),
        alias,
        index_settings,
        index_mappings,
        on_delete: raw.on_delete.unwrap_or_default(),
        soft_delete_column,
        on_truncate: raw.on_truncate.unwrap_or_default(),
        column_refs: refs,
        table_line: line(raw.table.span()),
        index_line: line(raw.index.span()),
        filter_line: raw.filter.as_ref().map(|f| line(f.span())),
        target_lines,
    };
    if let Err(c) = super::doc_shape::check_static_paths(&mapping) {
        let (key, line) = mapping.target_place(&c.path);
        errors.push(ConfigError::new(file, c.message).key(key).at(line));
    }
    let echoes = |e: &ConfigError| {
        e.key.as_ref().is_some_and(|k| {
            dropped.iter().any(|d| {
                d.len() > k.len() && d.starts_with(k.as_str()) && d[k.len()..].starts_with('.')
            })
        })
    };
    errors.0.retain(|e| !echoes(e));
    errors.sort_by_place();
    errors.into_result(mapping)
}
