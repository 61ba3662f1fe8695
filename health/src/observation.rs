//! The one check query every node answers, and its parsed answer.
//!
//! Every node gets the same query whatever its role, so a node that was
//! promoted or demoted since the last round still answers everything we need
//! to notice. One small query per node per round keeps the monitor's load
//! on the primary at one statement per `check_interval` (plus heartbeats).
//! Columns come back as text (simple query protocol) and are parsed here;
//! anything unexpected is a [`BadAnswer`], never a panic.

use std::time::{Duration, Instant};

use crate::Lsn;
use crate::risk::{PrimarySide, SyncSettings};

/// How the check query treats the heartbeat table on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatQuery {
    /// Heartbeat off: no heartbeat column.
    Off,
    /// Not yet known to exist on this node: ask `to_regclass` instead of
    /// reading it, so a missing table is not a failed check.
    ProbeTable(String),
    /// Known to exist: read the age of the newest heartbeat row (one per instance).
    Read(String),
}

/// The check query's text. `table` names were validated by the config as
/// `[schema.]name` of letters, digits and `_`, so inlining them is safe.
pub fn check_sql(hb: &HeartbeatQuery) -> String {
    let hb_col = match hb {
        HeartbeatQuery::Off => "NULL".to_string(),
        HeartbeatQuery::ProbeTable(t) => format!("(to_regclass('{t}') IS NOT NULL)::text"),
        HeartbeatQuery::Read(t) => {
            format!("(SELECT extract(epoch FROM clock_timestamp() - max(ts))::text FROM {t})")
        }
    };
    // A replica's timeline: the WAL receiver's when this user may see it
    // (pg_read_all_stats / pg_monitor), else the last restartpoint's,
    // which can trail a timeline switch by up to checkpoint_timeout.
    // `r` evaluates pg_is_in_recovery() once, so the CASEs agree; the
    // primary-only functions error during recovery and are guarded by it.
    // A node can only leave recovery (promotion) mid-query, never re-enter
    // it, so a guard that says "not in recovery" stays true.
    format!(
        "WITH r AS (SELECT pg_is_in_recovery() AS rec) SELECT \
         r.rec::text, \
         CASE WHEN NOT r.rec THEN pg_current_wal_lsn()::text END, \
         CASE WHEN NOT r.rec THEN pg_walfile_name(pg_current_wal_lsn()) END, \
         pg_last_wal_replay_lsn()::text, \
         pg_last_wal_receive_lsn()::text, \
         extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::text, \
         CASE WHEN r.rec THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
         (SELECT timeline_id FROM pg_control_checkpoint()))::text END, \
         {hb_col}, \
         CASE WHEN NOT r.rec THEN {SLOTS_SQL} END, \
         CASE WHEN NOT r.rec THEN current_setting('synchronous_standby_names') END, \
         CASE WHEN NOT r.rec THEN current_setting('synchronous_commit') END, \
         CASE WHEN NOT r.rec THEN (SELECT count(*) FROM pg_stat_replication \
         WHERE sync_state IN ('sync', 'quorum'))::text END \
         FROM r"
    )
}

/// The primary's replication slots as a JSON array of
/// `[name, type, active, retained_bytes, wal_status]`, at most
/// [`crate::risk::MAX_SLOTS`] (bounded answer, bounded metric series).
const SLOTS_SQL: &str = "(SELECT coalesce(json_agg(json_build_array(slot_name, slot_type, active, \
     pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status) \
     ORDER BY slot_name), '[]')::text \
     FROM (SELECT * FROM pg_replication_slots ORDER BY slot_name LIMIT 100) s)";

/// Number of columns [`check_sql`] returns.
pub const CHECK_COLUMNS: usize = 12;

/// What the heartbeat column said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatSeen {
    /// The heartbeat is off, or the query only probed for the table.
    NotRead,
    /// The table exists (answer to a probe); its row was not read yet.
    TableExists,
    /// The table does not exist on this node (yet).
    TableMissing,
    /// The table exists but has no heartbeat row yet.
    RowMissing,
    /// Age of the heartbeat row on this node's clock (negative clamped to 0).
    Age(Duration),
}

