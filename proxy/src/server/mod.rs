//! Server connections and their pools.
//!
//! Layout:
//! - `conn`: [`ServerConn`], one authenticated connection to a node.
//! - `pool`: [`ServerPool`], the connections of one (node, user, database).

pub mod conn;
pub mod pool;

pub use conn::{NodeAddr, ServerConn};
pub use pool::{PoolKey, PooledConn, Pools, ServerPool};
