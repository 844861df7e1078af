//! Parser for PostgreSQL's `COPY ... TO STDOUT` text format.
//!
//! Owns turning one COPY data row into column texts. The texts are exactly
//! what each type's output function printed — the same texts pgoutput sends —
//! so snapshot rows and streamed rows go through the same value converter.

/// A malformed COPY text row (never expected from a real server; reported
/// instead of guessed at).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CopyParseError {
    #[error("COPY row has {found} columns, expected {expected}")]
    ColumnCount { expected: usize, found: usize },
    #[error("COPY row column {column} is not valid UTF-8 after unescaping")]
    Utf8 { column: usize },
    #[error("COPY row ends inside an escape sequence in column {column}")]
    TrailingBackslash { column: usize },
}

/// Split one COPY text row (`line`, with or without its trailing `\n`) into
/// `expected` column texts (`None` for NULL), reusing `out`.
pub fn parse_row(
    line: &[u8],
    expected: usize,
    out: &mut Vec<Option<String>>,
) -> Result<(), CopyParseError> {
    out.clear();
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    // Zero columns: PostgreSQL prints an empty line.
    if expected == 0 {
        return if line.is_empty() {
            Ok(())
        } else {
            Err(CopyParseError::ColumnCount { expected, found: 1 })
        };
    }
    // Raw tabs only ever separate fields: a tab inside a value is escaped.
    for (i, field) in line.split(|&b| b == b'\t').enumerate() {
        if field == b"\\N" {
            out.push(None);
        } else {
            out.push(Some(unescape(field, i)?));
        }
    }
    if out.len() != expected {
        return Err(CopyParseError::ColumnCount {
            expected,
            found: out.len(),
        });
    }
    Ok(())
}

fn unescape(field: &[u8], column: usize) -> Result<String, CopyParseError> {
    if memchr::memchr(b'\\', field).is_none() {
        return std::str::from_utf8(field)
            .map(str::to_owned)
            .map_err(|_| CopyParseError::Utf8 { column });
    }
    let mut buf = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' {
            buf.push(b);
            i += 1;
            continue;
        }
        let Some(&c) = field.get(i + 1) else {
            return Err(CopyParseError::TrailingBackslash { column });
        };
        i += 2;
        match c {
            b'b' => buf.push(0x08),
            b'f' => buf.push(0x0c),
            b'n' => buf.push(b'\n'),
            b'r' => buf.push(b'\r'),
            b't' => buf.push(b'\t'),
            b'v' => buf.push(0x0b),
            b'0'..=b'7' => {
                // Up to three octal digits.
                let mut v = (c - b'0') as u32;
                let mut n = 1;
                while n < 3 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                            n += 1;
                        }
                        _ => break,
                    }
                }
                buf.push((v & 0xff) as u8);
            }
            b'x' => {
                // Up to two hex digits; `\x` alone is a literal `x`.
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                if n == 0 {
                    buf.push(b'x');
                } else {
                    buf.push(v as u8);
                }
            }
            other => buf.push(other),
        }
    }
    String::from_utf8(buf).map_err(|_| CopyParseError::Utf8 { column })
}

/// Escape a value the way COPY text output does (used by tests and the
/// benchmark to produce rows; the reader never needs it).
pub fn escape(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            '\u{8}' => s.push_str("\\b"),
            '\u{c}' => s.push_str("\\f"),
            '\u{b}' => s.push_str("\\v"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(line: &str, n: usize) -> Result<Vec<Option<String>>, CopyParseError> {
        let mut out = Vec::new();
        parse_row(line.as_bytes(), n, &mut out).map(|_| out)
    }

    #[test]
    fn plain_fields_split_on_tabs_and_null_is_backslash_n() {
        assert_eq!(
            parse("1\thello\t\\N\n", 3).unwrap(),
            vec![Some("1".into()), Some("hello".into()), None]
        );
    }

    #[test]
    fn an_empty_string_is_not_null() {
        assert_eq!(parse("\t\\N", 2).unwrap(), vec![Some(String::new()), None]);
    }

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(
            parse("a\\tb\\nc\\\\d\\r\\b\\f\\v", 1).unwrap(),
            vec![Some("a\tb\nc\\d\r\u{8}\u{c}\u{b}".into())]
        );
    }

    #[test]
    fn octal_and_hex_escapes_build_utf8_bytes() {
        // "é" is C3 A9.
        assert_eq!(parse("\\303\\251", 1).unwrap(), vec![Some("é".into())]);
        assert_eq!(parse("\\xc3\\xa9", 1).unwrap(), vec![Some("é".into())]);
        assert_eq!(parse("\\x", 1).unwrap(), vec![Some("x".into())]);
        assert_eq!(parse("\\0a", 1).unwrap(), vec![Some("\0a".into())]);
    }

    #[test]
    fn a_literal_backslash_n_text_is_not_null() {
        // The text `\N` is printed as `\\N`.
        assert_eq!(parse("\\\\N", 1).unwrap(), vec![Some("\\N".into())]);
    }

    #[test]
    fn a_wrong_column_count_is_an_error() {
        assert_eq!(
            parse("1\t2", 3),
            Err(CopyParseError::ColumnCount {
                expected: 3,
                found: 2
            })
        );
    }

    #[test]
    fn a_trailing_backslash_or_bad_utf8_is_an_error() {
        assert_eq!(
            parse("abc\\", 1),
            Err(CopyParseError::TrailingBackslash { column: 0 })
        );
        assert_eq!(parse("\\377", 1), Err(CopyParseError::Utf8 { column: 0 }));
    }

    #[test]
    fn zero_column_rows_are_empty_lines() {
        assert_eq!(parse("\n", 0).unwrap(), Vec::<Option<String>>::new());
    }

    proptest! {
        #[test]
        fn escape_then_parse_round_trips(values in proptest::collection::vec(proptest::option::of(".*"), 1..6)) {
            let line: Vec<String> = values
                .iter()
                .map(|v| v.as_deref().map(escape).unwrap_or_else(|| "\\N".into()))
                .collect();
            let line = format!("{}\n", line.join("\t"));
            prop_assert_eq!(parse(&line, values.len()).unwrap(), values);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), n in 0usize..4) {
            let mut out = Vec::new();
            let _ = parse_row(&bytes, n, &mut out);
        }
    }
}
