//! Metrics and log lines for each round. The binary installs the
//! Prometheus recorder; without one these calls cost next to nothing.
//!
//! Metrics, all labelled `node`:
//! - `lagrouter_node_lag_bytes` (gauge): byte lag behind the write target;
//!   NaN while unknown (unreachable, no primary sample).
//! - `lagrouter_node_lag_seconds` (gauge): time lag; NaN while unknown
//!   (heartbeat off or not yet seen), never a made-up zero.
//! - `lagrouter_node_state` (gauge, extra label `state` = `healthy`,
//!   `lagging`, `recovering`, `unreachable`): 1 for the node's current
//!   state, 0 for the other three, so `lagrouter_node_state{state="lagging"}
//!   == 1` is an alert expression and `sum by (state)` counts nodes.
//! - `lagrouter_node_good_checks` (gauge): consecutive good checks.
//! - `lagrouter_node_write_target` (gauge): 1 on the node taking writes.
//! - `lagrouter_health_check_duration_seconds` (histogram): one check,
//!   connect included, as the round waited for it.
//! - `lagrouter_health_check_failures_total` (counter, extra label `reason`
//!   = `timeout`, `connect`, `query`, `bad_answer`, `internal`): checks
//!   that failed, missed (slow) ones included. Lagging is not a failure.
//! - `lagrouter_health_checks_missed_total` (counter): checks without an
//!   answer in time that did not (yet) make the node `Unreachable`.
//! - `lagrouter_node_demotions_total` (counter, extra label `cause` =
//!   `lag`, `unknown`, `not_following`, `refused`, `timeout`, `stalled`,
//!   `error`):
//!   changes into `Lagging` or `Unreachable`, by what caused them.
//! - `lagrouter_node_cause` (gauge, extra label `cause`): 1 for the cause
//!   the node is out of service for now, 0 for the others (all 0 while
//!   `Healthy`).
//! - `lagrouter_node_lag_estimated` (gauge): 1 while the byte lag is an
//!   estimate (the round had no primary sample after the node answered).
//! - `lagrouter_health_split_brain` (gauge, no label): 1 while more than
//!   one node claims to be primary.
//! - `lagrouter_heartbeat_failures_total` (counter, from the writer).
//! - `lagrouter_node_gate_state` (gauge, label `node`): 1 while the node
//!   counts toward `[safety] min_replicas_to_write`.
//!
//! Data at risk (no `node` label; see `risk`):
//! - `lagrouter_data_at_risk_bytes` (gauge, label `stage` = `unreplayed`,
//!   `unreceived`): WAL the freshest following replica has not replayed /
//!   received; NaN while unknown (no following replica, no primary LSN).
//! - `lagrouter_data_at_risk_seconds` (gauge): time lag of the freshest
//!   following replica (heartbeat); NaN while unknown.
//! - `lagrouter_following_replicas` (gauge): replicas that answered and
//!   follow the write target.
//! - `lagrouter_replication_slot_retained_bytes` (gauge, labels `slot`,
//!   `active`): WAL each slot on the primary holds back; NaN once the slot
//!   is gone (or its `active` changed).
//! - `lagrouter_replication_slots_inactive` (gauge): slots with no receiver.
//! - `lagrouter_synchronous_replication` (gauge): 1 when a commit waits for
//!   a connected synchronous standby, else 0.
//! - `lagrouter_wait_replicas_waiting` (gauge, from `replay`): clients
//!   waiting on a replica's replay now (`lagrouter.wait_replicas` and
//!   read-your-writes catch-up).

use crate::assemble::{Assembled, StateChange};
use crate::risk::DataAtRisk;
use crate::round::Outcome;
use crate::state::{Cause, Verdict};
use crate::{HealthSnapshot, NodeHealth, NodeState, PrimaryStatus};

const STATES: [&str; 4] = ["healthy", "lagging", "recovering", "unreachable"];

