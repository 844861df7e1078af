//! Which password exchanges Sluice agrees to, on every connection.
//!
//! A server asking for the password in clear text gets it verbatim; over a
//! connection whose TLS certificate was not verified (`sslmode` below
//! `verify-ca`, where `prefer` may even fall back to no TLS), whoever
//! answers in the server's place gets it. So cleartext password
//! authentication is refused unless TLS is verified, the connection is a
//! local Unix socket, or `[postgres] allow_cleartext_password = true`. MD5
//! over unverified TLS is allowed with a warning (a captured hash and salt
//! can be attacked offline).
//!
//! The replication connection speaks the protocol itself and asks
//! [`password_policy`] directly; tokio-postgres SQL connections run their
//! authentication inside the library, so [`AuthGuard`] watches the bytes it
//! reads (below tokio-postgres, above TLS) and fails the read when the
//! server asks for a cleartext password that is not allowed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::source::pg_config::{PgConnectConfig, SslMode};

/// Whether the server's certificate is checked on this connection (or it
/// is a local socket, where nobody can stand in the server's place).
pub fn transport_trusted(cfg: &PgConnectConfig) -> bool {
    cfg.is_unix_socket()
        || matches!(cfg.sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
        || (cfg.sslmode == SslMode::Require && cfg.ssl_root_cert.is_some())
}

/// A warning for `check` and the start-up log when the server's identity is
/// not fully verified, or `None` with `verify-full` (or a Unix socket).
pub fn transport_warning(cfg: &PgConnectConfig) -> Option<String> {
    if cfg.is_unix_socket() || cfg.sslmode == SslMode::VerifyFull {
        return None;
    }
    let what = match cfg.sslmode {
        SslMode::Disable => {
            "no TLS at all: the password exchange and every replicated row cross the network in clear text"
        }
        SslMode::Prefer => {
            "TLS if the server offers it, silently none if not, and the certificate is never checked"
        }
        SslMode::Require if cfg.ssl_root_cert.is_none() => {
            "TLS without checking the certificate: anyone on the network path can pose as the server"
        }
        _ => "the certificate chain is checked but not the host name",
    };
    let mode = match cfg.sslmode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    };
    Some(format!(
        "[postgres] sslmode = \"{mode}\" for {cfg}: {what}; set sslmode = \"verify-full\" and ssl_root_cert (see docs/operations.md, TLS)"
    ))
}

/// What the server asked for, and whether we answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordAnswer {
    Send,
    /// Send, but log a warning first.
    SendWithWarning,
    Refuse,
}

/// The policy for an authentication request code (3 cleartext, 5 MD5;
/// anything else is not a password exchange this policy restricts).
pub fn password_policy(cfg: &PgConnectConfig, code: i32) -> PasswordAnswer {
    match code {
        3 if !transport_trusted(cfg) && !cfg.allow_cleartext_password => PasswordAnswer::Refuse,
        5 if !transport_trusted(cfg) => PasswordAnswer::SendWithWarning,
        _ => PasswordAnswer::Send,
    }
}

/// The refusal, in words for the user.
pub fn cleartext_refusal(cfg: &PgConnectConfig) -> String {
    format!(
        "PostgreSQL at {cfg} asks for the password in clear text, over a connection whose server \
         certificate is not verified: refusing to send it. Use sslmode = \"verify-full\" (or \
         \"verify-ca\") with ssl_root_cert, switch the server to scram-sha-256, or set \
         [postgres] allow_cleartext_password = true to accept the risk"
    )
}

pub fn md5_warning(cfg: &PgConnectConfig) -> String {
    format!(
        "PostgreSQL at {cfg} uses MD5 password authentication over a connection whose server \
         certificate is not verified: a captured exchange can be attacked offline; prefer \
         scram-sha-256 and sslmode = \"verify-full\""
    )
}

/// Scans backend messages until authentication succeeds.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Header bytes of the current message: tag, length, and for `R` the
    /// request code (9 bytes at most).
    head: [u8; 9],
    have: usize,
    /// Body bytes still to pass over.
    skip: usize,
    done: bool,
}

impl Scan {
    pub(crate) fn new() -> Scan {
        Scan {
            head: [0; 9],
            have: 0,
            skip: 0,
            done: false,
        }
    }

    /// Feed bytes read from the server; an authentication request code
    /// each time one is complete (the caller decides), until AuthenticationOk.
    pub(crate) fn feed(
        &mut self,
        mut bytes: &[u8],
        on_request: &mut impl FnMut(i32) -> io::Result<()>,
    ) -> io::Result<()> {
        while !bytes.is_empty() && !self.done {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let want = if self.have >= 5 && self.head[0] == b'R' {
                9
            } else {
                5
            };
            let n = (want - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < want {
                continue;
            }
            let len = u32::from_be_bytes(self.head[1..5].try_into().expect("4 bytes")) as usize;
            if self.head[0] == b'R' && want == 5 {
                if len < 8 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "short authentication message",
                    ));
                }
                continue; // read the request code too
            }
            let body_read = want - 5;
            if self.head[0] == b'R' {
                let code = i32::from_be_bytes(self.head[5..9].try_into().expect("4 bytes"));
                on_request(code)?;
                if code == 0 {
                    self.done = true;
                }
            }
            self.skip = len.saturating_sub(4 + body_read);
            self.have = 0;
        }
        Ok(())
    }
}

