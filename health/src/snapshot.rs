//! The immutable picture of the cluster that routing reads lock-free.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lagrouter_config::{Config, NodeRole};

use crate::Lsn;
use crate::risk::DataAtRisk;
use crate::state::{Cause, NodeStatus};

/// A node's health as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Under the lag thresholds and recovered: may serve reads.
    Healthy,
    /// Over a lag threshold at the last check.
    Lagging,
    /// Back under the thresholds for `good_checks` consecutive checks, fewer
    /// than `recover_after_checks`. Not yet serving reads.
    Recovering { good_checks: u32 },
    /// The last check failed or timed out.
    Unreachable,
}

impl NodeState {
    /// Short lowercase name for logs, metrics and the admin console.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Healthy => "healthy",
            NodeState::Lagging => "lagging",
            NodeState::Recovering { .. } => "recovering",
            NodeState::Unreachable => "unreachable",
        }
    }
}

/// One node in a snapshot.
#[derive(Debug, Clone)]
pub struct NodeHealth {
    /// `[[nodes]] name`.
    pub name: String,
    /// Configured role.
    pub role: NodeRole,
    /// State after the last check, with the hysteresis that leads to it
    /// (good and missed checks in a row, since when): what routing reads,
    /// through [`NodeHealth::state`].
    pub status: NodeStatus,
    /// `pg_is_in_recovery()` at the last successful check.
    pub in_recovery: Option<bool>,
    /// Timeline at the last successful check.
    pub timeline: Option<u32>,
    /// Replay LSN (replicas) or current WAL LSN (the primary).
    pub replay_lsn: Option<Lsn>,
    /// Received LSN (replicas).
    pub receive_lsn: Option<Lsn>,
    /// Bytes of WAL the node is behind the primary; `None` when unknown.
    pub lag_bytes: Option<u64>,
    /// Heartbeat age; `None` when unknown (heartbeat off or not yet seen).
    pub lag_time: Option<Duration>,
    /// When the last check (successful or not) completed.
    pub last_check: Option<Instant>,
    /// Why the last check failed, when `state` is `Unreachable`.
    pub unreachable_reason: Option<String>,
    /// Why the node does not serve reads (`None` while `Healthy`): the
    /// cause of its last demotion.
    pub cause: Option<Cause>,
    /// When the node was seen leave recovery (promoted): its replay LSN at
    /// the last check before. Writes at or before it are on its new
    /// timeline too; later ones of the old primary may be lost.
    pub promoted_at: Option<Lsn>,
    /// `lag_bytes` was estimated: the round had no primary sample taken
    /// after this node answered (see `lag`).
    pub lag_estimated: bool,
    /// The node's state against `[safety]`'s lag limits, with the same
    /// hysteresis: a replica counts toward `min_replicas_to_write` only
    /// while its state is `Healthy`. Its `missed` is `status.missed`.
    pub gate: NodeStatus,
}

impl NodeHealth {
    /// The node's state after the last check.
    pub fn state(&self) -> NodeState {
        self.status.state
    }
}

/// Who may receive writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryStatus {
    /// Exactly one writable node: its index in `HealthSnapshot::nodes`.
    One(usize),
    /// No node is known to be writable.
    None,
    /// More than one node claims to be primary: writes are refused.
    SplitBrain(Vec<usize>),
}

/// An immutable view of every node, published after each check round.
#[derive(Debug, Clone)]
pub struct HealthSnapshot {
    /// Increases by one with each published snapshot.
    pub seq: u64,
    /// Nodes in config order (indices match `Config::nodes`).
    pub nodes: Vec<NodeHealth>,
    /// The write target, if any.
    pub primary: PrimaryStatus,
    /// The primary's `pg_current_wal_lsn()` in the latest round.
    pub primary_lsn: Option<Lsn>,
    /// When that LSN was sampled (the query was sent at or after this).
    pub primary_lsn_sampled_at: Option<Instant>,
    /// When `primary` is not `One`: why, in words fit for a client error
    /// ("split brain: primary and replica1 both report …").
    pub primary_problem: Option<String>,
    /// What a crash of the write target would lose, as of this round.
    pub risk: DataAtRisk,
}

impl HealthSnapshot {
    /// The snapshot before any check: the configured primary takes writes,
    /// no replica serves reads yet (each does from its first good check).
    pub fn initial(config: &Config) -> HealthSnapshot {
        let now = Instant::now();
        let nodes = config
            .nodes
            .iter()
            .map(|n| NodeHealth {
                name: n.name.clone(),
                role: n.role,
                status: NodeStatus::unchecked(now),
                in_recovery: None,
                timeline: None,
                replay_lsn: None,
                receive_lsn: None,
                lag_bytes: None,
                lag_time: None,
                last_check: None,
                unreachable_reason: None,
                cause: None,
                lag_estimated: false,
                promoted_at: None,
                gate: NodeStatus::unchecked(now),
            })
            .collect();
        let primary = match config
            .nodes
            .iter()
            .position(|n| n.role == NodeRole::Primary)
        {
            Some(i) => PrimaryStatus::One(i),
            None => PrimaryStatus::None,
        };
        HealthSnapshot {
            seq: 0,
            nodes,
            primary_lsn: None,
            primary_lsn_sampled_at: None,
            primary_problem: match primary {
                PrimaryStatus::One(_) => None,
                _ => Some("no node has been checked yet (no node has role = \"primary\")".into()),
            },
            primary,
            risk: DataAtRisk::default(),
        }
    }

    /// Replicas that count toward `[safety] min_replicas_to_write`: not
    /// the write target, in recovery at the last check, and `Healthy`
    /// against `[safety]`'s limits.
    pub fn gate_replicas(&self) -> usize {
        let target = self.primary_index();
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| {
                Some(*i) != target
                    && n.in_recovery == Some(true)
                    && n.gate.state == NodeState::Healthy
            })
            .count()
    }

    /// Index of the write target, if exactly one.
    pub fn primary_index(&self) -> Option<usize> {
        match self.primary {
            PrimaryStatus::One(i) => Some(i),
            _ => None,
        }
    }
}

/// Shared, lock-free access to the latest snapshot.
pub type SharedSnapshot = Arc<arc_swap::ArcSwap<HealthSnapshot>>;