/// Records one round's metrics and logs its changes.
pub fn record_round(prev: &HealthSnapshot, a: &Assembled, outcomes: &[Outcome]) {
    let snap = &a.snapshot;
    for (i, n) in snap.nodes.iter().enumerate() {
        let node = n.name.clone();
        let nan = f64::NAN;
        metrics::gauge!("lagrouter_node_lag_bytes", "node" => node.clone())
            .set(n.lag_bytes.map_or(nan, |b| b as f64));
        metrics::gauge!("lagrouter_node_lag_seconds", "node" => node.clone())
            .set(n.lag_time.map_or(nan, |t| t.as_secs_f64()));
        for s in STATES {
            let v = if n.state().as_str() == s { 1.0 } else { 0.0 };
            metrics::gauge!("lagrouter_node_state", "node" => node.clone(), "state" => s).set(v);
        }
        metrics::gauge!("lagrouter_node_good_checks", "node" => node.clone())
            .set(n.status.good_checks as f64);
        let counts = n.gate.state == NodeState::Healthy && n.in_recovery == Some(true);
        metrics::gauge!("lagrouter_node_gate_state", "node" => node.clone()).set(if counts {
            1.0
        } else {
            0.0
        });
        let target = snap.primary_index() == Some(i);
        metrics::gauge!("lagrouter_node_write_target", "node" => node.clone()).set(if target {
            1.0
        } else {
            0.0
        });
        for c in Cause::ALL {
            let v = if n.cause == Some(c) { 1.0 } else { 0.0 };
            metrics::gauge!("lagrouter_node_cause", "node" => node.clone(), "cause" => c.as_str())
                .set(v);
        }
        metrics::gauge!("lagrouter_node_lag_estimated", "node" => node.clone())
            .set(if n.lag_estimated { 1.0 } else { 0.0 });
        if let Some(o) = outcomes.get(i) {
            metrics::histogram!("lagrouter_health_check_duration_seconds", "node" => node.clone())
                .record(o.took.as_secs_f64());
            if let Err(e) = &o.result {
                if e.is_slow() && n.state() != NodeState::Unreachable {
                    metrics::counter!("lagrouter_health_checks_missed_total", "node" => node.clone())
                        .increment(1);
                    tracing::debug!(node = %n.name, missed = n.status.missed, error = %e,
                        "health check missed; state kept");
                }
                metrics::counter!("lagrouter_health_check_failures_total", "node" => node, "reason" => e.kind())
                    .increment(1);
            }
        }
    }
    let split = matches!(snap.primary, PrimaryStatus::SplitBrain(_));
    metrics::gauge!("lagrouter_health_split_brain").set(if split { 1.0 } else { 0.0 });
    record_risk(&prev.risk, &snap.risk);

    for c in &a.changes {
        let n = &snap.nodes[c.node];
        if matches!(c.to.state, NodeState::Lagging | NodeState::Unreachable)
            && let Some(cause) = n.cause
        {
            metrics::counter!("lagrouter_node_demotions_total",
                "node" => n.name.clone(), "cause" => cause.as_str())
            .increment(1);
        }
        log_change(n, c);
    }
    if prev.primary != snap.primary || (prev.seq == 0 && snap.seq == 1) {
        log_primary(snap);
    }
}

/// Data-at-risk gauges (names in the crate docs of `risk`). A slot that
/// disappeared, or changed its `active` label, gets NaN in its old series:
/// the exporter cannot delete a series, and NaN never crosses a threshold.
fn record_risk(prev: &DataAtRisk, r: &DataAtRisk) {
    let nan = f64::NAN;
    metrics::gauge!("lagrouter_data_at_risk_bytes", "stage" => "unreplayed")
        .set(r.unreplayed_bytes.map_or(nan, |b| b as f64));
    metrics::gauge!("lagrouter_data_at_risk_bytes", "stage" => "unreceived")
        .set(r.unreceived_bytes.map_or(nan, |b| b as f64));
    metrics::gauge!("lagrouter_data_at_risk_seconds")
        .set(r.unreplayed_time.map_or(nan, |t| t.as_secs_f64()));
    metrics::gauge!("lagrouter_following_replicas").set(r.following_replicas as f64);
    let active = |a: bool| if a { "true" } else { "false" };
    for s in &r.slots {
        metrics::gauge!("lagrouter_replication_slot_retained_bytes",
            "slot" => s.name.clone(), "active" => active(s.active))
        .set(s.retained_bytes.map_or(0.0, |b| b as f64));
    }
    for s in &prev.slots {
        if !r
            .slots
            .iter()
            .any(|n| n.name == s.name && n.active == s.active)
        {
            metrics::gauge!("lagrouter_replication_slot_retained_bytes",
                "slot" => s.name.clone(), "active" => active(s.active))
            .set(nan);
        }
    }
    metrics::gauge!("lagrouter_replication_slots_inactive").set(r.inactive_slots().count() as f64);
    if let Some(sync) = &r.sync {
        metrics::gauge!("lagrouter_synchronous_replication").set(if sync.guarantees() {
            1.0
        } else {
            0.0
        });
    }
}

