//! Noticing a replication connection that went silent for good.
//!
//! A TCP connection whose peer vanished without a FIN or RST reaching us (a
//! NAT or firewall that dropped its state, a partition that outlived the
//! server's `wal_sender_timeout`, a server host that died) never fails a
//! read: it just never delivers anything again. Our status updates still
//! "succeed" into the socket buffer. Without a receive timeout the reader
//! waited on such a connection forever while the slot held the WAL
//! (measured: the fault matrix's half-open PostgreSQL case never caught up).
//!
//! The rule is PostgreSQL's own for its replicas (`wal_receiver_timeout`):
//! after half the timeout without a message, the status update asks for a
//! reply (a walsender answers one at once, idle or busy: it reads replies
//! between records); after the whole timeout without one, the connection is
//! presumed dead and the session ends with a retryable error, so the reader
//! reconnects and resumes from the slot's confirmed position.
//!
//! Silence only counts while the reader listens: when it stops reading
//! because the pipeline is full, the server's messages wait unread in the
//! socket, which says nothing about the connection.

use std::time::{Duration, Instant};

/// How long a replication connection may stay silent before it is given up
/// (PostgreSQL's `wal_receiver_timeout` default).
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the status timer should do about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The server spoke recently: a plain status update.
    Alive,
    /// Quiet for half the timeout: ask the server to answer this update.
    AskForReply,
    /// Quiet for the whole timeout: the connection is dead.
    Dead { quiet: Duration },
}

/// When the server was last heard from, while listening.
#[derive(Debug, Clone)]
pub struct Liveness {
    timeout: Duration,
    last_heard: Instant,
}

impl Liveness {
    pub fn new(timeout: Duration, now: Instant) -> Liveness {
        Liveness {
            timeout,
            last_heard: now,
        }
    }

    /// A message arrived (or the reader was not listening until now).
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    /// The verdict at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let quiet = now.saturating_duration_since(self.last_heard);
        if quiet >= self.timeout {
            Verdict::Dead { quiet }
        } else if quiet >= self.timeout / 2 {
            Verdict::AskForReply
        } else {
            Verdict::Alive
        }
    }

    /// The error a dead connection ends its session with (retryable: it
    /// is a connection loss).
    pub fn dead_error(quiet: Duration) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "nothing received on the replication connection for {}s, not even an answer \
                 to a status update that asked for one; the connection is presumed dead \
                 (peer gone or network path broken)",
                quiet.as_secs()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(60);

    #[test]
    fn a_connection_heard_from_recently_is_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new(T, t0);
        assert_eq!(l.check(t0 + Duration::from_secs(29)), Verdict::Alive);
        l.heard(t0 + Duration::from_secs(29));
        assert_eq!(l.check(t0 + Duration::from_secs(58)), Verdict::Alive);
    }

    #[test]
    fn half_the_timeout_quiet_asks_for_a_reply_and_the_whole_timeout_gives_up() {
        let t0 = Instant::now();
        let l = Liveness::new(T, t0);
        assert_eq!(l.check(t0 + Duration::from_secs(30)), Verdict::AskForReply);
        assert_eq!(l.check(t0 + Duration::from_secs(59)), Verdict::AskForReply);
        assert_eq!(
            l.check(t0 + Duration::from_secs(61)),
            Verdict::Dead {
                quiet: Duration::from_secs(61)
            }
        );
    }

    #[test]
    fn an_answer_to_the_request_keeps_the_connection() {
        let t0 = Instant::now();
        let mut l = Liveness::new(T, t0);
        assert_eq!(l.check(t0 + Duration::from_secs(40)), Verdict::AskForReply);
        l.heard(t0 + Duration::from_secs(40));
        assert_eq!(l.check(t0 + Duration::from_secs(70)), Verdict::AskForReply);
        assert_eq!(l.check(t0 + Duration::from_secs(65)), Verdict::Alive);
    }

    #[test]
    fn an_older_instant_never_moves_the_clock_back() {
        let t0 = Instant::now();
        let mut l = Liveness::new(T, t0 + Duration::from_secs(10));
        l.heard(t0);
        assert_eq!(l.check(t0 + Duration::from_secs(69)), Verdict::AskForReply);
    }

    #[test]
    fn the_error_is_a_retryable_connection_loss() {
        let e = crate::source::SourceError::Io(Liveness::dead_error(Duration::from_secs(61)));
        assert!(crate::source::is_retryable(&e));
        assert!(e.to_string().contains("61s"), "{e}");
    }
}
