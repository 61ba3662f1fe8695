//! What happened during the demo, with times: the scenario's own steps
//! (replay paused, resumed), node state changes seen in the health
//! snapshots (demoted, re-admitted) and breaker changes. The live view shows
//! the latest entries; the verdict is computed from the whole record.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lagrouter_health::{HealthMonitor, HealthSnapshot, NodeState};
use lagrouter_proxy::Shared;
use tokio_util::sync::CancellationToken;

/// One line of the record.
#[derive(Debug, Clone)]
pub struct Event {
    /// Since the workload started.
    pub at: Duration,
    pub text: String,
}

/// A node leaving or re-entering the set of replicas that serve reads.
#[derive(Debug, Clone)]
pub struct Transition {
    pub node: String,
    pub at: Duration,
    /// `demoted`: the new state (`lagging`, `unreachable`); `re-admitted`:
    /// the good checks it took.
    pub detail: String,
}

/// Worst values seen for one node.
#[derive(Debug, Clone, Default)]
pub struct NodeRecord {
    pub name: String,
    pub max_lag_bytes: u64,
    pub max_lag_time: Duration,
    /// Time spent not serving reads after the workload started.
    pub demoted_for: Duration,
}

#[derive(Default)]
struct Inner {
    events: Vec<Event>,
    demotions: Vec<Transition>,
    readmissions: Vec<Transition>,
    nodes: Vec<NodeRecord>,
    breaker_opened: u32,
}

/// The shared record; cheap to clone.
#[derive(Clone)]
pub struct Timeline {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

impl Timeline {
    /// An empty record whose clock starts at `start`.
    pub fn new(start: Instant) -> Timeline {
        Timeline {
            start,
            inner: Arc::default(),
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Adds a line stamped now.
    pub fn note(&self, text: impl Into<String>) {
        let at = self.elapsed();
        self.lock().events.push(Event {
            at,
            text: text.into(),
        });
    }

    /// Every event.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    pub fn demotions(&self) -> Vec<Transition> {
        self.lock().demotions.clone()
    }

    pub fn readmissions(&self) -> Vec<Transition> {
        self.lock().readmissions.clone()
    }

    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.lock().nodes.clone()
    }

    pub fn breaker_opened(&self) -> u32 {
        self.lock().breaker_opened
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows every published snapshot until `stop`, recording state
    /// changes, worst lag and breaker changes. Following the watch rather
    /// than sampling on the view's tick is what catches a short demotion.
    pub async fn follow(self, health: HealthMonitor, shared: Arc<Shared>, stop: CancellationToken) {
        let mut rx = health.subscribe();
        let mut last: Option<Arc<HealthSnapshot>> = None;
        let mut last_tick = Instant::now();
        let mut breaker_state = "closed";
        loop {
            let snap = health.snapshot();
            let now = Instant::now();
            self.observe(last.as_deref(), &snap, now - last_tick);
            last_tick = now;
            last = Some(snap);
            let status = shared.router.breaker_status(now);
            let state = status.state.as_str();
            if state != breaker_state {
                if state == "open" {
                    self.lock().breaker_opened += 1;
                }
                self.note(format!(
                    "breaker {state} (primary-read share {:.0}%)",
                    status.share * 100.0
                ));
                breaker_state = state;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
    }

    fn observe(&self, prev: Option<&HealthSnapshot>, snap: &HealthSnapshot, since_last: Duration) {
        let at = self.elapsed();
        let mut g = self.lock();
        if g.nodes.len() != snap.nodes.len() {
            g.nodes = snap
                .nodes
                .iter()
                .map(|n| NodeRecord {
                    name: n.name.clone(),
                    ..NodeRecord::default()
                })
                .collect();
        }
        for (i, n) in snap.nodes.iter().enumerate() {
            let rec = &mut g.nodes[i];
            rec.max_lag_bytes = rec.max_lag_bytes.max(n.lag_bytes.unwrap_or(0));
            rec.max_lag_time = rec.max_lag_time.max(n.lag_time.unwrap_or_default());
            if !matches!(n.state(), NodeState::Healthy) {
                rec.demoted_for += since_last;
            }
            let Some(before) = prev.and_then(|p| p.nodes.get(i)).map(|p| p.state()) else {
                continue;
            };
            let was_serving = matches!(before, NodeState::Healthy);
            let was_demoted = matches!(before, NodeState::Lagging | NodeState::Unreachable);
            match n.state() {
                NodeState::Lagging | NodeState::Unreachable if !was_demoted => {
                    let why = match (n.state(), n.lag_bytes, n.lag_time) {
                        (NodeState::Unreachable, ..) => "unreachable".to_owned(),
                        (_, Some(b), Some(t)) => {
                            format!("lagging ({} behind, {} ms)", bytes(b), t.as_millis())
                        }
                        (_, Some(b), None) => format!("lagging ({} behind)", bytes(b)),
                        _ => "lagging".to_owned(),
                    };
                    let verb = if was_serving { "demoted" } else { "now" };
                    g.events.push(Event {
                        at,
                        text: format!("{} {verb}: {why}", n.name),
                    });
                    g.demotions.push(Transition {
                        node: n.name.clone(),
                        at,
                        detail: n.state().as_str().to_owned(),
                    });
                }
                NodeState::Recovering { good_checks } if was_demoted => g.events.push(Event {
                    at,
                    text: format!(
                        "{} caught up, recovering ({good_checks} good check)",
                        n.name
                    ),
                }),
                NodeState::Healthy if !was_serving => {
                    let readmitted = g.demotions.iter().any(|d| d.node == n.name);
                    let text = if readmitted {
                        g.readmissions.push(Transition {
                            node: n.name.clone(),
                            at,
                            detail: n.status.good_checks.to_string(),
                        });
                        format!(
                            "{} re-admitted after {} good checks",
                            n.name, n.status.good_checks
                        )
                    } else {
                        format!("{} serving reads", n.name)
                    };
                    g.events.push(Event { at, text });
                }
                _ => {}
            }
        }
    }
}

/// `1.2 MB`, `340 kB`, `512 B`: lag at a glance.
pub fn bytes(b: u64) -> String {
    match b {
        0..1_000 => format!("{b} B"),
        1_000..1_000_000 => format!("{:.0} kB", b as f64 / 1e3),
        _ => format!("{:.1} MB", b as f64 / 1e6),
    }
}
