//! The knobs of value conversion and its one error type, shared by the
//! text and binary converters.

/// GUCs every session that produces text values for `convert` should use.
/// Sent at connection start, so they win over `ALTER DATABASE/ROLE ... SET`.
/// `lc_monetary=C` keeps money as `$1,234.56` (other locales move the
/// decimal separator, which `convert_money` could not tell apart).
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO"),
    ("lc_monetary", "C"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "iso_8601"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// How float NaN/±Infinity (and numeric NaN/±Infinity) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFiniteFloat {
    /// JSON null (Elasticsearch numeric fields refuse non-finite values).
    #[default]
    Null,
    /// The strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
    String,
}

/// How `numeric` values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumericMode {
    /// A JSON number when the number prints back to the same decimal value,
    /// otherwise the exact decimal as a string.
    #[default]
    NumberWhenExact,
    /// Always the exact decimal string.
    String,
    /// Always a (possibly rounded) JSON number.
    Lossy,
}

/// How `infinity`/`-infinity` dates and timestamps are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InfiniteTime {
    /// JSON null.
    #[default]
    Null,
    /// The strings `"infinity"` / `"-infinity"`.
    String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(default)]
pub struct ValueOptions {
    pub non_finite_float: NonFiniteFloat,
    pub numeric: NumericMode,
    pub infinite_time: InfiniteTime,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot convert {type_name} value `{text}`: {reason}")]
pub struct ValueError {
    pub type_name: &'static str,
    /// The offending text, cut to 100 bytes.
    pub text: String,
    pub reason: &'static str,
}

pub(crate) fn verr(type_name: &'static str, text: &str, reason: &'static str) -> ValueError {
    let mut end = text.len().min(100);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ValueError {
        type_name,
        text: text[..end].to_string(),
        reason,
    }
}
