//! Fuzz targets: one function per parser of bytes that come from outside
//! (the PostgreSQL server, Elasticsearch, the operator's files), each total
//! on any input. They are shared by the libFuzzer crate (`fuzz/`, run by
//! `./dev fuzz` under `cargo fuzz`) and by the bounded harness in the unit
//! suite (`cargo test --lib fuzz_`), which mutates the captured valid
//! inputs of `seeds` so the cases reach past the first length check.
//!
//! A target returns nothing: the property is that it returns at all —
//! no panic, no hang, no allocation a length field asked for but the input
//! cannot back (the harness measures the largest single allocation).
//!
//! Input layouts put a selector byte or two first where a parser needs
//! context (which type, how many columns), so one byte string drives both
//! the choice and the bytes.

pub mod seeds;

#[cfg(test)]
mod alloc;
#[cfg(test)]
mod harness;
#[cfg(test)]
mod mutate;
#[cfg(test)]
mod regressions;

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::model::lsn::Lsn;
use crate::model::{BulkOp, OpAction, OpOrigin};
use crate::source::auth_guard::{PasswordAnswer, Scan, password_policy};
use crate::source::decoder::Decoder;
use crate::source::pg_config::{PgConnectConfig, SslMode};
use crate::source::pgoutput::{self, Message, OldTuple};
use crate::source::replication::{ReplMessage, ReplicationConnection};
use crate::source::types::{Conv, TypeCatalog, TypeInfo};
use crate::source::value::binary::convert_binary;
use crate::source::value::{InfiniteTime, NonFiniteFloat, NumericMode, ValueOptions, convert};

/// A fuzz target: a name (the libFuzzer binary is `fuzz_<name>`) and the function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order RELIABILITY.md lists them.
pub const TARGETS: &[Target] = &[
    ("pgoutput", pgoutput_message),
    ("decoder", decoder_stream),
    ("text_value", text_value),
    ("binary_value", binary_value),
    ("replication", replication_session),
    ("auth_scan", auth_scan),
    ("copy_text", copy_text),
    ("bulk_response", bulk_response),
    ("config_file", config_file),
    ("mapping_file", mapping_file),
];

/// One pgoutput message: parse it and walk every column of its tuples.
pub fn pgoutput_message(data: &[u8]) {
    let Ok(msg) = pgoutput::parse(data) else {
        return;
    };
    let tuples = match &msg {
        Message::Insert { new, .. } => vec![*new],
        Message::Update { old, new, .. } => {
            let mut v = vec![*new];
            if let Some(OldTuple::Key(t) | OldTuple::Full(t)) = old {
                v.push(*t);
            }
            v
        }
        Message::Delete {
            old: OldTuple::Key(t) | OldTuple::Full(t),
            ..
        } => vec![*t],
        _ => Vec::new(),
    };
    for t in tuples {
        // The iterator must yield exactly the validated column count.
        assert_eq!(
            t.iter().count(),
            t.ncols,
            "tuple iterator disagrees with parse"
        );
    }
}

/// A catalog with the extension and user types the seeds use: hstore and
/// its array, an enum, a domain over numeric, a range over int4 and one
/// of the `;`-delimited kind.
pub fn catalog() -> TypeCatalog {
    let mut cat = TypeCatalog::new();
    let t = |oid, name: &str, typtype, base, elem, delim, range_sub| TypeInfo {
        oid,
        schema: "public".into(),
        name: name.into(),
        typtype,
        base,
        elem,
        delim,
        range_sub,
    };
    cat.insert(t(16385, "hstore", b'b', 0, 0, b',', 0));
    cat.insert(t(16390, "_hstore", b'b', 0, 16385, b',', 0));
    cat.insert(t(16400, "mood", b'e', 0, 0, b',', 0));
    cat.insert(t(16401, "money_amount", b'd', 1700, 0, b',', 0));
    cat.insert(t(16402, "int_span", b'r', 0, 0, b',', 23));
    cat.insert(t(16403, "_int_span", b'b', 0, 16402, b';', 0));
    cat
}

/// Value options from one selector byte (every combination is reachable).
pub(crate) fn options(b: u8) -> ValueOptions {
    ValueOptions {
        non_finite_float: if b & 1 == 0 {
            NonFiniteFloat::Null
        } else {
            NonFiniteFloat::String
        },
        numeric: match (b >> 1) % 3 {
            0 => NumericMode::NumberWhenExact,
            1 => NumericMode::String,
            _ => NumericMode::Lossy,
        },
        infinite_time: if b & 8 == 0 {
            InfiniteTime::Null
        } else {
            InfiniteTime::String
        },
    }
}

