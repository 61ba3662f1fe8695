//! What a crash of the primary would lose right now, from one round's
//! answers: WAL the freshest following replica has not replayed (or not
//! even received), replication slots and the WAL they hold back, and
//! whether synchronous replication guarantees anything. Pure.
//!
//! The byte figures pair the replicas' positions with the primary's LSN
//! sampled *after* them in the same round (see `lag`), so they can only
//! over-report: an operator's alert errs on the side of "at risk".

use std::time::Duration;

use serde::Deserialize;

/// Slots reported at most (the check query's `LIMIT`): bounds the answer
/// and the metric series.
pub const MAX_SLOTS: usize = 100;

/// One replication slot on the primary (`pg_replication_slots`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    /// `physical` or `logical`.
    pub slot_type: String,
    /// Whether a receiver is streaming from it now. An inactive slot keeps
    /// WAL on the primary's disk until it is used or dropped.
    pub active: bool,
    /// `pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)`: WAL the slot
    /// holds back. `None` when the slot reserves nothing (no restart LSN).
    pub retained_bytes: Option<u64>,
    /// `wal_status` (`reserved`, `extended`, `unreserved`, `lost`).
    pub wal_status: Option<String>,
}

/// The primary's synchronous replication settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncSettings {
    /// `synchronous_standby_names`.
    pub standby_names: String,
    /// `synchronous_commit`.
    pub commit: String,
    /// Standbys in `pg_stat_replication` with `sync_state` `sync` or
    /// `quorum` (needs `pg_monitor` to be visible); `None` if unreadable.
    pub sync_standbys: Option<u32>,
}

impl SyncSettings {
    /// Whether a commit acknowledged by the primary is known to be on a
    /// standby too: a synchronous standby is named and connected, and
    /// `synchronous_commit` waits for it.
    pub fn guarantees(&self) -> bool {
        !self.standby_names.trim().is_empty()
            && !matches!(self.commit.as_str(), "off" | "local" | "")
            && self.sync_standbys.is_some_and(|n| n > 0)
    }

    /// In words, for the admin console.
    pub fn describe(&self) -> String {
        if self.guarantees() {
            format!(
                "synchronous: synchronous_commit = {}, {} synchronous standby(s) connected \
                 (synchronous_standby_names = '{}')",
                self.commit,
                self.sync_standbys.unwrap_or(0),
                self.standby_names
            )
        } else if self.standby_names.trim().is_empty() {
            "asynchronous: synchronous_standby_names is empty; an acknowledged commit may \
             exist only on the primary"
                .into()
        } else if matches!(self.commit.as_str(), "off" | "local") {
            format!(
                "asynchronous: synchronous_commit = {} does not wait for standbys",
                self.commit
            )
        } else {
            format!(
                "no guarantee: synchronous_standby_names = '{}' but no synchronous standby is \
                 connected (or pg_stat_replication is not readable: grant pg_monitor)",
                self.standby_names
            )
        }
    }
}

/// What only the primary answers (out of recovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimarySide {
    /// `None` when the slot column could not be read.
    pub slots: Option<Vec<SlotInfo>>,
    pub sync: SyncSettings,
}

/// What a primary crash would lose now, as of the latest round.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataAtRisk {
    /// Replicas that answered and follow the write target this round.
    pub following_replicas: usize,
    /// WAL bytes the freshest following replica has not replayed. `None`
    /// when unknown (no primary sample, or no following replica).
    pub unreplayed_bytes: Option<u64>,
    /// WAL bytes no following replica has received yet.
    pub unreceived_bytes: Option<u64>,
    /// Time lag of the freshest following replica (heartbeat); `None`
    /// when unknown.
    pub unreplayed_time: Option<Duration>,
    /// The primary's slots (empty before the first answer).
    pub slots: Vec<SlotInfo>,
    /// The primary's synchronous replication settings, once known.
    pub sync: Option<SyncSettings>,
}

impl DataAtRisk {
    /// Slots with no receiver.
    pub fn inactive_slots(&self) -> impl Iterator<Item = &SlotInfo> {
        self.slots.iter().filter(|s| !s.active)
    }
}

