//! The write gate: `[safety] min_replicas_to_write`, Redis'
//! `min-replicas-to-write` at the proxy. While fewer replicas than that are
//! caught up (within `min_replicas_max_lag_*`, with routing's hysteresis:
//! see `NodeHealth::gate_state`), a transaction routed to the primary as a
//! write is refused before it reaches the server: refuse rather than
//! acknowledge a write that a failover would lose. Reads are not gated.
//! Pure: the health snapshot and config in, a verdict out.

use std::fmt::Write as _;
use std::time::Duration;

use lagrouter_config::Config;
use lagrouter_health::{HealthSnapshot, NodeState};

use crate::RouteError;

/// The gate's limits, when it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteGate {
    /// `min_replicas_to_write` (> 0).
    pub min_replicas: u32,
    /// Byte limit in force.
    pub max_lag_bytes: u64,
    /// Time limit in force, if any.
    pub max_lag_time: Option<Duration>,
}

/// The gate as the admin console and metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateStatus {
    /// The limits; `None` when the gate is off.
    pub gate: Option<WriteGate>,
    /// Replicas that count now.
    pub counted: usize,
    /// Whether writes may pass.
    pub open: bool,
}

impl WriteGate {
    /// The gate `config` asks for; `None` when `min_replicas_to_write = 0`.
    pub fn from_config(config: &Config) -> Option<WriteGate> {
        let s = &config.safety;
        (s.min_replicas_to_write > 0).then(|| WriteGate {
            min_replicas: s.min_replicas_to_write,
            max_lag_bytes: s.max_lag_bytes(&config.health),
            max_lag_time: s.max_lag_time(&config.health),
        })
    }

    /// The limits in words: `65536 bytes` or `65536 bytes, 10s`.
    pub fn limit(&self) -> String {
        match self.max_lag_time {
            Some(t) => format!("{} bytes and {t:?}", self.max_lag_bytes),
            None => format!("{} bytes", self.max_lag_bytes),
        }
    }

    /// Lets a write through, or says why not.
    pub fn check(&self, snap: &HealthSnapshot) -> Result<(), RouteError> {
        let counted = snap.gate_replicas();
        if counted >= self.min_replicas as usize {
            return Ok(());
        }
        let target = snap.primary_index();
        Err(RouteError::WritesRefused {
            counted,
            total: (0..snap.nodes.len()).filter(|&i| Some(i) != target).count(),
            required: self.min_replicas,
            limit: self.limit(),
            replicas: describe_replicas(snap),
        })
    }
}

/// The gate's state for `snap` under `config`.
pub fn gate_status(config: &Config, snap: &HealthSnapshot) -> GateStatus {
    let gate = WriteGate::from_config(config);
    let counted = snap.gate_replicas();
    GateStatus {
        gate,
        counted,
        open: gate.is_none_or(|g| counted >= g.min_replicas as usize),
    }
}

/// Each replica's standing against the gate, for the error message:
/// `replica1 lagging (3145728 bytes behind), replica2 recovering (1 of 3 good checks)`.
fn describe_replicas(snap: &HealthSnapshot) -> String {
    let target = snap.primary_index();
    let mut out = String::new();
    for (i, n) in snap.nodes.iter().enumerate() {
        if Some(i) == target {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{} ", n.name);
        match n.gate.state {
            _ if n.in_recovery == Some(false) => out.push_str("not a replica"),
            NodeState::Healthy => out.push_str("caught up"),
            NodeState::Lagging => match n.lag_bytes {
                Some(b) => {
                    let _ = write!(out, "lagging ({b} bytes behind)");
                }
                None => out.push_str("lagging (lag unknown)"),
            },
            NodeState::Recovering { good_checks } => {
                let _ = write!(out, "recovering ({good_checks} good checks)");
            }
            NodeState::Unreachable => out.push_str("unreachable"),
        }
    }
    if out.is_empty() {
        out.push_str("no replica is configured");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::tests::cluster;
    use lagrouter_health::Lsn;

    #[test]
    fn off_by_default_and_counts_only_caught_up_replicas() {
        let (mut cfg, mut snap) = cluster(2);
        assert_eq!(WriteGate::from_config(&cfg), None);
        assert!(gate_status(&cfg, &snap).open);
        cfg.safety.min_replicas_to_write = 2;
        cfg.safety.min_replicas_max_lag_bytes = Some(4096);
        let g = WriteGate::from_config(&cfg).unwrap();
        assert_eq!(g.limit(), "4096 bytes");
        for n in &mut snap.nodes {
            n.gate.state = NodeState::Healthy;
        }
        assert!(g.check(&snap).is_ok());
        snap.nodes[2].gate.state = NodeState::Recovering { good_checks: 2 };
        snap.nodes[1].gate.state = NodeState::Lagging;
        snap.nodes[1].lag_bytes = Some(10_000);
        snap.nodes[1].replay_lsn = Some(Lsn(1));
        let e = g.check(&snap).unwrap_err();
        assert_eq!(e.sqlstate(), "53000");
        let msg = e.to_string();
        assert!(msg.starts_with("writes refused:"), "{msg}");
        for part in [
            "0 of the 2 replicas",
            "min_replicas_to_write = 2",
            "4096 bytes",
            "replica1 lagging (10000 bytes behind)",
            "replica2 recovering (2 good checks)",
        ] {
            assert!(msg.contains(part), "{part} missing from {msg}");
        }
        assert!(e.hint().contains("Reads"));
        let st = gate_status(&cfg, &snap);
        assert_eq!((st.open, st.counted), (false, 0));
    }

    #[test]
    fn the_primary_and_promoted_nodes_never_count() {
        let (mut cfg, mut snap) = cluster(1);
        cfg.safety.min_replicas_to_write = 1;
        for n in &mut snap.nodes {
            n.gate.state = NodeState::Healthy;
        }
        assert!(gate_status(&cfg, &snap).open);
        snap.nodes[1].in_recovery = Some(false);
        let st = gate_status(&cfg, &snap);
        assert_eq!((st.open, st.counted), (false, 0));
    }
}
