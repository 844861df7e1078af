//! Value conversion of every supported type, from a real INSERT through the
//! replication stream: scalars, arrays of each (NULL elements, several
//! dimensions, non-default bounds), ranges, domains, enums, extension types,
//! non-finite values, and session settings that database defaults cannot change.

use serde_json::{Value, json};

use crate::support::TestDb;
use crate::support::reader::{by_name, new_row, repl_config, stream};
use sluice::source::{TypeCatalog, ValueOptions, connect_sql, convert_binary, convert_text};

#[tokio::test]
async fn every_type_round_trips_from_a_real_insert_through_the_stream() {
    let db = TestDb::new().await;
    db.sql(
        "CREATE EXTENSION IF NOT EXISTS hstore; CREATE EXTENSION IF NOT EXISTS citext;
         CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
         CREATE TABLE types (
           id int PRIMARY KEY, b bool, i2 int2, i8 int8, f4 float4, f8 float8, fnan float8,
           n numeric, nbig numeric, t text, vc varchar(10), bp char(3), nm name, ci citext,
           u uuid, d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, tinf timestamptz,
           iv interval, ivneg interval, by bytea, j json, jb jsonb, ai int[], at text[], a2 int[][],
           aempty int[], e mood, dm posint, adm posint[], ine inet, cidr_ cidr, mac macaddr, m money,
           h hstore, r int4range, tr tstzrange, rempty int4range, p point, tv tsvector, x xml,
           bt bit(4), nul text);",
    )
    .await;
    let (mut reader, _slot) = stream(&db, &["types"]).await;
    db.sql(
        r#"INSERT INTO types VALUES (
           1, true, -32768, 9223372036854775807, 1.5, -2.25, 'NaN',
           123.4500, 12345678901234567890.123456789, 'zürich ✓', 'abc', 'ab', 'nm', 'MiXed',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', '13:45:00.5', '13:45:00+02',
           '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+02', 'infinity',
           '1 year 2 mons 3 days 04:05:06', '-1 days -00:00:01', '\x48656c6c6f',
           '{"a": [1, null]}', '{"b": {"c": true}}', '{1,NULL,3}', '{"a b","c\"d",NULL}',
           '{{1,2},{3,4}}', '{}', 'happy', 7, '{1,2}', '192.168.0.1/24', '10.0.0.0/8',
           '08:00:2b:01:02:03', '1234.56', '"k"=>"v", "n"=>NULL', '[1,10)',
           '[2024-01-01 00:00:00+00,2024-02-01 00:00:00+00)', 'empty', '(13.4,52.5)',
           'a fat cat', '<a>1</a>', B'1010', NULL)"#,
    )
    .await;
    let changes = reader.changes(1).await;
    let c = &changes[0];
    assert_eq!(c.relation.qualified_name(), "public.types");
    let got = by_name(c, new_row(c));
    let expected = json!({
        "id": 1, "b": true, "i2": -32768, "i8": 9223372036854775807i64, "f4": 1.5, "f8": -2.25,
        "fnan": null, "n": 123.45, "nbig": "12345678901234567890.123456789", "t": "zürich ✓",
        "vc": "abc", "bp": "ab ", "nm": "nm", "ci": "MiXed",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "d": "2024-02-29", "tm": "13:45:00.5",
        "ttz": "13:45:00+02:00", "ts": "2024-01-02T03:04:05.123456", "tstz": "2024-01-02T01:04:05Z",
        "tinf": null, "iv": "P1Y2M3DT4H5M6S", "ivneg": "P-1DT-1S", "by": "SGVsbG8=",
        "j": {"a": [1, null]}, "jb": {"b": {"c": true}}, "ai": [1, null, 3],
        "at": ["a b", "c\"d", null], "a2": [[1, 2], [3, 4]], "aempty": [], "e": "happy", "dm": 7,
    });
    let more = json!({
        "adm": [1, 2], "ine": "192.168.0.1/24", "cidr_": "10.0.0.0/8", "mac": "08:00:2b:01:02:03",
        "m": 1234.56, "h": {"k": "v", "n": null}, "r": {"gte": 1, "lt": 10},
        "tr": {"gte": "2024-01-01T00:00:00Z", "lt": "2024-02-01T00:00:00Z"}, "rempty": null,
        "p": {"lat": 52.5, "lon": 13.4}, "tv": "'a' 'cat' 'fat'", "x": "<a>1</a>", "bt": "1010",
        "nul": null,
    });
    let mut expected = expected.as_object().unwrap().clone();
    expected.extend(more.as_object().unwrap().clone());
    for (k, v) in &expected {
        assert_eq!(got.get(k), Some(v), "column {k}");
    }
    assert_eq!(got.len(), expected.len());
    assert!(c.relation.columns[0].is_key);
    reader.stop().await.unwrap();
}

