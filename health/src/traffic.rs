//! The second path to a node: what the proxy's own traffic says about it.
//!
//! A health check that gets no answer in time is only missing evidence:
//! under CPU saturation a healthy node answers late. A node that has
//! really stopped also stops answering the clients' queries, so the proxy
//! counts, per node, the server connections it has checked out
//! (`in_flight`), every read from a server socket that returned bytes
//! (`progress`), and every server connection that failed (`failed`). The
//! round compares two [`TrafficSample`]s taken around a slow check: if
//! work was pending on the node the whole time and none of it moved, or a
//! connection failed, the data path is stuck too and the node is
//! `Unreachable` at once. The counters are relaxed atomics: one add per
//! server read and two per transaction. A failed connection also asks for
//! a round at once ([`Traffic::urgent`]), so a crashed node is known down
//! within milliseconds, not at the next `check_interval`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// One node's counters, shared by every pool of that node.
#[derive(Debug, Default)]
pub struct NodeTraffic {
    in_flight: AtomicU64,
    progress: AtomicU64,
    failed: AtomicU64,
    urgent: Arc<Notify>,
}

impl NodeTraffic {
    /// A server connection to the node was checked out.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A checked-out connection went back to the pool or was closed.
    pub fn ended(&self) {
        // Saturating: a reload may hand a pool a fresh counter mid-flight.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Bytes arrived from the node.
    pub fn progressed(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection to the node could not be opened, or broke.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.urgent.notify_one();
    }

    /// The counters now.
    pub fn sample(&self) -> TrafficSample {
        TrafficSample {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            progress: self.progress.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// A reading of a node's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficSample {
    pub in_flight: u64,
    pub progress: u64,
    pub failed: u64,
}

impl TrafficSample {
    /// Whether the data path looks stuck between `self` (earlier) and
    /// `later`: work was pending at both readings and no byte arrived in
    /// between, or a connection failed. No traffic is no evidence.
    pub fn stuck_until(&self, later: &TrafficSample) -> bool {
        let pending = self.in_flight > 0 && later.in_flight > 0;
        (pending && later.progress == self.progress) || later.failed > self.failed
    }
}

/// Every node's counters, by node name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    nodes: Arc<Mutex<HashMap<String, Arc<NodeTraffic>>>>,
    urgent: Arc<Notify>,
}

impl Traffic {
    /// The counters of `node`, created on first use. Called when a pool is
    /// created and once per round, never per transaction.
    pub fn node(&self, node: &str) -> Arc<NodeTraffic> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .entry(node.to_string())
            .or_insert_with(|| {
                Arc::new(NodeTraffic {
                    urgent: self.urgent.clone(),
                    ..NodeTraffic::default()
                })
            })
            .clone()
    }

    /// Resolves when a connection to some node failed since the last time
    /// (one stored permit: a failure between two waits is not lost).
    pub async fn urgent(&self) {
        self.urgent.notified().await
    }

    /// The counters of `node` now (zero for a node without traffic).
    pub fn sample(&self, node: &str) -> TrafficSample {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.get(node).map(|n| n.sample()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_work_without_progress_is_stuck() {
        let t = Traffic::default();
        let n = t.node("r1");
        n.started();
        let a = t.sample("r1");
        assert!(a.stuck_until(&t.sample("r1")), "pending, nothing arrived");
        n.progressed();
        assert!(!a.stuck_until(&t.sample("r1")), "bytes arrived");
    }

    #[test]
    fn idle_node_is_no_evidence_and_a_failure_is() {
        let t = Traffic::default();
        let a = t.sample("r1");
        assert!(!a.stuck_until(&t.sample("r1")));
        t.node("r1").failed();
        assert!(a.stuck_until(&t.sample("r1")));
    }

    #[tokio::test]
    async fn a_failure_asks_for_a_round() {
        let t = Traffic::default();
        t.node("r1").failed();
        tokio::time::timeout(std::time::Duration::from_secs(5), t.urgent())
            .await
            .expect("woken");
    }

    #[test]
    fn work_that_finished_in_between_is_not_stuck() {
        let t = Traffic::default();
        let n = t.node("r1");
        n.started();
        let a = t.sample("r1");
        n.ended();
        n.ended(); // never below zero
        assert_eq!(t.sample("r1").in_flight, 0);
        assert!(!a.stuck_until(&t.sample("r1")));
    }
}
