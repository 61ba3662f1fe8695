//! The primary-read breaker: caps the share of reads that fall back to the
//! primary.
//!
//! When replicas lag, every read would fall back to the primary and could
//! overload it exactly when it is busiest. The breaker counts, over a
//! sliding window, the reads routing was free to place (replica reads,
//! stale reads and fallbacks) and the fallbacks among them. Reads forced
//! to the primary by a hint or rule are not counted at all: the operator
//! asked for them, and counting them as reads would loosen the cap.
//!
//! Closed → Open when a fallback would push the share over the cap (once
//! the window holds `min_reads`); Open refuses fallbacks; after `cooldown`
//! it is HalfOpen and lets `half_open_probes` fallbacks through, closing as
//! soon as the share is back under the cap and reopening if the probes run
//! out first. Pure: time is passed in, and every method is O(1).

use std::time::{Duration, Instant};

use lagrouter_config::RoutingConfig;

/// The breaker's knobs, from `[routing]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// `primary_read_cap`: most share of reads that may fall back.
    pub cap: f64,
    /// `breaker_window`.
    pub window: Duration,
    /// `breaker_min_reads`: the breaker never opens on fewer reads.
    pub min_reads: u64,
    /// `breaker_cooldown`: time Open before HalfOpen.
    pub cooldown: Duration,
    /// Fallbacks let through while HalfOpen before it reopens. Not in the
    /// config file yet: [`BreakerSettings::DEFAULT_HALF_OPEN_PROBES`].
    pub half_open_probes: u32,
}

impl BreakerSettings {
    /// Probes allowed while half-open.
    pub const DEFAULT_HALF_OPEN_PROBES: u32 = 10;

    /// From the live config.
    pub fn from_config(c: &RoutingConfig) -> Self {
        Self {
            cap: c.primary_read_cap,
            window: c.breaker_window,
            min_reads: c.breaker_min_reads,
            cooldown: c.breaker_cooldown,
            half_open_probes: Self::DEFAULT_HALF_OPEN_PROBES,
        }
    }
}

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Fallback reads go to the primary.
    Closed,
    /// Fallback reads are refused (or served stale) since `since`.
    Open { since: Instant },
    /// Cooling down is over: up to `half_open_probes` fallbacks are let
    /// through while the share is watched; `admitted` so far.
    HalfOpen { admitted: u32 },
}

impl BreakerState {
    /// `closed`, `open`, `half_open`: for metrics and `SHOW BREAKER`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half_open",
        }
    }
}

/// The breaker's answer to a fallback read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    /// Serve it from the primary (it has been counted).
    Admitted,
    /// Refuse it; `share` of recent reads fell back (0.0–1.0).
    Refused { share: f64 },
}

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Absolute bucket number since `origin`.
    index: u64,
    reads: u64,
    fallbacks: u64,
}

/// The breaker. Shared by all sessions behind a mutex in the router.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    /// The window is `BUCKETS` buckets of `window / BUCKETS` each: memory
    /// is constant and the window slides by one bucket at a time.
    buckets: [Bucket; BUCKETS],
    origin: Option<Instant>,
    window: Duration,
    /// Highest bucket seen, so an out-of-order `now` (taken before another
    /// thread's) lands in the current bucket rather than an expired one.
    latest: u64,
    /// When bucket `latest` ends: an event before it goes there without
    /// working out its bucket (a 128-bit division), as almost every replica
    /// read does.
    latest_end: Option<Instant>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

impl Breaker {
    /// A closed breaker with an empty window.
    pub fn new() -> Self {
        Self {
            state: BreakerState::Closed,
            buckets: [Bucket::default(); BUCKETS],
            origin: None,
            window: Duration::ZERO,
            latest: 0,
            latest_end: None,
        }
    }