fn log_change(n: &NodeHealth, c: &StateChange) {
    let from = c.from.state.as_str();
    let to = c.to.state.as_str();
    // How long the node was in the state it leaves (or, within Recovering,
    // how long it has been recovering).
    let was_for = c.to.since.saturating_duration_since(c.from.since);
    let lag_bytes = n
        .lag_bytes
        .map(|b| b.to_string())
        .unwrap_or_else(|| "unknown".into());
    let lag_time = n
        .lag_time
        .map(|t| format!("{t:?}"))
        .unwrap_or_else(|| "unknown".into());
    let replay = n
        .replay_lsn
        .map(|l| l.to_string())
        .unwrap_or_else(|| "unknown".into());
    let cause = n.cause.map_or("none", |c| c.as_str());
    match (&c.verdict, c.to.state) {
        (Verdict::Unreachable { reason, .. }, _) => tracing::warn!(
            node = %n.name, from, to, cause, %reason, previous_state_for = ?was_for,
            "node unreachable: health check failed"
        ),
        (Verdict::Missed { reason, .. }, _) => tracing::warn!(
            node = %n.name, from, to, cause, %reason, missed = n.status.missed,
            previous_state_for = ?was_for,
            "node unreachable: too many checks in a row without an answer"
        ),
        (Verdict::OverThreshold(why), _) => tracing::warn!(
            node = %n.name, from, to, cause, lag_bytes, lag_time, estimated = n.lag_estimated,
            replay_lsn = %replay, previous_state_for = ?was_for,
            "node lagging: {why}"
        ),
        (Verdict::Good, NodeState::Recovering { good_checks }) => tracing::info!(
            node = %n.name, from, to, good_checks, lag_bytes, lag_time,
            "node back under thresholds, recovering"
        ),
        (Verdict::Good, _) => tracing::info!(
            node = %n.name, from, to, good_checks = n.status.good_checks, lag_bytes, lag_time,
            "node healthy: serves reads"
        ),
    }
}

fn log_primary(snap: &HealthSnapshot) {
    match &snap.primary {
        PrimaryStatus::One(i) => {
            let n = &snap.nodes[*i];
            match &snap.primary_problem {
                Some(note) => {
                    tracing::warn!(node = %n.name, timeline = ?n.timeline, "write target: {note}")
                }
                None => tracing::info!(node = %n.name, timeline = ?n.timeline, "write target"),
            }
        }
        PrimaryStatus::SplitBrain(_) | PrimaryStatus::None => tracing::error!(
            "writes refused: {}",
            snap.primary_problem.as_deref().unwrap_or("no write target")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use lagrouter_config::Config;
    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use crate::assemble::assemble;
    use crate::error::ProbeError;
    use crate::lag::PrimaryHistory;
    use crate::observation::{HeartbeatSeen, Observation};
    use crate::{HealthSnapshot, Lsn};

    /// Remembers which series were touched, as `name{k=v,...}`.
    #[derive(Default)]
    struct Names(Mutex<Vec<String>>);

    impl Names {
        fn note(&self, kind: &str, key: &Key) {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            self.0
                .lock()
                .unwrap()
                .push(format!("{kind} {}{{{}}}", key.name(), labels.join(",")));
        }
        fn has(&self, s: &str) -> bool {
            self.0.lock().unwrap().iter().any(|x| x == s)
        }
    }

    impl Recorder for Names {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            self.note("counter", key);
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            self.note("gauge", key);
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            self.note("histogram", key);
            Histogram::noop()
        }
    }

    #[test]
    fn every_documented_series_is_labelled_by_node() {
        let cfg = Config::from_toml_str(
            "[[users]]\nname = \"app\"\n\
             [[nodes]]\nname = \"p\"\nhost = \"h\"\nrole = \"primary\"\n\
             [[nodes]]\nname = \"r\"\nhost = \"h\"\nrole = \"replica\"\n",
        )
        .unwrap();
        let t = Instant::now();
        let primary = Observation {
            in_recovery: false,
            current_lsn: Some(Lsn(10)),
            timeline: Some(1),
            replay_lsn: None,
            receive_lsn: None,
            last_replay_age: None,
            heartbeat: HeartbeatSeen::NotRead,
            primary_side: None,
            sent_at: t,
            answered_at: t,
        };
        let results = vec![
            Ok(primary),
            Err(ProbeError::Timeout(Duration::from_secs(1))),
        ];
        let prev = HealthSnapshot::initial(&cfg);
        let a = assemble(
            &prev,
            &cfg.nodes,
            &results,
            &cfg.health,
            &cfg.safety,
            &PrimaryHistory::default(),
            t,
        );
        let outcomes: Vec<Outcome> = results
            .into_iter()
            .map(|result| Outcome {
                result,
                took: Duration::from_millis(3),
            })
            .collect();
        let names = Names::default();
        metrics::with_local_recorder(&names, || record_round(&prev, &a, &outcomes));
        for s in [
            "gauge lagrouter_node_lag_bytes{node=r}",
            "gauge lagrouter_node_lag_seconds{node=r}",
            "gauge lagrouter_node_state{node=r,state=unreachable}",
            "gauge lagrouter_node_state{node=p,state=healthy}",
            "gauge lagrouter_node_write_target{node=p}",
            "histogram lagrouter_health_check_duration_seconds{node=r}",
            "counter lagrouter_health_check_failures_total{node=r,reason=timeout}",
            "gauge lagrouter_health_split_brain{}",
        ] {
            assert!(
                names.has(s),
                "{s} missing from {:?}",
                names.0.lock().unwrap()
            );
        }
        assert!(!names.has("counter lagrouter_health_check_failures_total{node=p,reason=timeout}"));
    }
}