/// Splits `[u16 length][bytes]...` frames; a short last frame takes the rest.
pub(crate) fn frames(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        if data.len() < 2 {
            let f = data;
            data = &[];
            return Some(f);
        }
        let n = (u16::from_be_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
        let f = &data[2..2 + n];
        data = &data[2 + n..];
        Some(f)
    })
}

/// A stream of pgoutput messages (`[u16 len][message]...`, first byte: value
/// options) through one decoder, relation cache and transaction state included.
pub fn decoder_stream(data: &[u8]) {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    let mut d = Decoder::new(options(opts), catalog());
    let mut out = Vec::new();
    for msg in frames(rest) {
        if d.decode(msg, &mut out).is_err() {
            // The reader reconnects after an error; the next message meets
            // the same state, which must stay usable.
            d.reset_transaction();
        }
        out.clear();
    }
}

/// Type converters the value targets choose from by a selector byte: every
/// `Conv` with the OID whose binary form it reads.
pub fn value_types() -> Vec<(u32, Conv)> {
    let cat = catalog();
    [
        16u32, 20, 21, 23, 26, 700, 701, 1700, 790, 25, 1043, 2950, 114, 3802, 17, 1082, 1083,
        1266, 1114, 1184, 1186, 600, 16385, 1007, 1231, 1009, 1182, 1185, 1187, 3904, 3906, 3908,
        3910, 3912, 16402, 16403, 16390, 1020, 16400, 16401, 99999,
    ]
    .into_iter()
    .map(|oid| (oid, cat.resolve(oid)))
    .collect()
}

fn pick_type(sel: u8) -> (u32, Conv) {
    let types = value_types();
    types[sel as usize % types.len()].clone()
}

/// `[type selector][options][text]`: one value's text form.
pub fn text_value(data: &[u8]) {
    let [sel, opts, text @ ..] = data else {
        return;
    };
    let (_, conv) = pick_type(*sel);
    let text = String::from_utf8_lossy(text);
    let _ = convert(&conv, &text, &options(*opts));
}

/// `[type selector][options][bytes]`: one value's binary form.
pub fn binary_value(data: &[u8]) {
    let [sel, opts, bytes @ ..] = data else {
        return;
    };
    let (oid, conv) = pick_type(*sel);
    let _ = convert_binary(oid, &conv, bytes, &options(*opts));
}

/// A server's side of a replication connection, served in chunks of
/// `chunk` bytes (so frames split anywhere), writes discarded.
struct Served {
    bytes: bytes::Bytes,
    chunk: usize,
}

