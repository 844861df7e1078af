//! Valid inputs for every target, as a server, Elasticsearch or an operator
//! would send them. Mutating these (rather than starting from random bytes)
//! is what gets cases past the first tag and length checks into the value
//! converters, the relation cache and the CopyBoth loop. The libFuzzer
//! corpus is written from these too (`cargo test --lib fuzz_write_corpus`).

use crate::source::pgoutput::fixture::{self as pg, Col};

/// Seeds of the target named `name` (see `TARGETS`), in its input layout.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "pgoutput" => pgoutput_messages(),
        "decoder" => decoder_streams(),
        "text_value" => text_values(),
        "binary_value" => binary_values(),
        "replication" => replication_sessions(),
        "auth_scan" => auth_streams(),
        "copy_text" => copy_rows(),
        "bulk_response" => bulk_responses(),
        "config_file" => config_files(),
        "mapping_file" => mapping_files(),
        _ => Vec::new(),
    }
}

/// A relation using every converter, and its OID list (see `catalog`).
const COLUMNS: &[(&str, u32, bool)] = &[
    ("id", 23, true),
    ("n", 1700, false),
    ("a", 1007, false),
    ("r", 3904, false),
    ("h", 16385, false),
    ("ts", 1184, false),
    ("iv", 1186, false),
    ("b", 17, false),
    ("j", 3802, false),
    ("d", 1082, false),
    ("t", 25, false),
    ("tsr", 3908, false),
    ("p", 600, false),
    ("ta", 1009, false),
    ("m", 790, false),
    ("f", 701, false),
    ("tt", 1266, false),
    ("u", 2950, false),
    ("e", 16400, false),
    ("ir", 16403, false),
];

/// Text values for `COLUMNS`, as PostgreSQL prints them.
const ROW: &[&str] = &[
    "7",
    "12345.678900",
    "{{1,2},{NULL,4}}",
    "[1,10)",
    "\"a\"=>\"1\", \"b c\"=>NULL",
    "2024-02-29 12:34:56.789+00",
    "P1Y2M3DT4H5M6.5S",
    "\\x00ff10",
    "{\"k\": [1, 2.5, null]}",
    "2024-02-29",
    "tab\there \"q\" é",
    "[\"2020-01-01 00:00:00\",\"2021-01-01 00:00:00\")",
    "(1.5,-2)",
    "{\"a b\",\"c\\\"d\",NULL}",
    "$1,234.56",
    "-1.5e+300",
    "12:00:00+05:30",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "happy",
    "{[1,3);(,5]}",
];

