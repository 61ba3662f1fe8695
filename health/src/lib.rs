//! lagrouter's health monitor: knows, at every moment, how far behind each
//! replica is and which node is the primary, and publishes that as an
//! immutable [`HealthSnapshot`] that routing reads lock-free. Nothing here
//! routes.
//!
//! Every `check_interval` a round asks each node one small query over the
//! monitor's own connection (never the client pools): replicas first, then
//! the primary, so that byte lag = primary LSN − replica replay LSN can
//! only over-report (see `lag`). A heartbeat row upserted on the primary
//! gives time lag and keeps WAL moving. Each node's answer goes through a
//! pure hysteresis state machine (demote on one bad check, promote after
//! `recover_after_checks` good ones) and a pure primary detection (split
//! brain refuses writes); the result is stored with `arc-swap`.
//!
//! Layout:
//! - `lsn`: [`Lsn`], PostgreSQL's WAL position.
//! - `snapshot`: [`HealthSnapshot`] and the per-node [`NodeHealth`].
//! - `state`: the pure state machine ([`next_status`], [`verdict`]).
//! - `primary`: pure primary / split-brain detection ([`detect_primary`]).
//! - `lag`: pure byte and time lag from one round's answers, and why the
//!   pairing cannot under-report.
//! - `observation`: the check query and its parsed answer.
//! - `assemble`: pure; one round's answers → the next snapshot.
//! - `round`: one round's IO: replicas, then primaries.
//! - `probe`: the per-node task owning the check connection.
//! - `conn`: opening the monitor's connections.
//! - `backoff`: reconnect backoff.
//! - `heartbeat`: the heartbeat writer.
//! - `risk`: pure; what a primary crash would lose (data at risk, slots,
//!   synchronous replication).
//! - `replay`: [`ReplayWaiter`], fast replay-LSN polling for `wait_replicas`.
//! - `telemetry`: metrics (names documented there) and state-change logs.
//! - `error`: [`ProbeError`], why a check failed.
//! - `traffic`: [`Traffic`], the proxy's own traffic per node, the second
//!   path that tells a slow node from a stopped one.
//! - `monitor`: [`HealthMonitor`], which starts it all.
//! - `timers`: [`Timers`], the timer thread the proxy's timeouts run on.

mod assemble;
mod backoff;
mod conn;
mod error;
mod heartbeat;
mod lag;
mod lsn;
mod monitor;
mod observation;
mod primary;
mod probe;
mod replay;
mod risk;
mod round;
mod snapshot;
mod state;
mod telemetry;
mod timers;
mod traffic;

pub use conn::{APPLICATION_NAME, ConnTarget, connect_as};
pub use error::{ProbeError, describe_pg_error};
pub use lsn::{Lsn, LsnText, ParseLsnError};
pub use monitor::HealthMonitor;
pub use primary::{PrimaryDecision, PrimaryEvidence, detect_primary};
pub use replay::ReplayWaiter;
pub use risk::{DataAtRisk, SlotInfo, SyncSettings};
pub use snapshot::{HealthSnapshot, NodeHealth, NodeState, PrimaryStatus, SharedSnapshot};
pub use state::{Cause, Check, LagExcess, NodeStatus, Thresholds, Verdict, next_status, verdict};
pub use timers::Timers;
pub use traffic::{NodeTraffic, Traffic, TrafficSample};
