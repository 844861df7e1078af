//! Quoting for SQL that Sluice builds itself: the one definition every
//! layer that writes SQL (source, snapshot reader, check, teardown) uses,
//! so an identifier with a quote in it is escaped the same way everywhere.

/// `name` as a quoted identifier: `my "t"` → `"my ""t"""`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` with both parts quoted.
pub fn quote_table(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
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
}
