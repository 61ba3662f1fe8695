//! Ends the transactions stuck on a node that has stopped.
//!
//! When the health monitor declares a node `Unreachable` because it
//! stalled (no answer to its check while lagrouter's own traffic to it made
//! no progress either), the clients attached to that node would otherwise
//! wait for as long as the node stays stopped. Each of them is told to
//! abandon its transaction: it gets 08006 naming the node, and its server
//! connection is closed, never reused. A node that is only slow (checks
//! missed while its traffic still moves) is left alone.
//!
//! The write target gets longer: there is no other node to run its
//! transactions on, and a write abandoned mid-flight may still commit when
//! the primary continues. Its clients are told once it has been
//! `Unreachable` (for any cause but a refused connection, which ends them
//! by itself) for `[health] primary_stall_timeout`, so that neither they
//! nor their pool slots wait forever.

use std::sync::Arc;
use std::time::Instant;

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
    // The write target stopped answering: its name, since when, and
    // whether its clients were told.
    let mut primary_down: Option<(String, Instant, bool)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rounds.changed() => if changed.is_err() { return },
        }
        let snap = health.snapshot();
        let target = snap.primary_index();
        for (i, n) in snap.nodes.iter().enumerate() {
            let stalled = n.state() == NodeState::Unreachable
                && n.cause == Some(Cause::Stalled)
                && target != Some(i);
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
        let limit = shared.config.load().health.primary_stall_timeout;
        let down = target.and_then(|i| {
            let n = &snap.nodes[i];
            (n.state() == NodeState::Unreachable && n.cause != Some(Cause::Refused))
                .then_some((i, n.name.as_str()))
        });
        match (down, &mut primary_down) {
            (None, _) => primary_down = None,
            (Some((_, name)), Some((was, _, _))) if was == name => {}
            (Some((_, name)), _) => primary_down = Some((name.to_string(), Instant::now(), false)),
        }
        if let (Some((i, name)), Some((_, since, told))) = (down, &mut primary_down)
            && !*told
            && !limit.is_zero()
            && since.elapsed() >= limit
        {
            *told = true;
            let n = shared.clients.abandon_node(i);
            tracing::warn!(
                node = %name,
                clients = n,
                "the primary has not answered for {limit:?} (primary_stall_timeout); \
                 abandoning the transactions waiting on it"
            );
        }
        prev = snap;
    }
}
