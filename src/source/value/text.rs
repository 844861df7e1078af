//! Text output of PostgreSQL → JSON, one function per type family.

use base64::Engine as _;
use serde_json::{Map, Number, Value};

use super::options::{InfiniteTime, NonFiniteFloat, NumericMode, ValueError, ValueOptions, verr};
use super::parse::{parse_array, parse_hstore, parse_range, pg_interval_to_iso};
use crate::source::types::{Conv, TypeCatalog};

/// Convert the text form of a value of type `type_oid` (for snapshot reads
/// and re-reads; the stream resolves the converter once per column).
pub fn convert_text(
    type_oid: u32,
    text: &str,
    opts: &ValueOptions,
    catalog: &TypeCatalog,
) -> Result<Value, ValueError> {
    convert(&catalog.resolve(type_oid), text, opts)
}

/// Convert a value's text form with a resolved converter.
pub fn convert(conv: &Conv, text: &str, opts: &ValueOptions) -> Result<Value, ValueError> {
    Ok(match conv {
        Conv::Text | Conv::Unknown => Value::String(text.to_owned()),
        Conv::Int => match text.parse::<i64>() {
            Ok(i) => Value::from(i),
            Err(_) => text
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| verr("integer", text, "not an integer"))?,
        },
        Conv::Bool => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err(verr("boolean", text, "expected t or f")),
        },
        Conv::Float => convert_float(text, opts)?,
        Conv::Numeric => convert_numeric(text, opts)?,
        Conv::Money => convert_money(text, opts)?,
        Conv::Json => convert_json(text),
        Conv::Bytea => convert_bytea(text)?,
        Conv::Date => convert_date(text, opts)?,
        Conv::Time => Value::String(text.to_owned()),
        Conv::TimeTz => Value::String(normalize_offset(text)),
        Conv::Timestamp => convert_timestamp(text, opts, false)?,
        Conv::TimestampTz => convert_timestamp(text, opts, true)?,
        Conv::Interval => Value::String(if text.starts_with('P') || text.starts_with("-P") {
            text.to_owned()
        } else {
            pg_interval_to_iso(text).ok_or_else(|| verr("interval", text, "unrecognized format"))?
        }),
        Conv::Point => convert_point(text)?,
        Conv::Hstore => parse_hstore(text).ok_or_else(|| verr("hstore", text, "malformed"))?,
        Conv::Array { elem, delim } => parse_array(text, *delim, &mut |s| convert(elem, s, opts))?,
        Conv::Range(sub) => parse_range(text, &mut |s| convert(sub, s, opts))?,
    })
}

/// json/jsonb embedded as JSON. PostgreSQL only outputs valid JSON, but
/// serde_json refuses numbers beyond f64 (`1e400`) and nesting deeper than
/// 128: such a value is kept as its text (warned about once per process)
/// rather than stopping the stream; Elasticsearch then indexes it, or
/// refuses it into the dead-letter index.
fn convert_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(error = %e, "a json value cannot be embedded as JSON; it is indexed as its text (further cases are not logged)");
        });
        Value::String(text.to_owned())
    })
}

fn non_finite(text: &str, opts: &ValueOptions) -> Option<Value> {
    let canon = match text {
        "NaN" | "nan" => "NaN",
        "Infinity" | "inf" | "infinity" => "Infinity",
        "-Infinity" | "-inf" | "-infinity" => "-Infinity",
        _ => return None,
    };
    Some(match opts.non_finite_float {
        NonFiniteFloat::Null => Value::Null,
        NonFiniteFloat::String => Value::String(canon.into()),
    })
}

fn convert_float(text: &str, opts: &ValueOptions) -> Result<Value, ValueError> {
    if let Some(v) = non_finite(text, opts) {
        return Ok(v);
    }
    let f: f64 = text
        .parse()
        .map_err(|_| verr("float", text, "not a number"))?;
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| verr("float", text, "not finite"))
}

fn convert_numeric(text: &str, opts: &ValueOptions) -> Result<Value, ValueError> {
    if let Some(v) = non_finite(text, opts) {
        return Ok(v);
    }
    if !is_decimal(text) {
        return Err(verr("numeric", text, "not a decimal number"));
    }
    Ok(match opts.numeric {
        NumericMode::String => Value::String(text.to_owned()),
        NumericMode::Lossy => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_owned())),
        NumericMode::NumberWhenExact => {
            exact_number(text).unwrap_or_else(|| Value::String(text.to_owned()))
        }
    })
}

