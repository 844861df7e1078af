//! Raw pgoutput (protocol 1) message parsing: bytes → borrowed messages.
//!
//! Pure and total: any input, however malformed or truncated, yields either a
//! message or a `DecodeError` naming the message kind and the byte offset —
//! never a panic. Tuple data is validated here once (every length checked),
//! so iterating its columns later cannot fail.

use crate::model::change::{Column, Relation, ReplicaIdentity};
use crate::model::lsn::Lsn;

/// Malformed pgoutput input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput {kind} message at byte {offset}: {reason}")]
pub struct DecodeError {
    /// Message kind (`Begin`, `Insert`, ...), or `unknown` if the tag is.
    pub kind: &'static str,
    pub offset: usize,
    pub reason: String,
}

/// One column value inside a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleValue<'a> {
    Null,
    /// Unchanged TOAST value, not sent.
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

/// A validated TupleData block; iterate its columns with `iter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TupleData<'a> {
    pub ncols: usize,
    bytes: &'a [u8],
}

impl<'a> TupleData<'a> {
    pub fn iter(&self) -> TupleIter<'a> {
        TupleIter {
            rest: self.bytes,
            left: self.ncols,
        }
    }
}

pub struct TupleIter<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for TupleIter<'a> {
    type Item = TupleValue<'a>;

    #[inline]
    fn next(&mut self) -> Option<TupleValue<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Lengths were validated by `parse_tuple`; `get` keeps this total anyway.
        let (&tag, rest) = self.rest.split_first()?;
        match tag {
            b'n' => {
                self.rest = rest;
                Some(TupleValue::Null)
            }
            b'u' => {
                self.rest = rest;
                Some(TupleValue::Unchanged)
            }
            _ => {
                let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let data = rest.get(4..4 + len)?;
                self.rest = &rest[4 + len..];
                Some(if tag == b't' {
                    TupleValue::Text(data)
                } else {
                    TupleValue::Binary(data)
                })
            }
        }
    }
}

/// The old tuple an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// `K`: only replica identity columns.
    Key(TupleData<'a>),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData<'a>),
}

/// A parsed pgoutput message, borrowing from the input.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    Begin {
        final_lsn: Lsn,
        /// Microseconds since 2000-01-01 UTC.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: &'a str,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: &'a str,
        name: &'a str,
    },
    Insert {
        rel_id: u32,
        new: TupleData<'a>,
    },
    Update {
        rel_id: u32,
        old: Option<OldTuple<'a>>,
        new: TupleData<'a>,
    },
    Delete {
        rel_id: u32,
        old: OldTuple<'a>,
    },
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        rel_ids: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: &'a str,
        content: &'a [u8],
    },
}

/// Name of a message kind by tag, for errors and logs.
pub fn kind_name(tag: u8) -> &'static str {
    match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "StreamStart",
        b'E' => "StreamStop",
        b'c' => "StreamCommit",
        b'A' => "StreamAbort",
        _ => "unknown",
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    kind: &'static str,
}

impl<'a> Cursor<'a> {
    fn err(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            kind: self.kind,
            offset: self.pos,
            reason: reason.into(),
        }
    }

    #[inline]
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        match self.buf.get(self.pos..self.pos.saturating_add(n)) {
            Some(s) if self.pos.checked_add(n).is_some() => {
                self.pos += n;
                Ok(s)
            }
            _ => Err(self.err(format!(
                "truncated: {what} needs {n} bytes, {} left",
                self.buf.len().saturating_sub(self.pos)
            ))),
        }
    }

    #[inline]
    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    #[inline]
    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    #[inline]
    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    #[inline]
    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn lsn(&mut self, what: &str) -> Result<Lsn, DecodeError> {
        self.u64(what).map(Lsn)
    }

    fn cstr(&mut self, what: &str) -> Result<&'a str, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(nul) = memchr::memchr(0, rest) else {
            return Err(self.err(format!("truncated: {what} has no NUL terminator")));
        };
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| self.err(format!("{what} is not valid UTF-8")))?;
        self.pos += nul + 1;
        Ok(s)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.err(format!(
                "{} unexpected trailing bytes",
                self.buf.len() - self.pos
            )))
        }
    }

    /// Validate a TupleData block and return it without converting values.
    fn tuple(&mut self) -> Result<TupleData<'a>, DecodeError> {
        let ncols = self.u16("column count")? as usize;
        let start = self.pos;
        for i in 0..ncols {
            match self.u8("column kind")? {
                b'n' | b'u' => {}
                b't' | b'b' => {
                    let len = self.u32("column length")?;
                    if len > i32::MAX as u32 {
                        return Err(self.err(format!("column {i} has negative length")));
                    }
                    self.take(len as usize, "column value")?;
                }
                other => {
                    self.pos -= 1;
                    return Err(self.err(format!("column {i} has unknown kind byte 0x{other:02x}")));
                }
            }
        }
        Ok(TupleData {
            ncols,
            bytes: &self.buf[start..self.pos],
        })
    }
}