    /// The state (as of the last call; call [`Breaker::poll`] to apply the
    /// cool-down first).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Moves Open → HalfOpen once the cool-down has passed.
    pub fn poll(&mut self, s: &BreakerSettings, now: Instant) {
        if let BreakerState::Open { since } = self.state
            && now.saturating_duration_since(since) >= s.cooldown
        {
            self.state = BreakerState::HalfOpen { admitted: 0 };
        }
    }

    /// Counts a read served by a replica (fresh or stale).
    pub fn record_read(&mut self, s: &BreakerSettings, now: Instant) {
        self.poll(s, now);
        self.add(s, now, true, false);
        if matches!(self.state, BreakerState::HalfOpen { .. }) && self.share(s, now) <= s.cap {
            self.state = BreakerState::Closed;
        }
    }

    /// Asks to serve a read from the primary because no replica may take
    /// it. Counts it if admitted.
    pub fn admit_fallback(&mut self, s: &BreakerSettings, now: Instant) -> Admission {
        self.admit(s, now, false)
    }

    /// [`Breaker::admit_fallback`], where `counted` says the read was
    /// already counted as a replica read ([`Breaker::record_read`]) whose
    /// replica then could not take it: if admitted, it counts as a
    /// fallback, not as a second read.
    pub fn admit(&mut self, s: &BreakerSettings, now: Instant, counted: bool) -> Admission {
        self.poll(s, now);
        let (reads, fallbacks) = self.counts(s, now);
        // A counted read that left the window (or a reconfigured window)
        // is counted again, so fallbacks never outnumber reads.
        let counted = counted && reads > fallbacks;
        // The share if this fallback is served.
        let total = reads + u64::from(!counted);
        let within_cap =
            total < s.min_reads || (fallbacks + 1) as f64 / total.max(1) as f64 <= s.cap;
        let share = if reads == 0 {
            0.0
        } else {
            fallbacks as f64 / reads as f64
        };
        match self.state {
            BreakerState::Closed if within_cap => {}
            BreakerState::Closed => {
                self.state = BreakerState::Open { since: now };
                return Admission::Refused { share };
            }
            BreakerState::Open { .. } => return Admission::Refused { share },
            BreakerState::HalfOpen { .. } if within_cap => self.state = BreakerState::Closed,
            BreakerState::HalfOpen { admitted } if admitted < s.half_open_probes => {
                self.state = BreakerState::HalfOpen {
                    admitted: admitted + 1,
                };
            }
            BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::Open { since: now };
                return Admission::Refused { share };
            }
        }
        self.add(s, now, !counted, true);
        Admission::Admitted
    }

    /// Reads and fallbacks in the window ending at `now`.
    pub fn counts(&self, s: &BreakerSettings, now: Instant) -> (u64, u64) {
        if self.window != s.window {
            return (0, 0); // the next `add` resets the window
        }
        let current = self.bucket_index(now).max(self.latest);
        let first = current.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| b.index >= first && b.index <= current && (b.reads > 0 || b.fallbacks > 0))
            .fold((0, 0), |(r, f), b| (r + b.reads, f + b.fallbacks))
    }

    /// Share of reads in the window that fell back (0.0 with no reads).
    pub fn share(&self, s: &BreakerSettings, now: Instant) -> f64 {
        match self.counts(s, now) {
            (0, _) => 0.0,
            (r, f) => f as f64 / r as f64,
        }
    }

    fn bucket_width(&self) -> Duration {
        (self.window / BUCKETS as u32).max(Duration::from_micros(1))
    }

    fn bucket_index(&self, now: Instant) -> u64 {
        match self.origin {
            None => 0,
            Some(o) => {
                (now.saturating_duration_since(o).as_nanos() / self.bucket_width().as_nanos())
                    as u64
            }
        }
    }

    /// Counts, in the bucket of `now`, a read (`read`) and a fallback
    /// (`fallback`).
    fn add(&mut self, s: &BreakerSettings, now: Instant, read: bool, fallback: bool) {
        if self.window == s.window
            && let Some(end) = self.latest_end
            && now < end
        {
            // In (or, taken late, before) the latest bucket, which holds
            // its own index since it was last moved to.
            let b = &mut self.buckets[(self.latest % BUCKETS as u64) as usize];
            b.reads += u64::from(read);
            b.fallbacks += u64::from(fallback);
            return;
        }
        if self.origin.is_none() || self.window != s.window {
            // First event, or the window was reconfigured: start afresh.
            self.origin = Some(now);
            self.window = s.window;
            self.buckets = [Bucket::default(); BUCKETS];
            self.latest = 0;
        }
        let index = self.bucket_index(now).max(self.latest);
        self.latest = index;
        self.latest_end = self.origin.and_then(|o| {
            let width = u32::try_from(index + 1).ok()?;
            o.checked_add(self.bucket_width().checked_mul(width)?)
        });
        let b = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if b.index != index {
            *b = Bucket {
                index,
                ..Bucket::default()
            };
        }
        b.reads += u64::from(read);
        b.fallbacks += u64::from(fallback);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            cap: 0.2,
            window: Duration::from_secs(10),
            min_reads: 10,
            cooldown: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn the_latest_bucket_shortcut_counts_as_working_out_the_bucket() {
        let t0 = Instant::now();
        let (mut fast, mut full) = (Breaker::new(), Breaker::new());
        let mut t = 0u64;
        let mut buckets_moved = 0;
        for i in 0..3000u64 {
            // Forward by 0–49 ms; now and then a clock read from before
            // another thread's, 120 ms back; the window reconfigured for
            // a while (about 38 s in all, 1 s buckets).
            t = if i % 13 == 5 {
                t.saturating_sub(120)
            } else {
                t + (i * 31) % 50
            };
            let mut s = settings();
            if (1000..1400).contains(&i) {
                s.window = Duration::from_secs(3);
            }
            let now = ms(t0, t);
            let fallback = i % 5 == 0;
            let before = fast.latest;
            fast.add(&s, now, !fallback, fallback);
            full.latest_end = None;
            full.add(&s, now, !fallback, fallback);
            assert_eq!(fast.latest, full.latest, "event {i} at {t} ms");
            assert_eq!(
                fast.counts(&s, now),
                full.counts(&s, now),
                "event {i} at {t} ms"
            );
            buckets_moved += u32::from(fast.latest != before);
        }
        assert!(
            buckets_moved > 30,
            "the events crossed {buckets_moved} buckets"
        );
        assert!(
            fast.counts(&settings(), ms(t0, t)).0 > 100,
            "the window holds reads"
        );
    }

    /// A breaker that counted `n` replica reads, one a millisecond from `t0`.
    fn with_reads(s: &BreakerSettings, t0: Instant, n: u64) -> Breaker {
        let mut b = Breaker::new();
        for i in 0..n {
            b.record_read(s, ms(t0, i));
        }
        b
    }

    #[test]
    fn stays_closed_under_the_cap_and_under_min_reads() {
        let s = settings();
        let t0 = Instant::now();
        let mut b = Breaker::new();
        // Few reads: even 100% fallbacks do not open it.
        for i in 0..9 {
            assert_eq!(b.admit_fallback(&s, ms(t0, i)), Admission::Admitted);
        }
        let mut b = with_reads(&s, t0, 80);
        for i in 0..20 {
            assert_eq!(
                b.admit_fallback(&s, ms(t0, 100 + i)),
                Admission::Admitted,
                "{i}"
            );
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!((b.share(&s, ms(t0, 200)) - 0.2).abs() < 1e-9);
    }

    #[test]
    fn full_cycle_closed_open_half_open_closed() {
        let s = settings();
        let t0 = Instant::now();
        let mut b = with_reads(&s, t0, 8);
        assert_eq!(b.admit_fallback(&s, ms(t0, 10)), Admission::Admitted);
        assert_eq!(b.admit_fallback(&s, ms(t0, 11)), Admission::Admitted); // 2/10
        // 3/11 > 0.2: opens, and this read is refused.
        let Admission::Refused { share } = b.admit_fallback(&s, ms(t0, 12)) else {
            panic!("should refuse")
        };
        assert!((share - 0.2).abs() < 1e-9);
        assert_eq!(b.state(), BreakerState::Open { since: ms(t0, 12) });
        // Still open before the cool-down.
        assert!(matches!(
            b.admit_fallback(&s, ms(t0, 5011)),
            Admission::Refused { .. }
        ));
        // Cool-down over: half-open, probes let through.
        b.poll(&s, ms(t0, 5012));
        assert_eq!(b.state(), BreakerState::HalfOpen { admitted: 0 });
        assert_eq!(b.admit_fallback(&s, ms(t0, 5013)), Admission::Admitted);
        assert_eq!(b.state(), BreakerState::HalfOpen { admitted: 1 });
        // Replica reads bring the share back under the cap: closed.
        for i in 0..10 {
            b.record_read(&s, ms(t0, 5100 + i));
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_counted_read_that_falls_back_is_not_counted_twice() {
        let s = settings();
        let t0 = Instant::now();
        let mut b = with_reads(&s, t0, 10);
        // Two of those ten replica reads could not be served there.
        assert_eq!(b.admit(&s, ms(t0, 20), true), Admission::Admitted);
        assert_eq!(b.admit(&s, ms(t0, 21), true), Admission::Admitted);
        assert_eq!(b.counts(&s, ms(t0, 30)), (10, 2));
        // A third would be 3 of 10: over the cap.
        assert!(matches!(
            b.admit(&s, ms(t0, 22), true),
            Admission::Refused { .. }
        ));
        assert_eq!(b.state(), BreakerState::Open { since: ms(t0, 22) });
        // With no read left in the window to match, it counts as one.
        let mut b = Breaker::new();
        assert_eq!(b.admit(&s, t0, true), Admission::Admitted);
        assert_eq!(b.counts(&s, t0), (1, 1));
    }

    #[test]
    fn half_open_reopens_when_probes_run_out() {
        let s = settings();
        let t0 = Instant::now();
        let mut b = with_reads(&s, t0, 10);
        b.admit_fallback(&s, ms(t0, 20));
        b.admit_fallback(&s, ms(t0, 21));
        assert!(matches!(
            b.admit_fallback(&s, ms(t0, 22)),
            Admission::Refused { .. }
        ));
        let t1 = ms(t0, 6000);
        assert_eq!(b.admit_fallback(&s, t1), Admission::Admitted);
        assert_eq!(b.admit_fallback(&s, t1), Admission::Admitted);
        assert!(matches!(
            b.admit_fallback(&s, t1),
            Admission::Refused { .. }
        ));
        assert_eq!(b.state(), BreakerState::Open { since: t1 });
    }

    #[test]
    fn window_slides() {
        let s = BreakerSettings {
            cap: 1.0,
            ..settings()
        };
        let t0 = Instant::now();
        let mut b = Breaker::new();
        for i in 0..10 {
            b.admit_fallback(&s, ms(t0, i));
        }
        assert_eq!(b.counts(&s, ms(t0, 9_000)), (10, 10));
        // Eleven seconds later the old reads have left the window.
        assert_eq!(b.counts(&s, ms(t0, 11_000)), (0, 0));
        assert_eq!(b.admit_fallback(&s, ms(t0, 11_000)), Admission::Admitted);
        // A `now` from before the latest event counts in the latest bucket.
        b.record_read(&s, ms(t0, 10_500));
        assert_eq!(b.counts(&s, ms(t0, 11_000)), (2, 1));
    }

    #[test]
    fn reconfigured_window_starts_afresh() {
        let mut s = settings();
        let t0 = Instant::now();
        let mut b = Breaker::new();
        b.admit_fallback(&s, t0);
        s.window = Duration::from_secs(20);
        assert_eq!(b.counts(&s, t0), (0, 0));
        b.record_read(&s, t0);
        assert_eq!(b.counts(&s, t0), (1, 0));
    }
}