fn is_decimal(s: &str) -> bool {
    let b = s.strip_prefix(['-', '+']).unwrap_or(s).as_bytes();
    let mut digits = 0;
    let mut dots = 0;
    for &c in b {
        match c {
            b'0'..=b'9' => digits += 1,
            b'.' => dots += 1,
            _ => return false,
        }
    }
    digits > 0 && dots <= 1
}

/// The decimal as a JSON number if that number prints back to the same value.
pub(crate) fn exact_number(text: &str) -> Option<Value> {
    if !text.contains('.') {
        if let Ok(i) = text.parse::<i64>() {
            return Some(Value::from(i));
        }
        if let Ok(u) = text.parse::<u64>() {
            return Some(Value::from(u));
        }
    }
    let f: f64 = text.parse().ok()?;
    // Rust prints the shortest decimal that reads back as the same f64.
    let printed = f.to_string();
    if decimal_key(&printed)? == decimal_key(text)? {
        Number::from_f64(f).map(Value::Number)
    } else {
        None
    }
}

/// (negative, significant digits, exponent of the last digit), so two
/// spellings of one decimal value compare equal.
fn decimal_key(s: &str) -> Option<(bool, String, i64)> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (mant, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()?),
        None => (s, 0),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    let mut digits: String = format!("{int}{frac}");
    let mut exp = exp - frac.len() as i64;
    let trimmed = digits.trim_start_matches('0').len();
    digits = digits[digits.len() - trimmed..].to_string();
    while digits.ends_with('0') {
        digits.pop();
        exp += 1;
    }
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((neg, digits, exp))
}

/// `$1,234.56`, `-$1.00`, `($1.00)` → a number (C/en_US `lc_monetary`).
fn convert_money(text: &str, opts: &ValueOptions) -> Result<Value, ValueError> {
    let negative = text.contains('-') || (text.starts_with('(') && text.ends_with(')'));
    let mut s = String::with_capacity(text.len());
    if negative {
        s.push('-');
    }
    s.extend(text.chars().filter(|c| c.is_ascii_digit() || *c == '.'));
    if !is_decimal(&s) {
        return Err(verr("money", text, "no amount"));
    }
    convert_numeric(&s, opts)
}