/// Parse one pgoutput message (the payload of an XLogData).
pub fn parse(buf: &[u8]) -> Result<Message<'_>, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError {
            kind: "unknown",
            offset: 0,
            reason: "empty message".into(),
        });
    };
    let mut c = Cursor {
        buf,
        pos: 1,
        kind: kind_name(tag),
    };
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: c.lsn("final LSN")?,
            commit_time: c.u64("commit time")? as i64,
            xid: c.u32("xid")?,
        },
        b'C' => Message::Commit {
            flags: c.u8("flags")?,
            commit_lsn: c.lsn("commit LSN")?,
            end_lsn: c.lsn("end LSN")?,
            commit_time: c.u64("commit time")? as i64,
        },
        b'O' => Message::Origin {
            commit_lsn: c.lsn("origin LSN")?,
            name: c.cstr("origin name")?,
        },
        b'R' => Message::Relation(parse_relation(&mut c)?),
        b'Y' => Message::Type {
            oid: c.u32("type OID")?,
            namespace: c.cstr("namespace")?,
            name: c.cstr("type name")?,
        },
        b'I' => {
            let rel_id = c.u32("relation id")?;
            match c.u8("tuple marker")? {
                b'N' => {}
                other => return Err(marker_err(&c, other, "N")),
            }
            Message::Insert {
                rel_id,
                new: c.tuple()?,
            }
        }
        b'U' => {
            let rel_id = c.u32("relation id")?;
            let (old, marker) = match c.u8("tuple marker")? {
                b'K' => (Some(OldTuple::Key(c.tuple()?)), c.u8("tuple marker")?),
                b'O' => (Some(OldTuple::Full(c.tuple()?)), c.u8("tuple marker")?),
                m => (None, m),
            };
            if marker != b'N' {
                return Err(marker_err(&c, marker, "N"));
            }
            Message::Update {
                rel_id,
                old,
                new: c.tuple()?,
            }
        }
        b'D' => {
            let rel_id = c.u32("relation id")?;
            let old = match c.u8("tuple marker")? {
                b'K' => OldTuple::Key(c.tuple()?),
                b'O' => OldTuple::Full(c.tuple()?),
                other => return Err(marker_err(&c, other, "K or O")),
            };
            Message::Delete { rel_id, old }
        }
        b'T' => {
            let n = c.u32("relation count")? as usize;
            let options = c.u8("options")?;
            // Bound the allocation by what the buffer can actually hold.
            if n > buf.len() / 4 {
                return Err(c.err(format!("relation count {n} exceeds message size")));
            }
            let mut rel_ids = Vec::with_capacity(n);
            for _ in 0..n {
                rel_ids.push(c.u32("relation id")?);
            }
            Message::Truncate { options, rel_ids }
        }
        b'M' => {
            let flags = c.u8("flags")?;
            let lsn = c.lsn("message LSN")?;
            let prefix = c.cstr("prefix")?;
            let len = c.u32("content length")? as usize;
            Message::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: c.take(len, "content")?,
            }
        }
        b'S' | b'E' | b'c' | b'A' => {
            return Err(
                c.err("streamed in-progress transactions are not supported (protocol 1 only)")
            );
        }
        other => {
            return Err(DecodeError {
                kind: "unknown",
                offset: 0,
                reason: format!("unknown message tag 0x{other:02x}"),
            });
        }
    };
    c.finish()?;
    Ok(msg)
}

fn marker_err(c: &Cursor<'_>, got: u8, want: &str) -> DecodeError {
    DecodeError {
        kind: c.kind,
        offset: c.pos - 1,
        reason: format!("expected tuple marker {want}, got 0x{got:02x}"),
    }
}

fn parse_relation(c: &mut Cursor<'_>) -> Result<Relation, DecodeError> {
    let id = c.u32("relation id")?;
    let schema = c.cstr("namespace")?;
    let name = c.cstr("relation name")?;
    let replica_identity = match c.u8("replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => {
            c.pos -= 1;
            return Err(c.err(format!("unknown replica identity 0x{other:02x}")));
        }
    };
    let ncols = c.u16("column count")? as usize;
    let mut columns = Vec::with_capacity(ncols.min(1600));
    for _ in 0..ncols {
        let flags = c.u8("column flags")?;
        let name = c.cstr("column name")?;
        let type_oid = c.u32("column type")?;
        let type_modifier = c.u32("column type modifier")? as i32;
        columns.push(Column {
            name: name.to_string(),
            type_oid,
            type_modifier,
            is_key: flags & 1 == 1,
        });
    }
    Ok(Relation {
        id,
        // pgoutput sends an empty namespace for pg_catalog.
        schema: if schema.is_empty() {
            "pg_catalog".into()
        } else {
            schema.to_string()
        },
        name: name.to_string(),
        replica_identity,
        columns,
    })
}

