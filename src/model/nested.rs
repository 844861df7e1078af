//! A nested document's shape as plain data: the root table and the tables
//! joined under it, with how each hangs from its parent. `config` builds it
//! from a mapping's `[relations.*]` and the catalog's foreign keys; `source`
//! turns it into SQL (one statement per root chunk or per batch of root
//! keys, so PostgreSQL does the joins); `stream` walks it upward to find the
//! roots a change of any of its tables touches.
//!
//! The invariant it serves: every document is rebuilt whole from one read
//! of the tables, never patched, so a rebuilt document equals what a fresh
//! snapshot would build at the same point.

use super::change::{Column, Relation, ReplicaIdentity};
use super::table::TableRef;

/// Pairs of columns that join two tables: `(upper, lower)`, where upper is
/// the side nearer the root (`orders.id = order_items.order_id` is
/// `("id", "order_id")` for items under orders).
pub type JoinPairs = Vec<(String, String)>;

/// How a related table hangs under its parent.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// The parent row points at one row (`orders.customer_id =
    /// customers.id`): an object, or null.
    ManyToOne { on: JoinPairs },
    /// Rows point at the parent (`orders.id = order_items.order_id`): an
    /// array.
    OneToMany { on: JoinPairs },
    /// Through a join table (`products.id = product_tags.product_id`,
    /// `product_tags.tag_id = tags.id`): an array.
    Through {
        table: TableRef,
        /// `(parent column, join-table column)`.
        parent_on: JoinPairs,
        /// `(join-table column, child column)`.
        child_on: JoinPairs,
    },
}

impl Link {
    /// Whether the field is an array (else an object or null).
    pub fn is_many(&self) -> bool {
        !matches!(self, Link::ManyToOne { .. })
    }
}

/// One table of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct DocNode {
    pub table: TableRef,
    /// The columns read, in table order, with their types: what the
    /// document's fields for this table are made from.
    pub columns: Vec<Column>,
    /// The row's unique key (the root's is the document's `_id` columns).
    pub key: Vec<String>,
    /// SQL boolean expression on this table's columns (`filter`).
    pub filter: Option<String>,
    /// `ORDER BY` terms for an array, e.g. `"position"`, `"name DESC"`;
    /// the key when the mapping sets none, so arrays are deterministic.
    pub order_by: Vec<String>,
    pub children: Vec<DocChild>,
}

/// JSON's type OID: the type of a related field's column in a read row.
pub const JSON_OID: u32 = 114;

impl DocNode {
    /// The rows a documents read yields for this node: its columns, then
    /// one JSON column per related field, named after the field. Relation
    /// id 0 marks it as a read, never a table of the stream.
    pub fn read_relation(&self) -> Relation {
        let mut columns = self.columns.clone();
        columns.extend(self.children.iter().map(|c| Column {
            name: c.field.clone(),
            type_oid: JSON_OID,
            type_modifier: -1,
            is_key: false,
        }));
        Relation {
            id: 0,
            schema: self.table.schema.clone(),
            name: self.table.name.clone(),
            replica_identity: ReplicaIdentity::Default,
            columns,
        }
    }
}

/// A related table under its parent, at document field `field`.
#[derive(Debug, Clone, PartialEq)]
pub struct DocChild {
    pub field: String,
    pub link: Link,
    /// Only directly under the root: a root without this related row is no
    /// document (it leaves the index).
    pub required: bool,
    pub node: DocNode,
}

/// A root table and everything joined under it.
#[derive(Debug, Clone, PartialEq)]
pub struct DocTree {
    pub root: DocNode,
}

/// Where a table appears in a tree: the path of child positions from the
/// root (empty for the root itself), and whether it appears as the join
/// table of a `Through` link at the end of that path rather than as the
/// node itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub path: Vec<usize>,
    pub as_through: bool,
}

