//! Value conversion: PostgreSQL text output → `serde_json::Value`.
//!
//! One converter for the stream and for snapshot reads (`convert_text`), so a
//! row indexes identically whichever path it took. Sessions are expected to
//! run with `DateStyle=ISO`, `TimeZone=UTC` and `IntervalStyle=iso_8601`
//! (`SESSION_SETTINGS`); other timestamp offsets and postgres-style
//! intervals are still understood. Conversion never panics: text that does
//! not parse as its type is an error naming the type.

pub mod binary;
mod options;
mod parse;
mod text;

pub(crate) use options::verr;
pub use options::{
    InfiniteTime, NonFiniteFloat, NumericMode, SESSION_SETTINGS, ValueError, ValueOptions,
};
pub use text::{convert, convert_text};

#[cfg(test)]
mod tests;
