//! Byte and time lag of a replica, from one round's observations.
//!
//! **Pairing.** Byte lag is the primary's `pg_current_wal_lsn()` minus the
//! replica's `pg_last_wal_replay_lsn()`, and the round asks the replicas
//! first and the primary only after every replica has answered. Call the
//! replica's answer `R(t1)` and the primary's `P(t2)` with `t1 < t2`. Both
//! only move forward, so `P(t2) - R(t1) >= P(t1) - R(t1)`, the true lag at
//! the moment the replica was sampled: the reported lag can be too high by
//! what the primary wrote between `t1` and `t2` (a millisecond's worth) but
//! never too low. [`byte_lag`] checks the ordering from the timestamps and
//! returns "unknown" rather than a number that could under-report.
//!
//! **Time lag** comes from the heartbeat row the monitor upserts on the
//! primary: the replica has replayed everything the primary had committed
//! before the heartbeat's `ts`, so `now - ts` on the replica is an upper
//! bound of its staleness. When the paired byte lag is zero the replica had
//! replayed everything the primary had at `t2 > t1`: it was not stale at
//! all, and the time lag is zero. Otherwise it is the smaller of two upper
//! bounds: the heartbeat's age (exact to within one `heartbeat_interval`),
//! and, from [`PrimaryHistory`], the time since the last round whose primary
//! LSN the replica has already replayed: if `P(tj) <= R(t1)` the replica had
//! everything the primary had at `tj`, so it is at most `t1 - tj` stale.
//! That second bound uses only the monitor's monotonic clock (no clock
//! skew) and is exact to within one `check_interval`. With the heartbeat
//! off the time lag is unknown (`None`), never zero. Where the heartbeat
//! table cannot be written (no privilege), the heartbeat is a committed
//! transaction id and the replica's `pg_last_xact_replay_timestamp()` age
//! stands in for the row's.
//!
//! **No primary sample.** A round whose primary answered late, or not at
//! all, or was asked before a replica's answer was in, has no paired
//! sample for that replica. Missing evidence is not bad evidence: the
//! replica is then judged by [`estimated_lag`] against an *estimated*
//! primary position, the newest primary sample plus what the primary can
//! have written since at its fastest recent rate ([`PrimaryHistory::write_rate`]),
//! and never less than what any replica has already received from it. The
//! estimate can under-report only if the primary writes faster than it did
//! over the last [`PrimaryHistory::RATE_ROUNDS`] rounds while no replica
//! receives it. A primary whose connection was refused writes nothing, so
//! then the rate term is left out. Time lag is then judged as of the last
//! sample: the silence itself is in the byte estimate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::Lsn;
use crate::observation::{HeartbeatSeen, Observation};

/// The primary's side of the pairing: its LSN and when it was asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimarySample {
    /// `pg_current_wal_lsn()`.
    pub lsn: Lsn,
    /// The query was sent at or after this.
    pub sent_at: Instant,
}

impl PrimarySample {
    /// The primary sample an observation of a node out of recovery gives.
    pub fn from_observation(o: &Observation) -> Option<PrimarySample> {
        Some(PrimarySample {
            lsn: o.current_lsn?,
            sent_at: o.sent_at,
        })
    }
}

/// The primary samples of recent rounds, newest last, for the time-lag
/// bound. Cleared when the write target changes: LSNs of two different
/// primaries are not comparable.
#[derive(Debug, Clone, Default)]
pub struct PrimaryHistory {
    primary: Option<String>,
    samples: VecDeque<PrimarySample>,
}

impl PrimaryHistory {
    /// Rounds remembered: a minute at the default 250ms interval; older
    /// lags fall back to the heartbeat's age.
    pub const CAPACITY: usize = 256;

    /// Records the round's sample of `primary` (`None` if no write target).
    pub fn record(&mut self, primary: Option<&str>, sample: Option<PrimarySample>) {
        if self.primary.as_deref() != primary {
            self.primary = primary.map(str::to_owned);
            self.samples.clear();
        }
        if let Some(s) = sample {
            if self.samples.len() == Self::CAPACITY {
                self.samples.pop_front();
            }
            self.samples.push_back(s);
        }
    }

    /// Rounds over which the write rate is taken: 10 s at the default
    /// 250ms interval, long enough to include the last burst, short
    /// enough to forget yesterday's bulk load.
    pub const RATE_ROUNDS: usize = 40;