/// One following replica's positions, paired with the round's primary LSN.
#[derive(Debug, Clone, Copy)]
pub struct Follower {
    /// Bytes behind in replay (`lag::byte_lag`), if known.
    pub replay_lag: Option<u64>,
    /// Bytes behind in receive, if known.
    pub receive_lag: Option<u64>,
    /// Time lag, if known.
    pub time_lag: Option<Duration>,
}

/// Sums up one round: the freshest follower bounds what is at risk.
pub fn data_at_risk(followers: &[Follower], primary: Option<&PrimarySide>) -> DataAtRisk {
    let min = |f: fn(&Follower) -> Option<u64>| followers.iter().filter_map(f).min();
    DataAtRisk {
        following_replicas: followers.len(),
        unreplayed_bytes: min(|f| f.replay_lag),
        unreceived_bytes: min(|f| f.receive_lag),
        unreplayed_time: followers.iter().filter_map(|f| f.time_lag).min(),
        slots: primary.and_then(|p| p.slots.clone()).unwrap_or_default(),
        sync: primary.map(|p| p.sync.clone()),
    }
}

/// The slot column (JSON `[[name, type, active, retained, wal_status]…]`).
/// `None` if it is not that shape: the slots are then unknown this round,
/// which must not fail the whole check.
pub fn parse_slots(json: &str) -> Option<Vec<SlotInfo>> {
    #[derive(Deserialize)]
    struct Row(
        String,
        Option<String>,
        Option<bool>,
        Option<i64>,
        Option<String>,
    );
    let rows: Vec<Row> = serde_json::from_str(json).ok()?;
    Some(
        rows.into_iter()
            .take(MAX_SLOTS)
            .map(|Row(name, ty, active, retained, wal_status)| SlotInfo {
                name,
                slot_type: ty.unwrap_or_default(),
                active: active.unwrap_or(false),
                // Negative: restart_lsn ahead of the sampled LSN (a race).
                retained_bytes: retained.map(|b| b.max(0) as u64),
                wal_status,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freshest_follower_bounds_the_risk() {
        let f = |replay, receive, t: Option<u64>| Follower {
            replay_lag: replay,
            receive_lag: receive,
            time_lag: t.map(Duration::from_millis),
        };
        let r = data_at_risk(
            &[
                f(Some(5000), Some(100), Some(900)),
                f(Some(300), Some(300), None),
            ],
            None,
        );
        assert_eq!(r.following_replicas, 2);
        assert_eq!(r.unreplayed_bytes, Some(300));
        assert_eq!(r.unreceived_bytes, Some(100));
        assert_eq!(r.unreplayed_time, Some(Duration::from_millis(900)));
        assert!(r.sync.is_none());
        let none = data_at_risk(&[], None);
        assert_eq!((none.following_replicas, none.unreplayed_bytes), (0, None));
    }

    #[test]
    fn slots_parse_and_bad_json_is_unknown() {
        let s = parse_slots(
            r#"[["a","physical",true,0,"reserved"],["b","logical",false,null,null],["c",null,null,-5,null]]"#,
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        assert!(s[0].active && !s[1].active && !s[2].active);
        assert_eq!(s[1].retained_bytes, None);
        assert_eq!(s[2].retained_bytes, Some(0));
        assert_eq!(parse_slots("[]").unwrap(), vec![]);
        for bad in ["", "{", "[1]", "[[1,2,3]]", "null"] {
            assert!(parse_slots(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn sync_guarantee_needs_names_a_waiting_commit_and_a_standby() {
        let s = |names: &str, commit: &str, n: Option<u32>| SyncSettings {
            standby_names: names.into(),
            commit: commit.into(),
            sync_standbys: n,
        };
        assert!(s("r1", "on", Some(1)).guarantees());
        assert!(s("ANY 1 (r1, r2)", "remote_apply", Some(2)).guarantees());
        assert!(!s("", "on", Some(1)).guarantees());
        assert!(!s("r1", "local", Some(1)).guarantees());
        assert!(!s("r1", "on", Some(0)).guarantees());
        assert!(!s("r1", "on", None).guarantees());
        assert!(s("", "on", None).describe().starts_with("asynchronous"));
        assert!(
            s("r1", "on", Some(0))
                .describe()
                .starts_with("no guarantee")
        );
    }
}
