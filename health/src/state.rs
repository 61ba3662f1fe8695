//! The hysteresis state machine: one check's outcome moves a node between
//! `Healthy`, `Lagging`, `Recovering{good_checks}` and `Unreachable`.
//!
//! Demote fast, promote slow: a single bad check demotes at once; a demoted
//! node serves reads again only after `recover_after_checks` consecutive good
//! checks. Missing evidence is not bad evidence: a check that is merely slow
//! ([`Check::Missed`]) keeps the node where it is, and only
//! `timeouts_before_unreachable` misses in a row make it `Unreachable`
//! (a refused or broken connection does so at once). While the node keeps
//! answering the proxy's own clients, only [`SERVING_MISSES_FACTOR`] times
//! as many do: it serves, and its check is what is slow. Pure: no IO, no clock
//! (time is passed in), so every transition is unit-tested below.

use std::fmt;
use std::time::{Duration, Instant};

use lagrouter_config::HealthConfig;

use crate::NodeState;

/// The limits a check is judged against (from `[health]`, read each round).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// A node further behind than this many bytes is lagging.
    pub max_lag_bytes: u64,
    /// When set, a node whose time lag is over this (or unknown) is lagging.
    pub max_lag_time: Option<Duration>,
    /// Consecutive good checks before a demoted node is `Healthy` again.
    pub recover_after_checks: u32,
    /// Consecutive missed (slow) checks before a node is `Unreachable`.
    pub timeouts_before_unreachable: u32,
}

impl Thresholds {
    /// The thresholds a `[health]` section sets.
    pub fn from_config(h: &HealthConfig) -> Thresholds {
        Thresholds {
            max_lag_bytes: h.max_lag_bytes,
            max_lag_time: h.max_lag_time,
            recover_after_checks: h.recover_after_checks,
            timeouts_before_unreachable: h.timeouts_before_unreachable,
        }
    }
}

/// Why a node does not serve reads: the label of
/// `lagrouter_node_demotions_total`, the `cause` column of `SHOW NODES`
/// and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Measured (or estimated) over a lag threshold.
    Lag,
    /// Lag could not be measured nor estimated.
    Unknown,
    /// Does not follow the write target.
    NotFollowing,
    /// The connection was refused or broke.
    Refused,
    /// No answer in time, `timeouts_before_unreachable` checks in a row.
    Timeout,
    /// No answer in time while lagrouter's own traffic to the node was
    /// stuck too: the node has stopped. Its in-flight transactions are
    /// abandoned with 08006.
    Stalled,
    /// The node answered with an error or something unusable.
    Error,
}

impl Cause {
    /// Every cause, for metrics.
    pub const ALL: [Cause; 7] = [
        Cause::Lag,
        Cause::Unknown,
        Cause::NotFollowing,
        Cause::Refused,
        Cause::Timeout,
        Cause::Stalled,
        Cause::Error,
    ];

    /// Short lowercase name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Cause::Lag => "lag",
            Cause::Unknown => "unknown",
            Cause::NotFollowing => "not_following",
            Cause::Refused => "refused",
            Cause::Timeout => "timeout",
            Cause::Stalled => "stalled",
            Cause::Error => "error",
        }
    }
}

/// What one check of a node found, reduced to what the state machine needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The node answered. `None` lags are unknown (e.g. no primary LSN this
    /// round), and unknown is never good: we cannot prove the node fresh.
    Answered {
        lag_bytes: Option<u64>,
        lag_time: Option<Duration>,
    },
    /// The node answered but does not follow the write target: out of
    /// recovery without being the target (split brain, a promoted `role =
    /// "replica"`), or replaying another timeline. It has no lag to
    /// measure and is never fresh.
    NotFollowing,
    /// The connection was refused or broke, the node answered an error,
    /// or it did not answer while its client traffic was stuck too.
    Unreachable { reason: String, cause: Cause },
    /// The node did not answer in time, and nothing else says it is down:
    /// missing evidence, which keeps the node's state (see [`next_status`]).
    /// `serving`: the proxy's own traffic brought bytes from the node
    /// meanwhile.
    Missed { reason: String, serving: bool },
}