    /// The newest sample.
    pub fn newest(&self) -> Option<PrimarySample> {
        self.samples.back().copied()
    }

    /// The fastest WAL write rate between consecutive samples of the last
    /// [`Self::RATE_ROUNDS`] rounds, in bytes per second (0 with fewer
    /// than two samples).
    pub fn write_rate(&self) -> f64 {
        let skip = self.samples.len().saturating_sub(Self::RATE_ROUNDS);
        let recent: Vec<&PrimarySample> = self.samples.iter().skip(skip).collect();
        recent
            .windows(2)
            .filter_map(|w| {
                let dt = w[1].sent_at.saturating_duration_since(w[0].sent_at);
                (dt >= Duration::from_millis(1))
                    .then(|| w[1].lsn.bytes_after(w[0].lsn) as f64 / dt.as_secs_f64())
            })
            .fold(0.0, f64::max)
    }

    /// Upper bound of the replica's staleness: the time since the newest
    /// earlier primary sample the replica had replayed when it answered.
    pub fn staleness_bound(&self, replica: &Observation) -> Option<Duration> {
        let r = replica.replay_lsn?;
        self.samples
            .iter()
            .rev()
            .find(|s| s.lsn <= r && s.sent_at <= replica.answered_at)
            .map(|s| replica.answered_at.saturating_duration_since(s.sent_at))
    }
}

/// Bytes the replica is behind, or `None` if it cannot be known without
/// risking under-reporting: no primary sample, no replay LSN, or the
/// primary was asked before the replica's answer was in.
pub fn byte_lag(replica: &Observation, primary: Option<&PrimarySample>) -> Option<u64> {
    let p = primary?;
    if replica.answered_at > p.sent_at {
        return None;
    }
    Some(p.lsn.bytes_after(replica.replay_lsn?))
}

/// How a replica's lag was found when the round had no paired sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Bytes behind the estimated primary position.
    pub bytes: u64,
    /// How long before the replica's answer the newest real sample was taken.
    pub silence: Duration,
}

/// The replica's byte lag against an estimated primary position (see the
/// module docs): the newest sample taken before the replica answered
/// (`current`, this round's, if it was taken before; else the history's),
/// plus `write_rate × silence` when `rate_applies`, and at least
/// `received`, the furthest position any replica received this round.
/// `None` without any primary sample or replay position.
pub fn estimated_lag(
    replica: &Observation,
    current: Option<&PrimarySample>,
    history: &PrimaryHistory,
    received: Option<Lsn>,
    rate_applies: bool,
) -> Option<Estimate> {
    let replay = replica.replay_lsn?;
    let base = current
        .filter(|c| c.sent_at <= replica.answered_at)
        .copied()
        .or_else(|| history.newest())?;
    let silence = replica.answered_at.saturating_duration_since(base.sent_at);
    let written = if rate_applies {
        (history.write_rate() * silence.as_secs_f64()).ceil() as u64
    } else {
        0
    };
    let mut position = Lsn(base.lsn.0.saturating_add(written));
    if let Some(r) = received {
        position = position.max(r);
    }
    Some(Estimate {
        bytes: position.bytes_after(replay),
        silence,
    })
}