/// A stream that refuses, by failing the read, a cleartext password request
/// the policy does not allow (and logs the MD5 warning), then gets out of
/// the way once the server has authenticated us.
pub struct AuthGuard<S> {
    inner: S,
    cfg: PgConnectConfig,
    scan: Scan,
}

impl<S> AuthGuard<S> {
    pub fn new(inner: S, cfg: &PgConnectConfig) -> AuthGuard<S> {
        AuthGuard {
            inner,
            cfg: cfg.clone(),
            scan: Scan::new(),
        }
    }
}

/// The text of the error a refused read carries, to tell it from others.
pub const REFUSED_MARKER: &str = "asks for the password in clear text";

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r
            && !this.scan.done
        {
            let cfg = &this.cfg;
            let mut decide = |code: i32| match password_policy(cfg, code) {
                PasswordAnswer::Refuse => Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    cleartext_refusal(cfg),
                )),
                PasswordAnswer::SendWithWarning => {
                    tracing::warn!("{}", md5_warning(cfg));
                    Ok(())
                }
                PasswordAnswer::Send => Ok(()),
            };
            if let Err(e) = this.scan.feed(&buf.filled()[before..], &mut decide) {
                return Poll::Ready(Err(e));
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthGuard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn requests(stream: &[u8], chunk: usize) -> Vec<i32> {
        let mut scan = Scan::new();
        let mut seen = Vec::new();
        for part in stream.chunks(chunk) {
            scan.feed(part, &mut |c| {
                seen.push(c);
                Ok(())
            })
            .unwrap();
        }
        seen
    }

    #[test]
    fn authentication_requests_are_found_however_the_bytes_are_split() {
        let mut stream = msg(
            b'R',
            &10i32
                .to_be_bytes()
                .iter()
                .chain(b"SCRAM-SHA-256\0\0")
                .copied()
                .collect::<Vec<_>>(),
        );
        stream.extend(msg(b'R', &[0, 0, 0, 11, b'x', b'y']));
        stream.extend(msg(b'R', &0i32.to_be_bytes()));
        // After AuthenticationOk nothing is looked at, not even an `R`.
        stream.extend(msg(b'S', b"server_version\x0015\x00"));
        stream.extend(msg(b'R', &3i32.to_be_bytes()));
        for chunk in [1, 2, 3, 7, 1000] {
            assert_eq!(requests(&stream, chunk), vec![10, 11, 0], "chunk {chunk}");
        }
        let mut e = msg(b'E', b"SFATAL\0Mnope\0\0");
        e.extend(msg(b'R', &3i32.to_be_bytes()));
        assert_eq!(requests(&e, 4), vec![3]);
    }

    fn cfg(sslmode: SslMode) -> PgConnectConfig {
        PgConnectConfig {
            host: "db.example".into(),
            sslmode,
            ..PgConnectConfig::default()
        }
    }

    #[test]
    fn cleartext_passwords_go_only_over_verified_tls_or_when_allowed() {
        for m in [SslMode::Disable, SslMode::Prefer, SslMode::Require] {
            assert_eq!(password_policy(&cfg(m), 3), PasswordAnswer::Refuse, "{m:?}");
            assert_eq!(password_policy(&cfg(m), 5), PasswordAnswer::SendWithWarning);
            assert_eq!(password_policy(&cfg(m), 10), PasswordAnswer::Send);
            let allowed = PgConnectConfig {
                allow_cleartext_password: true,
                ..cfg(m)
            };
            assert_eq!(password_policy(&allowed, 3), PasswordAnswer::Send);
        }
        for m in [SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(password_policy(&cfg(m), 3), PasswordAnswer::Send, "{m:?}");
            assert_eq!(password_policy(&cfg(m), 5), PasswordAnswer::Send);
        }
        let socket = PgConnectConfig {
            host: "/var/run/postgresql".into(),
            ..cfg(SslMode::Prefer)
        };
        assert_eq!(password_policy(&socket, 3), PasswordAnswer::Send);
    }

    #[test]
    fn every_mode_below_verify_full_is_warned_about() {
        for m in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
        ] {
            let w = transport_warning(&cfg(m)).expect("a warning");
            assert!(w.contains("verify-full"), "{w}");
        }
        assert_eq!(transport_warning(&cfg(SslMode::VerifyFull)), None);
    }
}
