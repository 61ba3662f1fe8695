//! Turns one round's check results into the next [`HealthSnapshot`]. Pure:
//! the previous snapshot, the results and `now` in; the snapshot and the
//! list of state changes (for logs) out.

use std::time::{Duration, Instant};

use lagrouter_config::{HealthConfig, NodeConfig, SafetyConfig};

use crate::error::ProbeError;
use crate::lag::{PrimaryHistory, PrimarySample, byte_lag, estimated_lag, time_lag};
use crate::observation::Observation;
use crate::primary::{PrimaryEvidence, detect_primary};
use crate::risk::{Follower, data_at_risk};
use crate::state::{Cause, Check, NodeStatus, Thresholds, Verdict, next_status, verdict};
use crate::{HealthSnapshot, NodeHealth, NodeState, PrimaryStatus};

/// A node whose state changed this round, with what caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// Index in the snapshot.
    pub node: usize,
    /// Before.
    pub from: NodeStatus,
    /// After.
    pub to: NodeStatus,
    /// The check that moved it.
    pub verdict: Verdict,
}

/// One round's outcome for the log and metrics.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub snapshot: HealthSnapshot,
    pub changes: Vec<StateChange>,
}

/// What the primary-detection rules see for a list of results.
pub fn evidence<'a>(
    prev: &HealthSnapshot,
    nodes: &'a [NodeConfig],
    results: &[Result<Observation, ProbeError>],
) -> Vec<PrimaryEvidence<'a>> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let last = prev.nodes.get(i).filter(|p| p.name == n.name);
            match results.get(i) {
                Some(Ok(o)) => PrimaryEvidence {
                    name: &n.name,
                    role: n.role,
                    answered: true,
                    in_recovery: Some(o.in_recovery),
                    timeline: o.timeline,
                },
                _ => PrimaryEvidence {
                    name: &n.name,
                    role: n.role,
                    answered: false,
                    in_recovery: last.and_then(|l| l.in_recovery),
                    timeline: last.and_then(|l| l.timeline),
                },
            }
        })
        .collect()
}

