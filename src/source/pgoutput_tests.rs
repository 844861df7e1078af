use super::fixture::*;
use super::*;

fn vals<'a>(t: &TupleData<'a>) -> Vec<TupleValue<'a>> {
    t.iter().collect()
}

#[test]
fn begin_and_commit_carry_their_lsns() {
    let b = begin(0x1_0000_0010, 42, 7);
    assert_eq!(
        parse(&b).unwrap(),
        Message::Begin {
            final_lsn: Lsn(0x1_0000_0010),
            commit_time: 42,
            xid: 7
        }
    );
    let c = commit(0x10, 0x20, 5);
    assert_eq!(
        parse(&c).unwrap(),
        Message::Commit {
            flags: 0,
            commit_lsn: Lsn(0x10),
            end_lsn: Lsn(0x20),
            commit_time: 5
        }
    );
}

#[test]
fn relation_lists_columns_with_key_flags_and_maps_empty_namespace_to_pg_catalog() {
    let r = relation(16384, "", "t", b'f', &[("id", 23, true), ("v", 25, false)]);
    let Message::Relation(rel) = parse(&r).unwrap() else {
        panic!()
    };
    assert_eq!(rel.schema, "pg_catalog");
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    assert_eq!(rel.columns.len(), 2);
    assert!(rel.columns[0].is_key && !rel.columns[1].is_key);
    assert_eq!(rel.columns[1].type_oid, 25);
    assert_eq!(rel.columns[1].type_modifier, -1);
}

#[test]
fn insert_tuple_yields_null_unchanged_and_text_columns() {
    let m = insert(
        5,
        &[Col::Null, Col::Unchanged, Col::Text("héllo"), Col::Text("")],
    );
    let Message::Insert { rel_id, new } = parse(&m).unwrap() else {
        panic!()
    };
    assert_eq!(rel_id, 5);
    assert_eq!(
        vals(&new),
        vec![
            TupleValue::Null,
            TupleValue::Unchanged,
            TupleValue::Text("héllo".as_bytes()),
            TupleValue::Text(b"")
        ]
    );
}

#[test]
fn binary_columns_are_returned_as_bytes() {
    let mut m = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b'b', 0, 0, 0, 2, 0xde, 0xad];
    let Message::Insert { new, .. } = parse(&m).unwrap() else {
        panic!()
    };
    assert_eq!(vals(&new), vec![TupleValue::Binary(&[0xde, 0xad])]);
    m.push(0);
    assert!(parse(&m).unwrap_err().reason.contains("trailing"));
}

#[test]
fn update_with_key_old_full_old_and_no_old_tuple() {
    let k = update(1, Some((b'K', &[Col::Text("1")])), &[Col::Text("2")]);
    let o = update(1, Some((b'O', &[Col::Text("1")])), &[Col::Text("2")]);
    let n = update(1, None, &[Col::Text("2")]);
    assert!(matches!(
        parse(&k).unwrap(),
        Message::Update {
            old: Some(OldTuple::Key(_)),
            ..
        }
    ));
    assert!(matches!(
        parse(&o).unwrap(),
        Message::Update {
            old: Some(OldTuple::Full(_)),
            ..
        }
    ));
    let Message::Update { old: None, new, .. } = parse(&n).unwrap() else {
        panic!()
    };
    assert_eq!(vals(&new), vec![TupleValue::Text(b"2")]);
}

#[test]
fn delete_requires_an_old_tuple_marker() {
    assert!(matches!(
        parse(&delete(1, b'K', &[Col::Text("1")])).unwrap(),
        Message::Delete {
            old: OldTuple::Key(_),
            ..
        }
    ));
    assert!(matches!(
        parse(&delete(1, b'O', &[Col::Null])).unwrap(),
        Message::Delete {
            old: OldTuple::Full(_),
            ..
        }
    ));
    let e = parse(&delete(1, b'N', &[Col::Null])).unwrap_err();
    assert_eq!((e.kind, e.offset), ("Delete", 5));
}

#[test]
fn truncate_origin_type_and_message_round_trip() {
    assert_eq!(
        parse(&truncate(3, &[1, 2])).unwrap(),
        Message::Truncate {
            options: 3,
            rel_ids: vec![1, 2]
        }
    );
    assert_eq!(
        parse(&origin(9, "node_a")).unwrap(),
        Message::Origin {
            commit_lsn: Lsn(9),
            name: "node_a"
        }
    );
    assert_eq!(
        parse(&type_msg(16500, "public", "mood")).unwrap(),
        Message::Type {
            oid: 16500,
            namespace: "public",
            name: "mood"
        }
    );
    assert_eq!(
        parse(&message(true, 77, "sluice", b"\x00hb")).unwrap(),
        Message::Message {
            transactional: true,
            lsn: Lsn(77),
            prefix: "sluice",
            content: b"\x00hb"
        }
    );
}

#[test]
fn truncated_input_names_the_kind_and_offset() {
    let b = begin(1, 2, 3);
    let e = parse(&b[..10]).unwrap_err();
    assert_eq!(e.kind, "Begin");
    assert_eq!(e.offset, 9);
    let m = insert(5, &[Col::Text("hello")]);
    let e = parse(&m[..m.len() - 2]).unwrap_err();
    assert_eq!(e.kind, "Insert");
    assert!(e.to_string().contains("Insert message at byte"), "{e}");
}

#[test]
fn unknown_tags_streaming_messages_and_empty_input_are_errors() {
    assert_eq!(parse(b"").unwrap_err().reason, "empty message");
    assert!(parse(b"Z").unwrap_err().reason.contains("0x5a"));
    assert_eq!(parse(b"S\0\0\0\x01").unwrap_err().kind, "StreamStart");
}

#[test]
fn huge_lengths_do_not_allocate_or_panic() {
    let m = [b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0xff, 0xff, 0xff, 0xff];
    assert!(parse(&m).is_err());
    let t = [b'T', 0xff, 0xff, 0xff, 0xff, 0];
    assert!(parse(&t).is_err());
    let mm = [
        b'M', 0, 0, 0, 0, 0, 0, 0, 0, 0, b'p', 0, 0xff, 0xff, 0xff, 0xff,
    ];
    assert!(parse(&mm).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(2000))]
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        if let Ok(Message::Insert { new, .. } | Message::Update { new, .. }) = parse(&bytes) {
            let _ = new.iter().count();
        }
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_tag_never_panic(
        tag in proptest::sample::select(b"BCORYIUDTM".to_vec()),
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
    ) {
        let mut m = vec![tag];
        m.extend(bytes);
        let _ = parse(&m);
    }
}
