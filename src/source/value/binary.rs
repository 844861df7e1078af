//! Binary tuple values (pgoutput's `binary` option) → `serde_json::Value`,
//! for built-in types, their arrays and ranges, and hstore.
//!
//! The reader asks for text (binary would not pay: see BENCHMARKS.md), but
//! a binary column must still decode, or fail with an error naming it —
//! never panic. Each value is turned into the text PostgreSQL would print
//! for it and then goes through the text converter, so both formats index
//! identically (a test compares them against the server's `*_send`).

use base64::Engine as _;
use serde_json::{Map, Value};

use super::options::{ValueError, ValueOptions, verr};
use super::text::convert;
use crate::source::types::Conv;

/// Convert the binary form of a value of type `type_oid`, resolved to `conv`.
pub fn convert_binary(
    type_oid: u32,
    conv: &Conv,
    b: &[u8],
    opts: &ValueOptions,
) -> Result<Value, ValueError> {
    let mut r = Reader(b);
    let v = value(type_oid, conv, &mut r, opts)?;
    if !r.0.is_empty() {
        return Err(verr("binary value", "", "trailing bytes"));
    }
    Ok(v)
}

struct Reader<'a>(&'a [u8]);

const SHORT: ValueError = ValueError {
    type_name: "binary value",
    text: String::new(),
    reason: "truncated",
};

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ValueError> {
        if self.0.len() < n {
            return Err(SHORT);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn i16(&mut self) -> Result<i16, ValueError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, ValueError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, ValueError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn f64(&mut self) -> Result<f64, ValueError> {
        Ok(f64::from_bits(self.i64()? as u64))
    }
    /// A length-prefixed part (array element, range bound, hstore string);
    /// `None` for -1 (NULL).
    fn part(&mut self) -> Result<Option<&'a [u8]>, ValueError> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(None);
        }
        self.take(len as usize).map(Some)
    }
}

fn utf8<'a>(b: &'a [u8], type_name: &'static str) -> Result<&'a str, ValueError> {
    std::str::from_utf8(b).map_err(|_| verr(type_name, "", "not valid UTF-8"))
}

/// Text-like built-ins whose binary form is their UTF-8 text.
const TEXT_OIDS: &[u32] = &[25, 1043, 1042, 19, 142, 114, 705];

fn value(
    oid: u32,
    conv: &Conv,
    r: &mut Reader<'_>,
    opts: &ValueOptions,
) -> Result<Value, ValueError> {
    let text = match conv {
        Conv::Bool => match r.take(1)?[0] {
            0 => "f".to_string(),
            _ => "t".to_string(),
        },
        Conv::Int => match r.0.len() {
            2 => r.i16()?.to_string(),
            // oid, xid and cid are unsigned.
            4 if matches!(oid, 26 | 28 | 29) => (r.i32()? as u32).to_string(),
            4 => r.i32()?.to_string(),
            8 => r.i64()?.to_string(),
            _ => return Err(verr("integer", "", "binary length is not 2, 4 or 8")),
        },
        Conv::Float => match r.0.len() {
            4 => float_text(f32::from_bits(r.i32()? as u32) as f64, true),
            8 => float_text(r.f64()?, false),
            _ => return Err(verr("float", "", "binary length is not 4 or 8")),
        },
        Conv::Numeric => numeric_text(r)?,
        Conv::Money => {
            let cents = r.i64()?;
            let sign = if cents < 0 { "-" } else { "" };
            let c = cents.unsigned_abs();
            format!("{sign}{}.{:02}", c / 100, c % 100)
        }
        Conv::Json if oid == 3802 => {
            if r.take(1)? != [1] {
                return Err(verr("jsonb", "", "unknown binary version"));
            }
            utf8(r.rest(), "jsonb")?.to_string()
        }
        Conv::Bytea => {
            return Ok(Value::String(
                base64::engine::general_purpose::STANDARD.encode(r.rest()),
            ));
        }
        Conv::Text if oid == 2950 => {
            let u = r.take(16)?;
            let h = |s: &[u8]| s.iter().map(|b| format!("{b:02x}")).collect::<String>();
            format!(
                "{}-{}-{}-{}-{}",
                h(&u[..4]),
                h(&u[4..6]),
                h(&u[6..8]),
                h(&u[8..10]),
                h(&u[10..])
            )
        }
        Conv::Text | Conv::Json if TEXT_OIDS.contains(&oid) => utf8(r.rest(), "text")?.to_string(),
        Conv::Date => date_text(r.i32()?),
        Conv::Time => time_text(r.i64()?),
        Conv::TimeTz => {
            let t = time_text(r.i64()?);
            // Seconds west of UTC: the opposite sign of an ISO offset.
            let east = -(r.i32()? as i64);
            let (sign, a) = (if east < 0 { '-' } else { '+' }, east.unsigned_abs());
            let mut s = format!("{t}{sign}{:02}", a / 3600);
            if a % 3600 != 0 {
                s.push_str(&format!(":{:02}", a % 3600 / 60));
            }
            if a % 60 != 0 {
                s.push_str(&format!(":{:02}", a % 60));
            }
            s
        }
        Conv::Timestamp => timestamp_text(r.i64()?, ""),
        Conv::TimestampTz => timestamp_text(r.i64()?, "+00"),
        Conv::Interval => {
            let (us, days, months) = (r.i64()?, r.i32()?, r.i32()?);
            return Ok(Value::String(interval_iso(us, days, months)));
        }
        Conv::Point => {
            let (x, y) = (r.f64()?, r.f64()?);
            format!("({},{})", float_text(x, false), float_text(y, false))
        }
        Conv::Hstore => return hstore(r),
        Conv::Array { elem, .. } => return array(elem, r, opts),
        Conv::Range(sub) => return range(sub, r, opts),
        _ => {
            return Err(verr(
                "binary value",
                "",
                "this type's binary format is not supported (the reader asks for text)",
            ));
        }
    };
    convert(conv, &text, opts)
}

