//! Whether the documents a mapping writes fit an existing index mapping:
//! the kind of JSON each field receives (from the column's PostgreSQL type
//! or its conversion) against the Elasticsearch field type.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::doc_shape::DocField;
use crate::config::{Conversion, FieldSource};
use crate::model::CatalogTable;

/// What kind of JSON a document field receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Number,
    Text,
    Timestamp,
    Bool,
    Object,
    Unknown,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Number => "numbers",
            Kind::Text => "text",
            Kind::Timestamp => "timestamps",
            Kind::Bool => "booleans",
            Kind::Object => "JSON objects",
            Kind::Unknown => "values",
        }
    }
}

pub fn kind_of_pg_type(t: &str) -> Kind {
    let base = t.trim_end_matches("[]");
    let base = base.split('(').next().unwrap_or(base).trim();
    match base {
        "smallint" | "integer" | "bigint" | "numeric" | "real" | "double precision" | "oid" => {
            Kind::Number
        }
        "boolean" => Kind::Bool,
        "json" | "jsonb" => Kind::Object,
        "date" | "timestamp without time zone" | "timestamp with time zone" => Kind::Timestamp,
        "text"
        | "character varying"
        | "character"
        | "uuid"
        | "citext"
        | "name"
        | "inet"
        | "time without time zone"
        | "interval" => Kind::Text,
        _ => Kind::Unknown,
    }
}

pub fn kind_of_field(source: &FieldSource, t: &CatalogTable) -> Kind {
    match source {
        FieldSource::Constant(v) => match v {
            Value::Number(_) => Kind::Number,
            Value::Bool(_) => Kind::Bool,
            Value::String(_) => Kind::Text,
            Value::Object(_) => Kind::Object,
            _ => Kind::Unknown,
        },
        FieldSource::Template(_) => Kind::Text,
        FieldSource::Column { column, convert } => match convert {
            Conversion::Float | Conversion::Integer | Conversion::EpochMillis => Kind::Number,
            Conversion::String | Conversion::Split(_) => Kind::Text,
            Conversion::Timestamp(_) => Kind::Unknown, // any format: ES decides
            Conversion::Json => Kind::Unknown,
            Conversion::None => t
                .column(column)
                .map(|c| kind_of_pg_type(&c.type_name))
                .unwrap_or(Kind::Unknown),
        },
    }
}

/// Whether Elasticsearch accepts `kind` in a field mapped as `es_type`.
pub fn compatible(kind: Kind, es_type: &str) -> bool {
    const NUMERIC: [&str; 9] = [
        "long",
        "integer",
        "short",
        "byte",
        "double",
        "float",
        "half_float",
        "scaled_float",
        "unsigned_long",
    ];
    let numeric = NUMERIC.contains(&es_type);
    let object = matches!(es_type, "object" | "nested" | "flattened");
    match kind {
        Kind::Unknown => true,
        Kind::Object => object,
        _ if object => false,
        Kind::Number => es_type != "boolean",
        Kind::Bool => !numeric && es_type != "date" && es_type != "date_nanos",
        Kind::Timestamp => !numeric && es_type != "boolean",
        // Text may hold dates Elasticsearch parses; numbers it cannot.
        Kind::Text => !numeric && es_type != "boolean",
    }
}