fn cols(values: &[&'static str]) -> Vec<Col<'static>> {
    values.iter().map(|v| Col::Text(v)).collect()
}

fn pgoutput_messages() -> Vec<Vec<u8>> {
    let row = cols(ROW);
    let mut key = vec![Col::Text("7")];
    key.extend((1..COLUMNS.len()).map(|_| Col::Null));
    let mut toast = cols(ROW);
    toast[7] = Col::Unchanged;
    vec![
        pg::begin(0x16B3748, 756_000_000_000_000, 731),
        pg::relation(16390, "public", "items", b'd', COLUMNS),
        pg::relation(16391, "", "pg_thing", b'f', &[("x", 25, false)]),
        pg::type_msg(16385, "public", "hstore"),
        pg::insert(16390, &row),
        pg::update(16390, None, &toast),
        pg::update(16390, Some((b'K', &key)), &row),
        pg::update(16390, Some((b'O', &row)), &row),
        pg::delete(16390, b'K', &key),
        pg::delete(16390, b'O', &row),
        pg::truncate(3, &[16390, 16391]),
        pg::message(true, 0x16B3750, "sluice", b"heartbeat"),
        pg::origin(0x16B3700, "upstream"),
        binary_relation(),
        binary_insert(),
        pg::commit(0x16B3748, 0x16B3780, 756_000_000_000_001),
    ]
}

/// An Insert whose values use the binary format (`b` columns).
fn binary_insert() -> Vec<u8> {
    let values = binary_row();
    let mut v = vec![b'I'];
    v.extend(16392u32.to_be_bytes());
    v.push(b'N');
    v.extend((values.len() as u16).to_be_bytes());
    for (_, _, bytes) in &values {
        v.push(b'b');
        v.extend((bytes.len() as u32).to_be_bytes());
        v.extend(bytes);
    }
    v
}

/// (column, type OID, binary value) for the binary relation.
fn binary_row() -> Vec<(&'static str, u32, Vec<u8>)> {
    vec![
        ("id", 23, 7i32.to_be_bytes().to_vec()),
        ("n", 1700, numeric_bin(3, 1, 0x4000, 2, &[1, 2345, 6700])),
        (
            "a",
            1007,
            int_array_bin(&[2, 2], &[Some(1), Some(2), None, Some(4)]),
        ),
        ("r", 3904, int_range_bin(0x02, Some(1), Some(10))),
        ("h", 16385, hstore_bin(&[("a", Some("1")), ("b", None)])),
        ("ts", 1184, 762_000_000_123_456i64.to_be_bytes().to_vec()),
        ("iv", 1186, interval_bin(3_723_500_000, -3, 14)),
        ("b", 17, vec![0, 0xff, 0x10]),
        ("j", 3802, b"\x01{\"k\": 1}".to_vec()),
        ("d", 1082, 8825i32.to_be_bytes().to_vec()),
        ("t", 25, "héllo".as_bytes().to_vec()),
        ("f", 701, 2.5f64.to_be_bytes().to_vec()),
        ("tt", 1266, timetz_bin(43_200_000_000, -19800)),
        ("u", 2950, (0u8..16).collect()),
        ("bo", 16, vec![1]),
        ("m", 790, (-123456i64).to_be_bytes().to_vec()),
        (
            "p",
            600,
            [1.5f64.to_be_bytes(), (-2f64).to_be_bytes()].concat(),
        ),
    ]
}

fn binary_relation() -> Vec<u8> {
    let cols: Vec<(&str, u32, bool)> = binary_row()
        .iter()
        .map(|(n, oid, _)| (*n, *oid, *n == "id"))
        .collect();
    pg::relation(16392, "public", "bin", b'd', &cols)
}

pub fn numeric_bin(ndigits: i16, weight: i16, sign: u16, dscale: i16, digits: &[i16]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [ndigits, weight, sign as i16, dscale] {
        v.extend(x.to_be_bytes());
    }
    for d in digits {
        v.extend(d.to_be_bytes());
    }
    v
}

/// A binary int4 array of `dims` (row-major elements, `None` = NULL).
pub fn int_array_bin(dims: &[i32], elems: &[Option<i32>]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend((dims.len() as i32).to_be_bytes());
    v.extend((elems.iter().any(Option::is_none) as i32).to_be_bytes());
    v.extend(23i32.to_be_bytes());
    for d in dims {
        v.extend(d.to_be_bytes());
        v.extend(1i32.to_be_bytes());
    }
    for e in elems {
        match e {
            None => v.extend((-1i32).to_be_bytes()),
            Some(x) => {
                v.extend(4i32.to_be_bytes());
                v.extend(x.to_be_bytes());
            }
        }
    }
    v
}

fn int_range_bin(flags: u8, lower: Option<i32>, upper: Option<i32>) -> Vec<u8> {
    let mut v = vec![flags];
    for b in [lower, upper].into_iter().flatten() {
        v.extend(4i32.to_be_bytes());
        v.extend(b.to_be_bytes());
    }
    v
}

fn hstore_bin(pairs: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut v = (pairs.len() as i32).to_be_bytes().to_vec();
    for (k, val) in pairs {
        v.extend((k.len() as i32).to_be_bytes());
        v.extend(k.as_bytes());
        match val {
            None => v.extend((-1i32).to_be_bytes()),
            Some(s) => {
                v.extend((s.len() as i32).to_be_bytes());
                v.extend(s.as_bytes());
            }
        }
    }
    v
}

fn interval_bin(us: i64, days: i32, months: i32) -> Vec<u8> {
    [
        &us.to_be_bytes()[..],
        &days.to_be_bytes(),
        &months.to_be_bytes(),
    ]
    .concat()
}

fn timetz_bin(us: i64, west_secs: i32) -> Vec<u8> {
    [&us.to_be_bytes()[..], &west_secs.to_be_bytes()].concat()
}

/// `[u16 len][message]...` framing of the decoder target.
fn framed(opts: u8, msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![opts];
    for m in msgs {
        v.extend((m.len() as u16).to_be_bytes());
        v.extend(m);
    }
    v
}

fn decoder_streams() -> Vec<Vec<u8>> {
    let m = pgoutput_messages();
    let (begin, rel, rel2, typ) = (&m[0], &m[1], &m[2], &m[3]);
    let commit = m.last().expect("a commit");
    vec![
        framed(0, &m),
        framed(
            0x0b,
            &[
                typ.clone(),
                rel.clone(),
                begin.clone(),
                m[4].clone(),
                m[6].clone(),
                commit.clone(),
            ],
        ),
        framed(
            0x02,
            &[
                binary_relation(),
                begin.clone(),
                binary_insert(),
                commit.clone(),
            ],
        ),
        framed(
            0x05,
            &[
                rel.clone(),
                rel2.clone(),
                begin.clone(),
                m[10].clone(),
                m[8].clone(),
                commit.clone(),
            ],
        ),
    ]
}

/// `[type selector][options][text]`, the selector found by OID.
fn text_values() -> Vec<Vec<u8>> {
    let texts: &[(u32, &[&str])] = &[
        (16, &["t", "f"]),
        (23, &["-2147483648", "42"]),
        (20, &["9223372036854775807", "18446744073709551615"]),
        (701, &["1.5e-300", "NaN", "-Infinity", "0.1"]),
        (
            1700,
            &["12345678901234567890.123456789", "-0.0001", "NaN", "100000"],
        ),
        (790, &["$1,234.56", "-$1.00", "($1.00)"]),
        (3802, &["{\"a\": {\"b\": [1, 2, 3]}}", "1e400"]),
        (17, &["\\x0102ff", "\\x"]),
        (
            1082,
            &["2024-02-29", "0044-03-15 BC", "12345-01-01", "infinity"],
        ),
        (1266, &["12:00:00+05", "23:59:59.999999-03:30"]),
        (
            1114,
            &[
                "2024-01-02 03:04:05.123456",
                "0044-03-15 12:00:00 BC",
                "12345-01-01 00:00:00",
            ],
        ),
        (
            1184,
            &[
                "2024-01-02 03:04:05.123456+00",
                "2024-01-02 03:04:05+05:30",
                "2024-01-02 03:04:05-03:30",
                "0044-03-15 12:00:00+00 BC",
                "-infinity",
            ],
        ),
        (
            1186,
            &[
                "P1Y2M3DT4H5M6.5S",
                "1 year 2 mons -3 days +04:05:06.5",
                "-00:00:01",
                "00:00:00",
            ],
        ),
        (600, &["(1.5,2)", "(NaN,1)"]),
        (
            16385,
            &["\"a\"=>\"1\", \"b\"=>NULL", "\"k\\\"q\"=>\"v\\\\w\"", ""],
        ),
        (1007, &["{1,2,NULL}", "{{1,2},{3,4}}", "[0:1]={5,6}", "{}"]),
        (1009, &["{\"a b\",\"c\\\"d\",NULL,plain}", "{{a},{b}}"]),
        (1231, &["{1.5,NaN,-3}"]),
        (1182, &["{2024-01-01,infinity}"]),
        (1185, &["{\"2024-01-01 00:00:00+00\",NULL}"]),
        (3904, &["[1,10)", "empty", "(,5]", "[3,)"]),
        (3908, &["[\"2020-01-01 00:00:00\",\"2021-01-01 00:00:00\")"]),
        (3910, &["[\"2020-01-01 00:00:00+00\",)"]),
        (3912, &["[2020-01-01,2020-02-01)"]),
        (3906, &["(1.5,2.5]"]),
        (16403, &["{[1,3);(,5];empty}"]),
        (16390, &["{\"\\\"a\\\"=>\\\"1\\\"\",NULL}"]),
        (1020, &["{(1,2),(3,4);(5,6),(7,8)}"]),
        (16401, &["1.25"]),
        (2950, &["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
    ];
    let types = super::value_types();
    let mut out = Vec::new();
    for (oid, list) in texts {
        let Some(sel) = types.iter().position(|(o, _)| o == oid) else {
            continue;
        };
        for (i, t) in list.iter().enumerate() {
            let mut v = vec![sel as u8, (i * 3) as u8];
            v.extend(t.as_bytes());
            out.push(v);
        }
    }
    out
}

fn binary_values() -> Vec<Vec<u8>> {
    let types = super::value_types();
    let mut out = Vec::new();
    let mut push = |oid: u32, bytes: Vec<u8>| {
        if let Some(sel) = types.iter().position(|(o, _)| *o == oid) {
            let mut v = vec![sel as u8, 0];
            v.extend(bytes);
            out.push(v);
        }
    };
    for (_, oid, bytes) in binary_row() {
        push(oid, bytes);
    }
    push(1700, numeric_bin(0, 0, 0xC000, 0, &[]));
    push(1700, numeric_bin(1, -2, 0, 9, &[12]));
    push(1007, int_array_bin(&[3], &[Some(1), None, Some(3)]));
    push(1007, int_array_bin(&[], &[]));
    push(3904, int_range_bin(0x01, None, None));
    push(3904, int_range_bin(0x08 | 0x04, None, Some(5)));
    push(1082, i32::MAX.to_be_bytes().to_vec());
    push(1184, i64::MIN.to_be_bytes().to_vec());
    push(1114, (-63_000_000_000_000_000i64).to_be_bytes().to_vec());
    push(21, 7i16.to_be_bytes().to_vec());
    push(20, i64::MIN.to_be_bytes().to_vec());
    push(700, 0.1f32.to_be_bytes().to_vec());
    push(1083, 86_399_999_999i64.to_be_bytes().to_vec());
    out
}

/// A backend message: tag, length, body.
pub fn backend(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(((body.len() + 4) as u32).to_be_bytes());
    v.extend(body);
    v
}

fn auth(code: i32, rest: &[u8]) -> Vec<u8> {
    backend(b'R', &[&code.to_be_bytes()[..], rest].concat())
}

/// What the server says after authentication up to ReadyForQuery.
fn after_auth() -> Vec<u8> {
    [
        auth(0, b""),
        backend(b'S', b"server_version\x0016.4\x00"),
        backend(b'S', b"client_encoding\x00UTF8\x00"),
        backend(b'K', &[0, 0, 0x30, 0x39, 1, 2, 3, 4]),
        backend(b'Z', b"I"),
    ]
    .concat()
}

fn row_description(names: &[&str]) -> Vec<u8> {
    let mut b = (names.len() as u16).to_be_bytes().to_vec();
    for n in names {
        b.extend(n.as_bytes());
        b.push(0);
        b.extend([0u8; 18]);
    }
    backend(b'T', &b)
}

fn data_row(values: &[Option<&str>]) -> Vec<u8> {
    let mut b = (values.len() as u16).to_be_bytes().to_vec();
    for v in values {
        match v {
            None => b.extend((-1i32).to_be_bytes()),
            Some(s) => {
                b.extend((s.len() as i32).to_be_bytes());
                b.extend(s.as_bytes());
            }
        }
    }
    backend(b'D', &b)
}

fn xlog(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![b'w'];
    b.extend(lsn.to_be_bytes());
    b.extend((lsn + payload.len() as u64).to_be_bytes());
    b.extend(756_000_000_000_000i64.to_be_bytes());
    b.extend(payload);
    backend(b'd', &b)
}

fn keepalive(lsn: u64, reply: bool) -> Vec<u8> {
    let mut b = vec![b'k'];
    b.extend(lsn.to_be_bytes());
    b.extend(756_000_000_000_000i64.to_be_bytes());
    b.push(reply as u8);
    backend(b'd', &b)
}

/// IDENTIFY_SYSTEM's answer, START_REPLICATION's CopyBoth and a stream.
fn replication_tail() -> Vec<u8> {
    let msgs = pgoutput_messages();
    let mut v = [
        row_description(&["systemid", "timeline", "xlogpos", "dbname"]),
        data_row(&[
            Some("7311041558424551437"),
            Some("1"),
            Some("0/16B3748"),
            Some("app"),
        ]),
        backend(b'C', b"IDENTIFY_SYSTEM\x00"),
        backend(b'Z', b"I"),
        backend(b'N', b"SNOTICE\x00C00000\x00Mstarting\x00\x00"),
        backend(b'W', &[0, 0, 0]),
        keepalive(0x16B3700, true),
    ]
    .concat();
    for (i, m) in msgs.iter().enumerate() {
        v.extend(xlog(0x16B3748 + i as u64 * 64, m));
    }
    v.extend(keepalive(0x16B3800, false));
    v.extend(backend(b'c', b""));
    v.extend(backend(b'C', b"START_REPLICATION\x00"));
    v.extend(backend(b'Z', b"I"));
    v
}

fn replication_sessions() -> Vec<Vec<u8>> {
    let md5 = [auth(5, &[1, 2, 3, 4]), after_auth(), replication_tail()].concat();
    let clear = [auth(3, b""), after_auth(), replication_tail()].concat();
    let scram = [
        auth(10, b"SCRAM-SHA-256\x00SCRAM-SHA-256-PLUS\x00\x00"),
        auth(11, b"r=abc,s=c2FsdA==,i=4096"),
        auth(12, b"v=c2lnbmF0dXJl"),
        after_auth(),
    ]
    .concat();
    let refused = [
        auth(5, &[9, 9, 9, 9]),
        backend(
            b'E',
            b"SFATAL\x00VFATAL\x00C28P01\x00Mpassword authentication failed\x00Dd\x00Hh\x00\x00",
        ),
    ]
    .concat();
    let query_error = [
        auth(0, b""),
        backend(b'Z', b"I"),
        backend(b'E', b"SERROR\x00C42704\x00Mno such slot\x00\x00"),
        backend(b'Z', b"I"),
        backend(b'E', b"SERROR\x00C55006\x00Mslot active\x00\x00"),
    ]
    .concat();
    let mut out = Vec::new();
    for (chunk, s) in [
        (0u8, md5),
        (7, clear),
        (0, scram),
        (3, refused),
        (0, query_error),
    ] {
        let mut v = vec![chunk];
        v.extend(s);
        out.push(v);
    }
    out
}

fn auth_streams() -> Vec<Vec<u8>> {
    replication_sessions()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut v = vec![s[0].max(1), (i as u8) | (0x80 * (i as u8 % 2))];
            v.extend(&s[1..]);
            v
        })
        .collect()
}

fn copy_rows() -> Vec<Vec<u8>> {
    let row: Vec<String> = ROW
        .iter()
        .map(|v| crate::snapshot::copy_text::escape(v))
        .collect();
    let mut full = vec![ROW.len() as u8];
    full.extend(row.join("\t").as_bytes());
    full.push(b'\n');
    full.extend(row.join("\t").as_bytes());
    vec![
        full,
        b"\x03\\N\t\\\\x\\101\\x41\\t\\n\\0\te\\x\n1\t2\t3\n".to_vec(),
        b"\x00\n\n".to_vec(),
        b"\x02a\\\\\tb\n".to_vec(),
    ]
}

fn bulk_responses() -> Vec<Vec<u8>> {
    let items = |n: u8, body: &str| [&[n][..], body.as_bytes()].concat();
    vec![
        items(
            6,
            r#"{"took":3,"errors":true,"items":[{"index":{"_index":"items","_id":"0","_version":5,"result":"created","status":201}},{"index":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution"}}},{"delete":{"status":404,"result":"not_found"}},{"index":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"[0]: version conflict"}}},{"create":{"status":400,"error":{"type":"document_parsing_exception","reason":"failed to parse field [n]","caused_by":{"type":"number_format_exception"}}}},{"update":{"status":403,"error":{"type":"cluster_block_exception","reason":"index [items] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];"}}}]}"#,
        ),
        items(
            2,
            r#"{"errors":true,"items":[{"index":{"status":400,"error":{"type":"illegal_argument_exception","reason":"pipeline with id [p] does not exist"}}},{"index":{"status":503,"error":{"type":"unavailable_shards_exception"}}}]}"#,
        ),
        items(
            0,
            r#"{"error":{"root_cause":[{"type":"circuit_breaking_exception"}],"type":"circuit_breaking_exception","reason":"[parent] Data too large","bytes_wanted":123,"durability":"TRANSIENT"},"status":429}"#,
        ),
        items(1, r#"{"errors":false,"items":[{"index":{"status":200}}]}"#),
    ]
}

fn config_files() -> Vec<Vec<u8>> {
    vec![
        include_str!("../../sluice.example.toml")
            .as_bytes()
            .to_vec(),
        br#"mappings_dir = "maps"
[postgres]
host = "db"
port = 5433
user = "${PGUSER}"
password = "${PGPASSWORD}"
dbname = "app"
sslmode = "verify-full"
slot = "s1"
publication = "p1"
heartbeat_interval_ms = 30000
[elasticsearch]
urls = ["https://es:9200", "https://es2:9200"]
username = "u"
password = "$${literal}"
[pipeline]
batch_max_docs = 500
concurrency = 4
[snapshot]
mode = "initial"
[http]
listen = "127.0.0.1:9187"
"#
        .to_vec(),
    ]
}

fn mapping_files() -> Vec<Vec<u8>> {
    let all = [
        include_str!("../../mappings/orders.toml"),
        include_str!("../../mappings/customers.toml"),
        include_str!("../../mappings/order_items.toml"),
        include_str!("../../mappings/orders_archive.toml"),
        include_str!("../../mappings/products.toml"),
        include_str!("../../mappings/search_customers.toml"),
        include_str!("../../mappings/search_products.toml"),
        // Nested relations, four tables deep.
        include_str!("../../mappings/order_documents.toml"),
    ];
    let mut out: Vec<Vec<u8>> = all.iter().map(|t| t.as_bytes().to_vec()).collect();
    out.push([all[0], "\0", all[3]].concat().into_bytes());
    out
}