fn float_text(f: f64, single: bool) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else if single {
        // The shortest text that reads back as the same float4, as
        // PostgreSQL prints it.
        (f as f32).to_string()
    } else {
        f.to_string()
    }
}

/// numeric: ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric_text(r: &mut Reader<'_>) -> Result<String, ValueError> {
    let bad = |reason| verr("numeric", "", reason);
    let ndigits = r.i16()?;
    let weight = r.i16()? as i32;
    let sign = r.i16()? as u16;
    let dscale = r.i16()?;
    if ndigits < 0 || dscale < 0 {
        return Err(bad("negative digit count or scale"));
    }
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return Err(bad("unknown sign")),
    }
    let mut digits = Vec::with_capacity(ndigits as usize);
    for _ in 0..ndigits {
        let d = r.i16()?;
        if !(0..10000).contains(&d) {
            return Err(bad("digit out of range"));
        }
        digits.push(d as u32);
    }
    // Base-10000 digit i has weight `weight - i`; write the integer part,
    // then `dscale` decimal places.
    let digit = |w: i32| -> u32 {
        let i = weight - w;
        if i >= 0 && (i as usize) < digits.len() {
            digits[i as usize]
        } else {
            0
        }
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        s.push_str(&digit(weight).to_string());
        for w in (0..weight).rev() {
            s.push_str(&format!("{:04}", digit(w)));
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::new();
        let mut w = -1;
        while frac.len() < dscale as usize {
            frac.push_str(&format!("{:04}", digit(w)));
            w -= 1;
        }
        frac.truncate(dscale as usize);
        s.push_str(&frac);
    }
    Ok(s)
}

/// Days since 2000-01-01 → `YYYY-MM-DD[ BC]`, as PostgreSQL prints it.
fn date_text(days: i32) -> String {
    match days {
        i32::MAX => return "infinity".into(),
        i32::MIN => return "-infinity".into(),
        _ => {}
    }
    let epoch = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap();
    match epoch.checked_add_signed(chrono::Duration::days(days as i64)) {
        Some(d) => ymd(d),
        // Beyond chrono's range: the text converter names it.
        None => format!("day {days}"),
    }
}

fn ymd(d: chrono::NaiveDate) -> String {
    use chrono::Datelike;
    let y = d.year();
    if y <= 0 {
        format!("{:04}-{:02}-{:02} BC", 1 - y, d.month(), d.day())
    } else {
        format!("{:04}-{:02}-{:02}", y, d.month(), d.day())
    }
}

/// `.123` with trailing zeros dropped, or nothing.
fn fraction(us: u64) -> String {
    if us == 0 {
        return String::new();
    }
    let f = format!(".{us:06}");
    f.trim_end_matches('0').to_string()
}

fn time_text(us: i64) -> String {
    let us = us.max(0) as u64;
    let secs = us / 1_000_000;
    format!(
        "{:02}:{:02}:{:02}{}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        fraction(us % 1_000_000)
    )
}

