//! The routing entry point the proxy calls at each transaction boundary.

use std::time::Instant;

use lagrouter_config::ConfigHandle;
use lagrouter_health::{HealthSnapshot, PrimaryStatus, SharedSnapshot};

use crate::{Reason, RouteDecision, RouteError};

/// Per-client routing state: what the session must be able to read.
#[derive(Debug, Default, Clone)]
pub struct SessionRouting {}

/// Shared router: reads the latest health snapshot and config, decides.
#[derive(Clone)]
pub struct Router {
    #[allow(dead_code)]
    config: ConfigHandle,
    health: SharedSnapshot,
}

impl Router {
    /// A router over the given live config and health snapshot.
    pub fn new(config: ConfigHandle, health: SharedSnapshot) -> Self {
        Self { config, health }
    }

    /// The latest health snapshot.
    pub fn health(&self) -> arc_swap::Guard<std::sync::Arc<HealthSnapshot>> {
        self.health.load()
    }

    /// Decides where the transaction that starts with `sql` goes.
    /// Until routing lands, every transaction goes to the primary.
    pub fn route(
        &self,
        _session: &mut SessionRouting,
        _sql: &str,
        _now: Instant,
    ) -> Result<RouteDecision, RouteError> {
        let snap = self.health.load();
        primary_decision(&snap)
    }
}

fn primary_decision(snap: &HealthSnapshot) -> Result<RouteDecision, RouteError> {
    match &snap.primary {
        PrimaryStatus::One(i) => Ok(RouteDecision {
            node: *i,
            primary: true,
            reason: Reason::Write,
            write: true,
            notice: None,
        }),
        PrimaryStatus::None => Err(RouteError::NoPrimary),
        PrimaryStatus::SplitBrain(ix) => Err(RouteError::SplitBrain(
            ix.iter()
                .map(|i| snap.nodes[*i].name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}
