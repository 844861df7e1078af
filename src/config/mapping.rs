//! One mapping file (`mappings/<name>.toml`) → one validated `Mapping`:
//! which table feeds which index, how rows become documents, and what
//! deletes and truncates do.
//!
//! These are the plain types; `mapping_parse` builds them from a file (with
//! the checks of `mapping_checks`: everything that needs no database), and
//! `catalog` checks column names against the live catalog. Every column
//! reference keeps its line so those later errors can point at it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::template::Template;
use crate::model::TableRef;

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

/// How a related table joins its parent in a nested document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    /// The parent points at one row: an object (`customer` on an order).
    ManyToOne,
    /// Rows point at the parent: an array (`items` on an order).
    OneToMany,
    /// Through a join table: an array (`tags` on a product).
    ManyToMany,
}

/// One `[relations.<field>]` of a mapping (or of a relation, for depth).
#[derive(Debug, Clone, PartialEq)]
pub struct RelatedMapping {
    /// The document field it fills (`items`).
    pub field: String,
    pub kind: RelationKind,
    /// `on = { parent_column = "child_column" }` (for many-to-many: parent
    /// and join table); `None`: the foreign key PostgreSQL knows.
    pub on: Option<crate::model::JoinPairs>,
    pub through: Option<TableRef>,
    /// `through_on = { join_table_column = "child_column" }`.
    pub through_on: Option<crate::model::JoinPairs>,
    /// `ORDER BY` terms for the array (`["position", "name desc"]`).
    pub order_by: Vec<String>,
    /// Directly under the root: a root without this related row is not
    /// indexed.
    pub required: bool,
    /// The related table's part of the document: `table`, `include`,
    /// `exclude`, `rename`, `fields`, `filter` and its own `relations`,
    /// read like a top-level mapping's (its `index` is unused).
    pub shape: Mapping,
    /// Line of `[relations.<field>]`.
    pub line: usize,
}

/// One validated mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    /// The file stem (`orders` for `mappings/orders.toml`).
    pub name: Arc<str>,
    pub file: PathBuf,
    pub table: TableRef,
    /// `schema.table`, made once: the transformer looks mappings up by it.
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
    /// `[relations.*]`: tables joined into each document.
    pub relations: Vec<RelatedMapping>,
    /// The whole document's tables and joins, bound from the catalog
    /// (`Mappings::validate_against_catalog`) when there are relations.
    pub tree: Option<Arc<crate::model::DocTree>>,
}

impl Mapping {
    /// Whether documents join related tables (built by SQL reads, not
    /// from the changed row alone).
    pub fn is_nested(&self) -> bool {
        !self.relations.is_empty()
    }

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