/// A document field Elasticsearch would reject: what it receives, and the
/// index's type for it. Displays as "field `a.b` would receive text (from
/// column `c`)".
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub path: String,
    pub receives: String,
    pub es_type: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}` would receive {}", self.path, self.receives)
    }
}

/// Every field of the documents that the index mapping `types` (flattened
/// `a.b → type`) would refuse: a leaf of the wrong kind, or an object
/// (`customer` holding `customer.name`) where the index has a scalar.
pub fn field_conflicts(
    fields: &[DocField],
    t: &CatalogTable,
    types: &BTreeMap<String, String>,
) -> Vec<Conflict> {
    let mut out: Vec<Conflict> = Vec::new();
    for f in fields {
        for depth in 1..f.path.len() {
            let parent = f.path[..depth].join(".");
            if let Some(es_type) = types.get(&parent)
                && !matches!(es_type.as_str(), "object" | "nested" | "flattened")
                && !out.iter().any(|c| c.path == parent)
            {
                out.push(Conflict {
                    receives: format!("a JSON object (it holds `{}`)", f.path.join(".")),
                    path: parent,
                    es_type: es_type.clone(),
                });
            }
        }
        let path = f.path.join(".");
        let Some(es_type) = types.get(&path) else {
            continue;
        };
        let kind = kind_of_field(&f.source, t);
        if !compatible(kind, es_type) {
            let from = match &f.source {
                FieldSource::Column { column, .. } => format!("column `{column}`"),
                FieldSource::Template(_) => "a template".into(),
                FieldSource::Constant(_) => "a constant".into(),
            };
            out.push(Conflict {
                path,
                receives: format!("{} (from {from})", kind.describe()),
                es_type: es_type.clone(),
            });
        }
    }
    out
}

/// `60s`, `5m`, `1h`, `1d`, `500ms` → whole seconds.
pub fn parse_es_duration(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => n / 1000,
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return None,
    })
}

/// `properties` of an index mapping flattened to `a.b → type`.
pub fn flatten_properties(props: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    let Some(p) = props.as_object() else { return };
    for (name, def) in p {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let ty = def
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("object")
            .to_string();
        out.insert(path.clone(), ty);
        if let Some(sub) = def.get("properties") {
            flatten_properties(sub, &path, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_kinds_meet_index_types_as_elasticsearch_would() {
        let cases = [
            (Kind::Text, "long", false),
            (Kind::Text, "keyword", true),
            (Kind::Number, "keyword", true),
            (Kind::Number, "date", true),
            (Kind::Number, "boolean", false),
            (Kind::Object, "keyword", false),
            (Kind::Text, "object", false),
            (Kind::Timestamp, "date", true),
            (Kind::Text, "date", true),
            (Kind::Bool, "boolean", true),
            (Kind::Unknown, "long", true),
        ];
        for (k, t, ok) in cases {
            assert_eq!(compatible(k, t), ok, "{k:?} into {t}");
        }
    }

    #[test]
    fn conflicts_name_wrong_leaves_and_scalars_where_objects_go() {
        use crate::config::doc_shape::DocField;
        use crate::model::{CatalogColumn, TableRef};
        let t = CatalogTable {
            table: TableRef::new("public", "orders"),
            oid: 1,
            partitioned: false,
            columns: [("id", "bigint"), ("note", "text"), ("name", "text")]
                .iter()
                .map(|(n, ty)| CatalogColumn::named(n, ty))
                .collect(),
            primary_key: vec!["id".into()],
            replica_identity: crate::model::ReplicaIdentity::Default,
            identity_index: Vec::new(),
            readable: true,
            foreign_keys: Vec::new(),
            indexes: Vec::new(),
        };
        let col = |path: &[&str], column: &str| DocField {
            path: path.iter().map(|p| p.to_string()).collect(),
            source: FieldSource::Column {
                column: column.into(),
                convert: Conversion::None,
            },
        };
        let fields = [
            col(&["id"], "id"),
            col(&["note"], "note"),
            col(&["customer", "name"], "name"),
        ];
        let mut types = BTreeMap::new();
        flatten_properties(
            &serde_json::json!({
                "id": {"type": "long"},
                "note": {"type": "long"},
                "customer": {"type": "keyword"}
            }),
            "",
            &mut types,
        );
        let found: Vec<(String, String)> = field_conflicts(&fields, &t, &types)
            .iter()
            .map(|c| (c.to_string(), c.es_type.clone()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "field `note` would receive text (from column `note`)".to_string(),
                    "long".to_string()
                ),
                (
                    "field `customer` would receive a JSON object (it holds `customer.name`)"
                        .to_string(),
                    "keyword".to_string()
                ),
            ]
        );
    }

    #[test]
    fn elasticsearch_durations_parse_to_seconds() {
        assert_eq!(parse_es_duration("60s"), Some(60));
        assert_eq!(parse_es_duration("2h"), Some(7200));
        assert_eq!(parse_es_duration("1d"), Some(86400));
        assert_eq!(parse_es_duration("x"), None);
    }

    #[test]
    fn postgres_types_map_to_kinds() {
        assert_eq!(kind_of_pg_type("numeric(12,2)"), Kind::Number);
        assert_eq!(kind_of_pg_type("character varying(20)"), Kind::Text);
        assert_eq!(kind_of_pg_type("timestamp with time zone"), Kind::Timestamp);
        assert_eq!(kind_of_pg_type("jsonb"), Kind::Object);
        assert_eq!(kind_of_pg_type("geometry"), Kind::Unknown);
    }
}