#[tokio::test]
async fn arrays_of_every_type_ranges_and_non_finite_values_round_trip_through_the_stream() {
    let db = TestDb::new().await;
    db.sql(
        "CREATE EXTENSION IF NOT EXISTS hstore; CREATE EXTENSION IF NOT EXISTS citext;
         CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN intlist AS int[];
         CREATE DOMAIN label AS text;
         CREATE TABLE arrs (
           id int PRIMARY KEY, ab bool[], a2 int2[], a8 int8[], af4 float4[], af8 float8[],
           an numeric[], at2 text[][], avc varchar(5)[], abp char(2)[], au uuid[], ad date[],
           atm time[], attz timetz[], ats timestamp[], atstz timestamptz[], aiv interval[],
           aby bytea[], aj json[], ajb jsonb[], ae mood[], ain inet[], acidr cidr[],
           amac macaddr[], am money[], ah hstore[], ar int4range[], ap point[], ax xml[],
           abt bit(4)[], aci citext[], a3 int[], alb int[], dl intlist, lb label, alabel label[],
           nr numrange, dr daterange, tsr tsrange, i8r int8range, nnan numeric, ninf numeric,
           dinf date, tsinf timestamp, f4inf float4, dbig date, tsbig timestamptz,
           tsbc timestamptz);",
    )
    .await;
    let (mut reader, _slot) = stream(&db, &["arrs"]).await;
    db.sql(
        r#"INSERT INTO arrs VALUES (
           1, '{t,f,NULL}', '{-1,2}', '{9223372036854775807}', '{1.5,NaN,-Infinity}',
           '{-2.25,Infinity}', '{1.10,NULL,123456789012345678901234567890.5}',
           '{{a,NULL},{"x y",""}}', '{"é ✓",NULL}', '{a,bc}',
           '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', '{2024-02-29,infinity}', '{13:45:00.5}',
           '{13:45:00+02}', '{"2024-01-02 03:04:05",-infinity}', '{"2024-01-02 03:04:05+02"}',
           '{"1 day","-00:00:01"}', '{"\\x00ff",NULL}', '{"{\"a\": 1}"}', '{"[1, \"x\"]"}',
           '{sad,happy}', '{10.0.0.1,::1}', '{10.0.0.0/8}', '{08:00:2b:01:02:03}', '{1.50,-2}',
           '{"\"k\"=>\"v\""}', '{"[1,2)",empty}', '{"(1,2)","(3.5,-4)"}', '{<a/>}', '{1010}',
           '{MiXed}', '{{{1},{2}},{{3},{4}}}', '[0:1]={7,8}', '{5,6}', 'lbl', '{x,NULL}',
           '(1.5,2.5]', '[2024-01-01,2024-01-31]', '["2024-01-01 00:00:00",)', '(,5)',
           'NaN', '-Infinity', '-infinity', 'infinity', '-Infinity', '12345-06-07',
           '12345-06-07 01:02:03+00', '0044-03-15 12:00:00+00 BC')"#,
    )
    .await;
    let changes = reader.changes(1).await;
    let got = by_name(&changes[0], new_row(&changes[0]));
    let expected = json!({
        "id": 1, "ab": [true, false, null], "a2": [-1, 2], "a8": [9223372036854775807i64],
        "af4": [1.5, null, null], "af8": [-2.25, null],
        "an": [1.1, null, "123456789012345678901234567890.5"],
        "at2": [["a", null], ["x y", ""]], "avc": ["é ✓", null], "abp": ["a ", "bc"],
        "au": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"], "ad": ["2024-02-29", null],
        "atm": ["13:45:00.5"], "attz": ["13:45:00+02:00"],
        "ats": ["2024-01-02T03:04:05", null], "atstz": ["2024-01-02T01:04:05Z"],
        "aiv": ["P1D", "PT-1S"], "aby": ["AP8=", null], "aj": [{"a": 1}], "ajb": [[1, "x"]],
        "ae": ["sad", "happy"], "ain": ["10.0.0.1", "::1"], "acidr": ["10.0.0.0/8"],
    });
    let more = json!({
        "amac": ["08:00:2b:01:02:03"], "am": [1.5, -2.0], "ah": [{"k": "v"}],
        "ar": [{"gte": 1, "lt": 2}, null], "ap": [{"lat": 2.0, "lon": 1.0}, {"lat": -4.0, "lon": 3.5}],
        "ax": ["<a/>"], "abt": ["1010"], "aci": ["MiXed"], "a3": [[[1], [2]], [[3], [4]]],
        "alb": [7, 8], "dl": [5, 6], "lb": "lbl", "alabel": ["x", null],
        "nr": {"gt": 1.5, "lte": 2.5}, "dr": {"gte": "2024-01-01", "lt": "2024-02-01"},
        "tsr": {"gte": "2024-01-01T00:00:00"}, "i8r": {"lt": 5}, "nnan": null, "ninf": null,
        "dinf": null, "tsinf": null, "f4inf": null, "dbig": "+12345-06-07",
        "tsbig": "+12345-06-07T01:02:03Z", "tsbc": "-0043-03-15T12:00:00Z",
    });
    let mut expected = expected.as_object().unwrap().clone();
    expected.extend(more.as_object().unwrap().clone());
    for (k, v) in &expected {
        assert_eq!(got.get(k), Some(v), "column {k}");
    }
    assert_eq!(got.len(), expected.len());
    reader.stop().await.unwrap();
}