/// One node's answer to the check query, with when it was asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()`, for a node out of recovery.
    pub current_lsn: Option<Lsn>,
    /// Timeline of the WAL being written (out of recovery), or being
    /// received or last restarted from (in recovery).
    pub timeline: Option<u32>,
    /// `pg_last_wal_replay_lsn()` (NULL on a node that never was a standby).
    pub replay_lsn: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<Lsn>,
    /// Age of `pg_last_xact_replay_timestamp()`: context for log lines.
    pub last_replay_age: Option<Duration>,
    /// The heartbeat column.
    pub heartbeat: HeartbeatSeen,
    /// Out of recovery only: the node's replication slots and synchronous
    /// replication settings (what a crash of this node as primary would lose).
    pub primary_side: Option<PrimarySide>,
    /// The query was sent at or after this instant.
    pub sent_at: Instant,
    /// The answer had fully arrived by this instant.
    pub answered_at: Instant,
}

/// The server answered something we cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected answer to the health check: {0}")]
pub struct BadAnswer(pub String);

/// Parses the text columns of the check query's single row.
pub fn parse_answer(
    cols: &[Option<&str>],
    hb: &HeartbeatQuery,
    sent_at: Instant,
    answered_at: Instant,
) -> Result<Observation, BadAnswer> {
    if cols.len() != CHECK_COLUMNS {
        return Err(BadAnswer(format!(
            "{} columns, expected {CHECK_COLUMNS}",
            cols.len()
        )));
    }
    let in_recovery = match cols[0] {
        Some("t" | "true") => true,
        Some("f" | "false") => false,
        other => return Err(BadAnswer(format!("pg_is_in_recovery() = {other:?}"))),
    };
    let lsn = |i: usize, what: &str| -> Result<Option<Lsn>, BadAnswer> {
        cols[i]
            .map(|s| {
                s.parse::<Lsn>()
                    .map_err(|e| BadAnswer(format!("{what}: {e}")))
            })
            .transpose()
    };
    let current_lsn = lsn(1, "pg_current_wal_lsn()")?;
    if !in_recovery && current_lsn.is_none() {
        return Err(BadAnswer(
            "pg_current_wal_lsn() is NULL on a node out of recovery".into(),
        ));
    }
    let heartbeat = match hb {
        HeartbeatQuery::Off => HeartbeatSeen::NotRead,
        HeartbeatQuery::ProbeTable(_) => match cols[7] {
            Some("t" | "true") => HeartbeatSeen::TableExists,
            _ => HeartbeatSeen::TableMissing,
        },
        HeartbeatQuery::Read(_) => match cols[7].and_then(parse_age) {
            Some(age) => HeartbeatSeen::Age(age),
            None => HeartbeatSeen::RowMissing,
        },
    };
    Ok(Observation {
        in_recovery,
        current_lsn,
        // A malformed WAL file name only loses the timeline, which is
        // advisory (split-brain tie-break), so it is not worth failing for.
        timeline: if in_recovery {
            cols[6].and_then(|t| t.parse().ok())
        } else {
            cols[2].and_then(timeline_of_walfile)
        },
        replay_lsn: lsn(3, "pg_last_wal_replay_lsn()")?,
        receive_lsn: lsn(4, "pg_last_wal_receive_lsn()")?,
        last_replay_age: cols[5].and_then(parse_age),
        heartbeat,
        primary_side: (!in_recovery).then(|| PrimarySide {
            slots: cols[8].and_then(crate::risk::parse_slots),
            sync: SyncSettings {
                standby_names: cols[9].unwrap_or("").to_string(),
                commit: cols[10].unwrap_or("").to_string(),
                sync_standbys: cols[11].and_then(|n| n.parse().ok()),
            },
        }),
        sent_at,
        answered_at,
    })
}

