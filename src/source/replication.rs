//! The replication connection, built on `postgres-protocol` (crates.io
//! `tokio-postgres` has no CopyBoth): startup with `replication=database`,
//! trust/cleartext/MD5/SCRAM-SHA-256 authentication, TLS per `sslmode`,
//! replication commands, and the CopyBoth stream of XLogData and keepalives.
//!
//! Reading is cancel-safe (bytes land in the connection's buffer and are
//! parsed from there), so the reader can `select!` on it next to timers and
//! channel sends without losing data.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::model::lsn::Lsn;
use crate::source::auth_guard::{PasswordAnswer, cleartext_refusal, md5_warning, password_policy};
use crate::source::error::{ServerError, SourceError};
use crate::source::pg_config::{PgConnectConfig, SslMode};
use crate::source::value::SESSION_SETTINGS;

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What to do with the snapshot a new slot creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it for `SET TRANSACTION SNAPSHOT` (valid while this connection
    /// stays open and runs no other command).
    Export,
    NoExport,
    /// Use it in the current transaction of this connection.
    Use,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    pub consistent_point: Lsn,
    pub snapshot_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

/// Rows of a simple query: column names and text values.
#[derive(Debug, Clone, Default)]
pub struct SimpleRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl SimpleRows {
    /// Value of `column` in the first row.
    pub fn first(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows.first()?.get(i)?.as_deref()
    }
}

/// A message of the CopyBoth stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplMessage {
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    Keepalive {
        wal_end: Lsn,
        reply_requested: bool,
    },
}

/// A replication-mode connection (before START_REPLICATION).
pub struct ReplicationConnection {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    target: String,
    pub server_version: Option<String>,
    /// The largest message length accepted from the server: small until
    /// it authenticated, so an impostor cannot make us reserve gigabytes.
    max_frame: usize,
}

/// Before authentication the server sends only short messages
/// (authentication requests, errors, parameter statuses).
const PRE_AUTH_MAX_FRAME: usize = 1024 * 1024;
/// After it: PostgreSQL builds each message in one allocation of at most
/// 1 GiB (MaxAllocSize), so nothing longer can be real.
const MAX_FRAME: usize = 1 << 30;
/// The most reserved at once for a frame still arriving.
const READ_AHEAD: usize = 1 << 20;

/// A server-supplied message length, checked before anything is reserved.
fn frame_len(len: u32, max: usize) -> Result<usize, SourceError> {
    let len = len as usize;
    if len < 4 {
        return Err(SourceError::Protocol(format!(
            "invalid message length {len}"
        )));
    }
    if len > max {
        return Err(SourceError::Protocol(format!(
            "message length {len} exceeds the limit of {max} bytes at this stage of the connection"
        )));
    }
    Ok(len)
}

fn io_err(target: &str) -> impl Fn(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Connect {
        target: target.to_string(),
        source,
    }
}

/// A startup error of class 28 (invalid authorization) is an `Auth` error.
fn auth_error(cfg: &PgConnectConfig, e: SourceError) -> SourceError {
    match e {
        SourceError::Server { command, error }
            if command == "startup" && error.code.starts_with("28") =>
        {
            SourceError::Auth {
                user: cfg.user.clone(),
                reason: error.to_string(),
            }
        }
        other => other,
    }
}

fn valid_identifier(name: &str) -> Result<(), SourceError> {
    if !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    {
        Ok(())
    } else {
        Err(SourceError::Setup(format!(
            "replication slot name `{name}` is invalid: use lower-case letters, digits and underscores (at most 63)"
        )))
    }
}