#[tokio::test]
async fn database_level_date_interval_time_zone_and_money_settings_do_not_change_the_values() {
    let db = TestDb::new().await;
    for (guc, value) in [
        ("DateStyle", "SQL, DMY"),
        ("TimeZone", "Asia/Tokyo"),
        ("IntervalStyle", "postgres_verbose"),
        ("lc_monetary", "C.UTF-8"),
        ("extra_float_digits", "-3"),
    ] {
        db.sql(&format!("ALTER DATABASE {} SET {guc} = '{value}'", db.name))
            .await;
    }
    db.sql("CREATE TABLE s (id int PRIMARY KEY, ts timestamptz, d date, iv interval, m money, f float8)")
        .await;
    let (mut reader, _slot) = stream(&db, &["s"]).await;
    db.sql(
        "INSERT INTO s VALUES (1, '2024-01-02 03:04:05+00', '2024-02-29', '-1 days 02:00:00', 1234.5, 0.1)",
    )
    .await;
    let changes = reader.changes(1).await;
    let got = by_name(&changes[0], new_row(&changes[0]));
    let expected = json!({
        "id": 1, "ts": "2024-01-02T03:04:05Z", "d": "2024-02-29", "iv": "P-1DT2H",
        "m": 1234.5, "f": 0.1,
    });
    assert_eq!(Value::Object(got), expected);
    // The SQL connection (snapshot reads, re-reads) sees the same settings.
    let sql = connect_sql(&repl_config(&db)).await.unwrap();
    let row = sql
        .query_one(
            "SELECT now()::date::text ~ '^\\d{4}-', 1234.5::money::text",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "ISO dates");
    assert_eq!(row.get::<_, String>(1), "$1,234.50");
    reader.stop().await.unwrap();
}