impl DocTree {
    /// Every place `table` appears (a table may appear more than once).
    pub fn places(&self, table: &TableRef) -> Vec<Place> {
        let mut out = Vec::new();
        walk(&self.root, &mut Vec::new(), &mut |path, node, link| {
            if &node.table == table {
                out.push(Place {
                    path: path.to_vec(),
                    as_through: false,
                });
            }
            if let Some(Link::Through { table: t, .. }) = link
                && t == table
            {
                out.push(Place {
                    path: path.to_vec(),
                    as_through: true,
                });
            }
        });
        out
    }

    /// Every table the tree reads (join tables included), each once.
    pub fn tables(&self) -> Vec<TableRef> {
        let mut out: Vec<TableRef> = Vec::new();
        walk(&self.root, &mut Vec::new(), &mut |_, node, link| {
            if let Some(Link::Through { table, .. }) = link
                && !out.contains(table)
            {
                out.push(table.clone());
            }
            if !out.contains(&node.table) {
                out.push(node.table.clone());
            }
        });
        out
    }

    /// The node at `path` and the link it hangs by (none for the root).
    pub fn at(&self, path: &[usize]) -> (&DocNode, Option<&DocChild>) {
        let mut node = &self.root;
        let mut child = None;
        for &i in path {
            let c = &node.children[i];
            child = Some(c);
            node = &c.node;
        }
        (node, child)
    }
}

fn walk<'a>(
    node: &'a DocNode,
    path: &mut Vec<usize>,
    f: &mut impl FnMut(&[usize], &'a DocNode, Option<&'a Link>),
) {
    if path.is_empty() {
        f(path, node, None);
    }
    for (i, c) in node.children.iter().enumerate() {
        path.push(i);
        f(path, &c.node, Some(&c.link));
        walk(&c.node, path, f);
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(table: &str, children: Vec<DocChild>) -> DocNode {
        DocNode {
            table: TableRef::new("public", table),
            columns: Vec::new(),
            key: vec!["id".into()],
            filter: None,
            order_by: vec!["id".into()],
            children,
        }
    }

    fn child(field: &str, link: Link, node: DocNode) -> DocChild {
        DocChild {
            field: field.into(),
            link,
            required: false,
            node,
        }
    }

    fn shop() -> DocTree {
        let on = |a: &str, b: &str| vec![(a.to_string(), b.to_string())];
        let category = node("categories", vec![]);
        let product = node(
            "products",
            vec![child(
                "category",
                Link::ManyToOne {
                    on: on("category_id", "id"),
                },
                category,
            )],
        );
        let items = node(
            "order_items",
            vec![child(
                "product",
                Link::ManyToOne {
                    on: on("product_id", "id"),
                },
                product,
            )],
        );
        let tags = node("tags", vec![]);
        DocTree {
            root: node(
                "orders",
                vec![
                    child(
                        "items",
                        Link::OneToMany {
                            on: on("id", "order_id"),
                        },
                        items,
                    ),
                    child(
                        "tags",
                        Link::Through {
                            table: TableRef::new("public", "order_tags"),
                            parent_on: on("id", "order_id"),
                            child_on: on("tag_id", "id"),
                        },
                        tags,
                    ),
                ],
            ),
        }
    }

    #[test]
    fn a_tree_names_every_table_it_reads_once_join_tables_included() {
        let names: Vec<String> = shop().tables().iter().map(|t| t.name.clone()).collect();
        assert_eq!(
            names,
            [
                "orders",
                "order_items",
                "products",
                "categories",
                "order_tags",
                "tags"
            ]
        );
    }

    #[test]
    fn a_table_is_found_at_its_path_and_a_join_table_at_its_link() {
        let t = shop();
        let at = |n: &str| t.places(&TableRef::new("public", n));
        assert_eq!(
            at("orders"),
            vec![Place {
                path: vec![],
                as_through: false
            }]
        );
        assert_eq!(
            at("categories"),
            vec![Place {
                path: vec![0, 0, 0],
                as_through: false
            }]
        );
        assert_eq!(
            at("order_tags"),
            vec![Place {
                path: vec![1],
                as_through: true
            }]
        );
        assert_eq!(t.at(&[0, 0]).0.table.name, "products");
        assert!(t.at(&[]).1.is_none());
        assert!(at("customers").is_empty());
    }
}