fn convert_bytea(text: &str) -> Result<Value, ValueError> {
    let hex = text
        .strip_prefix("\\x")
        .ok_or_else(|| verr("bytea", text, "expected hex output (\\x...)"))?;
    let h = hex.as_bytes();
    if h.len() % 2 != 0 {
        return Err(verr("bytea", text, "odd number of hex digits"));
    }
    let mut out = Vec::with_capacity(h.len() / 2);
    for pair in h.chunks_exact(2) {
        let hi = hex_val(pair[0]).ok_or_else(|| verr("bytea", text, "bad hex digit"))?;
        let lo = hex_val(pair[1]).ok_or_else(|| verr("bytea", text, "bad hex digit"))?;
        out.push(hi << 4 | lo);
    }
    Ok(Value::String(
        base64::engine::general_purpose::STANDARD.encode(out),
    ))
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn infinite(text: &str, opts: &ValueOptions) -> Option<Value> {
    match text {
        "infinity" | "-infinity" => Some(match opts.infinite_time {
            InfiniteTime::Null => Value::Null,
            InfiniteTime::String => Value::String(text.into()),
        }),
        _ => None,
    }
}

/// `YYYY-MM-DD BC` → ISO 8601 astronomical year (`1 BC` is year 0).
fn bc_to_iso(date: &str) -> Option<String> {
    let (y, rest) = date.split_once('-')?;
    let year: i64 = y.parse().ok()?;
    let astro = 1 - year;
    Some(if astro == 0 {
        format!("0000-{rest}")
    } else {
        format!("-{:04}-{rest}", -astro)
    })
}

fn convert_date(text: &str, opts: &ValueOptions) -> Result<Value, ValueError> {
    if let Some(v) = infinite(text, opts) {
        return Ok(v);
    }
    let valid = |d: &str| d.len() >= 10 && d.find('-').is_some_and(|i| i >= 4);
    if let Some(d) = text.strip_suffix(" BC") {
        return bc_to_iso(d)
            .map(Value::String)
            .ok_or_else(|| verr("date", text, "expected YYYY-MM-DD"));
    }
    if !valid(text) {
        return Err(verr("date", text, "expected YYYY-MM-DD (DateStyle ISO)"));
    }
    Ok(Value::String(expanded_year(text)))
}

/// ISO 8601 writes years past 9999 with a sign (`+12345-06-07`), which is
/// also what Elasticsearch's date parser expects; PostgreSQL prints them bare.
fn expanded_year(date: &str) -> String {
    if date.find('-').is_some_and(|i| i > 4) {
        format!("+{date}")
    } else {
        date.to_owned()
    }
}

/// `+05` → `+05:00`, so time zones read as ISO 8601 offsets.
fn normalize_offset(text: &str) -> String {
    let b = text.as_bytes();
    if let Some(pos) = text.rfind(['+', '-']) {
        let off = &text[pos + 1..];
        if pos > 0
            && b[pos - 1].is_ascii_digit()
            && off.len() == 2
            && off.bytes().all(|c| c.is_ascii_digit())
        {
            return format!("{text}:00");
        }
    }
    text.to_owned()
}

fn convert_timestamp(text: &str, opts: &ValueOptions, tz: bool) -> Result<Value, ValueError> {
    let name = if tz { "timestamptz" } else { "timestamp" };
    if let Some(v) = infinite(text, opts) {
        return Ok(v);
    }
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    };
    // The date part is 10 bytes, more for years past 9999.
    let sp = text.find(' ').unwrap_or(0);
    if sp < 10 || text.len() < sp + 9 {
        return Err(verr(
            name,
            text,
            "expected YYYY-MM-DD HH:MM:SS (DateStyle ISO)",
        ));
    }
    let (date, rest) = (&text[..sp], &text[sp + 1..]);
    let mut out = String::with_capacity(text.len() + 2);
    if bc {
        let date = bc_to_iso(date).ok_or_else(|| verr(name, text, "bad BC date"))?;
        out.push_str(&date);
    } else if sp == 10 {
        out.push_str(date);
    } else {
        out.push_str(&expanded_year(date));
    }
    out.push('T');
    if !tz {
        out.push_str(rest);
        return Ok(Value::String(out));
    }
    // Fast path: the session runs in UTC.
    if let Some(t) = rest.strip_suffix("+00") {
        out.push_str(t);
        out.push('Z');
        return Ok(Value::String(out));
    }
    // Another offset: normalize to UTC with chrono.
    let date = if bc { &out[..out.len() - 1] } else { date };
    let with_offset = format!("{}T{}", expanded_year(date), normalize_offset(rest));
    let dt = chrono::DateTime::parse_from_str(&with_offset, "%Y-%m-%dT%H:%M:%S%.f%:z")
        .or_else(|_| chrono::DateTime::parse_from_str(&with_offset, "%Y-%m-%dT%H:%M:%S%.f%::z"))
        .map_err(|_| verr(name, text, "unrecognized timestamp with time zone"))?;
    Ok(Value::String(
        dt.with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    ))
}

/// `(x,y)` → an Elasticsearch geo point `{lat: y, lon: x}`. A point with a
/// NaN or infinite coordinate (PostgreSQL allows them) is no place: null.
fn convert_point(text: &str) -> Result<Value, ValueError> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| verr("point", text, "expected (x,y)"))?;
    let (x, y) = inner
        .split_once(',')
        .ok_or_else(|| verr("point", text, "expected (x,y)"))?;
    let num = |s: &str| {
        s.trim()
            .parse::<f64>()
            .map_err(|_| verr("point", text, "coordinate is not a number"))
    };
    let (lat, lon) = (num(y)?, num(x)?);
    let (Some(lat), Some(lon)) = (Number::from_f64(lat), Number::from_f64(lon)) else {
        return Ok(Value::Null);
    };
    let mut m = Map::new();
    m.insert("lat".into(), Value::Number(lat));
    m.insert("lon".into(), Value::Number(lon));
    Ok(Value::Object(m))
}
