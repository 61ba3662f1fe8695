//! Server connections and their pools.
//!
//! Layout:
//! - `conn`: [`ServerConn`], one authenticated connection to a node.
//! - `pool`: [`ServerPool`], the connections of one (node, user, database).
//! - `stream`: [`NodeStream`], plain TCP or TLS to a node.

pub mod conn;
pub mod pool;
pub mod stream;

pub use conn::{NodeAddr, ServerConn};
pub use pool::{PoolKey, PooledConn, Pools, REFUSED_FOR, ServerPool};
pub use stream::NodeStream;
