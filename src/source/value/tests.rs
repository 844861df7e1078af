use serde_json::json;

use super::*;
use serde_json::Value;

use crate::source::types::{Conv, TypeCatalog};

fn c(oid: u32, text: &str) -> Value {
    convert_text(oid, text, &ValueOptions::default(), &TypeCatalog::new())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn with(opts: ValueOptions, oid: u32, text: &str) -> Value {
    convert_text(oid, text, &opts, &TypeCatalog::new()).unwrap()
}

#[test]
fn booleans_and_integers_become_json_scalars() {
    assert_eq!(c(16, "t"), json!(true));
    assert_eq!(c(16, "f"), json!(false));
    assert_eq!(c(21, "-32768"), json!(-32768));
    assert_eq!(c(23, "2147483647"), json!(2147483647));
    assert_eq!(c(20, "-9223372036854775808"), json!(i64::MIN));
    assert_eq!(c(26, "4294967295"), json!(4294967295u64));
    assert!(convert_text(23, "x", &ValueOptions::default(), &TypeCatalog::new()).is_err());
    assert!(convert_text(16, "yes", &ValueOptions::default(), &TypeCatalog::new()).is_err());
}

#[test]
fn floats_map_non_finite_values_as_configured() {
    assert_eq!(c(701, "1.5"), json!(1.5));
    assert_eq!(c(700, "-0.1"), json!(-0.1));
    assert_eq!(c(701, "1e+300"), json!(1e300));
    assert_eq!(c(701, "NaN"), Value::Null);
    assert_eq!(c(701, "-Infinity"), Value::Null);
    let s = ValueOptions {
        non_finite_float: NonFiniteFloat::String,
        ..Default::default()
    };
    assert_eq!(with(s, 701, "NaN"), json!("NaN"));
    assert_eq!(with(s, 700, "Infinity"), json!("Infinity"));
    assert_eq!(with(s, 700, "-Infinity"), json!("-Infinity"));
}

#[test]
fn numerics_are_numbers_only_when_exact() {
    assert_eq!(c(1700, "123.4500"), json!(123.45));
    assert_eq!(c(1700, "0.1"), json!(0.1));
    assert_eq!(c(1700, "-42"), json!(-42));
    assert_eq!(c(1700, "0"), json!(0));
    assert_eq!(c(1700, "0.000"), json!(0.0));
    assert_eq!(
        c(1700, "12345678901234567890123.5"),
        json!("12345678901234567890123.5")
    );
    assert_eq!(
        c(1700, "3.141592653589793238462643"),
        json!("3.141592653589793238462643")
    );
    assert_eq!(
        c(1700, "99999999999999999999"),
        json!("99999999999999999999")
    );
    assert_eq!(c(1700, "NaN"), Value::Null);
    let s = ValueOptions {
        numeric: NumericMode::String,
        ..Default::default()
    };
    assert_eq!(with(s, 1700, "1.50"), json!("1.50"));
    let l = ValueOptions {
        numeric: NumericMode::Lossy,
        ..Default::default()
    };
    assert_eq!(
        with(l, 1700, "3.141592653589793238462643"),
        json!(std::f64::consts::PI)
    );
    assert!(convert_text(1700, "1.2.3", &ValueOptions::default(), &TypeCatalog::new()).is_err());
}

#[test]
fn money_becomes_a_number() {
    assert_eq!(c(790, "$1,234.56"), json!(1234.56));
    assert_eq!(c(790, "-$0.01"), json!(-0.01));
    assert_eq!(c(790, "($5.00)"), json!(-5.0));
}

#[test]
fn text_like_types_keep_their_text_including_unicode() {
    for oid in [
        25, 1043, 1042, 19, 2950, 869, 650, 829, 142, 1560, 1562, 3614,
    ] {
        assert_eq!(c(oid, "zürich ✓ 東京"), json!("zürich ✓ 東京"));
    }
    assert_eq!(c(25, ""), json!(""));
}

#[test]
fn json_and_jsonb_are_embedded_not_quoted() {
    assert_eq!(
        c(3802, r#"{"a": [1, null, "x"]}"#),
        json!({"a": [1, null, "x"]})
    );
    assert_eq!(c(114, "3"), json!(3));
}

#[test]
fn json_that_serde_cannot_hold_is_kept_as_text_instead_of_stopping_the_stream() {
    // Valid in PostgreSQL: a number beyond f64 and nesting deeper than 128.
    let huge = format!(r#"{{"n": 1{}}}"#, "0".repeat(400));
    assert_eq!(c(3802, &huge), json!(huge));
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert_eq!(c(3802, &deep), json!(deep));
}

#[test]
fn bytea_hex_becomes_base64() {
    assert_eq!(c(17, "\\x48656c6c6f"), json!("SGVsbG8="));
    assert_eq!(c(17, "\\x"), json!(""));
    assert!(convert_text(17, "\\x4", &ValueOptions::default(), &TypeCatalog::new()).is_err());
    assert!(convert_text(17, "abc", &ValueOptions::default(), &TypeCatalog::new()).is_err());
}

#[test]
fn dates_times_and_timestamps_become_iso_8601() {
    assert_eq!(c(1082, "2024-02-29"), json!("2024-02-29"));
    assert_eq!(c(1082, "0044-03-15 BC"), json!("-0043-03-15"));
    assert_eq!(c(1082, "0001-01-01 BC"), json!("0000-01-01"));
    assert_eq!(c(1083, "13:45:00.123"), json!("13:45:00.123"));
    assert_eq!(c(1266, "13:45:00+02"), json!("13:45:00+02:00"));
    assert_eq!(c(1266, "13:45:00+05:30"), json!("13:45:00+05:30"));
    assert_eq!(
        c(1114, "2024-01-02 03:04:05.123456"),
        json!("2024-01-02T03:04:05.123456")
    );
    assert_eq!(
        c(1184, "2024-01-02 03:04:05+00"),
        json!("2024-01-02T03:04:05Z")
    );
    assert_eq!(
        c(1184, "2024-01-02 03:04:05.5+02"),
        json!("2024-01-02T01:04:05.500Z")
    );
    assert_eq!(
        c(1184, "2024-01-02 03:04:05-05:30"),
        json!("2024-01-02T08:34:05Z")
    );
}

#[test]
fn years_past_9999_and_bc_timestamps_convert_instead_of_stopping_the_stream() {
    assert_eq!(c(1082, "12345-06-07"), json!("+12345-06-07"));
    assert_eq!(
        c(1114, "12345-06-07 01:02:03"),
        json!("+12345-06-07T01:02:03")
    );
    assert_eq!(
        c(1184, "294276-12-31 23:59:59.999999+00"),
        json!("+294276-12-31T23:59:59.999999Z")
    );
    assert_eq!(
        c(1184, "10000-01-01 01:00:00+01"),
        json!("+10000-01-01T00:00:00Z")
    );
    assert_eq!(
        c(1184, "0044-03-15 12:00:00+00 BC"),
        json!("-0043-03-15T12:00:00Z")
    );
    assert_eq!(
        c(1184, "0044-03-15 12:00:00+02 BC"),
        json!("-0043-03-15T10:00:00Z")
    );
    assert_eq!(
        c(1114, "4713-11-24 00:00:00 BC"),
        json!("-4712-11-24T00:00:00")
    );
    let cat = TypeCatalog::new();
    let o = ValueOptions::default();
    for bad in [
        "2024-01-02",
        "12345-06-07 1",
        " 01:02:03",
        "2024-01-02 03:04",
    ] {
        assert!(convert_text(1184, bad, &o, &cat).is_err(), "{bad}");
    }
}

#[test]
fn infinite_dates_and_timestamps_map_as_configured() {
    assert_eq!(c(1184, "infinity"), Value::Null);
    assert_eq!(c(1082, "-infinity"), Value::Null);
    let s = ValueOptions {
        infinite_time: InfiniteTime::String,
        ..Default::default()
    };
    assert_eq!(with(s, 1114, "-infinity"), json!("-infinity"));
    assert_eq!(with(s, 1082, "infinity"), json!("infinity"));
}

#[test]
fn intervals_become_iso_8601_durations_including_negative_ones() {
    assert_eq!(c(1186, "P1Y2M3DT4H5M6S"), json!("P1Y2M3DT4H5M6S"));
    assert_eq!(c(1186, "P-1Y-2M3DT-4H"), json!("P-1Y-2M3DT-4H"));
    assert_eq!(
        c(1186, "1 year 2 mons 3 days 04:05:06.5"),
        json!("P1Y2M3DT4H5M6.5S")
    );
    assert_eq!(c(1186, "-1 days +02:03:00"), json!("P-1DT2H3M"));
    assert_eq!(c(1186, "-00:00:01"), json!("PT-1S"));
    assert_eq!(c(1186, "00:00:00"), json!("PT0S"));
    assert!(convert_text(1186, "soon", &ValueOptions::default(), &TypeCatalog::new()).is_err());
}

#[test]
fn arrays_keep_nulls_dimensions_quoting_and_element_types() {
    assert_eq!(c(1007, "{1,2,NULL}"), json!([1, 2, null]));
    assert_eq!(c(1007, "{}"), json!([]));
    assert_eq!(c(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
    assert_eq!(c(1007, "[0:1]={7,8}"), json!([7, 8]));
    assert_eq!(
        c(1009, r#"{"a b","c\"d","NULL",NULL,"","back\\slash",é}"#),
        json!(["a b", "c\"d", "NULL", null, "", "back\\slash", "é"])
    );
    assert_eq!(c(1000, "{t,f}"), json!([true, false]));
    assert_eq!(c(1231, "{1.5,NaN}"), json!([1.5, null]));
    assert_eq!(
        c(1185, r#"{"2024-01-02 03:04:05+00"}"#),
        json!(["2024-01-02T03:04:05Z"])
    );
    assert_eq!(c(3807, r#"{"{\"a\": 1}",null}"#), json!([{"a": 1}, null]));
    assert_eq!(
        c(1020, "{(1,1),(0,0);(2,2),(1,1)}"),
        json!(["(1,1),(0,0)", "(2,2),(1,1)"])
    );
    for bad in ["{1,2", "{1,,2}", "1,2", "{1}x", "[0:1]{1}"] {
        assert!(
            convert_text(1007, bad, &ValueOptions::default(), &TypeCatalog::new()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn ranges_become_elasticsearch_range_objects() {
    assert_eq!(c(3904, "[1,10)"), json!({"gte": 1, "lt": 10}));
    assert_eq!(c(3906, "(1.5,2.5]"), json!({"gt": 1.5, "lte": 2.5}));
    assert_eq!(c(3904, "(,5)"), json!({"lt": 5}));
    assert_eq!(c(3904, "[5,)"), json!({"gte": 5}));
    assert_eq!(c(3904, "(,)"), json!({}));
    assert_eq!(c(3904, "empty"), Value::Null);
    assert_eq!(
        c(
            3910,
            r#"["2024-01-01 00:00:00+00","2024-02-01 00:00:00+00")"#
        ),
        json!({"gte": "2024-01-01T00:00:00Z", "lt": "2024-02-01T00:00:00Z"})
    );
    assert_eq!(
        c(3912, "[2024-01-01,2024-01-31)"),
        json!({"gte": "2024-01-01", "lt": "2024-01-31"})
    );
    assert!(convert_text(3904, "[1;2)", &ValueOptions::default(), &TypeCatalog::new()).is_err());
    assert!(convert_text(3904, "[", &ValueOptions::default(), &TypeCatalog::new()).is_err());
}

#[test]
fn points_become_geo_points() {
    assert_eq!(c(600, "(13.4,52.5)"), json!({"lat": 52.5, "lon": 13.4}));
    assert!(convert_text(600, "(1)", &ValueOptions::default(), &TypeCatalog::new()).is_err());
    assert!(convert_text(600, "(a,1)", &ValueOptions::default(), &TypeCatalog::new()).is_err());
    // PostgreSQL allows non-finite coordinates; no geo point can hold them.
    for p in ["(NaN,1)", "(1,Infinity)", "(-Infinity,NaN)"] {
        assert_eq!(c(600, p), Value::Null, "{p}");
    }
}

#[test]
fn hstore_becomes_an_object() {
    let v = convert(
        &Conv::Hstore,
        r#""a"=>"1", "b c"=>NULL, "q\"k"=>"x\\y""#,
        &ValueOptions::default(),
    )
    .unwrap();
    assert_eq!(v, json!({"a": "1", "b c": null, "q\"k": "x\\y"}));
    assert_eq!(
        convert(&Conv::Hstore, "", &ValueOptions::default()).unwrap(),
        json!({})
    );
    assert!(convert(&Conv::Hstore, r#""a"=>"#, &ValueOptions::default()).is_err());
}

#[test]
fn unknown_types_fall_back_to_text() {
    assert_eq!(c(999_999, "whatever"), json!("whatever"));
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(500))]
    #[test]
    fn conversion_of_arbitrary_text_never_panics(s in "\\PC{0,40}", oid in proptest::sample::select(vec![
        16u32, 20, 700, 1700, 790, 114, 17, 1082, 1266, 1114, 1184, 1186, 600, 1007, 1009, 3904, 3910, 1231,
    ])) {
        let _ = convert_text(oid, &s, &ValueOptions::default(), &TypeCatalog::new());
        let _ = convert(&Conv::Hstore, &s, &ValueOptions::default());
    }
}