/// Byte-fixture builders shared by unit tests and benches.
#[doc(hidden)]
pub mod fixture {
    /// A TupleData block from `None` (NULL), `Some(None)` is not expressible,
    /// so use `Col`.
    pub enum Col<'a> {
        Null,
        Unchanged,
        Text(&'a str),
    }

    pub fn tuple(cols: &[Col<'_>]) -> Vec<u8> {
        let mut v = (cols.len() as u16).to_be_bytes().to_vec();
        for c in cols {
            match c {
                Col::Null => v.push(b'n'),
                Col::Unchanged => v.push(b'u'),
                Col::Text(s) => {
                    v.push(b't');
                    v.extend((s.len() as u32).to_be_bytes());
                    v.extend(s.as_bytes());
                }
            }
        }
        v
    }

    pub fn begin(final_lsn: u64, time: i64, xid: u32) -> Vec<u8> {
        let mut v = vec![b'B'];
        v.extend(final_lsn.to_be_bytes());
        v.extend(time.to_be_bytes());
        v.extend(xid.to_be_bytes());
        v
    }

    pub fn commit(commit_lsn: u64, end_lsn: u64, time: i64) -> Vec<u8> {
        let mut v = vec![b'C', 0];
        v.extend(commit_lsn.to_be_bytes());
        v.extend(end_lsn.to_be_bytes());
        v.extend(time.to_be_bytes());
        v
    }

    /// Columns as (name, type oid, is_key).
    pub fn relation(
        id: u32,
        schema: &str,
        name: &str,
        ident: u8,
        cols: &[(&str, u32, bool)],
    ) -> Vec<u8> {
        let mut v = vec![b'R'];
        v.extend(id.to_be_bytes());
        for s in [schema, name] {
            v.extend(s.as_bytes());
            v.push(0);
        }
        v.push(ident);
        v.extend((cols.len() as u16).to_be_bytes());
        for (n, oid, key) in cols {
            v.push(*key as u8);
            v.extend(n.as_bytes());
            v.push(0);
            v.extend(oid.to_be_bytes());
            v.extend((-1i32).to_be_bytes());
        }
        v
    }

    pub fn insert(rel: u32, cols: &[Col<'_>]) -> Vec<u8> {
        let mut v = vec![b'I'];
        v.extend(rel.to_be_bytes());
        v.push(b'N');
        v.extend(tuple(cols));
        v
    }

    pub fn update(rel: u32, old: Option<(u8, &[Col<'_>])>, new: &[Col<'_>]) -> Vec<u8> {
        let mut v = vec![b'U'];
        v.extend(rel.to_be_bytes());
        if let Some((m, cols)) = old {
            v.push(m);
            v.extend(tuple(cols));
        }
        v.push(b'N');
        v.extend(tuple(new));
        v
    }

    pub fn delete(rel: u32, marker: u8, old: &[Col<'_>]) -> Vec<u8> {
        let mut v = vec![b'D'];
        v.extend(rel.to_be_bytes());
        v.push(marker);
        v.extend(tuple(old));
        v
    }

    pub fn truncate(options: u8, rels: &[u32]) -> Vec<u8> {
        let mut v = vec![b'T'];
        v.extend((rels.len() as u32).to_be_bytes());
        v.push(options);
        for r in rels {
            v.extend(r.to_be_bytes());
        }
        v
    }

    pub fn type_msg(oid: u32, ns: &str, name: &str) -> Vec<u8> {
        let mut v = vec![b'Y'];
        v.extend(oid.to_be_bytes());
        for s in [ns, name] {
            v.extend(s.as_bytes());
            v.push(0);
        }
        v
    }

    pub fn origin(lsn: u64, name: &str) -> Vec<u8> {
        let mut v = vec![b'O'];
        v.extend(lsn.to_be_bytes());
        v.extend(name.as_bytes());
        v.push(0);
        v
    }

    pub fn message(transactional: bool, lsn: u64, prefix: &str, content: &[u8]) -> Vec<u8> {
        let mut v = vec![b'M', transactional as u8];
        v.extend(lsn.to_be_bytes());
        v.extend(prefix.as_bytes());
        v.push(0);
        v.extend((content.len() as u32).to_be_bytes());
        v.extend(content);
        v
    }
}

#[cfg(test)]
#[path = "pgoutput_tests.rs"]
mod tests;