/// The next snapshot. `prev.nodes` must be aligned with `nodes` (same
/// order); nodes missing from `prev` start unchecked. `history` holds the
/// earlier rounds' primary samples; the caller records this round's.
pub fn assemble(
    prev: &HealthSnapshot,
    nodes: &[NodeConfig],
    results: &[Result<Observation, ProbeError>],
    h: &HealthConfig,
    safety: &SafetyConfig,
    history: &PrimaryHistory,
    now: Instant,
) -> Assembled {
    let thresholds = Thresholds::from_config(h);
    let gate_thresholds = Thresholds {
        max_lag_bytes: safety.max_lag_bytes(h),
        max_lag_time: safety.max_lag_time(h),
        recover_after_checks: h.recover_after_checks,
        timeouts_before_unreachable: h.timeouts_before_unreachable,
    };
    let heartbeat_on = !h.heartbeat_interval.is_zero();
    let decision = detect_primary(&evidence(prev, nodes, results), h.prefer_highest_timeline);
    let target = match decision.status {
        PrimaryStatus::One(i) => Some(i),
        _ => None,
    };
    let sample = target
        .and_then(|p| results.get(p)?.as_ref().ok())
        .filter(|o| !o.in_recovery)
        .and_then(PrimarySample::from_observation);

    let target_timeline = target
        .and_then(|p| results.get(p)?.as_ref().ok())
        .and_then(|o| o.timeline);
    // Evidence for replicas without a paired sample (see `lag`): what the
    // furthest replica received, and whether the primary may be writing.
    let received = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|o| o.in_recovery && !on_other_timeline(o, target_timeline))
        .filter_map(|o| o.receive_lsn)
        .max();
    let primary_refused = target
        .and_then(|p| results.get(p))
        .is_some_and(|r| matches!(r, Err(e) if e.cause() == Cause::Refused));

    let mut changes = Vec::new();
    let mut followers = Vec::new();
    let mut out = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let last = prev.nodes.get(i).filter(|p| p.name == n.name);
        let from = match last {
            Some(l) => NodeStatus {
                state: l.state,
                good_checks: l.good_checks,
                since: l.state_since.unwrap_or(now),
                missed: l.missed_checks,
            },
            None => NodeStatus::unchecked(now),
        };
        let result = results
            .get(i)
            .cloned()
            .unwrap_or(Err(ProbeError::Task("no result")));
        let mut estimated = false;
        let (check, lag_bytes, lag_time) = match &result {
            Err(e) if e.is_slow() => (
                Check::Missed {
                    reason: e.to_string(),
                },
                None,
                None,
            ),
            Err(e) => (
                Check::Unreachable {
                    reason: e.to_string(),
                    cause: e.cause(),
                },
                None,
                None,
            ),
            Ok(_) if Some(i) == target => {
                let zero = (Some(0), Some(Duration::ZERO));
                (answered(zero), zero.0, zero.1)
            }
            Ok(o) if !o.in_recovery => (Check::NotFollowing, None, None),
            // A replica on another timeline than the write target follows
            // some other primary (the old one after a promotion): its LSNs
            // are not comparable, and it will never see the target's writes.
            Ok(o) if on_other_timeline(o, target_timeline) => (Check::NotFollowing, None, None),
            Ok(o) => {
                let (b, t) = match byte_lag(o, sample.as_ref()) {
                    Some(b) => (Some(b), time_lag(o, Some(b), heartbeat_on, history)),
                    None => {
                        let e =
                            estimated_lag(o, sample.as_ref(), history, received, !primary_refused);
                        estimated = e.is_some();
                        let b = e.map(|e| e.bytes);
                        // Judged as of the newest sample: the heartbeat could
                        // not advance in the silence, which the bytes cover.
                        let silence = e.map_or(Duration::ZERO, |e| e.silence);
                        let t = time_lag(o, b, heartbeat_on, history);
                        (b, t.map(|t| t.saturating_sub(silence)))
                    }
                };
                followers.push(Follower {
                    replay_lag: b,
                    receive_lag: sample
                        .zip(o.receive_lsn)
                        .map(|(p, r)| p.lsn.0.saturating_sub(r.0)),
                    time_lag: t,
                });
                (answered((b, t)), b, t)
            }
        };
        let v = verdict(&check, &thresholds);
        let to = next_status(&from, &v, &thresholds, now);
        let gate_from = match last {
            Some(l) => NodeStatus {
                state: l.gate_state,
                good_checks: l.gate_good_checks,
                since: l.gate_since.unwrap_or(now),
                missed: l.missed_checks,
            },
            None => NodeStatus::unchecked(now),
        };
        let gate = next_status(
            &gate_from,
            &verdict(&check, &gate_thresholds),
            &gate_thresholds,
            now,
        );
        if to.state != from.state || last.is_none() {
            changes.push(StateChange {
                node: i,
                from,
                to,
                verdict: v.clone(),
            });
        }
        let mut health = node_health(n, last, &result, to, lag_bytes, lag_time, &v, now);
        health.lag_estimated = estimated;
        health.gate_state = gate.state;
        health.gate_good_checks = gate.good_checks;
        health.gate_since = Some(gate.since);
        out.push(health);
    }
    let primary_side = target
        .and_then(|p| results.get(p)?.as_ref().ok())
        .and_then(|o| o.primary_side.as_ref());
    let snapshot = HealthSnapshot {
        seq: prev.seq + 1,
        nodes: out,
        primary: decision.status,
        primary_lsn: sample.map(|s| s.lsn),
        primary_lsn_sampled_at: sample.map(|s| s.sent_at),
        primary_problem: decision.problem,
        risk: data_at_risk(&followers, primary_side),
    };
    Assembled { snapshot, changes }
}

/// Unknown on either side is not evidence of another timeline.
fn on_other_timeline(replica: &Observation, target: Option<u32>) -> bool {
    matches!((replica.timeline, target), (Some(r), Some(p)) if r != p)
}

fn answered((lag_bytes, lag_time): (Option<u64>, Option<Duration>)) -> Check {
    Check::Answered {
        lag_bytes,
        lag_time,
    }
}