impl AsyncRead for Served {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.bytes.len()).min(buf.remaining());
        let head = self.bytes.split_to(n);
        buf.put_slice(&head);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Served {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// `[chunk size][server bytes]`: startup and authentication (cleartext,
/// MD5, SCRAM), IDENTIFY_SYSTEM's rows, START_REPLICATION, then the
/// CopyData stream (XLogData payloads decoded, keepalives answered) until
/// the bytes end. The reads never wait, so no runtime is needed.
pub fn replication_session(data: &[u8]) {
    replication_changes(data);
}

/// `replication_session`, counting the changes decoded (0 if it stopped early).
pub fn replication_changes(data: &[u8]) -> usize {
    let Some((&chunk, bytes)) = data.split_first() else {
        return 0;
    };
    let served = Served {
        bytes: bytes::Bytes::copy_from_slice(bytes),
        chunk: if chunk == 0 {
            usize::MAX
        } else {
            chunk as usize
        },
    };
    let cfg = PgConnectConfig {
        password: Some("pw".into()),
        allow_cleartext_password: true,
        sslmode: SslMode::Disable,
        ..PgConnectConfig::default()
    };
    futures::executor::block_on(async {
        let mut conn = ReplicationConnection::over(Box::new(served), "fuzz".into());
        if conn.startup(&cfg).await.is_err() {
            return 0;
        }
        let _ = conn.identify_system().await;
        let Ok(mut stream) = conn
            .start_replication("fuzz_slot", Lsn(0), &["fuzz_pub".into()], true)
            .await
        else {
            return 0;
        };
        let mut decoder = Decoder::new(ValueOptions::default(), catalog());
        let mut out = Vec::new();
        let mut changes = 0;
        while let Ok(Some(m)) = stream.recv().await {
            match m {
                ReplMessage::XLogData { data, .. } => {
                    if decoder.decode(&data, &mut out).is_ok() {
                        changes += out.len();
                    }
                    out.clear();
                }
                ReplMessage::Keepalive {
                    wal_end,
                    reply_requested: true,
                } => {
                    let _ = stream.send_status(wal_end, wal_end, wal_end, false).await;
                }
                ReplMessage::Keepalive { .. } => {}
            }
        }
        changes
    })
}

/// `[chunk size][sslmode][server bytes]`: the authentication scan that
/// guards tokio-postgres connections against cleartext password requests.
pub fn auth_scan(data: &[u8]) {
    let [chunk, mode, bytes @ ..] = data else {
        return;
    };
    let cfg = PgConnectConfig {
        sslmode: [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ][*mode as usize % 5],
        allow_cleartext_password: mode & 0x80 != 0,
        ..PgConnectConfig::default()
    };
    let mut scan = Scan::new();
    let mut decide = |code| match password_policy(&cfg, code) {
        PasswordAnswer::Refuse => Err(std::io::Error::other("refused")),
        _ => Ok(()),
    };
    for part in bytes.chunks((*chunk as usize).max(1)) {
        if scan.feed(part, &mut decide).is_err() {
            return;
        }
    }
}

/// `[column count][rows]`: COPY text rows, each column converted as one
/// of the value types.
pub fn copy_text(data: &[u8]) {
    let [ncols, rows @ ..] = data else {
        return;
    };
    let types = value_types();
    let mut out = Vec::new();
    for line in rows.split_inclusive(|&b| b == b'\n') {
        if crate::snapshot::copy_text::parse_row(line, *ncols as usize % 32, &mut out).is_err() {
            continue;
        }
        for (i, text) in out.iter().enumerate() {
            if let Some(text) = text {
                let _ = convert(&types[i % types.len()].1, text, &ValueOptions::default());
            }
        }
    }
}

/// `[ops sent][body]`: a bulk response (or a request-level error body),
/// read and triaged against that many sent ops, several of one document.
pub fn bulk_response(data: &[u8]) {
    let [n, body @ ..] = data else {
        return;
    };
    use crate::sink::classify::{classify_request, request_error_type};
    let error_type = request_error_type(body);
    for status in [None, Some(200), Some(400), Some(429), Some(503)] {
        let _ = classify_request(status, error_type.as_deref());
    }
    let Ok(results) = crate::sink::bulk::parse_response(body) else {
        return;
    };
    let index: Arc<str> = Arc::from("items");
    let ops: Vec<BulkOp> = (0..(*n as usize).min(results.len()))
        .map(|i| BulkOp {
            action: if i % 3 == 2 {
                OpAction::Delete
            } else {
                OpAction::Index {
                    doc: b"{}".to_vec(),
                }
            },
            index: index.clone(),
            id: (i % 4).to_string(),
            routing: None,
            pipeline: None,
            version: i as u64,
            origin: OpOrigin {
                table: Arc::from("public.items"),
                key: i.to_string(),
                lsn: Lsn(i as u64),
            },
        })
        .collect();
    let fates = crate::sink::indexer::items::triage(ops.iter(), &results);
    assert_eq!(fates.len(), ops.len(), "one fate per op");
}

/// Environment for `${VAR}` in the fuzzed config files.
pub(crate) struct FuzzEnv;

impl crate::config::Env for FuzzEnv {
    fn var(&self, name: &str) -> Option<String> {
        name.len()
            .is_multiple_of(2)
            .then(|| format!("value-of-{name}"))
    }
}

/// A `sluice.toml`.
pub fn config_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let file = Path::new("/etc/sluice/sluice.toml");
    let _ = crate::config::parse_settings(file, &text, &FuzzEnv);
    let _ = crate::config::settings::mappings_dir_of(file, &text);
}

/// Mapping files: the input split at NUL bytes into up to four files,
/// checked together (they must agree per table).
pub fn mapping_file(data: &[u8]) {
    let texts: Vec<String> = data
        .split(|&b| b == 0)
        .take(4)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    // In the repository's mappings/, so `index_file` references resolve.
    let names: Vec<String> = (0..texts.len())
        .map(|i| format!("{}/mappings/fuzz-{i}.toml", env!("CARGO_MANIFEST_DIR")))
        .collect();
    let files: Vec<(&Path, &str)> = names
        .iter()
        .zip(&texts)
        .map(|(n, t)| (Path::new(n.as_str()), t.as_str()))
        .collect();
    if let Ok(m) = crate::config::Mappings::from_texts(&files) {
        let _ = m.publication_tables();
        let _ = m.index_specs("86400s");
    }
}
