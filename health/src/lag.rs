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
//! all, and the time lag is zero. Otherwise it is the heartbeat's age, so
//! it is exact to within one `heartbeat_interval`. With the heartbeat off it
//! is unknown (`None`), never zero.

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

/// The replica's time lag: zero when provably caught up, else the age of
/// the newest heartbeat it has replayed; `None` when the heartbeat is off
/// or the replica has not seen the heartbeat row yet.
pub fn time_lag(
    replica: &Observation,
    byte_lag: Option<u64>,
    heartbeat_on: bool,
) -> Option<Duration> {
    if !heartbeat_on {
        return None;
    }
    if byte_lag == Some(0) {
        return Some(Duration::ZERO);
    }
    match replica.heartbeat {
        HeartbeatSeen::Age(a) => Some(a),
        _ => None,
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
        let r = replica(Some(1), t0, HeartbeatSeen::Age(age));
        assert_eq!(
            time_lag(&r, Some(0), true),
            Some(Duration::ZERO),
            "caught up"
        );
        assert_eq!(
            time_lag(&r, Some(100), true),
            Some(age),
            "behind: heartbeat age"
        );
        assert_eq!(
            time_lag(&r, None, true),
            Some(age),
            "byte lag unknown: heartbeat age"
        );
        assert_eq!(
            time_lag(&r, Some(0), false),
            None,
            "heartbeat off is unknown, not zero"
        );
        let no_row = replica(Some(1), t0, HeartbeatSeen::RowMissing);
        assert_eq!(time_lag(&no_row, Some(5), true), None);
        let no_table = replica(Some(1), t0, HeartbeatSeen::TableMissing);
        assert_eq!(time_lag(&no_table, Some(0), true), Some(Duration::ZERO));
    }
}
