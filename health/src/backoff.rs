//! Reconnect backoff for the monitor's own connections.
//!
//! After a failed connect the next attempt waits, doubling from
//! `check_interval` up to a cap derived from it (`8 × check_interval`, at
//! least 1s) so that a restarted node is noticed within a couple of seconds
//! while a dead one costs at most one connect attempt per cap. Until then
//! checks of that node fail at once, without touching the network. Pure:
//! `now` is passed in.

use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff between connect attempts.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
    next_attempt: Option<Instant>,
}

impl Backoff {
    /// The longest wait for a given check interval.
    pub fn cap(check_interval: Duration) -> Duration {
        check_interval.saturating_mul(8).max(Duration::from_secs(1))
    }

    /// When an attempt is not yet allowed, how long until it is.
    pub fn wait_left(&self, now: Instant) -> Option<Duration> {
        let next = self.next_attempt?;
        (next > now).then(|| next - now)
    }

    /// Records a failed attempt at `now`; returns the wait before the next one.
    pub fn failed(&mut self, now: Instant, check_interval: Duration) -> Duration {
        let cap = Self::cap(check_interval);
        let wait = check_interval
            .checked_mul(1u32 << self.failures.min(16))
            .unwrap_or(cap)
            .min(cap);
        self.failures = self.failures.saturating_add(1);
        // An unrepresentable instant (absurd interval) just means no wait.
        self.next_attempt = now.checked_add(wait);
        wait
    }

    /// A connection succeeded: the next failure starts from the beginning.
    pub fn succeeded(&mut self) {
        *self = Backoff::default();
    }

    /// Consecutive failed attempts.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_up_to_the_cap_and_resets() {
        let iv = Duration::from_millis(250);
        let mut b = Backoff::default();
        let now = Instant::now();
        assert_eq!(b.wait_left(now), None, "first attempt is immediate");
        let waits: Vec<u64> = (0..6)
            .map(|_| b.failed(now, iv).as_millis() as u64)
            .collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 2000, 2000]);
        assert_eq!(b.wait_left(now), Some(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(
            b.wait_left(Instant::now()),
            Some(Duration::from_millis(500))
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(b.wait_left(Instant::now()), None);
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.failed(Instant::now(), iv), iv);
    }

    #[test]
    fn cap_has_a_floor_and_huge_intervals_do_not_overflow() {
        assert_eq!(
            Backoff::cap(Duration::from_millis(10)),
            Duration::from_secs(1)
        );
        let mut b = Backoff::default();
        let now = Instant::now();
        for _ in 0..40 {
            b.failed(now, Duration::from_secs(u64::MAX / 16));
        }
        assert_eq!(b.failures(), 40);
    }
}
