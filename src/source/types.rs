//! Type resolution: a column's type OID → how to convert its text values.
//!
//! Built-in types are known by OID (via `postgres-types`); user types (enums,
//! domains, extension types such as hstore and citext, arrays and ranges of
//! them) come from the catalog (`TypeCatalog::load`) or from pgoutput Type
//! messages (names only). A domain converts as its base type.

use std::collections::HashMap;

use postgres_types::{Kind, Type};

/// How values of one type are converted from their text form.
#[derive(Debug, Clone, PartialEq)]
pub enum Conv {
    Bool,
    Int,
    Float,
    Numeric,
    Money,
    /// Text, varchar, uuid, enums, inet, macaddr, tsvector, xml, bit, ...
    Text,
    Json,
    Bytea,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    Point,
    Hstore,
    Array {
        elem: Box<Conv>,
        delim: u8,
    },
    Range(Box<Conv>),
    /// A type we do not know: its text form, with one warning per column.
    Unknown,
}

impl Conv {
    /// True if this type, or its array element or range subtype, is unknown
    /// (so its values, or parts of them, are indexed as text).
    pub fn has_unknown(&self) -> bool {
        match self {
            Conv::Unknown => true,
            Conv::Array { elem, .. } => elem.has_unknown(),
            Conv::Range(sub) => sub.has_unknown(),
            _ => false,
        }
    }
}

/// What the catalog says about a non-built-in type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `pg_type.typtype`: b(ase), d(omain), e(num), r(ange), c(omposite), m(ultirange), p(seudo).
    /// `?` when only the name is known (from a pgoutput Type message).
    pub typtype: u8,
    /// Domain base type.
    pub base: u32,
    /// Array element type (0 if not an array).
    pub elem: u32,
    pub delim: u8,
    /// Range subtype.
    pub range_sub: u32,
}

/// Known non-built-in types, by OID.
#[derive(Debug, Clone, Default)]
pub struct TypeCatalog {
    types: HashMap<u32, TypeInfo>,
}

/// The catalog query behind `TypeCatalog::load`: every type of user schemas
/// (OIDs from 16384 on) with what conversion needs.
pub const TYPE_CATALOG_QUERY: &str =
    "SELECT t.oid, n.nspname::text, t.typname::text, t.typtype::text,
        t.typbasetype, t.typelem, t.typdelim::text, COALESCE(r.rngsubtype, 0::oid)
   FROM pg_type t
   JOIN pg_namespace n ON n.oid = t.typnamespace
   LEFT JOIN pg_range r ON r.rngtypid = t.oid
  WHERE t.oid >= 16384";

impl TypeCatalog {
    pub fn new() -> TypeCatalog {
        TypeCatalog::default()
    }

    pub fn insert(&mut self, info: TypeInfo) {
        // A name-only entry (pgoutput Type message) never replaces a full one.
        if info.typtype == b'?'
            && let Some(old) = self.types.get(&info.oid)
            && old.typtype != b'?'
        {
            return;
        }
        self.types.insert(info.oid, info);
    }

    /// Record what a pgoutput Type message says (names only).
    pub fn note_type_message(&mut self, oid: u32, schema: &str, name: &str) {
        self.insert(TypeInfo {
            oid,
            schema: schema.into(),
            name: name.into(),
            typtype: b'?',
            base: 0,
            elem: 0,
            delim: b',',
            range_sub: 0,
        });
    }

    pub fn get(&self, oid: u32) -> Option<&TypeInfo> {
        self.types.get(&oid)
    }

    /// True if this OID needs a catalog lookup to convert well (not built in
    /// and not fully known).
    pub fn needs_lookup(&self, oid: u32) -> bool {
        Type::from_oid(oid).is_none() && self.types.get(&oid).is_none_or(|t| t.typtype == b'?')
    }

    /// Load every user-defined type with `TYPE_CATALOG_QUERY`.
    pub async fn load(
        client: &tokio_postgres::Client,
    ) -> Result<TypeCatalog, tokio_postgres::Error> {
        let mut cat = TypeCatalog::new();
        cat.refresh(client).await?;
        Ok(cat)
    }

    pub async fn refresh(
        &mut self,
        client: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        for row in client.query(TYPE_CATALOG_QUERY, &[]).await? {
            let typtype: String = row.get(3);
            let delim: String = row.get(6);
            self.insert(TypeInfo {
                oid: row.get(0),
                schema: row.get(1),
                name: row.get(2),
                typtype: typtype.bytes().next().unwrap_or(b'b'),
                base: row.get(4),
                elem: row.get(5),
                delim: delim.bytes().next().unwrap_or(b','),
                range_sub: row.get(7),
            });
        }
        Ok(())
    }

    /// The converter for a type OID.
    pub fn resolve(&self, oid: u32) -> Conv {
        self.resolve_depth(oid, 0)
    }

