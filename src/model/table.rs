//! Which table: the one table reference every layer uses (mappings,
//! publication management, snapshots, the catalog), and a table as the
//! publication carries it.

use std::fmt;

/// A table by its schema and name (unquoted, as PostgreSQL stores them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableRef {
    pub schema: String,
    pub name: String,
}

impl TableRef {
    pub fn new(schema: &str, name: &str) -> TableRef {
        TableRef {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parse `schema.table` (a bare name means `public`).
    pub fn parse(qualified: &str) -> TableRef {
        match qualified.split_once('.') {
            Some((s, t)) => TableRef::new(s, t),
            None => TableRef::new("public", qualified),
        }
    }

    /// `schema.table`, unquoted: how mappings, messages and catalog keys
    /// name it.
    pub fn qualified_name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// One table of the publication, as `CREATE PUBLICATION ... FOR TABLE
/// schema.table (columns) WHERE (row_filter)` needs it, and what a snapshot
/// of the table reads: the same row filter as its WHERE clause and the same
/// columns, so filtered rows never leave the server and the snapshot sees
/// exactly what streaming sees. Its SQL form (`to_sql`) is written in
/// `source::sql`, with the rest of Sluice's SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublishedTable {
    pub table: TableRef,
    /// A SQL boolean expression (PostgreSQL 15 row filter); `None`: every row.
    pub row_filter: Option<String>,
    /// Only these columns; `None`: every column.
    pub columns: Option<Vec<String>>,
}

impl PublishedTable {
    /// Every row and column of `schema.name`.
    pub fn new(schema: &str, name: &str) -> PublishedTable {
        PublishedTable::whole(TableRef::new(schema, name))
    }

    /// Every row and column of `table`.
    pub fn whole(table: TableRef) -> PublishedTable {
        PublishedTable {
            table,
            row_filter: None,
            columns: None,
        }
    }

    /// Every row and column of `schema.table` (a bare name means `public`).
    pub fn parse(qualified: &str) -> PublishedTable {
        PublishedTable::whole(TableRef::parse(qualified))
    }

    /// `schema.table`, unquoted.
    pub fn qualified_name(&self) -> String {
        self.table.qualified_name()
    }
}