/// The replica's time lag: zero when provably caught up, else the smaller
/// of the heartbeat's age and the history bound; `None` when the heartbeat
/// is off, or when neither bound is known yet.
pub fn time_lag(
    replica: &Observation,
    byte_lag: Option<u64>,
    heartbeat_on: bool,
    history: &PrimaryHistory,
) -> Option<Duration> {
    if !heartbeat_on {
        return None;
    }
    if byte_lag == Some(0) {
        return Some(Duration::ZERO);
    }
    let heartbeat = match replica.heartbeat {
        HeartbeatSeen::Age(a) => Some(a),
        // The writer beats with txid_current() where it may not write the
        // table: the newest replayed commit is then the heartbeat.
        HeartbeatSeen::TableMissing | HeartbeatSeen::RowMissing => replica.last_replay_age,
        HeartbeatSeen::NotRead | HeartbeatSeen::TableExists => None,
    };
    match (heartbeat, history.staleness_bound(replica)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A history of `(ms after t0, lsn)` samples of primary `p`, for tests.
#[cfg(test)]
pub(crate) fn history_at(points: &[(u64, u64)], t0: Instant) -> PrimaryHistory {
    let mut h = PrimaryHistory::default();
    for &(at, lsn) in points {
        h.record(
            Some("p"),
            Some(PrimarySample {
                lsn: Lsn(lsn),
                sent_at: t0 + Duration::from_millis(at),
            }),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(replay: Option<u64>, answered_at: Instant, hb: HeartbeatSeen) -> Observation {
        Observation {
            in_recovery: true,
            current_lsn: None,
            timeline: None,
            replay_lsn: replay.map(Lsn),
            receive_lsn: replay.map(Lsn),
            last_replay_age: None,
            heartbeat: hb,
            primary_side: None,
            sent_at: answered_at,
            answered_at,
        }
    }

    #[test]
    fn replica_sampled_first_gives_primary_minus_replay() {
        let t0 = Instant::now();
        let r = replica(Some(1000), t0, HeartbeatSeen::NotRead);
        let p = PrimarySample {
            lsn: Lsn(5000),
            sent_at: t0 + Duration::from_millis(1),
        };
        assert_eq!(byte_lag(&r, Some(&p)), Some(4000));
        // Same instant is still ordered: the answer was in before the ask.
        let p = PrimarySample { sent_at: t0, ..p };
        assert_eq!(byte_lag(&r, Some(&p)), Some(4000));
    }

    #[test]
    fn primary_sampled_before_replica_answered_is_unknown() {
        let t0 = Instant::now();
        let r = replica(
            Some(1000),
            t0 + Duration::from_millis(2),
            HeartbeatSeen::NotRead,
        );
        let p = PrimarySample {
            lsn: Lsn(5000),
            sent_at: t0,
        };
        assert_eq!(byte_lag(&r, Some(&p)), None);
    }

    #[test]
    fn missing_inputs_are_unknown() {
        let t0 = Instant::now();
        let p = PrimarySample {
            lsn: Lsn(5000),
            sent_at: t0,
        };
        assert_eq!(
            byte_lag(&replica(None, t0, HeartbeatSeen::NotRead), Some(&p)),
            None
        );
        assert_eq!(
            byte_lag(&replica(Some(1), t0, HeartbeatSeen::NotRead), None),
            None
        );
    }

    #[test]
    fn replica_ahead_of_sample_is_zero_not_negative() {
        let t0 = Instant::now();
        let p = PrimarySample {
            lsn: Lsn(10),
            sent_at: t0,
        };
        assert_eq!(
            byte_lag(&replica(Some(20), t0, HeartbeatSeen::NotRead), Some(&p)),
            Some(0)
        );
    }

    #[test]
    fn time_lag_rules() {
        let t0 = Instant::now();
        let age = Duration::from_millis(420);
        let h = PrimaryHistory::default();
        let r = replica(Some(1), t0, HeartbeatSeen::Age(age));
        assert_eq!(
            time_lag(&r, Some(0), true, &h),
            Some(Duration::ZERO),
            "caught up"
        );
        assert_eq!(
            time_lag(&r, Some(100), true, &h),
            Some(age),
            "behind: heartbeat age"
        );
        assert_eq!(
            time_lag(&r, None, true, &h),
            Some(age),
            "byte lag unknown: heartbeat age"
        );
        assert_eq!(
            time_lag(&r, Some(0), false, &h),
            None,
            "heartbeat off is unknown, not zero"
        );
        let no_row = replica(Some(1), t0, HeartbeatSeen::RowMissing);
        assert_eq!(time_lag(&no_row, Some(5), true, &h), None);
        let no_table = replica(Some(1), t0, HeartbeatSeen::TableMissing);
        assert_eq!(time_lag(&no_table, Some(0), true, &h), Some(Duration::ZERO));
    }

    #[test]
    fn history_bounds_time_lag_by_the_last_replayed_primary_sample() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut h = PrimaryHistory::default();
        for (at, lsn) in [(0, 100), (250, 200), (500, 300)] {
            h.record(
                Some("p"),
                Some(PrimarySample {
                    lsn: Lsn(lsn),
                    sent_at: ms(at),
                }),
            );
        }
        // Replayed through 250ms's LSN, answered at 760ms: at most 510ms stale.
        let r = replica(
            Some(250),
            ms(760),
            HeartbeatSeen::Age(Duration::from_secs(2)),
        );
        assert_eq!(h.staleness_bound(&r), Some(Duration::from_millis(510)));
        assert_eq!(
            time_lag(&r, Some(80), true, &h),
            Some(Duration::from_millis(510))
        );
        // A younger heartbeat wins.
        let r = replica(
            Some(250),
            ms(760),
            HeartbeatSeen::Age(Duration::from_millis(300)),
        );
        assert_eq!(
            time_lag(&r, Some(80), true, &h),
            Some(Duration::from_millis(300))
        );
        // Behind every remembered sample: heartbeat only, or unknown.
        let r = replica(Some(50), ms(760), HeartbeatSeen::RowMissing);
        assert_eq!(h.staleness_bound(&r), None);
        assert_eq!(time_lag(&r, Some(300), true, &h), None);
        // Samples taken after the replica answered prove nothing.
        let r = replica(Some(300), ms(400), HeartbeatSeen::RowMissing);
        assert_eq!(h.staleness_bound(&r), Some(Duration::from_millis(150)));
    }

    #[test]
    fn write_rate_is_the_fastest_recent_step() {
        let t0 = Instant::now();
        let h = history_at(&[(0, 0), (250, 1000), (500, 1500), (500, 9000)], t0);
        // 1000 bytes in 250ms = 4000 B/s; the zero-time pair is skipped.
        assert_eq!(h.write_rate(), 4000.0);
        assert_eq!(history_at(&[(0, 5)], t0).write_rate(), 0.0);
    }

    #[test]
    fn estimated_lag_counts_the_writes_since_the_last_sample() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let h = history_at(&[(0, 0), (250, 1000), (500, 2000)], t0);
        // The primary went silent after 500ms; the replica had everything
        // then and answers at 1500ms: 1s at 4000 B/s may be missing.
        let r = replica(Some(2000), ms(1500), HeartbeatSeen::NotRead);
        let e = estimated_lag(&r, None, &h, None, true).unwrap();
        assert_eq!(e.bytes, 4000);
        assert_eq!(e.silence, Duration::from_secs(1));
        // A refused primary writes nothing.
        assert_eq!(estimated_lag(&r, None, &h, None, false).unwrap().bytes, 0);
        // What a replica received is a floor for the primary's position.
        let got = estimated_lag(&r, None, &h, Some(Lsn(9000)), false).unwrap();
        assert_eq!(got.bytes, 7000);
        // This round's sample, if taken before the answer, is the base.
        let cur = PrimarySample {
            lsn: Lsn(2500),
            sent_at: ms(1400),
        };
        let e = estimated_lag(&r, Some(&cur), &h, None, true).unwrap();
        assert_eq!(
            (e.bytes, e.silence),
            (500 + 400, Duration::from_millis(100))
        );
        // No sample at all: unknown.
        let empty = PrimaryHistory::default();
        assert_eq!(estimated_lag(&r, None, &empty, Some(Lsn(1)), true), None);
    }

    #[test]
    fn without_the_table_the_newest_replayed_commit_is_the_heartbeat() {
        let t0 = Instant::now();
        let h = PrimaryHistory::default();
        let mut r = replica(Some(1), t0, HeartbeatSeen::TableMissing);
        r.last_replay_age = Some(Duration::from_millis(300));
        assert_eq!(
            time_lag(&r, Some(10), true, &h),
            Some(Duration::from_millis(300))
        );
    }

    #[test]
    fn history_forgets_on_a_new_primary_and_is_bounded() {
        let t0 = Instant::now();
        let mut h = PrimaryHistory::default();
        h.record(
            Some("p"),
            Some(PrimarySample {
                lsn: Lsn(1),
                sent_at: t0,
            }),
        );
        h.record(Some("q"), None);
        let r = replica(Some(10), t0, HeartbeatSeen::NotRead);
        assert_eq!(h.staleness_bound(&r), None);
        for i in 0..(PrimaryHistory::CAPACITY as u64 + 10) {
            h.record(
                Some("q"),
                Some(PrimarySample {
                    lsn: Lsn(i),
                    sent_at: t0,
                }),
            );
        }
        assert_eq!(h.samples.len(), PrimaryHistory::CAPACITY);
    }
}
