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
//! off the time lag is unknown (`None`), never zero.

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
        _ => None,
    };
    match (heartbeat, history.staleness_bound(replica)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
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
