//! Parsers for PostgreSQL's structured text outputs: arrays (any dimension,
//! quoted elements, NULL elements), ranges, hstore and postgres-style
//! intervals. Total on any input: malformed text is `None`/an error.

use serde_json::{Map, Value};

use super::options::{ValueError, verr};

type ElemFn<'f> = &'f mut dyn FnMut(&str) -> Result<Value, ValueError>;

/// `{1,2,NULL}`, `{{1,2},{3,4}}`, `[0:1]={a,b}`, `{"a b","c\"d"}` → nested JSON arrays.
pub fn parse_array(text: &str, delim: u8, elem: ElemFn<'_>) -> Result<Value, ValueError> {
    let body = if text.starts_with('[') {
        // Non-default lower bounds: `[l:u]...=` decoration; the values follow.
        match text.find('=') {
            Some(i) => &text[i + 1..],
            None => return Err(verr("array", text, "dimension decoration without `=`")),
        }
    } else {
        text
    };
    let mut p = Arr {
        s: body,
        pos: 0,
        delim,
        depth: 0,
    };
    let v = p
        .array(elem)
        .map_err(|e| e.unwrap_or_else(|| verr("array", text, "malformed")))?;
    p.ws();
    if p.pos != body.len() {
        return Err(verr("array", text, "trailing characters"));
    }
    Ok(v)
}

struct Arr<'s> {
    s: &'s str,
    pos: usize,
    delim: u8,
    depth: u32,
}

/// `None` = malformed (the caller names the whole text); `Some` = an element failed.
type ArrResult<T> = Result<T, Option<ValueError>>;

impl Arr<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn array(&mut self, elem: ElemFn<'_>) -> ArrResult<Value> {
        self.depth += 1;
        if self.depth > 64 || self.peek() != Some(b'{') {
            return Err(None);
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.ws();
            match self.peek() {
                Some(b'{') => items.push(self.array(elem)?),
                Some(b'"') => {
                    let s = quoted(self.s, &mut self.pos).ok_or(None)?;
                    items.push(elem(&s).map_err(Some)?);
                }
                Some(_) => {
                    let start = self.pos;
                    while self.peek().is_some_and(|c| c != self.delim && c != b'}') {
                        self.pos += 1;
                    }
                    let raw = self.s[start..self.pos].trim();
                    if raw.is_empty() {
                        return Err(None);
                    }
                    if raw.eq_ignore_ascii_case("NULL") {
                        items.push(Value::Null);
                    } else {
                        items.push(elem(raw).map_err(Some)?);
                    }
                }
                None => return Err(None),
            }
            self.ws();
            match self.peek() {
                Some(c) if c == self.delim => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(None),
            }
        }
    }
}

/// A double-quoted token starting at `*pos`, with `\x` escapes (and `""`,
/// which range output uses for a quote); advances past the closing quote.
fn quoted(s: &str, pos: &mut usize) -> Option<String> {
    let b = s.as_bytes();
    if b.get(*pos) != Some(&b'"') {
        return None;
    }
    let mut i = *pos + 1;
    let mut out = String::new();
    let mut run = i;
    loop {
        match *b.get(i)? {
            b'\\' => {
                out.push_str(&s[run..i]);
                // Copy the whole escaped char to stay on a UTF-8 boundary.
                let ch = s[i + 1..].chars().next()?;
                out.push(ch);
                i += 1 + ch.len_utf8();
                run = i;
            }
            b'"' if b.get(i + 1) == Some(&b'"') => {
                out.push_str(&s[run..i]);
                out.push('"');
                i += 2;
                run = i;
            }
            b'"' => {
                out.push_str(&s[run..i]);
                *pos = i + 1;
                return Some(out);
            }
            _ => i += 1,
        }
    }
}

