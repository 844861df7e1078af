//! Per-field value conversions and the small JSON writers the transformer
//! uses to write documents straight into a byte buffer.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

use crate::config::Conversion;

/// Append `s` as a JSON string literal.
pub fn write_json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                buf.extend_from_slice(&bytes[start..i]);
                buf.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(esc);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// Append a JSON value.
pub fn write_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => write_json_str(buf, s),
        Value::Null => buf.extend_from_slice(b"null"),
        Value::Bool(true) => buf.extend_from_slice(b"true"),
        Value::Bool(false) => buf.extend_from_slice(b"false"),
        // Writing into a Vec cannot fail.
        other => serde_json::to_writer(&mut *buf, other).expect("JSON into a Vec"),
    }
}

/// Text of a scalar for `_id`, routing and templates: strings as they are,
/// numbers and booleans as JSON prints them, NULL as nothing.
pub fn push_text(out: &mut String, v: &Value) {
    use std::fmt::Write;
    match v {
        Value::String(s) => out.push_str(s),
        Value::Null => {}
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Parse the timestamp forms PostgreSQL and JSON use: RFC 3339, PostgreSQL's
/// text output (`2024-01-02 03:04:05.123+00`), naive timestamps (taken as
/// UTC) and plain dates.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Apply a conversion and append the result. NULL stays null (a real NULL,
/// not a hole). Errors describe why the value does not convert.
pub fn write_converted(buf: &mut Vec<u8>, v: &Value, c: &Conversion) -> Result<(), String> {
    if v.is_null() {
        buf.extend_from_slice(b"null");
        return Ok(());
    }
    match c {
        Conversion::None => write_value(buf, v),
        Conversion::Float => write_value(buf, &Value::from(to_float(v)?)),
        Conversion::Integer => write_value(buf, &to_integer(v)?),
        Conversion::String => match v {
            Value::String(s) => write_json_str(buf, s),
            other => {
                let mut s = String::new();
                push_text(&mut s, other);
                write_json_str(buf, &s);
            }
        },
        Conversion::Timestamp(fmt) => {
            write_json_str(buf, &to_timestamp(v)?.format(fmt).to_string());
        }
        Conversion::EpochMillis => {
            write_value(buf, &Value::from(to_timestamp(v)?.timestamp_millis()));
        }
        Conversion::Split(sep) => match v {
            Value::String(s) => write_split(buf, s, sep),
            Value::Array(_) => write_value(buf, v),
            _ => return Err(format!("{v} is not text to split")),
        },
        Conversion::Json => match v {
            Value::String(s) => {
                let parsed: Value =
                    serde_json::from_str(s).map_err(|e| format!("text is not JSON ({e})"))?;
                write_value(buf, &parsed);
            }
            other => write_value(buf, other),
        },
    }
    Ok(())
}

/// A number, or text holding one; finite only.
fn to_float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|f| f.is_finite())
    .ok_or_else(|| format!("{v} is not a finite number"))
}

/// A whole number, or text holding one (`42`, `42.0`); fractions refused.
fn to_integer(v: &Value) -> Result<Value, String> {
    match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(Value::Number(n.clone())),
        Value::Number(n) => n.as_f64().and_then(whole),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .map(Value::from)
                .or_else(|| s.parse::<f64>().ok().and_then(whole))
        }
        _ => None,
    }
    .ok_or_else(|| format!("{v} is not a whole number"))
}

/// Text in one of the forms [`parse_timestamp`] reads.
fn to_timestamp(v: &Value) -> Result<DateTime<Utc>, String> {
    v.as_str()
        .and_then(parse_timestamp)
        .ok_or_else(|| format!("{v} is not a timestamp"))
}

/// `s` split on `sep` as a JSON array of trimmed, non-empty strings.
fn write_split(buf: &mut Vec<u8>, s: &str, sep: &str) {
    buf.push(b'[');
    let mut first = true;
    for part in s.split(sep).map(str::trim).filter(|p| !p.is_empty()) {
        if !first {
            buf.push(b',');
        }
        first = false;
        write_json_str(buf, part);
    }
    buf.push(b']');
}

fn whole(f: f64) -> Option<Value> {
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18).then(|| Value::from(f as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conv(v: Value, c: Conversion) -> Result<Value, String> {
        let mut buf = Vec::new();
        write_converted(&mut buf, &v, &c)?;
        Ok(serde_json::from_slice(&buf).expect("valid JSON"))
    }

    #[test]
    fn strings_are_escaped_like_serde_json_does() {
        for s in [
            "plain",
            "quote\" back\\slash",
            "new\nline\ttab",
            "\u{1}ctl",
            "é ü 日本",
        ] {
            let mut buf = Vec::new();
            write_json_str(&mut buf, s);
            assert_eq!(serde_json::from_slice::<String>(&buf).unwrap(), s);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_round_trips_through_the_escaper(s in ".*") {
            let mut buf = Vec::new();
            write_json_str(&mut buf, &s);
            proptest::prop_assert_eq!(serde_json::from_slice::<String>(&buf).unwrap(), s);
        }
    }

    #[test]
    fn conversions_table() {
        use Conversion::*;
        let cases: Vec<(Value, Conversion, Result<Value, ()>)> = vec![
            (json!("12.50"), Float, Ok(json!(12.5))),
            (json!(3), Float, Ok(json!(3.0))),
            (json!("NaN"), Float, Err(())),
            (json!("42"), Integer, Ok(json!(42))),
            (json!(42.0), Integer, Ok(json!(42))),
            (json!("4.5"), Integer, Err(())),
            (json!(12.5), String, Ok(json!("12.5"))),
            (json!(true), String, Ok(json!("true"))),
            (
                json!("2024-03-05 10:11:12.5+00"),
                Timestamp("%Y-%m-%d".into()),
                Ok(json!("2024-03-05")),
            ),
            (
                json!("2024-03-05T10:11:12+02:00"),
                Timestamp("%H:%M".into()),
                Ok(json!("08:11")),
            ),
            (
                json!("2024-03-05 10:11:12"),
                EpochMillis,
                Ok(json!(1709633472000i64)),
            ),
            (
                json!("2024-03-05"),
                EpochMillis,
                Ok(json!(1709596800000i64)),
            ),
            (json!("yesterday"), EpochMillis, Err(())),
            (
                json!("a, b,,c "),
                Split(",".into()),
                Ok(json!(["a", "b", "c"])),
            ),
            (json!("a|b"), Split("|".into()), Ok(json!(["a", "b"]))),
            (json!(["x"]), Split(",".into()), Ok(json!(["x"]))),
            (json!("{\"k\":1}"), Json, Ok(json!({"k": 1}))),
            (json!("{oops"), Json, Err(())),
            (json!(null), Float, Ok(json!(null))),
        ];
        for (input, c, want) in cases {
            let got = conv(input.clone(), c.clone()).map_err(|_| ());
            assert_eq!(got, want, "{input} with {c:?}");
        }
    }
}