/// How many times `timeouts_before_unreachable` missed checks in a row make
/// a node `Unreachable` when it kept answering the proxy's clients through
/// every one of them (a check blocked by a lock, a disk that stalls for a
/// second): 8 with the defaults, about 10 s of checks. Demoting such a
/// node would send its reads to the primary, where the breaker refuses
/// most of them, for a node that answers them; holding it longer bounds
/// how long its lag goes unmeasured. Read-your-writes is unaffected: the
/// node's replay position stays the last one it reported.
pub const SERVING_MISSES_FACTOR: u32 = 4;

/// How a check compares to the thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Under every threshold.
    Good,
    /// Answered, but over a threshold or not provably under it.
    OverThreshold(LagExcess),
    /// Did not answer, and is taken as down.
    Unreachable { reason: String, cause: Cause },
    /// Did not answer in time; not (yet) taken as down. `serving` as in
    /// [`Check::Missed`].
    Missed { reason: String, serving: bool },
}

impl Verdict {
    /// The cause a bad verdict demotes for; `None` for good and missed.
    pub fn cause(&self) -> Option<Cause> {
        match self {
            Verdict::Good | Verdict::Missed { .. } => None,
            Verdict::Unreachable { cause, .. } => Some(*cause),
            Verdict::OverThreshold(LagExcess::Bytes { .. } | LagExcess::Time { .. }) => {
                Some(Cause::Lag)
            }
            Verdict::OverThreshold(LagExcess::NotFollowing) => Some(Cause::NotFollowing),
            Verdict::OverThreshold(LagExcess::BytesUnknown | LagExcess::TimeUnknown { .. }) => {
                Some(Cause::Unknown)
            }
        }
    }
}

/// Which threshold a lagging check broke, with the numbers, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LagExcess {
    /// `lag_bytes > max_lag_bytes`.
    Bytes { lag: u64, max: u64 },
    /// Byte lag could not be measured this round.
    BytesUnknown,
    /// `lag_time > max_lag_time`.
    Time { lag: Duration, max: Duration },
    /// `max_lag_time` is set but the time lag is unknown.
    TimeUnknown { max: Duration },
    /// Does not follow the write target.
    NotFollowing,
}

impl fmt::Display for LagExcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LagExcess::Bytes { lag, max } => write!(f, "lag {lag} bytes > max_lag_bytes {max}"),
            LagExcess::BytesUnknown => write!(f, "byte lag unknown (no primary LSN this round)"),
            LagExcess::Time { lag, max } => write!(f, "lag {lag:?} > max_lag_time {max:?}"),
            LagExcess::TimeUnknown { max } => {
                write!(
                    f,
                    "time lag unknown (heartbeat not seen) and max_lag_time {max:?} is set"
                )
            }
            LagExcess::NotFollowing => {
                write!(
                    f,
                    "does not follow the write target (out of recovery, or on another timeline)"
                )
            }
        }
    }
}

/// Judges one check against the thresholds. Equal to a threshold is good:
/// the config says "further behind than".
pub fn verdict(check: &Check, t: &Thresholds) -> Verdict {
    match check {
        Check::Unreachable { reason, cause } => Verdict::Unreachable {
            reason: reason.clone(),
            cause: *cause,
        },
        Check::Missed { reason, serving } => Verdict::Missed {
            reason: reason.clone(),
            serving: *serving,
        },
        Check::NotFollowing => Verdict::OverThreshold(LagExcess::NotFollowing),
        Check::Answered {
            lag_bytes,
            lag_time,
        } => {
            match lag_bytes {
                None => return Verdict::OverThreshold(LagExcess::BytesUnknown),
                Some(b) if *b > t.max_lag_bytes => {
                    return Verdict::OverThreshold(LagExcess::Bytes {
                        lag: *b,
                        max: t.max_lag_bytes,
                    });
                }
                Some(_) => {}
            }
            match (t.max_lag_time, lag_time) {
                (None, _) => Verdict::Good,
                (Some(max), None) => Verdict::OverThreshold(LagExcess::TimeUnknown { max }),
                (Some(max), Some(lag)) if *lag > max => {
                    Verdict::OverThreshold(LagExcess::Time { lag: *lag, max })
                }
                (Some(_), Some(_)) => Verdict::Good,
            }
        }
    }
}