/// `[1,10)` → `{"gte":1,"lt":10}`; unbounded sides are left out; `empty` → null.
pub fn parse_range(text: &str, elem: ElemFn<'_>) -> Result<Value, ValueError> {
    if text == "empty" {
        return Ok(Value::Null);
    }
    let bad = || verr("range", text, "expected [lower,upper)");
    let b = text.as_bytes();
    let lower_inc = match b.first() {
        Some(b'[') => true,
        Some(b'(') => false,
        _ => return Err(bad()),
    };
    let upper_inc = match b.last() {
        Some(b']') => true,
        Some(b')') => false,
        _ => return Err(bad()),
    };
    if b.len() < 3 {
        return Err(bad());
    }
    let mut pos = 1;
    let bound = |pos: &mut usize, end: u8| -> Result<Option<String>, ValueError> {
        if b.get(*pos) == Some(&b'"') {
            let s = quoted(text, pos).ok_or_else(bad)?;
            return Ok(Some(s));
        }
        let start = *pos;
        while *pos < b.len() - 1 && b[*pos] != end {
            *pos += 1;
        }
        let raw = &text[start..*pos];
        Ok((!raw.is_empty()).then(|| raw.to_string()))
    };
    let lower = bound(&mut pos, b',')?;
    if b.get(pos) != Some(&b',') {
        return Err(bad());
    }
    pos += 1;
    let upper = bound(&mut pos, b')')?;
    if pos != b.len() - 1 {
        return Err(bad());
    }
    let mut m = Map::new();
    if let Some(l) = lower {
        m.insert(if lower_inc { "gte" } else { "gt" }.into(), elem(&l)?);
    }
    if let Some(u) = upper {
        m.insert(if upper_inc { "lte" } else { "lt" }.into(), elem(&u)?);
    }
    Ok(Value::Object(m))
}

/// `"a"=>"1", "b"=>NULL` → `{"a":"1","b":null}`.
pub fn parse_hstore(text: &str) -> Option<Value> {
    let b = text.as_bytes();
    let mut m = Map::new();
    let mut pos = 0;
    let ws = |pos: &mut usize| {
        while b.get(*pos).is_some_and(|c| c.is_ascii_whitespace()) {
            *pos += 1;
        }
    };
    ws(&mut pos);
    while pos < b.len() {
        let key = quoted(text, &mut pos)?;
        ws(&mut pos);
        if !text[pos..].starts_with("=>") {
            return None;
        }
        pos += 2;
        ws(&mut pos);
        let val = if text[pos..].starts_with("NULL") {
            pos += 4;
            Value::Null
        } else {
            Value::String(quoted(text, &mut pos)?)
        };
        m.insert(key, val);
        ws(&mut pos);
        match b.get(pos) {
            Some(b',') => {
                pos += 1;
                ws(&mut pos);
            }
            None => break,
            _ => return None,
        }
    }
    Some(Value::Object(m))
}

/// A postgres-style interval (`1 year 2 mons -3 days +04:05:06.5`) as an
/// ISO 8601 duration with per-component signs, like `IntervalStyle=iso_8601`.
pub fn pg_interval_to_iso(text: &str) -> Option<String> {
    let (mut y, mut mo, mut d) = (0i64, 0i64, 0i64);
    let mut time: Option<(bool, i64, i64, String)> = None;
    let mut toks = text.split_whitespace().peekable();
    while let Some(tok) = toks.next() {
        if tok.contains(':') {
            let (neg, t) = match tok.strip_prefix('-') {
                Some(t) => (true, t),
                None => (false, tok.strip_prefix('+').unwrap_or(tok)),
            };
            let mut parts = t.split(':');
            let h: i64 = parts.next()?.parse().ok()?;
            let m: i64 = parts.next()?.parse().ok()?;
            let s = parts.next().unwrap_or("0").to_string();
            if parts.next().is_some() || s.parse::<f64>().is_err() {
                return None;
            }
            time = Some((neg, h, m, s));
            continue;
        }
        let n: i64 = tok.parse().ok()?;
        match toks.next()? {
            "year" | "years" => y += n,
            "mon" | "mons" => mo += n,
            "day" | "days" => d += n,
            _ => return None,
        }
    }
    let mut out = String::from("P");
    for (v, u) in [(y, 'Y'), (mo, 'M'), (d, 'D')] {
        if v != 0 {
            out.push_str(&format!("{v}{u}"));
        }
    }
    if let Some((neg, h, m, s)) = time {
        let sign = if neg { "-" } else { "" };
        let s = s.trim_end_matches('0').trim_end_matches('.');
        let mut t = String::new();
        if h != 0 {
            t.push_str(&format!("{sign}{h}H"));
        }
        if m != 0 {
            t.push_str(&format!("{sign}{m}M"));
        }
        if !s.is_empty() && s.parse::<f64>().ok()? != 0.0 {
            let s = s.trim_start_matches('0');
            let s = if s.starts_with('.') {
                format!("0{s}")
            } else {
                s.to_string()
            };
            t.push_str(&format!("{sign}{s}S"));
        }
        if !t.is_empty() {
            out.push('T');
            out.push_str(&t);
        }
    }
    if out == "P" {
        out.push_str("T0S");
    }
    Some(out)
}