impl ReplicationConnection {
    /// Connect, negotiate TLS per `sslmode`, start up in `replication=database`
    /// mode and authenticate.
    pub async fn connect(cfg: &PgConnectConfig) -> Result<ReplicationConnection, SourceError> {
        let timeout = Duration::from_secs(cfg.connect_timeout_secs.max(1));
        match tokio::time::timeout(timeout, Self::connect_inner(cfg)).await {
            Ok(r) => r,
            Err(_) => Err(SourceError::Connect {
                target: cfg.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ),
            }),
        }
    }

    async fn connect_inner(cfg: &PgConnectConfig) -> Result<ReplicationConnection, SourceError> {
        let (conn, encrypted) = Self::open(cfg).await?;
        match conn.startup_as(cfg).await {
            // libpq's `prefer`: a server whose pg_hba.conf refuses this
            // connection over TLS (28000, e.g. only `hostnossl` matches) is
            // tried again without TLS.
            Err(SourceError::Server { error, .. })
                if encrypted && cfg.sslmode == SslMode::Prefer && error.code == "28000" =>
            {
                tracing::info!(server = %cfg, "PostgreSQL refused the TLS connection; trying without TLS (sslmode=prefer)");
                let plain = PgConnectConfig {
                    sslmode: SslMode::Disable,
                    ..cfg.clone()
                };
                let (conn, _) = Self::open(&plain).await?;
                conn.startup_as(cfg).await.map_err(|e| auth_error(cfg, e))
            }
            other => other.map_err(|e| auth_error(cfg, e)),
        }
    }

    /// Open the socket and negotiate TLS; true when the stream is encrypted.
    async fn open(cfg: &PgConnectConfig) -> Result<(ReplicationConnection, bool), SourceError> {
        let target = cfg.to_string();
        let (io, encrypted): (Box<dyn Io>, bool) = if cfg.is_unix_socket() {
            let path = format!("{}/.s.PGSQL.{}", cfg.host, cfg.port);
            // TLS is not used over Unix sockets (libpq ignores sslmode there too).
            let sock = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(io_err(&target))?;
            (Box::new(sock), false)
        } else {
            let tcp = Self::tcp(cfg, &target).await?;
            Self::maybe_tls(cfg, tcp, &target).await?
        };
        Ok((Self::over(io, target), encrypted))
    }

    /// A connection over an already open stream, before startup (also how
    /// the fuzz targets play a server's bytes into it).
    pub(crate) fn over(io: Box<dyn Io>, target: String) -> ReplicationConnection {
        ReplicationConnection {
            io,
            rbuf: BytesMut::with_capacity(128 * 1024),
            wbuf: BytesMut::with_capacity(1024),
            target,
            server_version: None,
            max_frame: PRE_AUTH_MAX_FRAME,
        }
    }

    pub(crate) async fn tcp(
        cfg: &PgConnectConfig,
        target: &str,
    ) -> Result<tokio::net::TcpStream, SourceError> {
        let tcp = tokio::net::TcpStream::connect((cfg.host.as_str(), cfg.port))
            .await
            .map_err(io_err(target))?;
        tcp.set_nodelay(true).map_err(io_err(target))?;
        Ok(tcp)
    }

    async fn startup_as(
        mut self,
        cfg: &PgConnectConfig,
    ) -> Result<ReplicationConnection, SourceError> {
        self.startup(cfg).await?;
        Ok(self)
    }

    /// TLS per `sslmode`: the stream and whether it is encrypted. With
    /// `prefer`, a server that declines TLS or a failed handshake (e.g. no
    /// common protocol version) leaves an unencrypted connection, as libpq does.
    pub(crate) async fn maybe_tls(
        cfg: &PgConnectConfig,
        mut tcp: tokio::net::TcpStream,
        target: &str,
    ) -> Result<(Box<dyn Io>, bool), SourceError> {
        let tls_err = |reason: String| SourceError::Tls {
            target: target.to_string(),
            reason,
        };
        let Some(config) = crate::source::tls::client_config(cfg).map_err(tls_err)? else {
            return Ok((Box::new(tcp), false));
        };
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf).await.map_err(io_err(target))?;
        let answer = tcp.read_u8().await.map_err(io_err(target))?;
        match answer {
            b'S' => {
                let name = crate::source::tls::server_name(&cfg.host).map_err(tls_err)?;
                match tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                {
                    Ok(tls) => Ok((Box::new(tls), true)),
                    Err(e) if cfg.sslmode == SslMode::Prefer => {
                        tracing::info!(server = %cfg, error = %e, "TLS handshake with PostgreSQL failed; connecting without TLS (sslmode=prefer)");
                        Ok((Box::new(Self::tcp(cfg, target).await?), false))
                    }
                    Err(e) => Err(tls_err(format!("handshake failed: {e}"))),
                }
            }
            b'N' if cfg.sslmode == SslMode::Prefer => Ok((Box::new(tcp), false)),
            b'N' => Err(tls_err(format!(
                "the server does not accept TLS but sslmode is {:?}",
                cfg.sslmode
            ))),
            other => Err(SourceError::Protocol(format!(
                "unexpected answer 0x{other:02x} to SSLRequest"
            ))),
        }
    }

    /// The startup exchange: parameters out, then authentication requests,
    /// parameter status and the rest until ReadyForQuery.
    pub(crate) async fn startup(&mut self, cfg: &PgConnectConfig) -> Result<(), SourceError> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &cfg.user),
            ("database", &cfg.dbname),
            ("replication", "database"),
            ("application_name", &cfg.application_name),
            ("client_encoding", "UTF8"),
        ];
        params.extend(SESSION_SETTINGS.iter().copied());
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(SourceError::Io)?;
        self.flush().await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'R' => self.authenticate(cfg, body, &mut scram).await?,
                b'E' => {
                    return Err(SourceError::Server {
                        command: "startup".into(),
                        error: parse_error(&body),
                    });
                }
                b'S' => {
                    let mut parts = body.split(|b| *b == 0);
                    if parts.next() == Some(b"server_version") {
                        self.server_version = parts
                            .next()
                            .map(|v| String::from_utf8_lossy(v).into_owned());
                    }
                }
                b'K' | b'N' => {}
                b'Z' => return Ok(()),
                other => {
                    return Err(SourceError::Protocol(format!(
                        "unexpected message `{}` during startup",
                        other as char
                    )));
                }
            }
        }
    }

    /// Answer one authentication request (`R` message): cleartext or MD5
    /// password as the policy allows, or a SCRAM-SHA-256 step (`scram`
    /// carries the exchange between its messages).
    async fn authenticate(
        &mut self,
        cfg: &PgConnectConfig,
        mut body: Bytes,
        scram: &mut Option<ScramSha256>,
    ) -> Result<(), SourceError> {
        let auth_err = |reason: String| SourceError::Auth {
            user: cfg.user.clone(),
            reason,
        };
        let password = || {
            cfg.password.as_deref().ok_or_else(|| {
                auth_err("the server asks for a password and none is configured".into())
            })
        };
        if body.len() < 4 {
            return Err(SourceError::Protocol("short authentication message".into()));
        }
        match body.get_i32() {
            0 => self.max_frame = MAX_FRAME,
            3 => {
                if password_policy(cfg, 3) == PasswordAnswer::Refuse {
                    return Err(auth_err(cleartext_refusal(cfg)));
                }
                frontend::password_message(password()?.as_bytes(), &mut self.wbuf)
                    .map_err(SourceError::Io)?;
                self.flush().await?;
            }
            5 => {
                if body.len() < 4 {
                    return Err(SourceError::Protocol("short MD5 salt".into()));
                }
                if password_policy(cfg, 5) == PasswordAnswer::SendWithWarning {
                    tracing::warn!("{}", md5_warning(cfg));
                }
                let salt = [body[0], body[1], body[2], body[3]];
                let hash = postgres_protocol::authentication::md5_hash(
                    cfg.user.as_bytes(),
                    password()?.as_bytes(),
                    salt,
                );
                frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                    .map_err(SourceError::Io)?;
                self.flush().await?;
            }
            10 => {
                let mechs: Vec<&[u8]> = body.split(|b| *b == 0).filter(|m| !m.is_empty()).collect();
                if !mechs.contains(&SCRAM_SHA_256.as_bytes()) {
                    return Err(auth_err(
                        "the server offers no SCRAM-SHA-256 authentication".into(),
                    ));
                }
                // Channel binding is not used ("n,,"), which the server
                // accepts whether or not TLS is on.
                let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
                    .map_err(SourceError::Io)?;
                self.flush().await?;
                *scram = Some(s);
            }
            11 => {
                let s = scram.as_mut().ok_or_else(|| {
                    SourceError::Protocol("SASL continue without SASL start".into())
                })?;
                s.update(&body)
                    .map_err(|e| auth_err(format!("SCRAM: {e}")))?;
                frontend::sasl_response(s.message(), &mut self.wbuf).map_err(SourceError::Io)?;
                self.flush().await?;
            }
            12 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| SourceError::Protocol("SASL final without SASL start".into()))?;
                s.finish(&body)
                    .map_err(|e| auth_err(format!("SCRAM server proof: {e}")))?;
            }
            other => {
                return Err(auth_err(format!(
                    "unsupported authentication method {other}"
                )));
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SourceError> {
        self.io.write_all(&self.wbuf).await?;
        self.io.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    /// One backend message: (tag, body). Cancel-safe.
    async fn read_frame(&mut self) -> Result<(u8, Bytes), SourceError> {
        loop {
            if self.rbuf.len() >= 5 {
                let len = frame_len(
                    u32::from_be_bytes(self.rbuf[1..5].try_into().unwrap()),
                    self.max_frame,
                )?;
                if self.rbuf.len() > len {
                    let mut frame = self.rbuf.split_to(len + 1).freeze();
                    let tag = frame[0];
                    frame.advance(5);
                    return Ok((tag, frame));
                }
                // Grow toward the frame as its bytes arrive, never to what
                // the length field claims: a server (or anything between)
                // sending a 1 GiB length and then little else must not
                // make us hold 1 GiB. Reserving grows by doubling, so a
                // real large frame still costs few copies.
                self.rbuf
                    .reserve((len + 1 - self.rbuf.len()).min(READ_AHEAD));
            }
            if self.rbuf.capacity() - self.rbuf.len() < 8192 {
                self.rbuf.reserve(64 * 1024);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(SourceError::Closed);
            }
        }
    }

    /// Run a simple-query command and collect its rows (text values).
    pub async fn simple_query(&mut self, sql: &str) -> Result<SimpleRows, SourceError> {
        frontend::query(sql, &mut self.wbuf).map_err(SourceError::Io)?;
        self.flush().await?;
        let mut out = SimpleRows::default();
        let mut error = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'T' => out.columns = parse_row_description(&body)?,
                b'D' => out.rows.push(parse_data_row(&body)?),
                b'E' => error = Some(parse_error(&body)),
                b'C' | b'I' | b'N' | b'S' => {}
                b'Z' => {
                    return match error {
                        Some(error) => Err(SourceError::Server {
                            command: command_name(sql),
                            error,
                        }),
                        None => Ok(out),
                    };
                }
                other => {
                    return Err(SourceError::Protocol(format!(
                        "unexpected message `{}` after `{}`",
                        other as char,
                        command_name(sql)
                    )));
                }
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, SourceError> {
        let r = self.simple_query("IDENTIFY_SYSTEM").await?;
        let bad = || SourceError::Protocol("IDENTIFY_SYSTEM returned an unexpected row".into());
        Ok(SystemInfo {
            system_id: r.first("systemid").ok_or_else(bad)?.to_string(),
            timeline: r
                .first("timeline")
                .and_then(|t| t.parse().ok())
                .ok_or_else(bad)?,
            xlogpos: r
                .first("xlogpos")
                .and_then(|t| t.parse().ok())
                .ok_or_else(bad)?,
            dbname: r.first("dbname").map(str::to_string),
        })
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL pgoutput ...`.
    pub async fn create_slot(
        &mut self,
        name: &str,
        temporary: bool,
        snapshot: SnapshotAction,
    ) -> Result<CreatedSlot, SourceError> {
        valid_identifier(name)?;
        let snap = match snapshot {
            SnapshotAction::Export => "EXPORT_SNAPSHOT",
            SnapshotAction::NoExport => "NOEXPORT_SNAPSHOT",
            SnapshotAction::Use => "USE_SNAPSHOT",
        };
        let temp = if temporary { " TEMPORARY" } else { "" };
        let r = self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {name}{temp} LOGICAL pgoutput {snap}"
            ))
            .await?;
        let bad =
            || SourceError::Protocol("CREATE_REPLICATION_SLOT returned an unexpected row".into());
        Ok(CreatedSlot {
            slot_name: r.first("slot_name").ok_or_else(bad)?.to_string(),
            consistent_point: r
                .first("consistent_point")
                .and_then(|t| t.parse().ok())
                .ok_or_else(bad)?,
            snapshot_name: r.first("snapshot_name").map(str::to_string),
        })
    }

    /// `START_REPLICATION SLOT ... LOGICAL lsn (proto_version '1', ...)`; the
    /// connection becomes a CopyBoth stream.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start_lsn: Lsn,
        publications: &[String],
        messages: bool,
    ) -> Result<ReplicationStream, SourceError> {
        valid_identifier(slot)?;
        let pubs = publications
            .iter()
            .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(",")
            .replace('\'', "''");
        let sql = format!(
            "START_REPLICATION SLOT {slot} LOGICAL {start_lsn} (proto_version '1', publication_names '{pubs}', messages '{messages}')"
        );
        frontend::query(&sql, &mut self.wbuf).map_err(SourceError::Io)?;
        self.flush().await?;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'W' => return Ok(ReplicationStream { conn: self }),
                b'N' => {}
                b'E' => {
                    let error = parse_error(&body);
                    // Drain to ReadyForQuery is unnecessary: the caller drops us.
                    return Err(SourceError::Server {
                        command: "START_REPLICATION".into(),
                        error,
                    });
                }
                other => {
                    return Err(SourceError::Protocol(format!(
                        "unexpected message `{}` after START_REPLICATION",
                        other as char
                    )));
                }
            }
        }
    }

    /// Where errors about this connection point.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// The CopyBoth stream after START_REPLICATION.
pub struct ReplicationStream {
    conn: ReplicationConnection,
}

/// Microseconds since 2000-01-01 UTC, PostgreSQL's clock.
fn pg_now() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64;
    unix - 946_684_800_000_000
}

impl ReplicationStream {
    /// The next XLogData or keepalive; `Ok(None)` when the server ended the
    /// stream. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<ReplMessage>, SourceError> {
        loop {
            let (tag, mut body) = self.conn.read_frame().await?;
            match tag {
                b'd' => {
                    let Some(&kind) = body.first() else {
                        return Err(SourceError::Protocol("empty CopyData".into()));
                    };
                    match kind {
                        b'w' if body.len() >= 25 => {
                            body.advance(1);
                            let wal_start = Lsn(body.get_u64());
                            let wal_end = Lsn(body.get_u64());
                            body.advance(8);
                            return Ok(Some(ReplMessage::XLogData {
                                wal_start,
                                wal_end,
                                data: body,
                            }));
                        }
                        b'k' if body.len() >= 18 => {
                            body.advance(1);
                            let wal_end = Lsn(body.get_u64());
                            body.advance(8);
                            let reply_requested = body.get_u8() == 1;
                            return Ok(Some(ReplMessage::Keepalive {
                                wal_end,
                                reply_requested,
                            }));
                        }
                        other => {
                            return Err(SourceError::Protocol(format!(
                                "unknown or short CopyData message `{}`",
                                other as char
                            )));
                        }
                    }
                }
                // CopyDone, or the command ending (a server shutting down
                // may skip straight to CommandComplete/ReadyForQuery).
                b'c' | b'C' | b'Z' => return Ok(None),
                b'E' => {
                    return Err(SourceError::Server {
                        command: "START_REPLICATION".into(),
                        error: parse_error(&body),
                    });
                }
                b'N' | b'S' => {}
                other => {
                    return Err(SourceError::Protocol(format!(
                        "unexpected message `{}` in the replication stream",
                        other as char
                    )));
                }
            }
        }
    }

    /// End the stream the way the protocol intends: CopyDone, then read
    /// until the server's ReadyForQuery, then Terminate. The walsender handles
    /// our last status update before it answers, and it releases the slot
    /// when START_REPLICATION ends, so once this returns the confirmed LSN is
    /// recorded and the slot is free for a successor. Bounded by `timeout`:
    /// a server that does not answer gets the socket closed instead, which
    /// still delivers everything already written.
    pub async fn finish(mut self, timeout: std::time::Duration) -> Result<(), SourceError> {
        frontend::copy_done(&mut self.conn.wbuf);
        self.conn.flush().await?;
        let drain = async {
            loop {
                let (tag, body) = self.conn.read_frame().await?;
                match tag {
                    b'Z' => return Ok(()),
                    b'E' => {
                        return Err(SourceError::Server {
                            command: "CopyDone".into(),
                            error: parse_error(&body),
                        });
                    }
                    // Data still in flight, the server's CopyDone,
                    // CommandComplete and notices are all expected here.
                    _ => {}
                }
            }
        };
        match tokio::time::timeout(timeout, drain).await {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "the server did not end the replication stream in time; closing the connection"
                );
                return Ok(());
            }
        }
        frontend::terminate(&mut self.conn.wbuf);
        self.conn.flush().await
    }

    /// Standby status update: `flush`/`apply` tell the server what may be
    /// discarded; `write` is reported equal to flush (we hold nothing durable
    /// beyond it).
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), SourceError> {
        let mut msg = Vec::with_capacity(34);
        msg.push(b'r');
        msg.extend(write.0.to_be_bytes());
        msg.extend(flush.0.to_be_bytes());
        msg.extend(apply.0.to_be_bytes());
        msg.extend(pg_now().to_be_bytes());
        msg.push(reply_requested as u8);
        frontend::CopyData::new(&msg[..])
            .map_err(SourceError::Io)?
            .write(&mut self.conn.wbuf);
        self.conn.flush().await
    }
}

fn cstrs(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|b| *b == 0)
}

fn parse_error(body: &[u8]) -> Box<ServerError> {
    let mut e = ServerError::default();
    for field in cstrs(body) {
        let Some((&t, v)) = field.split_first() else {
            continue;
        };
        let v = String::from_utf8_lossy(v).into_owned();
        match t {
            b'V' => e.severity = v,
            b'S' if e.severity.is_empty() => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    Box::new(e)
}

fn parse_row_description(body: &[u8]) -> Result<Vec<String>, SourceError> {
    let bad = || SourceError::Protocol("malformed RowDescription".into());
    let n = u16::from_be_bytes(body.get(..2).ok_or_else(bad)?.try_into().unwrap()) as usize;
    let mut rest = &body[2..];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let nul = memchr::memchr(0, rest).ok_or_else(bad)?;
        out.push(String::from_utf8_lossy(&rest[..nul]).into_owned());
        rest = rest.get(nul + 1 + 18..).ok_or_else(bad)?;
    }
    Ok(out)
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, SourceError> {
    let bad = || SourceError::Protocol("malformed DataRow".into());
    let n = u16::from_be_bytes(body.get(..2).ok_or_else(bad)?.try_into().unwrap()) as usize;
    let mut rest = &body[2..];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(rest.get(..4).ok_or_else(bad)?.try_into().unwrap());
        rest = &rest[4..];
        if len < 0 {
            out.push(None);
        } else {
            let v = rest.get(..len as usize).ok_or_else(bad)?;
            out.push(Some(String::from_utf8_lossy(v).into_owned()));
            rest = &rest[len as usize..];
        }
    }
    Ok(out)
}

fn command_name(sql: &str) -> String {
    sql.split_whitespace().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_length_past_the_limit_is_refused_before_anything_is_reserved() {
        // Before authentication: a server claiming a 4 GiB message is cut off.
        let e = frame_len(u32::MAX, PRE_AUTH_MAX_FRAME).unwrap_err();
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
        assert!(frame_len(PRE_AUTH_MAX_FRAME as u32 + 1, PRE_AUTH_MAX_FRAME).is_err());
        assert_eq!(frame_len(8192, PRE_AUTH_MAX_FRAME).unwrap(), 8192);
        // After it: large row images pass, but never past PostgreSQL's own limit.
        assert_eq!(frame_len(64 << 20, MAX_FRAME).unwrap(), 64 << 20);
        assert!(frame_len(u32::MAX, MAX_FRAME).is_err());
        assert!(frame_len(3, MAX_FRAME).is_err());
    }
}