#[allow(clippy::too_many_arguments)]
fn node_health(
    n: &NodeConfig,
    last: Option<&NodeHealth>,
    result: &Result<Observation, ProbeError>,
    to: NodeStatus,
    lag_bytes: Option<u64>,
    lag_time: Option<Duration>,
    v: &Verdict,
    now: Instant,
) -> NodeHealth {
    // An unreachable node keeps its last known LSNs: replay only moves
    // forward, so "has replayed at least X" stays true.
    let (in_recovery, timeline, replay_lsn, receive_lsn) = match result {
        Ok(o) => (
            Some(o.in_recovery),
            o.timeline,
            if o.in_recovery {
                o.replay_lsn
            } else {
                o.current_lsn
            },
            o.receive_lsn,
        ),
        Err(_) => (
            last.and_then(|l| l.in_recovery),
            last.and_then(|l| l.timeline),
            last.and_then(|l| l.replay_lsn),
            last.and_then(|l| l.receive_lsn),
        ),
    };
    NodeHealth {
        name: n.name.clone(),
        role: n.role,
        state: to.state,
        in_recovery,
        timeline,
        replay_lsn,
        receive_lsn,
        lag_bytes,
        lag_time,
        last_check: Some(now),
        good_checks: to.good_checks,
        state_since: Some(to.since),
        missed_checks: to.missed,
        cause: match to.state {
            NodeState::Healthy => None,
            _ => v.cause().or(match v {
                Verdict::Missed(_) if to.state == NodeState::Unreachable => Some(Cause::Timeout),
                _ => last.and_then(|l| l.cause),
            }),
        },
        lag_estimated: false,
        promoted_at: match (result, last) {
            (Ok(o), Some(l)) if !o.in_recovery && l.in_recovery == Some(true) => l.replay_lsn,
            (Ok(o), _) if o.in_recovery => None,
            _ => last.and_then(|l| l.promoted_at),
        },
        unreachable_reason: match (v, to.state) {
            (Verdict::Unreachable { reason, .. }, _) => Some(reason.clone()),
            (Verdict::Missed(r), NodeState::Unreachable) => Some(r.clone()),
            (Verdict::Missed(_), _) => last.and_then(|l| l.unreachable_reason.clone()),
            _ => None,
        },
        // Set by the caller.
        gate_state: to.state,
        gate_good_checks: 0,
        gate_since: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::HeartbeatSeen;
    use crate::{Lsn, NodeState};
    use lagrouter_config::Config;

    fn config(extra: &str) -> Config {
        Config::from_toml_str(&format!(
            "[[users]]\nname = \"app\"\npassword = \"app\"\n\
             [[nodes]]\nname = \"p\"\nhost = \"h\"\nrole = \"primary\"\n\
             [[nodes]]\nname = \"r1\"\nhost = \"h\"\nrole = \"replica\"\n\
             [[nodes]]\nname = \"r2\"\nhost = \"h\"\nrole = \"replica\"\n\
             [health]\nmax_lag_bytes = 1000\n{extra}"
        ))
        .unwrap()
    }

    fn obs(in_recovery: bool, lsn: u64, at: Instant, hb: HeartbeatSeen) -> Observation {
        Observation {
            in_recovery,
            current_lsn: (!in_recovery).then_some(Lsn(lsn)),
            timeline: (!in_recovery).then_some(1),
            replay_lsn: in_recovery.then_some(Lsn(lsn)),
            receive_lsn: in_recovery.then_some(Lsn(lsn)),
            last_replay_age: None,
            heartbeat: hb,
            primary_side: None,
            sent_at: at,
            answered_at: at,
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    const HB: HeartbeatSeen = HeartbeatSeen::Age(Duration::from_millis(300));

    #[test]
    fn replicas_are_measured_against_the_later_primary_sample() {
        let cfg = config("");
        let t0 = Instant::now();
        let prev = HealthSnapshot::initial(&cfg);
        let results = [
            Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
            Ok(obs(true, 4500, ms(t0, 1), HB)),
            Ok(obs(true, 3000, ms(t0, 1), HB)),
        ];
        let a = assemble(
            &prev,
            &cfg.nodes,
            &results,
            &cfg.health,
            &cfg.safety,
            &PrimaryHistory::default(),
            ms(t0, 3),
        );
        let s = &a.snapshot;
        assert_eq!(s.seq, 1);
        assert_eq!(s.primary, PrimaryStatus::One(0));
        assert_eq!(s.primary_problem, None);
        assert_eq!(s.primary_lsn, Some(Lsn(5000)));
        assert_eq!(s.primary_lsn_sampled_at, Some(ms(t0, 2)));
        let lags: Vec<_> = s.nodes.iter().map(|n| n.lag_bytes).collect();
        assert_eq!(lags, [Some(0), Some(500), Some(2000)]);
        let states: Vec<_> = s.nodes.iter().map(|n| n.state).collect();
        // First checks: a node never demoted is admitted by its first good one.
        let ok = NodeState::Healthy;
        assert_eq!(states, [ok, ok, NodeState::Lagging]);
        assert_eq!(s.nodes[1].lag_time, Some(Duration::from_millis(300)));
        assert_eq!(
            s.nodes[0].replay_lsn,
            Some(Lsn(5000)),
            "the primary's is its current LSN"
        );
        assert_eq!(s.nodes[1].last_check, Some(ms(t0, 3)));
        assert_eq!(a.changes.len(), 3, "first check of every node is a change");
    }

    #[test]
    fn the_write_gate_has_its_own_limit_and_the_same_hysteresis() {
        // Routing allows 1000 bytes, the gate only 400.
        let cfg = config("[safety]\nmin_replicas_to_write = 1\nmin_replicas_max_lag_bytes = 400\n");
        let t0 = Instant::now();
        let round = |prev: &HealthSnapshot, r1: u64, at: u64| {
            let results = [
                Ok(obs(false, 5000, ms(t0, at + 1), HeartbeatSeen::NotRead)),
                Ok(obs(true, r1, ms(t0, at), HB)),
                Ok(obs(true, 5000, ms(t0, at), HB)),
            ];
            assemble(
                prev,
                &cfg.nodes,
                &results,
                &cfg.health,
                &cfg.safety,
                &PrimaryHistory::default(),
                ms(t0, at + 2),
            )
            .snapshot
        };
        let s = round(&HealthSnapshot::initial(&cfg), 4500, 0);
        // r1 is 500 behind: fine for reads, out of the gate.
        assert_eq!(s.nodes[1].state, NodeState::Healthy);
        assert_eq!(s.nodes[1].gate_state, NodeState::Lagging);
        assert_eq!(s.nodes[2].gate_state, NodeState::Healthy);
        assert_eq!(s.gate_replicas(), 1, "the primary never counts");
        // Back within 400: recovering for two checks, counted on the third.
        let s = round(&s, 4900, 10);
        assert_eq!(
            s.nodes[1].gate_state,
            NodeState::Recovering { good_checks: 1 }
        );
        let s = round(&s, 4900, 20);
        assert_eq!(s.gate_replicas(), 1);
        let s = round(&s, 4900, 30);
        assert_eq!(s.nodes[1].gate_state, NodeState::Healthy);
        assert_eq!(s.gate_replicas(), 2);
        // Data at risk: the freshest replica has everything.
        assert_eq!(s.risk.following_replicas, 2);
        assert_eq!(s.risk.unreplayed_bytes, Some(0));
        assert_eq!(s.risk.unreceived_bytes, Some(0));
    }

    #[test]
    fn caught_up_replica_has_zero_time_lag_and_heartbeat_off_is_unknown() {
        let t0 = Instant::now();
        for (extra, want) in [
            ("", Some(Duration::ZERO)),
            ("heartbeat_interval = \"0s\"", None),
        ] {
            let cfg = config(extra);
            let results = [
                Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
                Ok(obs(true, 5000, ms(t0, 1), HB)),
                Ok(obs(true, 5000, ms(t0, 1), HeartbeatSeen::NotRead)),
            ];
            let a = assemble(
                &HealthSnapshot::initial(&cfg),
                &cfg.nodes,
                &results,
                &cfg.health,
                &cfg.safety,
                &PrimaryHistory::default(),
                t0,
            );
            assert_eq!(a.snapshot.nodes[1].lag_time, want, "{extra}");
            assert_eq!(a.snapshot.nodes[1].lag_bytes, Some(0));
        }
    }

    #[test]
    fn unordered_pairing_is_estimated_from_the_sample_and_the_write_rate() {
        let cfg = config("");
        let t0 = Instant::now();
        let results = [
            Ok(obs(false, 5000, ms(t0, 1), HeartbeatSeen::NotRead)),
            Ok(obs(true, 5000, ms(t0, 2), HB)), // answered after the primary was asked
            Ok(obs(true, 5000, ms(t0, 1), HB)),
        ];
        let run = |history: &PrimaryHistory| {
            assemble(
                &HealthSnapshot::initial(&cfg),
                &cfg.nodes,
                &results,
                &cfg.health,
                &cfg.safety,
                history,
                t0,
            )
        };
        // No earlier samples: no known write rate, the sample is the estimate.
        let a = run(&PrimaryHistory::default());
        let r1 = &a.snapshot.nodes[1];
        assert_eq!((r1.lag_bytes, r1.lag_estimated), (Some(0), true));
        assert_eq!(r1.state, NodeState::Healthy);
        assert!(!a.snapshot.nodes[2].lag_estimated, "r2 was paired");
        // 4 MB/s lately: 1ms of it may be missing (4000 > 1000 allowed).
        let a = run(&crate::lag::history_at(
            &[(0, 0), (250, 1_000_000)],
            ms(t0, 0) - Duration::from_secs(1),
        ));
        let r1 = &a.snapshot.nodes[1];
        assert_eq!(r1.lag_bytes, Some(4000));
        assert_eq!(r1.state, NodeState::Lagging);
        assert_eq!(r1.cause, Some(Cause::Lag));
    }

    /// Rounds in which the primary does not answer: replicas are judged
    /// on their own evidence and the estimated writes, not demoted for
    /// missing a sample.
    #[test]
    fn a_silent_primary_does_not_demote_fresh_replicas() {
        let cfg = config("");
        let t0 = Instant::now();
        let ok = [
            Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
            Ok(obs(true, 5000, ms(t0, 1), HB)),
            Ok(obs(true, 5000, ms(t0, 1), HB)),
        ];
        // 400 B/s of heartbeats lately.
        let h = crate::lag::history_at(&[(0, 4900), (250, 5000)], t0 - Duration::from_millis(250));
        let first = assemble(
            &HealthSnapshot::initial(&cfg),
            &cfg.nodes,
            &ok,
            &cfg.health,
            &cfg.safety,
            &h,
            t0,
        )
        .snapshot;
        let mut h = h;
        h.record(
            Some("p"),
            Some(PrimarySample {
                lsn: Lsn(5000),
                sent_at: ms(t0, 2),
            }),
        );
        let mut prev = first;
        for (round, primary) in [
            ProbeError::Timeout(Duration::from_secs(1)),
            ProbeError::Timeout(Duration::from_secs(1)),
            ProbeError::Connect("connection refused".into()),
        ]
        .into_iter()
        .enumerate()
        {
            let at = 1000 * (round as u64 + 1);
            let silent = [
                Err(primary),
                Ok(obs(true, 5000, ms(t0, at), HB)),
                Ok(obs(true, 5000, ms(t0, at), HB)),
            ];
            let s = assemble(
                &prev,
                &cfg.nodes,
                &silent,
                &cfg.health,
                &cfg.safety,
                &h,
                ms(t0, at),
            )
            .snapshot;
            for r in &s.nodes[1..] {
                assert_eq!(r.state, NodeState::Healthy, "round {round}: {r:?}");
                assert!(r.lag_estimated);
                assert!(
                    r.lag_bytes.unwrap() <= 400 * (round as u64 + 1) + 1,
                    "{r:?}"
                );
            }
            prev = s;
        }
        let p = &prev.nodes[0];
        assert_eq!(p.state, NodeState::Unreachable);
        assert_eq!(p.cause, Some(Cause::Refused));
        assert_eq!(prev.primary, PrimaryStatus::One(0), "writes still go there");
    }

    #[test]
    fn failed_check_is_unreachable_and_keeps_last_lsns() {
        let cfg = config("");
        let t0 = Instant::now();
        let ok = [
            Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
            Ok(obs(true, 4900, ms(t0, 1), HB)),
            Ok(obs(true, 4900, ms(t0, 1), HB)),
        ];
        let first = assemble(
            &HealthSnapshot::initial(&cfg),
            &cfg.nodes,
            &ok,
            &cfg.health,
            &cfg.safety,
            &PrimaryHistory::default(),
            t0,
        )
        .snapshot;
        let slow = [
            Ok(obs(false, 6000, ms(t0, 12), HeartbeatSeen::NotRead)),
            Ok(obs(true, 6000, ms(t0, 11), HB)),
            Err(ProbeError::Timeout(Duration::from_secs(1))),
        ];
        let round = |prev: &HealthSnapshot, results: &[Result<Observation, ProbeError>]| {
            assemble(
                prev,
                &cfg.nodes,
                results,
                &cfg.health,
                &cfg.safety,
                &PrimaryHistory::default(),
                ms(t0, 13),
            )
        };
        // One slow check is missing evidence: state kept.
        let a = round(&first, &slow);
        let r2 = &a.snapshot.nodes[2];
        assert_eq!((r2.state, r2.missed_checks), (NodeState::Healthy, 1));
        assert_eq!(r2.lag_bytes, None);
        assert!(a.changes.is_empty());
        // The second in a row (timeouts_before_unreachable = 2) is not.
        let a = round(&a.snapshot, &slow);
        let r2 = &a.snapshot.nodes[2];
        assert_eq!(r2.state, NodeState::Unreachable);
        assert_eq!(r2.cause, Some(Cause::Timeout));
        assert!(
            r2.unreachable_reason
                .as_deref()
                .unwrap()
                .contains("check_timeout")
        );
        assert_eq!(r2.replay_lsn, Some(Lsn(4900)));
        assert_eq!(r2.in_recovery, Some(true));
        assert_eq!(a.snapshot.nodes[1].state, NodeState::Healthy);
        assert_eq!(a.snapshot.seq, 3);
        // A refused connection, or a stall seen on the data path, at once.
        for e in [
            ProbeError::Connect("connection refused".into()),
            ProbeError::Stalled(Duration::from_millis(250)),
        ] {
            let cause = e.cause();
            let down = [slow[0].clone(), slow[1].clone(), Err(e)];
            let r2 = round(&first, &down).snapshot.nodes[2].clone();
            assert_eq!((r2.state, r2.cause), (NodeState::Unreachable, Some(cause)));
        }
    }

    #[test]
    fn unreachable_primary_keeps_writes_but_replicas_cannot_be_measured() {
        let cfg = config("");
        let t0 = Instant::now();
        let ok = [
            Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
            Ok(obs(true, 5000, ms(t0, 1), HB)),
            Ok(obs(true, 5000, ms(t0, 1), HB)),
        ];
        let first = assemble(
            &HealthSnapshot::initial(&cfg),
            &cfg.nodes,
            &ok,
            &cfg.health,
            &cfg.safety,
            &PrimaryHistory::default(),
            t0,
        )
        .snapshot;
        let p_down = [
            Err(ProbeError::Connect("refused".into())),
            Ok(obs(true, 5000, ms(t0, 11), HB)),
            Ok(obs(true, 5000, ms(t0, 11), HB)),
        ];
        let s = assemble(
            &first,
            &cfg.nodes,
            &p_down,
            &cfg.health,
            &cfg.safety,
            &PrimaryHistory::default(),
            t0,
        )
        .snapshot;
        assert_eq!(s.primary, PrimaryStatus::One(0));
        assert_eq!(s.primary_lsn, None);
        assert_eq!(s.nodes[0].state, NodeState::Unreachable);
        assert_eq!(s.nodes[1].state, NodeState::Lagging);
    }

    #[test]
    fn split_brain_refuses_writes_and_trusts_no_replica() {
        let cfg = config("");
        let t0 = Instant::now();
        let results = [
            Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
            Ok(obs(false, 4000, ms(t0, 2), HeartbeatSeen::NotRead)),
            Ok(obs(true, 5000, ms(t0, 1), HB)),
        ];
        let s = assemble(
            &HealthSnapshot::initial(&cfg),
            &cfg.nodes,
            &results,
            &cfg.health,
            &cfg.safety,
            &PrimaryHistory::default(),
            t0,
        )
        .snapshot;
        assert_eq!(s.primary, PrimaryStatus::SplitBrain(vec![0, 1]));
        assert_eq!(s.primary_index(), None);
        assert!(s.primary_problem.unwrap().contains("split brain"));
        assert_eq!(s.primary_lsn, None);
        assert!(s.nodes.iter().all(|n| n.state == NodeState::Lagging));
        assert_eq!(s.nodes[1].replay_lsn, Some(Lsn(4000)));
    }

    #[test]
    fn replica_on_another_timeline_is_not_following() {
        let cfg = config("");
        let t0 = Instant::now();
        let on = |mut o: Observation, tl| {
            o.timeline = Some(tl);
            o
        };
        let results = [
            Ok(on(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead), 2)),
            Ok(on(obs(true, 5000, ms(t0, 1), HB), 2)),
            Ok(on(obs(true, 6000, ms(t0, 1), HB), 1)), // ahead in bytes, but diverged
        ];
        let a = assemble(
            &HealthSnapshot::initial(&cfg),
            &cfg.nodes,
            &results,
            &cfg.health,
            &cfg.safety,
            &PrimaryHistory::default(),
            t0,
        );
        assert_eq!(a.snapshot.nodes[1].state, NodeState::Healthy);
        assert_eq!(a.snapshot.nodes[2].state, NodeState::Lagging);
        assert_eq!(a.snapshot.nodes[2].lag_bytes, None);
        assert_eq!(a.snapshot.nodes[2].timeline, Some(1));
        assert_eq!(
            a.changes[2].verdict,
            Verdict::OverThreshold(crate::LagExcess::NotFollowing)
        );
    }

    #[test]
    fn max_lag_time_demotes_on_old_heartbeat() {
        let cfg = config("max_lag_time = \"200ms\"");
        let t0 = Instant::now();
        let results = [
            Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
            Ok(obs(true, 4990, ms(t0, 1), HB)),
            Ok(obs(true, 5000, ms(t0, 1), HB)),
        ];
        let s = assemble(
            &HealthSnapshot::initial(&cfg),
            &cfg.nodes,
            &results,
            &cfg.health,
            &cfg.safety,
            &PrimaryHistory::default(),
            t0,
        )
        .snapshot;
        assert_eq!(
            s.nodes[1].state,
            NodeState::Lagging,
            "10 bytes behind, heartbeat 300ms old"
        );
        assert_eq!(s.nodes[2].state, NodeState::Healthy, "caught up");
    }

    #[test]
    fn a_promotion_remembers_where_the_node_left_recovery() {
        let cfg = config("");
        let t0 = Instant::now();
        let round = |prev: &HealthSnapshot, r1_primary: bool, at: u64| {
            let results = [
                Err(ProbeError::Connect("refused".into())),
                Ok(obs(!r1_primary, 4000 + at, ms(t0, at), HB)),
                Ok(obs(true, 4000, ms(t0, at), HB)),
            ];
            assemble(
                prev,
                &cfg.nodes,
                &results,
                &cfg.health,
                &cfg.safety,
                &PrimaryHistory::default(),
                ms(t0, at),
            )
            .snapshot
        };
        let s = round(&HealthSnapshot::initial(&cfg), false, 0);
        assert_eq!(s.nodes[1].promoted_at, None);
        let s = round(&s, true, 10);
        assert_eq!(
            s.nodes[1].promoted_at,
            Some(Lsn(4000)),
            "its last replay LSN"
        );
        let s = round(&s, true, 20);
        assert_eq!(s.nodes[1].promoted_at, Some(Lsn(4000)), "kept");
    }
}
