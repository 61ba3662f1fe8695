//! What routing answers: where a transaction goes, and why.

/// Why a transaction went where it went. Also the `reason` label of the
/// decision metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Classified as a write (or unknown): the primary.
    Write,
    /// A read served by a healthy, fresh-enough replica.
    Healthy,
    /// A read pinned to the primary because no replica has replayed the
    /// session's last write yet.
    ReadYourWrites,
    /// A read on the primary because every replica is over a lag threshold.
    LagThresholdExceeded,
    /// A read on the primary because no replica is configured or reachable.
    NoReplica,
    /// A config rule chose the target.
    Rule,
    /// A hint in the statement or session chose the target.
    Hint,
    /// A fallback read refused because the primary-read breaker is open.
    BreakerOpen,
    /// A fallback read served by the least-lagged replica because the
    /// breaker is open and `on_breaker_open = "serve_stale"`.
    StaleServed,
    /// A statement that pins the session to its server connection (LISTEN,
    /// a session lock, a temporary table...): the primary, whatever it
    /// reads, or the session's later writes would follow it to a replica.
    Pinned,
}

impl Reason {
    /// Every reason, in [`Reason::index`] order.
    pub const ALL: [Reason; 10] = [
        Reason::Write,
        Reason::Healthy,
        Reason::ReadYourWrites,
        Reason::LagThresholdExceeded,
        Reason::NoReplica,
        Reason::Rule,
        Reason::Hint,
        Reason::BreakerOpen,
        Reason::StaleServed,
        Reason::Pinned,
    ];

    /// Its position in [`Reason::ALL`], to index counters by.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Write => "write",
            Reason::Healthy => "healthy",
            Reason::ReadYourWrites => "read_your_writes",
            Reason::LagThresholdExceeded => "lag_threshold_exceeded",
            Reason::NoReplica => "no_replica",
            Reason::Rule => "rule",
            Reason::Hint => "hint",
            Reason::BreakerOpen => "breaker_open",
            Reason::StaleServed => "stale_served",
            Reason::Pinned => "pinned",
        }
    }
}

/// Where a transaction goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDecision {
    /// Index of the target in `Config::nodes` / `HealthSnapshot::nodes`.
    pub node: usize,
    /// Whether the target is the primary.
    pub primary: bool,
    /// Why.
    pub reason: Reason,
    /// Whether the transaction was classified as a write (the proxy then
    /// records its commit LSN for read-your-writes).
    pub write: bool,
    /// A NOTICE to send the client before the results (stale read served).
    pub notice: Option<String>,
    /// A read pinned to the primary only by read-your-writes, while a
    /// healthy replica may catch up in a moment: the proxy may wait (up to
    /// `routing.read_your_writes_wait`) for `replica` to replay `lsn`, then
    /// report with [`crate::Router::catch_up_done`]. The breaker has not
    /// counted this read yet.
    pub catch_up: Option<CatchUp>,
}

/// A replica worth waiting for (see [`RouteDecision::catch_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// Index of the replica.
    pub replica: usize,
    /// The LSN it must have replayed.
    pub lsn: lagrouter_health::Lsn,
    /// The replica `serve_stale` may use if the read falls back and the
    /// breaker is open.
    pub stale: Option<usize>,
}

/// A transaction routing refused. Sent to the client as an ErrorResponse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    /// No node is known to be primary. `detail` says why (naming the
    /// node); `unreachable` when the would-be primary does not answer.
    #[error("lagrouter: no primary is available for writes: {detail}")]
    NoPrimary { detail: String, unreachable: bool },
    /// Several nodes claim to be primary; writes are refused rather than split.
    #[error("lagrouter: split brain: nodes {0} all claim to be primary; writes are refused")]
    SplitBrain(String),
    /// The primary-read breaker is open and this read would fall back to the primary.
    #[error(
        "lagrouter: primary-read breaker is open: {share_percent:.1}% of recent reads fell back to the primary (cap {cap_percent:.0}%)"
    )]
    BreakerOpen {
        share_percent: f64,
        cap_percent: f64,
    },
    /// The write gate (`[safety] min_replicas_to_write`) is closed.
    #[error(
        "writes refused: {counted} of the {total} replicas are within [safety] \
         min_replicas_max_lag ({limit}), and min_replicas_to_write = {required} \
         ({replicas}); lagrouter refuses writes rather than acknowledge what a \
         failover would lose"
    )]
    WritesRefused {
        counted: usize,
        total: usize,
        required: u32,
        limit: String,
        replicas: String,
    },
}

impl RouteError {
    /// The `reason` label a refusal is counted under in
    /// `lagrouter_route_decisions_total`.
    pub fn label(&self) -> &'static str {
        match self {
            RouteError::BreakerOpen { .. } => "breaker_open",
            RouteError::WritesRefused { .. } => "write_gate",
            RouteError::NoPrimary { .. } | RouteError::SplitBrain(_) => "no_primary",
        }
    }

    /// SQLSTATE sent to the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            RouteError::NoPrimary {
                unreachable: true, ..
            } => "08006", // connection_failure
            RouteError::NoPrimary { .. } | RouteError::SplitBrain(_) => "57P03", // cannot_connect_now
            RouteError::BreakerOpen { .. } => "53400", // configuration_limit_exceeded
            RouteError::WritesRefused { .. } => "53000", // insufficient_resources
        }
    }

    /// What the client can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            RouteError::NoPrimary { .. } => {
                "Retry once the primary is back; check SHOW NODES in the admin console."
            }
            RouteError::SplitBrain(_) => {
                "Stop the old primary (or set health.prefer_highest_timeline = true); check SHOW NODES."
            }
            RouteError::BreakerOpen { .. } => {
                "Replicas are lagging; retry shortly, or route this read with /* lagrouter:route=primary */."
            }
            RouteError::WritesRefused { .. } => {
                "Reads still work. Writes resume by themselves once enough replicas have caught up \
                 for [health] recover_after_checks consecutive checks; SHOW SAFETY in the admin \
                 console shows the gate."
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_listed_in_index_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }
}