    fn resolve_depth(&self, oid: u32, depth: u8) -> Conv {
        if depth > 16 {
            return Conv::Unknown;
        }
        if let Some(t) = Type::from_oid(oid) {
            return match t.kind() {
                Kind::Array(e) => Conv::Array {
                    elem: Box::new(self.resolve_depth(e.oid(), depth + 1)),
                    // box is the only built-in type with another delimiter.
                    delim: if e.oid() == Type::BOX.oid() {
                        b';'
                    } else {
                        b','
                    },
                },
                Kind::Range(s) => Conv::Range(Box::new(self.resolve_depth(s.oid(), depth + 1))),
                Kind::Domain(b) => self.resolve_depth(b.oid(), depth + 1),
                Kind::Enum(_) => Conv::Text,
                _ => builtin(oid),
            };
        }
        let Some(info) = self.types.get(&oid) else {
            return Conv::Unknown;
        };
        match info.typtype {
            b'd' => self.resolve_depth(info.base, depth + 1),
            b'e' => Conv::Text,
            b'r' => Conv::Range(Box::new(self.resolve_depth(info.range_sub, depth + 1))),
            _ if info.elem != 0 && info.name.starts_with('_') => Conv::Array {
                elem: Box::new(self.resolve_depth(info.elem, depth + 1)),
                delim: info.delim,
            },
            _ => match info.name.as_str() {
                "hstore" => Conv::Hstore,
                "citext" | "ltree" | "lquery" => Conv::Text,
                // Name-only knowledge of an enum or domain: text is right for
                // enums and a safe fallback otherwise.
                _ => Conv::Unknown,
            },
        }
    }
}

/// Built-in scalar types by OID.
fn builtin(oid: u32) -> Conv {
    match oid {
        16 => Conv::Bool,
        20 | 21 | 23 | 26 | 28 | 29 => Conv::Int, // int8 int2 int4 oid xid cid
        700 | 701 => Conv::Float,
        1700 => Conv::Numeric,
        790 => Conv::Money,
        114 | 3802 => Conv::Json,
        17 => Conv::Bytea,
        1082 => Conv::Date,
        1083 => Conv::Time,
        1266 => Conv::TimeTz,
        1114 => Conv::Timestamp,
        1184 => Conv::TimestampTz,
        1186 => Conv::Interval,
        600 => Conv::Point,
        // char name text bpchar varchar uuid inet cidr macaddr macaddr8 xml
        // bit varbit tsvector tsquery jsonpath pg_lsn regclass ...
        18 | 19 | 25 | 1042 | 1043 | 2950 | 869 | 650 | 829 | 774 | 142 | 1560 | 1562 | 3614
        | 3615 | 4072 | 3220 | 2205 | 2206 | 24 | 705 => Conv::Text,
        _ => Conv::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(oid: u32, name: &str, typtype: u8, base: u32, elem: u32, sub: u32) -> TypeInfo {
        TypeInfo {
            oid,
            schema: "public".into(),
            name: name.into(),
            typtype,
            base,
            elem,
            delim: b',',
            range_sub: sub,
        }
    }

    #[test]
    fn builtins_arrays_and_ranges_resolve_without_a_catalog() {
        let c = TypeCatalog::new();
        assert_eq!(c.resolve(23), Conv::Int);
        assert_eq!(
            c.resolve(1007),
            Conv::Array {
                elem: Box::new(Conv::Int),
                delim: b','
            }
        );
        assert_eq!(c.resolve(3910), Conv::Range(Box::new(Conv::TimestampTz)));
        assert_eq!(c.resolve(99999), Conv::Unknown);
        assert!(c.needs_lookup(99999) && !c.needs_lookup(23));
    }

    #[test]
    fn domains_enums_hstore_and_their_arrays_resolve_through_the_catalog() {
        let mut c = TypeCatalog::new();
        c.insert(info(20000, "posint", b'd', 23, 0, 0));
        c.insert(info(20001, "_posint", b'b', 0, 20000, 0));
        c.insert(info(20002, "mood", b'e', 0, 0, 0));
        c.insert(info(20003, "hstore", b'b', 0, 0, 0));
        c.insert(info(20004, "floatrange", b'r', 0, 0, 701));
        c.insert(info(20005, "dom_of_dom", b'd', 20000, 0, 0));
        assert_eq!(c.resolve(20000), Conv::Int);
        assert_eq!(c.resolve(20005), Conv::Int);
        assert_eq!(
            c.resolve(20001),
            Conv::Array {
                elem: Box::new(Conv::Int),
                delim: b','
            }
        );
        assert_eq!(c.resolve(20002), Conv::Text);
        assert_eq!(c.resolve(20003), Conv::Hstore);
        assert_eq!(c.resolve(20004), Conv::Range(Box::new(Conv::Float)));
    }

    #[test]
    fn a_type_message_does_not_overwrite_catalog_knowledge() {
        let mut c = TypeCatalog::new();
        c.insert(info(20000, "posint", b'd', 23, 0, 0));
        c.note_type_message(20000, "public", "posint");
        assert_eq!(c.resolve(20000), Conv::Int);
        c.note_type_message(20010, "public", "hstore");
        assert_eq!(c.resolve(20010), Conv::Hstore);
        assert!(c.needs_lookup(20010));
    }

    #[test]
    fn self_referencing_domains_do_not_recurse_forever() {
        let mut c = TypeCatalog::new();
        c.insert(info(20000, "loop", b'd', 20000, 0, 0));
        assert_eq!(c.resolve(20000), Conv::Unknown);
    }
}
