use serde_json::json;

use super::*;
use crate::model::change::ReplicaIdentity;
use crate::source::pgoutput::fixture::*;

fn decoder() -> Decoder {
    Decoder::new(ValueOptions::default(), TypeCatalog::new())
}

fn feed(d: &mut Decoder, msgs: &[Vec<u8>]) -> Vec<SourceEvent> {
    let mut out = Vec::new();
    for m in msgs {
        d.decode(m, &mut out).unwrap_or_else(|e| panic!("{e}"));
    }
    out
}

fn changes(events: &[SourceEvent]) -> Vec<&Change> {
    events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Change(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn v(x: serde_json::Value) -> Datum {
    Datum::Value(x)
}

#[test]
fn a_transaction_stamps_every_change_with_the_begin_final_lsn() {
    let mut d = decoder();
    let ev = feed(
        &mut d,
        &[
            begin(0x500, 0, 9),
            relation(
                1,
                "public",
                "t",
                b'd',
                &[("id", 23, true), ("doc", 3802, false)],
            ),
            insert(1, &[Col::Text("1"), Col::Text(r#"{"k":1}"#)]),
            insert(1, &[Col::Text("2"), Col::Null]),
            commit(0x500, 0x528, 0),
        ],
    );
    assert_eq!(
        ev[0],
        SourceEvent::Begin {
            final_lsn: Lsn(0x500),
            commit_time: pg_time(0),
            xid: 9
        }
    );
    let ch = changes(&ev);
    assert_eq!(ch.len(), 2);
    assert!(ch.iter().all(|c| c.version == Lsn(0x500)));
    assert_eq!(ch[0].relation.qualified_name(), "public.t");
    assert_eq!(
        ch[0].kind,
        ChangeKind::Insert {
            new: vec![v(json!(1)), v(json!({"k": 1}))]
        }
    );
    assert_eq!(
        ch[1].kind,
        ChangeKind::Insert {
            new: vec![v(json!(2)), Datum::Null]
        }
    );
    assert_eq!(
        ev.last(),
        Some(&SourceEvent::Commit {
            commit_lsn: Lsn(0x500),
            end_lsn: Lsn(0x528)
        })
    );
    assert!(!d.in_transaction());
}

#[test]
fn commit_time_is_decoded_from_the_postgres_epoch() {
    assert_eq!(pg_time(0).to_rfc3339(), "2000-01-01T00:00:00+00:00");
    assert_eq!(pg_time(1_500_000).timestamp_millis(), 946_684_801_500);
    // Garbage times do not panic.
    let _ = pg_time(i64::MAX);
    let _ = pg_time(i64::MIN);
}

#[test]
fn updates_and_deletes_carry_key_or_full_old_rows_and_unchanged_toast_stays_unchanged() {
    let mut d = decoder();
    let ev = feed(
        &mut d,
        &[
            begin(1, 0, 1),
            relation(7, "s", "t", b'f', &[("id", 20, true), ("big", 25, false)]),
            update(7, None, &[Col::Text("1"), Col::Unchanged]),
            update(
                7,
                Some((b'K', &[Col::Text("1"), Col::Null])),
                &[Col::Text("2"), Col::Text("x")],
            ),
            update(
                7,
                Some((b'O', &[Col::Text("2"), Col::Text("x")])),
                &[Col::Text("2"), Col::Text("y")],
            ),
            delete(7, b'K', &[Col::Text("2"), Col::Null]),
            delete(7, b'O', &[Col::Text("2"), Col::Text("y")]),
            commit(1, 2, 0),
        ],
    );
    let ch = changes(&ev);
    assert_eq!(
        ch[0].kind,
        ChangeKind::Update {
            old: None,
            new: vec![v(json!(1)), Datum::Unchanged]
        }
    );
    assert_eq!(
        ch[1].kind,
        ChangeKind::Update {
            old: Some(OldRow::Key(vec![v(json!(1)), Datum::Null])),
            new: vec![v(json!(2)), v(json!("x"))]
        }
    );
    assert!(
        matches!(&ch[2].kind, ChangeKind::Update { old: Some(OldRow::Full(r)), .. } if r[1] == v(json!("x")))
    );
    assert!(matches!(
        &ch[3].kind,
        ChangeKind::Delete {
            old: OldRow::Key(_)
        }
    ));
    assert!(matches!(
        &ch[4].kind,
        ChangeKind::Delete {
            old: OldRow::Full(_)
        }
    ));
    assert_eq!(ch[0].relation.replica_identity, ReplicaIdentity::Full);
}

#[test]
fn truncate_yields_one_change_per_relation() {
    let mut d = decoder();
    let ev = feed(
        &mut d,
        &[
            begin(1, 0, 1),
            relation(1, "public", "a", b'd', &[("id", 23, true)]),
            relation(2, "public", "b", b'd', &[("id", 23, true)]),
            truncate(0, &[1, 2]),
            commit(1, 2, 0),
        ],
    );
    let ch = changes(&ev);
    assert_eq!(ch.len(), 2);
    assert_eq!(ch[1].relation.name, "b");
    assert_eq!(ch[0].kind, ChangeKind::Truncate);
}

#[test]
fn a_relation_message_mid_stream_changes_how_later_rows_decode() {
    let mut d = decoder();
    let ev = feed(
        &mut d,
        &[
            begin(1, 0, 1),
            relation(
                1,
                "public",
                "t",
                b'd',
                &[("id", 23, true), ("n", 23, false)],
            ),
            insert(1, &[Col::Text("1"), Col::Text("5")]),
            commit(1, 2, 0),
            begin(3, 0, 2),
            // n retyped to text, renamed, and a column added.
            relation(
                1,
                "public",
                "t",
                b'd',
                &[("id", 23, true), ("label", 25, false), ("extra", 16, false)],
            ),
            insert(1, &[Col::Text("2"), Col::Text("5"), Col::Text("t")]),
            commit(3, 4, 0),
        ],
    );
    let ch = changes(&ev);
    assert_eq!(
        ch[0].kind,
        ChangeKind::Insert {
            new: vec![v(json!(1)), v(json!(5))]
        }
    );
    assert_eq!(
        ch[1].kind,
        ChangeKind::Insert {
            new: vec![v(json!(2)), v(json!("5")), v(json!(true))]
        }
    );
    assert_eq!(ch[1].relation.columns[1].name, "label");
    assert_eq!(
        ch[0].relation.columns[1].name, "n",
        "earlier changes keep their relation"
    );
}

#[test]
fn rows_of_an_unknown_relation_or_with_a_wrong_column_count_are_errors() {
    let mut d = decoder();
    let mut out = vec![];
    d.decode(&begin(1, 0, 1), &mut out).unwrap();
    let e = d.decode(&insert(42, &[Col::Null]), &mut out).unwrap_err();
    assert!(e.to_string().contains("relation 42"), "{e}");
    d.decode(
        &relation(42, "public", "t", b'd', &[("id", 23, true)]),
        &mut out,
    )
    .unwrap();
    let e = d
        .decode(&insert(42, &[Col::Null, Col::Null]), &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("has 2 columns"), "{e}");
    let e = d
        .decode(&insert(42, &[Col::Text("x")]), &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("public.t.id"), "{e}");
}

#[test]
fn changes_outside_a_transaction_are_errors() {
    let mut d = decoder();
    let mut out = vec![];
    d.decode(
        &relation(1, "public", "t", b'd', &[("id", 23, true)]),
        &mut out,
    )
    .unwrap();
    assert!(matches!(
        d.decode(&insert(1, &[Col::Text("1")]), &mut out),
        Err(DecoderError::OutsideTransaction { kind: "Insert" })
    ));
}

#[test]
fn messages_origin_and_type_messages_are_handled() {
    let mut d = decoder();
    let ev = feed(
        &mut d,
        &[
            message(false, 0x10, "sluice.heartbeat", b"hi"),
            begin(1, 0, 1),
            origin(5, "upstream"),
            type_msg(30000, "public", "hstore"),
            relation(
                1,
                "public",
                "t",
                b'd',
                &[("id", 23, true), ("h", 30000, false)],
            ),
            insert(1, &[Col::Text("1"), Col::Text(r#""a"=>"b""#)]),
            commit(1, 2, 0),
        ],
    );
    assert_eq!(
        ev[0],
        SourceEvent::Message {
            lsn: Lsn(0x10),
            transactional: false,
            prefix: "sluice.heartbeat".into(),
            content: b"hi".to_vec()
        }
    );
    assert_eq!(
        changes(&ev)[0].kind,
        ChangeKind::Insert {
            new: vec![v(json!(1)), v(json!({"a": "b"}))]
        }
    );
    assert!(d.pending_types().contains(&30000));
}

#[test]
fn set_types_resolves_domains_of_cached_relations() {
    let mut d = decoder();
    let mut out = vec![];
    d.decode(&begin(1, 0, 1), &mut out).unwrap();
    d.decode(
        &relation(1, "public", "t", b'd', &[("n", 40000, false)]),
        &mut out,
    )
    .unwrap();
    assert!(d.pending_types().contains(&40000));
    let mut cat = TypeCatalog::new();
    cat.insert(crate::source::types::TypeInfo {
        oid: 40000,
        schema: "public".into(),
        name: "posint".into(),
        typtype: b'd',
        base: 23,
        elem: 0,
        delim: b',',
        range_sub: 0,
    });
    d.set_types(cat);
    out.clear();
    d.decode(&insert(1, &[Col::Text("7")]), &mut out).unwrap();
    assert_eq!(
        changes(&out)[0].kind,
        ChangeKind::Insert {
            new: vec![v(json!(7))]
        }
    );
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(1000))]
    #[test]
    fn arbitrary_messages_after_a_valid_prefix_never_panic(
        msgs in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..60), 0..8),
        tags in proptest::collection::vec(proptest::sample::select(b"BCRYIUDTM".to_vec()), 8),
    ) {
        let mut d = decoder();
        let mut out = vec![];
        let _ = d.decode(&begin(1, 0, 1), &mut out);
        let _ = d.decode(&relation(1, "public", "t", b'd', &[("id", 23, true), ("v", 1009, false)]), &mut out);
        for (m, t) in msgs.iter().zip(tags) {
            let mut full = vec![t, 0, 0, 0, 1];
            full.extend(m);
            let _ = d.decode(&full, &mut out);
            let _ = d.decode(m, &mut out);
        }
    }
}

/// Run `f` with a subscriber that collects WARN lines.
fn warnings_during(f: impl FnOnce()) -> Vec<String> {
    let buf = crate::ops::logging::CapturedLog::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    buf.text()
        .lines()
        .filter(|l| l.contains("WARN"))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_unknown_type_warns_once_per_column_even_when_relations_are_resent() {
    let mut d = decoder();
    let rel = |extra: bool| {
        let mut cols = vec![("id", 23, true), ("a", 50001, false), ("b", 50002, false)];
        if extra {
            cols.push(("c", 50003, false));
        }
        relation(1, "public", "t", b'd', &cols)
    };
    let warnings = warnings_during(|| {
        let mut out = vec![];
        d.decode(&rel(false), &mut out).unwrap();
        // The reader found nothing in the catalog for these OIDs.
        d.set_types(TypeCatalog::new());
        for i in 0..3 {
            d.decode(&begin(10 + i, 0, 1), &mut out).unwrap();
            d.decode(
                &insert(1, &[Col::Text("1"), Col::Text("x"), Col::Text("y")]),
                &mut out,
            )
            .unwrap();
            d.decode(&commit(10 + i, 11 + i, 0), &mut out).unwrap();
        }
        // A reconnect resends the Relation; an ALTER adds a column holding
        // an array of another unknown type.
        d.reset_transaction();
        d.decode(&rel(false), &mut out).unwrap();
        d.decode(&rel(true), &mut out).unwrap();
        let mut cat = TypeCatalog::new();
        cat.insert(crate::source::types::TypeInfo {
            oid: 50003,
            schema: "public".into(),
            name: "_thing".into(),
            typtype: b'b',
            base: 0,
            elem: 50009,
            delim: b',',
            range_sub: 0,
        });
        d.set_types(cat);
        d.decode(&begin(20, 0, 2), &mut out).unwrap();
        let row = [
            Col::Text("1"),
            Col::Text("x"),
            Col::Text("y"),
            Col::Text("{(1),NULL}"),
        ];
        d.decode(&insert(1, &row), &mut out).unwrap();
        assert_eq!(
            changes(&out).last().unwrap().kind,
            ChangeKind::Insert {
                new: vec![
                    v(json!(1)),
                    v(json!("x")),
                    v(json!("y")),
                    v(json!(["(1)", null]))
                ]
            },
            "unknown types fall back to their text"
        );
    });
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    for col in ["column=a", "column=b", "column=c"] {
        assert_eq!(
            warnings.iter().filter(|w| w.contains(col)).count(),
            1,
            "{col}: {warnings:#?}"
        );
    }
}

#[test]
fn binary_tuple_columns_convert_and_unsupported_ones_are_errors_naming_the_column() {
    let mut d = decoder();
    let mut out = vec![];
    d.decode(&begin(1, 0, 1), &mut out).unwrap();
    d.decode(
        &relation(
            1,
            "public",
            "t",
            b'd',
            &[("id", 23, true), ("g", 603, false)],
        ),
        &mut out,
    )
    .unwrap();
    // id = 7 (int4) and g NULL, both binary-encoded where not null.
    let m = vec![
        b'I', 0, 0, 0, 1, b'N', 0, 2, b'b', 0, 0, 0, 4, 0, 0, 0, 7, b'n',
    ];
    d.decode(&m, &mut out).unwrap();
    assert_eq!(
        changes(&out)[0].kind,
        ChangeKind::Insert {
            new: vec![v(json!(7)), Datum::Null]
        }
    );
    // A box (a type without a binary converter) is an error naming the column.
    let m = vec![
        b'I', 0, 0, 0, 1, b'N', 0, 2, b'b', 0, 0, 0, 4, 0, 0, 0, 7, b'b', 0, 0, 0, 1, 0,
    ];
    let err = d.decode(&m, &mut out).unwrap_err();
    assert!(
        matches!(&err, DecoderError::Value { table, column, .. } if table == "public.t" && column == "g"),
        "{err}"
    );
}
