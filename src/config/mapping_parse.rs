//! One mapping file's text → one validated [`Mapping`]: the file's raw
//! shape, then one step per key. Each step records its problems (checks in
//! `mapping_checks`) and every column it references, with its line, so the
//! catalog checks that come later can point at the place too.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::diag::{ConfigErrors, FileErrors, deserialize_all, join_key};
use super::mapping::{
    ColumnRef, Conversion, DEFAULT_ID_SEPARATOR, Field, FieldSource, IndexName, Mapping, OnDelete,
    OnTruncate, RelatedMapping, RelationKind,
};
use super::mapping_checks::{self as checks, index_name_problem, parse_path};
use super::template::{Template, check_strftime};
use crate::model::TableRef;

/// A list of column names, each with its own place in the file (a list may
/// span lines; errors point at the element).
type Names = Spanned<Vec<Spanned<String>>>;

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
    #[serde(default)]
    relations: BTreeMap<Spanned<String>, Spanned<RawRelated>>,
}

/// One `[relations.<field>]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelated {
    table: Spanned<String>,
    kind: Spanned<String>,
    on: Option<Spanned<BTreeMap<String, String>>>,
    through: Option<Spanned<String>>,
    through_on: Option<Spanned<BTreeMap<String, String>>>,
    include: Option<Names>,
    exclude: Option<Names>,
    #[serde(default)]
    rename: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    fields: BTreeMap<Spanned<String>, Spanned<RawField>>,
    order_by: Option<Names>,
    filter: Option<Spanned<String>>,
    required: Option<bool>,
    #[serde(default)]
    relations: BTreeMap<Spanned<String>, Spanned<RawRelated>>,
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

/// Parse and validate one mapping file's text. `file` names it in errors and
/// anchors `index_file`.
pub fn parse_mapping(file: &Path, text: &str) -> Result<Mapping, ConfigErrors> {
    let (raw, errors) = deserialize_all::<RawMapping>(file, text);
    let Some(raw) = raw else { return Err(errors) };
    // Entries dropped for a syntax or type error: later checks of what
    // contains them would only echo that error.
    let dropped: Vec<String> = errors.0.iter().filter_map(|e| e.key.clone()).collect();
    let mut p = Parser {
        out: FileErrors::new(file, text, errors),
        refs: Vec::new(),
        target_lines: BTreeMap::new(),
    };
    let mapping = p.mapping(raw);
    let mut errors = p.out.errors;
    checks::static_paths(&mapping, &mut errors);
    checks::forget_echoes(&mut errors, &dropped);
    errors.sort_by_place();
    errors.into_result(mapping)
}

/// What the steps collect besides their values: problems, column
/// references and where each document target was written.
struct Parser<'a> {
    out: FileErrors<'a>,
    refs: Vec<ColumnRef>,
    target_lines: BTreeMap<String, (String, usize)>,
}