/// Microseconds since 2000-01-01 → PostgreSQL's ISO text (`tz`: offset suffix).
fn timestamp_text(us: i64, tz: &str) -> String {
    match us {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let epoch = chrono::NaiveDate::from_ymd_opt(2000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let Some(t) = epoch.checked_add_signed(chrono::Duration::microseconds(us)) else {
        return format!("microsecond {us}");
    };
    use chrono::Timelike;
    let mut date = ymd(t.date());
    let bc = date.ends_with(" BC");
    if bc {
        date.truncate(date.len() - 3);
    }
    format!(
        "{date} {:02}:{:02}:{:02}{}{tz}{}",
        t.hour(),
        t.minute(),
        t.second(),
        fraction(t.nanosecond() as u64 / 1000),
        if bc { " BC" } else { "" }
    )
}

/// ISO 8601 duration with per-component signs, as `IntervalStyle=iso_8601`.
fn interval_iso(us: i64, days: i32, months: i32) -> String {
    let mut out = String::from("P");
    let (y, m) = (months / 12, months % 12);
    for (v, unit) in [(y as i64, 'Y'), (m as i64, 'M'), (days as i64, 'D')] {
        if v != 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    if us != 0 {
        out.push('T');
        let sign = if us < 0 { "-" } else { "" };
        let a = us.unsigned_abs();
        let (h, mi, s, f) = (
            a / 3_600_000_000,
            a / 60_000_000 % 60,
            a / 1_000_000 % 60,
            a % 1_000_000,
        );
        if h != 0 {
            out.push_str(&format!("{sign}{h}H"));
        }
        if mi != 0 {
            out.push_str(&format!("{sign}{mi}M"));
        }
        if s != 0 || f != 0 {
            out.push_str(&format!("{sign}{s}{}S", fraction(f)));
        }
    }
    if out == "P" {
        out.push_str("T0S");
    }
    out
}

fn hstore(r: &mut Reader<'_>) -> Result<Value, ValueError> {
    let n = r.i32()?;
    let mut m = Map::new();
    for _ in 0..n.max(0) {
        let key = r.part()?.ok_or_else(|| verr("hstore", "", "NULL key"))?;
        let val = r.part()?;
        m.insert(
            utf8(key, "hstore")?.to_string(),
            match val {
                Some(v) => Value::String(utf8(v, "hstore")?.to_string()),
                None => Value::Null,
            },
        );
    }
    Ok(Value::Object(m))
}

fn array(elem: &Conv, r: &mut Reader<'_>, opts: &ValueOptions) -> Result<Value, ValueError> {
    let ndim = r.i32()?;
    let _has_nulls = r.i32()?;
    let elem_oid = r.i32()? as u32;
    if !(0..=64).contains(&ndim) {
        return Err(verr("array", "", "bad dimension count"));
    }
    let mut dims = Vec::with_capacity(ndim as usize);
    for _ in 0..ndim {
        let len = r.i32()?;
        let _lower = r.i32()?;
        if len < 0 {
            return Err(verr("array", "", "negative dimension"));
        }
        dims.push(len as usize);
    }
    if dims.is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    // Each element needs at least its 4-byte length: bound the work by the input.
    let total = dims.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
    if total.is_none_or(|t| t > r.0.len() / 4) {
        return Err(verr("array", "", "more elements than bytes"));
    }
    // PostgreSQL sends an empty array with no dimensions. A zero-length
    // dimension next to a huge one passes the bound above (the product is 0)
    // but would make `nested` reserve and loop over the huge one.
    if dims.contains(&0) {
        return Err(verr("array", "", "zero-length dimension"));
    }
    nested(&dims, elem_oid, elem, r, opts)
}

fn nested(
    dims: &[usize],
    oid: u32,
    elem: &Conv,
    r: &mut Reader<'_>,
    opts: &ValueOptions,
) -> Result<Value, ValueError> {
    let mut items = Vec::with_capacity(dims[0]);
    for _ in 0..dims[0] {
        items.push(if dims.len() > 1 {
            nested(&dims[1..], oid, elem, r, opts)?
        } else {
            match r.part()? {
                None => Value::Null,
                Some(b) => convert_binary(oid, elem, b, opts)?,
            }
        });
    }
    Ok(Value::Array(items))
}

/// Range flags (rangetypes.h).
const RANGE_EMPTY: u8 = 0x01;
const RANGE_LB_INC: u8 = 0x02;
const RANGE_UB_INC: u8 = 0x04;
const RANGE_LB_INF: u8 = 0x08;
const RANGE_UB_INF: u8 = 0x10;

/// Ranges carry no subtype OID: the bounds use the subtype's binary form,
/// found from the converter (built-in subtypes only).
fn range(sub: &Conv, r: &mut Reader<'_>, opts: &ValueOptions) -> Result<Value, ValueError> {
    let flags = r.take(1)?[0];
    if flags & RANGE_EMPTY != 0 {
        return Ok(Value::Null);
    }
    let sub_oid = match sub {
        Conv::Int => 0, // decided by length
        Conv::Float => 701,
        Conv::Numeric => 1700,
        Conv::Date => 1082,
        Conv::Timestamp => 1114,
        Conv::TimestampTz => 1184,
        _ => {
            return Err(verr(
                "range",
                "",
                "binary ranges of this subtype are not supported",
            ));
        }
    };
    let mut m = Map::new();
    for (inf, inc, incl, excl) in [
        (RANGE_LB_INF, RANGE_LB_INC, "gte", "gt"),
        (RANGE_UB_INF, RANGE_UB_INC, "lte", "lt"),
    ] {
        if flags & inf != 0 {
            continue;
        }
        let b = r.part()?.ok_or_else(|| verr("range", "", "NULL bound"))?;
        let key = if flags & inc != 0 { incl } else { excl };
        m.insert(key.into(), convert_binary(sub_oid, sub, b, opts)?);
    }
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b(oid: u32, conv: Conv, bytes: &[u8]) -> Result<Value, ValueError> {
        convert_binary(oid, &conv, bytes, &ValueOptions::default())
    }

    #[test]
    fn scalars_decode_like_their_text() {
        assert_eq!(b(16, Conv::Bool, &[1]).unwrap(), json!(true));
        assert_eq!(b(23, Conv::Int, &7i32.to_be_bytes()).unwrap(), json!(7));
        assert_eq!(
            b(26, Conv::Int, &u32::MAX.to_be_bytes()).unwrap(),
            json!(u32::MAX)
        );
        assert_eq!(
            b(701, Conv::Float, &f64::NAN.to_be_bytes()).unwrap(),
            Value::Null
        );
        assert_eq!(
            b(700, Conv::Float, &0.1f32.to_be_bytes()).unwrap(),
            json!(0.1)
        );
        assert_eq!(
            b(3802, Conv::Json, b"\x01{\"a\": 1}").unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            b(1184, Conv::TimestampTz, &0i64.to_be_bytes()).unwrap(),
            json!("2000-01-01T00:00:00Z")
        );
        assert_eq!(
            b(1114, Conv::Timestamp, &i64::MAX.to_be_bytes()).unwrap(),
            Value::Null
        );
        assert_eq!(interval_iso(-1_000_000, -1, 0), "P-1DT-1S");
        assert_eq!(interval_iso(0, 0, 14), "P1Y2M");
        assert_eq!(interval_iso(0, 0, 0), "PT0S");
    }

    #[test]
    fn numerics_are_rebuilt_from_base_10000_digits() {
        let n = |ndigits: i16, weight: i16, sign: u16, dscale: i16, digits: &[i16]| {
            let mut v = Vec::new();
            for x in [ndigits, weight, sign as i16, dscale] {
                v.extend(x.to_be_bytes());
            }
            for d in digits {
                v.extend(d.to_be_bytes());
            }
            numeric_text(&mut Reader(&v)).unwrap()
        };
        assert_eq!(n(2, 0, 0, 4, &[123, 4500]), "123.4500");
        assert_eq!(n(3, 1, 0x4000, 2, &[1, 2345, 6700]), "-12345.67");
        assert_eq!(n(1, -1, 0, 5, &[12]), "0.00120");
        assert_eq!(n(0, 0, 0, 0, &[]), "0");
        assert_eq!(n(1, 2, 0, 0, &[7]), "700000000");
        assert_eq!(n(0, 0, 0xC000, 0, &[]), "NaN");
    }

    #[test]
    fn unsupported_and_malformed_binary_values_are_errors() {
        assert!(b(16, Conv::Bool, &[]).is_err());
        assert!(b(23, Conv::Int, &[0, 0, 1]).is_err());
        assert!(b(99999, Conv::Unknown, b"x").is_err());
        assert!(b(2950, Conv::Text, &[0; 15]).is_err());
        // An array header claiming more elements than bytes.
        let mut a = Vec::new();
        for x in [1i32, 0, 23, i32::MAX, 1] {
            a.extend(x.to_be_bytes());
        }
        let conv = Conv::Array {
            elem: Box::new(Conv::Int),
            delim: b',',
        };
        assert!(b(1007, conv, &a).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(500))]
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            which in 0usize..12,
        ) {
            let (oid, conv) = [
                (16, Conv::Bool), (23, Conv::Int), (701, Conv::Float), (1700, Conv::Numeric),
                (790, Conv::Money), (3802, Conv::Json), (2950, Conv::Text), (1082, Conv::Date),
                (1266, Conv::TimeTz), (1184, Conv::TimestampTz), (1186, Conv::Interval),
                (1007, Conv::Array { elem: Box::new(Conv::Range(Box::new(Conv::Int))), delim: b',' }),
            ][which].clone();
            let _ = b(oid, conv, &bytes);
        }
    }
}