/// The timeline is the first 8 hex digits of a WAL file name.
fn timeline_of_walfile(name: &str) -> Option<u32> {
    let tli = name.get(..8)?;
    u32::from_str_radix(tli, 16).ok()
}

/// Seconds as PostgreSQL prints them (`0.012345`), clamped at zero: a
/// negative age is clock skew between primary and replica, not the future.
fn parse_age(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().parse().ok()?;
    if !secs.is_finite() {
        return None;
    }
    Duration::try_from_secs_f64(secs.max(0.0)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check columns without the replica-timeline one (column 6).
    fn parse(cols: [Option<&str>; 7], hb: &HeartbeatQuery) -> Result<Observation, BadAnswer> {
        let t = Instant::now();
        let mut all = cols[..6].to_vec();
        all.extend([None, cols[6]]);
        parse_answer(&pad(&all), hb, t, t)
    }

    /// The first eight columns, the primary-side ones NULL.
    fn pad<'a>(cols: &[Option<&'a str>]) -> Vec<Option<&'a str>> {
        let mut v = cols.to_vec();
        v.resize(CHECK_COLUMNS, None);
        v
    }

    #[test]
    fn replica_timeline_comes_from_its_own_column() {
        let t = Instant::now();
        let cols = [
            Some("t"),
            None,
            None,
            Some("0/1"),
            Some("0/1"),
            None,
            Some("3"),
            None,
        ];
        let o = parse_answer(&pad(&cols), &HeartbeatQuery::Off, t, t).unwrap();
        assert_eq!(o.timeline, Some(3));
        let cols = [
            Some("t"),
            None,
            None,
            Some("0/1"),
            Some("0/1"),
            None,
            Some("x"),
            None,
        ];
        assert_eq!(
            parse_answer(&pad(&cols), &HeartbeatQuery::Off, t, t)
                .unwrap()
                .timeline,
            None
        );
    }

    #[test]
    fn primary_answer() {
        let o = parse(
            [
                Some("f"),
                Some("0/3000060"),
                Some("000000020000000000000003"),
                None,
                None,
                None,
                None,
            ],
            &HeartbeatQuery::Off,
        )
        .unwrap();
        assert!(!o.in_recovery);
        assert_eq!(o.current_lsn, Some(Lsn(0x300_0060)));
        assert_eq!(o.timeline, Some(2));
        assert_eq!(o.replay_lsn, None);
        assert_eq!(o.heartbeat, HeartbeatSeen::NotRead);
    }

    #[test]
    fn replica_answer_with_heartbeat() {
        let hb = HeartbeatQuery::Read("lagrouter_heartbeat".into());
        let o = parse(
            [
                Some("t"),
                None,
                None,
                Some("0/3000060"),
                Some("0/3000100"),
                Some("0.25"),
                Some("0.125"),
            ],
            &hb,
        )
        .unwrap();
        assert!(o.in_recovery);
        assert_eq!(o.replay_lsn, Some(Lsn(0x300_0060)));
        assert_eq!(o.receive_lsn, Some(Lsn(0x300_0100)));
        assert_eq!(o.last_replay_age, Some(Duration::from_millis(250)));
        assert_eq!(o.heartbeat, HeartbeatSeen::Age(Duration::from_millis(125)));
    }

    #[test]
    fn heartbeat_probe_and_missing_row() {
        let cols = |hb| [Some("t"), None, None, Some("0/1"), Some("0/1"), None, hb];
        let probe = HeartbeatQuery::ProbeTable("hb".into());
        assert_eq!(
            parse(cols(Some("t")), &probe).unwrap().heartbeat,
            HeartbeatSeen::TableExists
        );
        assert_eq!(
            parse(cols(Some("f")), &probe).unwrap().heartbeat,
            HeartbeatSeen::TableMissing
        );
        let read = HeartbeatQuery::Read("hb".into());
        assert_eq!(
            parse(cols(None), &read).unwrap().heartbeat,
            HeartbeatSeen::RowMissing
        );
    }

    #[test]
    fn clock_skew_is_clamped() {
        let read = HeartbeatQuery::Read("hb".into());
        let o = parse(
            [
                Some("t"),
                None,
                None,
                None,
                None,
                Some("-0.5"),
                Some("-1.5"),
            ],
            &read,
        )
        .unwrap();
        assert_eq!(o.heartbeat, HeartbeatSeen::Age(Duration::ZERO));
        assert_eq!(o.last_replay_age, Some(Duration::ZERO));
    }

    #[test]
    fn bad_answers_are_errors_not_panics() {
        let off = HeartbeatQuery::Off;
        assert!(parse([None, None, None, None, None, None, None], &off).is_err());
        assert!(parse([Some("x"), None, None, None, None, None, None], &off).is_err());
        // A primary must report its LSN.
        assert!(parse([Some("f"), None, None, None, None, None, None], &off).is_err());
        assert!(parse([Some("f"), Some("zz"), None, None, None, None, None], &off).is_err());
        assert!(parse([Some("t"), None, None, Some("1"), None, None, None], &off).is_err());
        let t = Instant::now();
        assert!(parse_answer(&[Some("t")], &off, t, t).is_err());
    }

    #[test]
    fn odd_but_harmless_values_become_unknown() {
        let read = HeartbeatQuery::Read("hb".into());
        let o = parse(
            [
                Some("f"),
                Some("0/10"),
                Some("xyz"),
                None,
                None,
                Some("NaN"),
                Some("Infinity"),
            ],
            &read,
        )
        .unwrap();
        assert_eq!(o.timeline, None);
        assert_eq!(o.last_replay_age, None);
        assert_eq!(o.heartbeat, HeartbeatSeen::RowMissing);
    }

    #[test]
    fn primary_side_columns_are_parsed_leniently() {
        let t = Instant::now();
        let mut cols = pad(&[Some("f"), Some("0/10"), None, None, None, None, None, None]);
        cols[8] = Some(r#"[["s1","physical",false,4096,"reserved"]]"#);
        cols[9] = Some("r1");
        cols[10] = Some("on");
        cols[11] = Some("1");
        let o = parse_answer(&cols, &HeartbeatQuery::Off, t, t).unwrap();
        let side = o.primary_side.unwrap();
        let slots = side.slots.unwrap();
        assert_eq!(slots.len(), 1);
        assert_eq!((slots[0].name.as_str(), slots[0].active), ("s1", false));
        assert_eq!(slots[0].retained_bytes, Some(4096));
        assert_eq!(side.sync.sync_standbys, Some(1));
        assert!(side.sync.guarantees());
        // Garbage in the slot column loses the slots, not the check.
        cols[8] = Some("{not json");
        let o = parse_answer(&cols, &HeartbeatQuery::Off, t, t).unwrap();
        assert!(o.primary_side.unwrap().slots.is_none());
        // A replica reports no primary side.
        let r = pad(&[
            Some("t"),
            None,
            None,
            Some("0/1"),
            Some("0/1"),
            None,
            None,
            None,
        ]);
        assert!(
            parse_answer(&r, &HeartbeatQuery::Off, t, t)
                .unwrap()
                .primary_side
                .is_none()
        );
    }

    #[test]
    fn sql_mentions_every_function_the_issue_lists() {
        let sql = check_sql(&HeartbeatQuery::Read("s.hb".into()));
        for f in [
            "pg_current_wal_lsn()",
            "pg_is_in_recovery()",
            "pg_last_wal_replay_lsn()",
            "pg_last_wal_receive_lsn()",
            "pg_last_xact_replay_timestamp()",
            "max(ts))::text FROM s.hb)",
            "pg_replication_slots",
            "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)",
            "synchronous_standby_names",
            "synchronous_commit",
        ] {
            assert!(sql.contains(f), "{f} missing from {sql}");
        }
        assert!(check_sql(&HeartbeatQuery::ProbeTable("hb".into())).contains("to_regclass('hb')"));
    }
}
