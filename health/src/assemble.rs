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
        let from = last.map_or(NodeStatus::unchecked(now), |l| l.status);
        let result = results
            .get(i)
            .cloned()
            .unwrap_or(Err(ProbeError::Task("no result")));
        let mut estimated = false;
        let (check, lag_bytes, lag_time) = match &result {
            Err(e) if e.is_slow() => (
                Check::Missed {
                    reason: e.to_string(),
                    serving: matches!(e, ProbeError::Serving(_)),
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
        let gate_from = last.map_or(NodeStatus::unchecked(now), |l| NodeStatus {
            missed: l.status.missed,
            ..l.gate
        });
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
        health.gate = gate;
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
        status: to,
        in_recovery,
        timeline,
        replay_lsn,
        receive_lsn,
        lag_bytes,
        lag_time,
        last_check: Some(now),
        cause: match to.state {
            NodeState::Healthy => None,
            _ => v.cause().or(match v {
                Verdict::Missed { .. } if to.state == NodeState::Unreachable => {
                    Some(Cause::Timeout)
                }
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
            (Verdict::Missed { reason, .. }, NodeState::Unreachable) => Some(reason.clone()),
            (Verdict::Missed { .. }, _) => last.and_then(|l| l.unreachable_reason.clone()),
            _ => None,
        },
        // Set by the caller.
        gate: to,
    }
}

#[cfg(test)]
mod tests;
