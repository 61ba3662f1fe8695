//! Ends the transactions stuck on a node that has stopped.
//!
//! When the health monitor declares a node `Unreachable` because it
//! stalled (no answer to its check while lagrouter's own traffic to it made
//! no progress either), the clients attached to that node would otherwise
//! wait for as long as the node stays stopped. Each of them is told to
//! abandon its transaction: it gets 08006 naming the node, and its server
//! connection is closed, never reused. A node that is only slow (checks
//! missed while its traffic still moves) is left alone, and so is the
//! write target: a write abandoned mid-flight may still commit when the
//! node continues, and there is no other node to retry it on, so its
//! clients wait for the primary as they would without lagrouter.

use std::sync::Arc;

use lagrouter_health::{Cause, HealthMonitor, NodeState};
use tokio_util::sync::CancellationToken;

use crate::listener::Shared;

/// Runs until `shutdown`, after every published health snapshot.
pub async fn abandon_stalled_nodes(
    shared: Arc<Shared>,
    health: HealthMonitor,
    shutdown: CancellationToken,
) {
    let mut rounds = health.subscribe();
    let mut prev = health.snapshot();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rounds.changed() => if changed.is_err() { return },
        }
        let snap = health.snapshot();
        for (i, n) in snap.nodes.iter().enumerate() {
            let stalled = n.state == NodeState::Unreachable
                && n.cause == Some(Cause::Stalled)
                && snap.primary_index() != Some(i);
            let was = prev
                .nodes
                .get(i)
                .is_some_and(|p| p.name == n.name && p.cause == Some(Cause::Stalled));
            if stalled && !was {
                let told = shared.clients.abandon_node(i);
                tracing::warn!(
                    node = %n.name,
                    clients = told,
                    "node stopped answering; abandoning the transactions waiting on it"
                );
            }
        }
        prev = snap;
    }
}
