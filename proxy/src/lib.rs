//! lagrouter's proxy: the PostgreSQL wire protocol between clients and
//! nodes. Clients authenticate to the proxy; each transaction gets a pooled
//! server connection on the node routing picks; the client sees one
//! consistent PostgreSQL session.
//!
//! Layout:
//! - `protocol`: pure framing and message codecs (no tokio; fuzzed).
//! - `auth`: client authentication (SCRAM-SHA-256, md5, trust).
//! - `server`: server connections and pools.
//! - `session`: one client's session: startup, forwarding, session state.
//! - `cancel`: CancelRequest routing.
//! - `tls`: client TLS (rustls with ring).
//! - `reload`: live configuration reload.
//! - `admin`: the admin console (`[server] admin_database`) and the client
//!   registry and routing counters it shows.
//! - `stalls`: ends transactions stuck on a node that stopped answering.
//! - `rt`: the sessions' event loop (worker threads over mio) and its
//!   TCP stream.
//! - `wait`: a session's wait on its client and server reads.
//! - `listener`: the accept loop and [`Shared`] state.
//! - `error`: [`ProxyError`], every error a client can get from the proxy.

pub mod admin;
pub mod auth;
pub mod cancel;
pub mod error;
pub mod listener;
pub mod protocol;
pub mod reload;
pub mod rt;
pub mod server;
pub mod session;
pub mod stalls;
pub mod tls;
pub mod wait;

pub use error::ProxyError;
pub use listener::{Proxy, Shared, StartError};