/// A column's raw binary value, whatever its type.
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Raw, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// pgoutput sends binary tuple data only when asked (Sluice asks for text),
/// so compare the binary converter with the text one on what the server's
/// send functions produce: tokio-postgres reads results in binary.
#[tokio::test]
async fn binary_values_from_the_server_convert_exactly_like_their_text() {
    let db = TestDb::new().await;
    db.sql("CREATE EXTENSION IF NOT EXISTS hstore").await;
    let sql = connect_sql(&repl_config(&db)).await.unwrap();
    let catalog = TypeCatalog::load(&sql).await.unwrap();
    let opts = ValueOptions::default();
    let cases = [
        "true",
        "(-32768)::int2",
        "2147483647",
        "(-9223372036854775808)::int8",
        "4294967295::oid",
        "0.1::float4",
        "'NaN'::float4",
        "'-Infinity'::float8",
        "1e-300::float8",
        "123.4500::numeric",
        "(-0.000120)::numeric",
        "12345678901234567890.123456789::numeric",
        "'NaN'::numeric",
        "1e30::numeric",
        "0::numeric",
        "(-1234.56)::money",
        "'zürich ✓'::text",
        "'abc'::varchar(9)",
        "'ab'::char(5)",
        "'nm'::name",
        "'{\"a\": [1, null]}'::json",
        "'{\"b\": {\"c\": true}}'::jsonb",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
        "'\\x48656c6c6f'::bytea",
        "''::bytea",
        "'2024-02-29'::date",
        "'infinity'::date",
        "'0044-03-15 BC'::date",
        "'13:45:00.5'::time",
        "'24:00:00'::time",
        "'13:45:00+05:30'::timetz",
        "'01:02:03.25-08'::timetz",
        "'2024-01-02 03:04:05.123456'::timestamp",
        "'0044-03-15 12:00:00 BC'::timestamp",
        "'12345-06-07 01:02:03'::timestamp",
        "'2024-01-02 03:04:05.5+02'::timestamptz",
        "'-infinity'::timestamptz",
        "'1 year 2 mons 3 days 04:05:06.789'::interval",
        "'-1 days -00:00:01'::interval",
        "'0'::interval",
        "'-14 mons 36:00:00'::interval",
        "'(1.5,-2)'::point",
        "'{{1,NULL},{3,4}}'::int[]",
        "'{\"a b\",NULL,\"\"}'::text[]",
        "'{}'::int[]",
        "'{1.5,NaN}'::float8[]",
        "'{2024-01-01 00:00:00+00}'::timestamptz[]",
        "'{\"{\\\"a\\\": 1}\"}'::jsonb[]",
        "'[1,10)'::int4range",
        "'(1.5,2.5]'::numrange",
        "'[2024-01-01,2024-01-31]'::daterange",
        "'[2024-01-01 00:00:00+00,)'::tstzrange",
        "'empty'::int8range",
        "'\"k\"=>\"v\", \"n\"=>NULL'::hstore",
    ];
    for expr in cases {
        let query = format!("SELECT {expr}");
        let row = sql
            .query_one(&query, &[])
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        let oid = row.columns()[0].type_().oid();
        let Raw(bytes) = row.get(0);
        // The output function's text, as pgoutput sends it (a cast to text
        // would differ, e.g. it trims char(n) padding).
        let text = sql
            .simple_query(&query)
            .await
            .unwrap()
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap();
        let conv = catalog.resolve(oid);
        let want = convert_text(oid, &text, &opts, &catalog)
            .unwrap_or_else(|e| panic!("{expr} as text: {e}"));
        let got = convert_binary(oid, &conv, &bytes, &opts)
            .unwrap_or_else(|e| panic!("{expr} as binary: {e}"));
        assert_eq!(got, want, "{expr} (text `{text}`)");
    }
}