/// A node's position in the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStatus {
    /// Current state.
    pub state: NodeState,
    /// Consecutive good checks since the last bad one (keeps counting,
    /// saturating, while `Healthy`).
    pub good_checks: u32,
    /// When `state` was entered.
    pub since: Instant,
    /// Consecutive missed checks (reset by any answer).
    pub missed: u32,
}

impl NodeStatus {
    /// A node nobody has checked yet: it serves reads once its first check
    /// is good (see [`next_status`]); until then it does not.
    pub fn unchecked(now: Instant) -> NodeStatus {
        NodeStatus {
            state: NodeState::Recovering { good_checks: 0 },
            good_checks: 0,
            since: now,
            missed: 0,
        }
    }
}

/// The next status after a check with verdict `v`, at `now`.
pub fn next_status(prev: &NodeStatus, v: &Verdict, t: &Thresholds, now: Instant) -> NodeStatus {
    // recover_after_checks = 0 is rejected by config validation; treat it as
    // 1 anyway so a good check always counts for something.
    let needed = t.recover_after_checks.max(1);
    let mut missed = 0;
    let (state, good_checks) = match v {
        Verdict::Unreachable { .. } => (NodeState::Unreachable, 0),
        Verdict::Missed { serving, .. } => {
            missed = prev.missed.saturating_add(1);
            let limit = t.timeouts_before_unreachable.max(1);
            let limit = match serving {
                true => limit.saturating_mul(SERVING_MISSES_FACTOR),
                false => limit,
            };
            if missed >= limit {
                (NodeState::Unreachable, 0)
            } else {
                // Hold: neither a good check nor a bad one.
                (prev.state, prev.good_checks)
            }
        }
        Verdict::OverThreshold(_) => (NodeState::Lagging, 0),
        Verdict::Good => {
            let good = prev.good_checks.saturating_add(1);
            match prev.state {
                NodeState::Healthy => (NodeState::Healthy, good),
                // Never checked (a bad check always leaves Lagging or
                // Unreachable behind): nothing to recover from, so the
                // first good check admits it. Hysteresis is for re-admission
                // after a demotion; without this, every read at start-up
                // would fall back to the primary and trip the breaker.
                NodeState::Recovering { good_checks: 0 } if prev.good_checks == 0 => {
                    (NodeState::Healthy, good)
                }
                NodeState::Lagging | NodeState::Unreachable | NodeState::Recovering { .. } => {
                    if good >= needed {
                        (NodeState::Healthy, good)
                    } else {
                        (NodeState::Recovering { good_checks: good }, good)
                    }
                }
            }
        }
    };
    // Recovering{1} → Recovering{2} is a new state for the log and the
    // observer, but the node has been recovering since the first good check.
    let same_phase = std::mem::discriminant(&state) == std::mem::discriminant(&prev.state);
    NodeStatus {
        state,
        good_checks,
        since: if same_phase { prev.since } else { now },
        missed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        max_lag_bytes: 1000,
        max_lag_time: None,
        recover_after_checks: 3,
        timeouts_before_unreachable: 2,
    };

    fn good() -> Check {
        Check::Answered {
            lag_bytes: Some(10),
            lag_time: Some(Duration::ZERO),
        }
    }
    fn lagging() -> Check {
        Check::Answered {
            lag_bytes: Some(1001),
            lag_time: Some(Duration::ZERO),
        }
    }
    fn down() -> Check {
        Check::Unreachable {
            reason: "refused".into(),
            cause: Cause::Refused,
        }
    }
    fn serving() -> Check {
        Check::Missed {
            reason: "no answer while the node kept answering lagrouter's clients".into(),
            serving: true,
        }
    }
    fn slow() -> Check {
        Check::Missed {
            reason: "no answer within check_timeout".into(),
            serving: false,
        }
    }

    fn status(state: NodeState, good_checks: u32, since: Instant) -> NodeStatus {
        NodeStatus {
            state,
            good_checks,
            since,
            missed: 0,
        }
    }

    fn step(prev: NodeStatus, c: Check, now: Instant) -> NodeStatus {
        next_status(&prev, &verdict(&c, &T), &T, now)
    }

    #[test]
    fn healthy_stays_healthy_on_good_checks() {
        let t0 = Instant::now();
        let s = step(
            status(NodeState::Healthy, 7, t0),
            good(),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(s, status(NodeState::Healthy, 8, t0));
    }

    #[test]
    fn healthy_demotes_on_first_check_over_bytes() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let s = step(status(NodeState::Healthy, 50, t0), lagging(), t1);
        assert_eq!(s, status(NodeState::Lagging, 0, t1));
    }

    #[test]
    fn healthy_demotes_on_time_lag_when_max_lag_time_is_set() {
        let t = Thresholds {
            max_lag_time: Some(Duration::from_millis(500)),
            ..T
        };
        let c = Check::Answered {
            lag_bytes: Some(0),
            lag_time: Some(Duration::from_millis(501)),
        };
        let v = verdict(&c, &t);
        assert!(matches!(v, Verdict::OverThreshold(LagExcess::Time { .. })));
        let t0 = Instant::now();
        let s = next_status(&status(NodeState::Healthy, 3, t0), &v, &t, t0);
        assert_eq!(s.state, NodeState::Lagging);
    }

    #[test]
    fn time_lag_is_ignored_when_max_lag_time_is_unset() {
        let c = Check::Answered {
            lag_bytes: Some(0),
            lag_time: Some(Duration::from_secs(3600)),
        };
        assert_eq!(verdict(&c, &T), Verdict::Good);
        let c = Check::Answered {
            lag_bytes: Some(0),
            lag_time: None,
        };
        assert_eq!(verdict(&c, &T), Verdict::Good);
    }

    #[test]
    fn unknown_lag_is_never_good() {
        let c = Check::Answered {
            lag_bytes: None,
            lag_time: Some(Duration::ZERO),
        };
        assert_eq!(
            verdict(&c, &T),
            Verdict::OverThreshold(LagExcess::BytesUnknown)
        );
        let t = Thresholds {
            max_lag_time: Some(Duration::from_secs(1)),
            ..T
        };
        let c = Check::Answered {
            lag_bytes: Some(0),
            lag_time: None,
        };
        assert!(matches!(
            verdict(&c, &t),
            Verdict::OverThreshold(LagExcess::TimeUnknown { .. })
        ));
    }

    #[test]
    fn exactly_at_threshold_is_good() {
        let c = Check::Answered {
            lag_bytes: Some(1000),
            lag_time: Some(Duration::from_millis(500)),
        };
        let t = Thresholds {
            max_lag_time: Some(Duration::from_millis(500)),
            ..T
        };
        assert_eq!(verdict(&c, &t), Verdict::Good);
    }

    #[test]
    fn a_second_primary_is_lagging() {
        let t0 = Instant::now();
        let s = step(status(NodeState::Healthy, 4, t0), Check::NotFollowing, t0);
        assert_eq!(s.state, NodeState::Lagging);
    }

    #[test]
    fn healthy_becomes_unreachable_not_lagging() {
        let t0 = Instant::now();
        let s = step(status(NodeState::Healthy, 9, t0), down(), t0);
        assert_eq!(s.state, NodeState::Unreachable);
        assert_eq!(s.good_checks, 0);
    }

    #[test]
    fn lagging_recovers_after_exactly_recover_after_checks() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let mut s = status(NodeState::Lagging, 0, t0);
        let mut seen = Vec::new();
        for i in 1..=4 {
            s = step(s, good(), t(i * 100));
            seen.push(s.state);
        }
        assert_eq!(
            seen,
            [
                NodeState::Recovering { good_checks: 1 },
                NodeState::Recovering { good_checks: 2 },
                NodeState::Healthy,
                NodeState::Healthy,
            ]
        );
        assert_eq!(s.since, t(300), "healthy since the third good check");
    }

    #[test]
    fn recovering_keeps_its_start_time() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(100);
        let s = step(status(NodeState::Lagging, 0, t0), good(), t1);
        let s = step(s, good(), t1 + Duration::from_millis(100));
        assert_eq!(s.state, NodeState::Recovering { good_checks: 2 });
        assert_eq!(s.since, t1);
    }

    #[test]
    fn unreachable_recovers_through_recovering() {
        let t0 = Instant::now();
        let s = step(status(NodeState::Unreachable, 0, t0), good(), t0);
        assert_eq!(s.state, NodeState::Recovering { good_checks: 1 });
    }

    #[test]
    fn unreachable_that_answers_lagging_is_lagging() {
        let t0 = Instant::now();
        let s = step(status(NodeState::Unreachable, 0, t0), lagging(), t0);
        assert_eq!(s.state, NodeState::Lagging);
    }

    #[test]
    fn lagging_that_stops_answering_is_unreachable() {
        let t0 = Instant::now();
        let s = step(status(NodeState::Lagging, 0, t0), down(), t0);
        assert_eq!(s.state, NodeState::Unreachable);
    }

    #[test]
    fn any_bad_check_resets_recovery() {
        let t0 = Instant::now();
        let r = status(NodeState::Recovering { good_checks: 2 }, 2, t0);
        let s = step(r, lagging(), t0);
        assert_eq!(s, status(NodeState::Lagging, 0, t0));
        let s = step(r, down(), t0);
        assert_eq!(s, status(NodeState::Unreachable, 0, t0));
        // And counting starts again from one.
        let s = step(s, good(), t0);
        assert_eq!(s.state, NodeState::Recovering { good_checks: 1 });
    }

    #[test]
    fn lagging_stays_lagging_on_bad_checks() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let s = step(status(NodeState::Lagging, 0, t0), lagging(), t1);
        assert_eq!(s, status(NodeState::Lagging, 0, t0));
        let s = step(status(NodeState::Unreachable, 0, t0), down(), t1);
        assert_eq!(s, status(NodeState::Unreachable, 0, t0));
    }

    #[test]
    fn unchecked_node_is_admitted_by_its_first_good_check() {
        let t0 = Instant::now();
        let s = step(NodeStatus::unchecked(t0), good(), t0);
        assert_eq!((s.state, s.good_checks), (NodeState::Healthy, 1));
        // ...but once demoted, it needs the full recovery.
        let mut s = step(s, lagging(), t0);
        assert_eq!(s.state, NodeState::Lagging);
        for n in 1..3 {
            s = step(s, good(), t0);
            assert_eq!(s.state, NodeState::Recovering { good_checks: n });
        }
        assert_eq!(step(s, good(), t0).state, NodeState::Healthy);
        // A node unreachable at its first check recovers slowly too.
        let s = step(NodeStatus::unchecked(t0), down(), t0);
        assert_eq!(s.state, NodeState::Unreachable);
        assert_eq!(
            step(s, good(), t0).state,
            NodeState::Recovering { good_checks: 1 }
        );
    }

    #[test]
    fn recover_after_one_check_promotes_at_once() {
        let t = Thresholds {
            recover_after_checks: 1,
            ..T
        };
        let t0 = Instant::now();
        let s = next_status(&status(NodeState::Lagging, 0, t0), &Verdict::Good, &t, t0);
        assert_eq!(s.state, NodeState::Healthy);
        let t = Thresholds {
            recover_after_checks: 0,
            ..T
        };
        let s = next_status(
            &status(NodeState::Unreachable, 0, t0),
            &Verdict::Good,
            &t,
            t0,
        );
        assert_eq!(s.state, NodeState::Healthy);
    }

    #[test]
    fn lowering_recover_after_checks_mid_recovery_promotes() {
        // Config reloads apply on the next check.
        let t = Thresholds {
            recover_after_checks: 2,
            ..T
        };
        let t0 = Instant::now();
        let r = status(NodeState::Recovering { good_checks: 2 }, 2, t0);
        let s = next_status(&r, &Verdict::Good, &t, t0);
        assert_eq!(s.state, NodeState::Healthy);
    }

    #[test]
    fn good_checks_saturate() {
        let t0 = Instant::now();
        let s = step(status(NodeState::Healthy, u32::MAX, t0), good(), t0);
        assert_eq!(s.good_checks, u32::MAX);
    }

    #[test]
    fn a_missed_check_holds_the_state_until_the_limit() {
        let t0 = Instant::now();
        let s = step(status(NodeState::Healthy, 9, t0), slow(), t0);
        assert_eq!(
            (s.state, s.good_checks, s.missed),
            (NodeState::Healthy, 9, 1)
        );
        assert_eq!(s.since, t0);
        let s = step(s, slow(), t0);
        assert_eq!((s.state, s.missed), (NodeState::Unreachable, 2));
        // An answer resets the count.
        let s = step(status(NodeState::Healthy, 9, t0), slow(), t0);
        let s = step(s, good(), t0);
        assert_eq!((s.state, s.missed), (NodeState::Healthy, 0));
        assert_eq!(step(s, slow(), t0).state, NodeState::Healthy);
    }

    /// A node that keeps answering the proxy's clients while its checks
    /// go unanswered holds its state for `SERVING_MISSES_FACTOR` times the
    /// limit; a miss without that evidence counts as before, and the
    /// misses in a row count together.
    #[test]
    fn a_node_that_serves_holds_longer_through_missed_checks() {
        let t0 = Instant::now();
        let limit = T.timeouts_before_unreachable * SERVING_MISSES_FACTOR;
        let mut s = status(NodeState::Healthy, 9, t0);
        for i in 1..limit {
            s = step(s, serving(), t0);
            assert_eq!((s.state, s.missed), (NodeState::Healthy, i), "miss {i}");
        }
        s = step(s, serving(), t0);
        assert_eq!((s.state, s.missed), (NodeState::Unreachable, limit));

        // Two serving misses, then one with no traffic: over the plain limit.
        let s = step(status(NodeState::Healthy, 9, t0), serving(), t0);
        let s = step(s, serving(), t0);
        assert_eq!(s.state, NodeState::Healthy);
        assert_eq!(step(s, slow(), t0).state, NodeState::Unreachable);
    }

    #[test]
    fn a_missed_check_neither_counts_for_nor_resets_recovery() {
        let t0 = Instant::now();
        let r = status(NodeState::Recovering { good_checks: 2 }, 2, t0);
        let s = step(r, slow(), t0);
        assert_eq!(s.state, NodeState::Recovering { good_checks: 2 });
        assert_eq!(step(s, good(), t0).state, NodeState::Healthy);
        let s = step(status(NodeState::Lagging, 0, t0), slow(), t0);
        assert_eq!(s.state, NodeState::Lagging);
    }

    #[test]
    fn causes_name_what_demoted() {
        let t = Thresholds {
            max_lag_time: Some(Duration::from_millis(1)),
            ..T
        };
        assert_eq!(verdict(&lagging(), &T).cause(), Some(Cause::Lag));
        assert_eq!(verdict(&down(), &T).cause(), Some(Cause::Refused));
        assert_eq!(verdict(&slow(), &T).cause(), None);
        assert_eq!(verdict(&good(), &T).cause(), None);
        let unknown = Check::Answered {
            lag_bytes: Some(0),
            lag_time: None,
        };
        assert_eq!(verdict(&unknown, &t).cause(), Some(Cause::Unknown));
        assert_eq!(
            verdict(&Check::NotFollowing, &T).cause(),
            Some(Cause::NotFollowing)
        );
        let names: Vec<_> = Cause::ALL.iter().map(Cause::as_str).collect();
        assert_eq!(
            names,
            [
                "lag",
                "unknown",
                "not_following",
                "refused",
                "timeout",
                "stalled",
                "error"
            ]
        );
    }

    #[test]
    fn excess_messages_carry_the_numbers() {
        let m = LagExcess::Bytes {
            lag: 2_000_000,
            max: 1_048_576,
        }
        .to_string();
        assert!(m.contains("2000000") && m.contains("1048576"), "{m}");
    }
}
