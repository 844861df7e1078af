//! Quoting for SQL that Sluice builds itself: the one definition every
//! layer that writes SQL (source, snapshot reader, check, teardown) uses,
//! so an identifier with a quote in it is escaped the same way everywhere.

use crate::model::PublishedTable;

/// `name` as a quoted identifier: `my "t"` → `"my ""t"""`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` with both parts quoted.
pub fn quote_table(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

impl PublishedTable {
    /// The table's part of `CREATE/ALTER PUBLICATION ... FOR TABLE`:
    /// `"public"."orders" ("id", "total") WHERE (status <> 'draft')`.
    /// (Written here rather than in `model`, which imports nothing and
    /// writes no SQL.) The row filter must have passed
    /// `row_filter::validate_row_filter` before it reaches DDL.
    pub fn to_sql(&self) -> String {
        let mut s = quote_table(&self.table.schema, &self.table.name);
        if let Some(cols) = &self.columns {
            let cols: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
            s.push_str(&format!(" ({})", cols.join(", ")));
        }
        if let Some(f) = &self.row_filter {
            s.push_str(&format!(" WHERE ({f})"));
        }
        s
    }
}

/// `text` as a string literal: `it's` → `'it''s'`.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_inside_identifiers_and_literals_are_doubled() {
        assert_eq!(quote_ident(r#"my "t""#), r#""my ""t""""#);
        assert_eq!(quote_table("public", "Orders"), r#""public"."Orders""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn published_tables_render_column_lists_and_filters_quoted() {
        let t = PublishedTable {
            row_filter: Some("total > 0".into()),
            columns: Some(vec!["id".into(), "total".into()]),
            ..PublishedTable::new("public", "Order")
        };
        assert_eq!(
            t.to_sql(),
            r#""public"."Order" ("id", "total") WHERE (total > 0)"#
        );
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
    }
}
