//! One retry policy type for every retry loop in Sluice: plain data (the
//! delays, the growth, how many times, jitter) with named presets for the
//! few policies there are, turned into a `backon` backoff where a loop
//! runs. So a loop's patience is read in one place, and two loops that
//! should behave alike cannot drift apart.
//!
//! Delays grow by `factor` from `min_delay` up to `max_delay`; with
//! `jitter`, each is stretched by a random fraction of itself (up to twice
//! as long), so workers that failed together do not retry together.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub factor: f32,
    /// Retries before giving up; `None`: never give up (the loop bounds
    /// itself some other way, or waits as long as it takes while the slot
    /// holds the WAL).
    pub max_times: Option<usize>,
    pub jitter: bool,
}

impl RetryPolicy {
    /// Reconnecting the replication stream: from 200 ms up to 30 s, for as
    /// long as it takes (the reader may cap the count).
    pub const RECONNECT: RetryPolicy = RetryPolicy {
        min_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(30),
        factor: 2.0,
        max_times: None,
        jitter: true,
    };

    /// A standby waiting for the replication slot to be released: from
    /// 200 ms up to 1 s (up to 2 s with jitter), forever. Short, because
    /// the wait is the takeover time after the active process dies, and
    /// cheap: one query or one refused `START_REPLICATION` per try.
    pub const STANDBY: RetryPolicy = RetryPolicy {
        min_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(1),
        factor: 2.0,
        max_times: None,
        jitter: true,
    };

    /// Bulk requests and dead-letter writes in the indexer: from 100 ms up
    /// to 10 s, for as long as Elasticsearch needs (DESIGN invariant 5:
    /// retryable failures are retried, never dropped).
    pub const BULK: RetryPolicy = RetryPolicy {
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        factor: 2.0,
        max_times: None,
        jitter: true,
    };

    /// Re-reading a row for an unchanged TOAST value: from 200 ms up to
    /// 30 s; bounded by the step's patience (a deadline), not by a count.
    pub const REFETCH: RetryPolicy = RetryPolicy {
        min_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(30),
        factor: 2.0,
        max_times: None,
        jitter: true,
    };

    /// Resuming an interrupted snapshot under a new exported snapshot: from
    /// 1 s up to 30 s; the request says how many times ([`Self::times`]).
    pub const SNAPSHOT_RESUME: RetryPolicy = RetryPolicy {
        min_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(30),
        factor: 2.0,
        max_times: None,
        jitter: true,
    };

    /// Index admin at start-up (create, check mappings, alias) on a busy
    /// cluster: from 500 ms up to 10 s, 8 times (about a minute and a half
    /// with jitter), then the command reports the failure.
    pub const ADMIN: RetryPolicy = RetryPolicy {
        min_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(10),
        factor: 2.0,
        max_times: Some(8),
        jitter: true,
    };

    /// This policy, giving up after `n` retries.
    pub const fn times(self, n: usize) -> RetryPolicy {
        RetryPolicy {
            max_times: Some(n),
            ..self
        }
    }

    /// This policy with other bounds on the delay (tests wait less).
    pub const fn between(self, min_delay: Duration, max_delay: Duration) -> RetryPolicy {
        RetryPolicy {
            min_delay,
            max_delay,
            ..self
        }
    }

    /// The `backon` builder for `Retryable::retry`.
    pub fn builder(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor);
        let b = match self.max_times {
            Some(n) => b.with_max_times(n),
            None => b.without_max_times(),
        };
        if self.jitter { b.with_jitter() } else { b }
    }

    /// The delays, for a loop that keeps its own count; ends after
    /// `max_times`.
    pub fn backoff(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        self.builder().build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The delays without jitter (what jitter stretches).
    fn steady(p: RetryPolicy, n: usize) -> Vec<Duration> {
        RetryPolicy { jitter: false, ..p }
            .backoff()
            .take(n)
            .collect()
    }

    /// Equal to the microsecond (backon multiplies in `f32`).
    fn assert_delays(got: &[Duration], want: &[Duration]) {
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                g.abs_diff(*w) < Duration::from_micros(1),
                "{got:?} != {want:?}"
            );
        }
    }

    #[test]
    fn reconnects_wait_from_200_ms_doubling_up_to_30_s_forever() {
        let want = [
            200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 30_000, 30_000,
        ]
        .map(ms);
        assert_delays(&steady(RetryPolicy::RECONNECT, 10), &want);
        assert_eq!(RetryPolicy::RECONNECT.backoff().take(1000).count(), 1000);
    }

    #[test]
    fn bulk_retries_wait_from_100_ms_doubling_up_to_10_s_forever() {
        let want = [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000].map(ms);
        assert_delays(&steady(RetryPolicy::BULK, 9), &want);
        assert_eq!(RetryPolicy::BULK.backoff().take(1000).count(), 1000);
    }

    #[test]
    fn standbys_retry_from_200_ms_up_to_1_s_forever() {
        let want = [200, 400, 800, 1000, 1000].map(ms);
        assert_delays(&steady(RetryPolicy::STANDBY, 5), &want);
        assert_eq!(RetryPolicy::STANDBY.backoff().take(1000).count(), 1000);
    }

    #[test]
    fn refetches_wait_like_reconnects() {
        assert_eq!(RetryPolicy::REFETCH, RetryPolicy::RECONNECT);
    }

    #[test]
    fn a_snapshot_resumes_as_often_as_asked_from_1_s_up_to_30_s() {
        let p = RetryPolicy::SNAPSHOT_RESUME.times(7);
        let want = [1, 2, 4, 8, 16, 30, 30].map(|s| ms(s * 1000));
        assert_delays(&steady(p, 100), &want);
        assert_eq!(RetryPolicy::SNAPSHOT_RESUME.times(0).backoff().count(), 0);
    }

    #[test]
    fn index_admin_at_start_up_tries_eight_times_from_half_a_second_up_to_10_s() {
        let want = [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000].map(ms);
        assert_delays(&steady(RetryPolicy::ADMIN, 100), &want);
    }

    #[test]
    fn jitter_stretches_each_delay_by_less_than_itself() {
        for p in [
            RetryPolicy::RECONNECT,
            RetryPolicy::STANDBY,
            RetryPolicy::BULK,
            RetryPolicy::REFETCH,
            RetryPolicy::SNAPSHOT_RESUME,
            RetryPolicy::ADMIN,
        ] {
            assert!(p.jitter);
            let base = steady(p, 12);
            let jittered: Vec<Duration> = p.backoff().take(12).collect();
            for (j, b) in jittered.iter().zip(&base) {
                assert!(
                    *j + Duration::from_micros(1) >= *b && *j < *b * 2,
                    "{j:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn narrower_bounds_keep_the_rest_of_the_policy() {
        let p = RetryPolicy::BULK.between(ms(50), ms(200));
        assert_delays(&steady(p, 4), &[50, 100, 200, 200].map(ms));
        assert_eq!((p.max_times, p.jitter), (None, true));
    }
}