impl Parser<'_> {
    /// Every key, one step each; the order of the steps is the order in
    /// which problems and column references are recorded.
    fn mapping(&mut self, raw: RawMapping) -> Mapping {
        let file = self.out.file;
        let name: Arc<str> = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
            .into();
        let table = self.table(&raw.table);
        let index = self.index(&raw.index);
        let id_columns = raw.id.as_ref().map(|ids| self.id_columns(ids));
        let id_separator = raw
            .id_separator
            .as_ref()
            .map(|s| s.get_ref().clone())
            .unwrap_or_else(|| DEFAULT_ID_SEPARATOR.to_string());
        let include = raw.include.as_ref().map(|c| self.columns(c, "include"));
        let exclude = raw.exclude.as_ref().map(|c| self.columns(c, "exclude"));
        checks::include_and_exclude(&mut self.out, raw.include.as_ref(), raw.exclude.as_ref());
        let renames = self.renames(&raw.rename);
        let fields = self.fields(&raw.fields);
        let merge = raw.merge.as_ref().map(|c| self.columns(c, "merge"));
        let filter = raw.filter.as_ref().and_then(|f| self.filter(f));
        let routing = raw.routing.as_ref().map(|r| self.column(r, "routing"));
        let soft_delete_column =
            (raw.soft_delete_column.as_ref()).map(|r| self.column(r, "soft_delete_column"));
        let alias = raw.alias.as_ref().map(|a| self.alias(a));
        let (index_settings, index_mappings) = self.index_body(&raw);
        let on_delete = raw.on_delete.unwrap_or_default();
        checks::commit_time_index(
            &mut self.out,
            &index,
            raw.index.span(),
            on_delete,
            raw.soft_delete_column.as_ref(),
        );
        let column_refs = std::mem::take(&mut self.refs);
        let target_lines = std::mem::take(&mut self.target_lines);
        let relations = self.relations(&raw.relations, "relations");
        let line = |s: &Spanned<String>| self.out.line(s.span());
        Mapping {
            name,
            file: file.to_path_buf(),
            qualified_table: table.qualified_name().into(),
            table,
            index,
            id_columns,
            id_separator,
            id_prefix: raw.id_prefix.unwrap_or_default(),
            primary_key: None,
            replica_identity: None,
            include,
            exclude: exclude.unwrap_or_default(),
            renames,
            fields,
            merge: merge.unwrap_or_default(),
            filter,
            routing,
            pipeline: raw.pipeline.as_ref().map(|p| p.get_ref().as_str().into()),
            pipeline_line: raw.pipeline.as_ref().map(line),
            alias,
            index_settings,
            index_mappings,
            on_delete,
            soft_delete_column,
            on_truncate: raw.on_truncate.unwrap_or_default(),
            column_refs,
            table_line: line(&raw.table),
            index_line: line(&raw.index),
            filter_line: raw.filter.as_ref().map(line),
            target_lines,
            relations,
            tree: None,
        }
    }

    /// `[relations.*]` under `prefix` (`relations`, `relations.items.relations`).
    fn relations(
        &mut self,
        raw: &BTreeMap<Spanned<String>, Spanned<RawRelated>>,
        prefix: &str,
    ) -> Vec<RelatedMapping> {
        let mut out = Vec::new();
        for (field, r) in raw {
            let key = join_key(prefix, field.get_ref());
            if let Err(m) = parse_path(field.get_ref()).and_then(|p| {
                (p.len() == 1)
                    .then_some(())
                    .ok_or("must be a plain name, not a path".into())
            }) {
                self.out.push(field.span(), &key, m, None);
                continue;
            }
            if let Some(rel) = self.related(field.get_ref(), r, &key) {
                out.push(rel);
            }
        }
        out
    }

    /// One related table: its join, and its part of the document read like
    /// a mapping's own keys (with its own column references, checked
    /// against its own table later).
    fn related(
        &mut self,
        field: &str,
        r: &Spanned<RawRelated>,
        key: &str,
    ) -> Option<RelatedMapping> {
        let raw = r.get_ref();
        let kind = match raw.kind.get_ref().as_str() {
            "many_to_one" => RelationKind::ManyToOne,
            "one_to_many" => RelationKind::OneToMany,
            "many_to_many" => RelationKind::ManyToMany,
            other => {
                self.out.push(
                    raw.kind.span(),
                    &join_key(key, "kind"),
                    format!("unknown relation kind `{other}`"),
                    Some("one of `many_to_one`, `one_to_many`, `many_to_many`".into()),
                );
                return None;
            }
        };
        let through = raw.through.as_ref().map(|t| self.table(t));
        if (kind == RelationKind::ManyToMany) != through.is_some() {
            let m = if through.is_some() {
                "`through` is only for `kind = \"many_to_many\"`"
            } else {
                "`kind = \"many_to_many\"` needs `through`, the join table"
            };
            self.out.push(r.span(), key, m, None);
        }
        if raw.through_on.is_some() && through.is_none() {
            self.out
                .push(r.span(), key, "`through_on` needs `through`", None);
        }
        let pairs = |p: &Option<Spanned<BTreeMap<String, String>>>| {
            p.as_ref().map(|m| {
                m.get_ref()
                    .iter()
                    .map(|(a, b)| (a.clone(), b.clone()))
                    .collect::<Vec<_>>()
            })
        };
        // The related table's own part, with its own references and lines.
        let refs = std::mem::take(&mut self.refs);
        let lines = std::mem::take(&mut self.target_lines);
        let table = self.table(&raw.table);
        let include = raw.include.as_ref().map(|c| self.columns(c, "include"));
        let exclude = raw.exclude.as_ref().map(|c| self.columns(c, "exclude"));
        checks::include_and_exclude(&mut self.out, raw.include.as_ref(), raw.exclude.as_ref());
        let renames = self.renames(&raw.rename);
        let fields = self.fields(&raw.fields);
        let filter = raw.filter.as_ref().and_then(|f| self.filter(f));
        let order_by = self.order_by(raw, r.span(), key);
        let column_refs = std::mem::replace(&mut self.refs, refs);
        let target_lines = std::mem::replace(&mut self.target_lines, lines);
        let relations = self.relations(&raw.relations, &join_key(key, "relations"));
        let line = self.out.line(r.span());
        let shape = Mapping {
            name: field.into(),
            file: self.out.file.to_path_buf(),
            qualified_table: table.qualified_name().into(),
            table,
            index: IndexName::Fixed("".into()),
            id_columns: None,
            id_separator: DEFAULT_ID_SEPARATOR.to_string(),
            id_prefix: String::new(),
            primary_key: None,
            replica_identity: None,
            include,
            exclude: exclude.unwrap_or_default(),
            renames,
            fields,
            merge: Vec::new(),
            filter,
            routing: None,
            pipeline: None,
            pipeline_line: None,
            alias: None,
            index_settings: None,
            index_mappings: None,
            on_delete: OnDelete::Delete,
            soft_delete_column: None,
            on_truncate: OnTruncate::Log,
            column_refs,
            table_line: self.out.line(raw.table.span()),
            index_line: line,
            filter_line: raw.filter.as_ref().map(|f| self.out.line(f.span())),
            target_lines,
            relations,
            tree: None,
        };
        Some(RelatedMapping {
            field: field.to_string(),
            kind,
            on: pairs(&raw.on),
            through,
            through_on: pairs(&raw.through_on),
            order_by: order_by.unwrap_or_default(),
            required: raw.required.unwrap_or(false),
            shape,
            line,
        })
    }

    /// `order_by = ["column", "column desc"]`.
    fn order_by(
        &mut self,
        raw: &RawRelated,
        span: std::ops::Range<usize>,
        key: &str,
    ) -> Option<Vec<String>> {
        let order_by = raw.order_by.as_ref().map(|o| {
            o.get_ref()
                .iter()
                .map(|t| {
                    let col = t.get_ref().split_whitespace().next().unwrap_or_default();
                    self.add_ref(col, "order_by", t.span());
                    t.get_ref().clone()
                })
                .collect::<Vec<_>>()
        });
        for term in order_by.iter().flatten() {
            let words: Vec<String> = term.split_whitespace().map(str::to_lowercase).collect();
            let ok = matches!(words.len(), 1 | 2)
                && (words.len() == 1 || words[1] == "asc" || words[1] == "desc");
            if !ok {
                let span = raw.order_by.as_ref().map_or(span.clone(), |o| o.span());
                self.out.push(
                    span,
                    &join_key(key, "order_by"),
                    format!("`{term}` is not `column` or `column asc|desc`"),
                    None,
                );
            }
        }
        order_by
    }

    fn add_ref(&mut self, column: &str, key: &str, span: std::ops::Range<usize>) {
        let line = self.out.line(span);
        self.refs.push(ColumnRef {
            column: column.to_string(),
            key: key.to_string(),
            line,
        });
    }

    /// A single column named under `key`.
    fn column(&mut self, c: &Spanned<String>, key: &str) -> String {
        self.add_ref(c.get_ref(), key, c.span());
        c.get_ref().clone()
    }

    /// A list of columns named under `key`.
    fn columns(&mut self, list: &Names, key: &str) -> Vec<String> {
        list.get_ref().iter().map(|c| self.column(c, key)).collect()
    }

    /// `table = "schema.table"` (a bare name means `public`).
    fn table(&mut self, t: &Spanned<String>) -> TableRef {
        match t.get_ref().split_once('.') {
            Some((s, n)) if !s.is_empty() && !n.is_empty() && !n.contains('.') => {
                TableRef::new(s, n)
            }
            None if !t.get_ref().is_empty() => TableRef::new("public", t.get_ref()),
            _ => {
                self.out.push(
                    t.span(),
                    "table",
                    format!("`{}` is not `schema.table`", t.get_ref()),
                    Some("write e.g. `public.orders`".into()),
                );
                TableRef::new("", "")
            }
        }
    }

    /// `index`: a fixed name, or a template of columns and the commit time.
    fn index(&mut self, index: &Spanned<String>) -> IndexName {
        let t = match Template::parse(index.get_ref()) {
            Ok(t) => t,
            Err(m) => {
                self.out.push(index.span(), "index", m, None);
                return IndexName::Fixed("".into());
            }
        };
        for m in checks::index_template_problems(&t) {
            self.out.push(index.span(), "index", m, None);
        }
        for c in t.columns() {
            self.add_ref(c, "index", index.span());
        }
        if t.is_fixed() {
            IndexName::Fixed(index.get_ref().as_str().into())
        } else {
            IndexName::Template(t)
        }
    }

    fn id_columns(&mut self, ids: &Names) -> Vec<String> {
        if ids.get_ref().is_empty() {
            self.out.push(
                ids.span(),
                "id",
                "is empty",
                Some("remove `id` to use the primary key".into()),
            );
        }
        self.columns(ids, "id")
    }

    /// `[rename]`: column → target path.
    fn renames(
        &mut self,
        raw: &BTreeMap<Spanned<String>, Spanned<String>>,
    ) -> BTreeMap<String, Vec<String>> {
        let mut renames = BTreeMap::new();
        for (col, target) in raw {
            let key = join_key("rename", col.get_ref());
            self.add_ref(col.get_ref(), &key, col.span());
            match parse_path(target.get_ref()) {
                Ok(p) => {
                    let line = self.out.line(target.span());
                    self.target_lines.insert(p.join("."), (key, line));
                    renames.insert(col.get_ref().clone(), p);
                }
                Err(m) => self.out.push(target.span(), &key, m, None),
            }
        }
        renames
    }

    /// `[fields]`: computed fields; a broken entry is left out.
    fn fields(&mut self, raw: &BTreeMap<Spanned<String>, Spanned<RawField>>) -> Vec<Field> {
        let mut fields = Vec::new();
        for (target, f) in raw {
            let key = join_key("fields", target.get_ref());
            let path = match parse_path(target.get_ref()) {
                Ok(p) => p,
                Err(m) => {
                    self.out.push(target.span(), &key, m, None);
                    continue;
                }
            };
            let Some(source) = self.field_source(f, &key) else {
                continue;
            };
            let line = self.out.line(target.span());
            self.target_lines.insert(path.join("."), (key, line));
            fields.push(Field { path, source });
        }
        fields
    }

    /// Exactly one of `column`, `template`, `value`.
    fn field_source(&mut self, f: &Spanned<RawField>, key: &str) -> Option<FieldSource> {
        let rf = f.get_ref();
        let sources = [
            rf.column.is_some(),
            rf.template.is_some(),
            rf.value.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            self.out.push(
                f.span(),
                key,
                "needs exactly one of `column`, `template`, `value`",
                None,
            );
            return None;
        }
        if rf.column.is_none()
            && (rf.convert.is_some() || rf.format.is_some() || rf.separator.is_some())
        {
            self.out.push(
                f.span(),
                key,
                "`convert`, `format` and `separator` apply only to `column`",
                None,
            );
            return None;
        }
        if let Some(c) = &rf.column {
            self.add_ref(c.get_ref(), key, c.span());
            let convert = self.conversion(f, key)?;
            return Some(FieldSource::Column {
                column: c.get_ref().clone(),
                convert,
            });
        }
        if let Some(t) = &rf.template {
            return match Template::parse(t.get_ref()) {
                Ok(tpl) => {
                    for c in tpl.columns() {
                        self.add_ref(c, key, t.span());
                    }
                    Some(FieldSource::Template(tpl))
                }
                Err(m) => {
                    self.out.push(t.span(), key, m, None);
                    None
                }
            };
        }
        Some(FieldSource::Constant(toml_to_json(rf.value.as_ref()?)))
    }

    /// A column field's `convert` (with its `format` or `separator`).
    fn conversion(&mut self, f: &Spanned<RawField>, key: &str) -> Option<Conversion> {
        let rf = f.get_ref();
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
                    self.out.push(span, key, m, None);
                }
                Conversion::Timestamp(fmt)
            }
            Some("split") => Conversion::Split(rf.separator.clone().unwrap_or(",".into())),
            Some(other) => {
                let span = rf.convert.as_ref().map_or(f.span(), |c| c.span());
                let message = format!("unknown conversion `{other}`");
                self.out
                    .push(span, key, message, checks::conversion_hint(other));
                return None;
            }
        };
        if rf.format.is_some() && !matches!(convert, Conversion::Timestamp(_)) {
            self.out.push(
                f.span(),
                key,
                "`format` needs `convert = \"timestamp\"`",
                None,
            );
        }
        if rf.separator.is_some() && !matches!(convert, Conversion::Split(_)) {
            self.out.push(
                f.span(),
                key,
                "`separator` needs `convert = \"split\"`",
                None,
            );
        }
        Some(convert)
    }

    fn filter(&mut self, f: &Spanned<String>) -> Option<String> {
        let t = f.get_ref().trim();
        if t.is_empty() {
            self.out
                .push(f.span(), "filter", "is empty", Some("remove it".into()));
            None
        } else {
            Some(t.to_string())
        }
    }

    fn alias(&mut self, a: &Spanned<String>) -> String {
        if let Some(m) = index_name_problem(a.get_ref()) {
            self.out
                .push(a.span(), "alias", m.replace("index name", "alias"), None);
        }
        a.get_ref().clone()
    }

    /// The index's `settings` and `mappings`: inline, or from `index_file`.
    fn index_body(&mut self, raw: &RawMapping) -> (Option<Value>, Option<Value>) {
        let inline = |t: &Option<toml::Table>| {
            t.as_ref()
                .map(|t| toml_to_json(&toml::Value::Table(t.clone())))
        };
        let (settings, mappings) = (inline(&raw.index_settings), inline(&raw.index_mappings));
        let Some(f) = &raw.index_file else {
            return (settings, mappings);
        };
        if settings.is_some() || mappings.is_some() {
            self.out.push(
                f.span(),
                "index_file",
                "`index_file` and inline `index_settings`/`index_mappings` are both set",
                Some("keep one".into()),
            );
        }
        match self.index_file(f) {
            Some(mut o) => (o.remove("settings"), o.remove("mappings")),
            None => (settings, mappings),
        }
    }

    /// The JSON object in `index_file` (relative to the mapping file).
    fn index_file(&mut self, f: &Spanned<String>) -> Option<serde_json::Map<String, Value>> {
        let path = (self.out.file.parent().unwrap_or(Path::new("."))).join(f.get_ref());
        let read = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()));
        let message = match read {
            Ok(Value::Object(o)) => {
                let unknown: Vec<String> = o
                    .keys()
                    .filter(|k| *k != "settings" && *k != "mappings")
                    .cloned()
                    .collect();
                if !unknown.is_empty() {
                    self.out.push(
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
                return Some(o);
            }
            Ok(_) => format!("{} must hold a JSON object", path.display()),
            Err(e) => format!("cannot read {}: {e}", path.display()),
        };
        self.out.push(f.span(), "index_file", message, None);
        None
    }
}
