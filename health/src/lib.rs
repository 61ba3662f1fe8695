//! lagrouter's health monitor: knows, at every moment, how far behind each
//! replica is and which node is the primary, and publishes that as an
//! immutable [`HealthSnapshot`] that routing reads lock-free.
//!
//! Layout:
//! - `lsn`: [`Lsn`], PostgreSQL's WAL position.
//! - `snapshot`: [`HealthSnapshot`] and the per-node [`NodeHealth`].

mod lsn;
mod snapshot;

pub use lsn::{Lsn, ParseLsnError};
pub use snapshot::{HealthSnapshot, NodeHealth, NodeState, PrimaryStatus, SharedSnapshot};
