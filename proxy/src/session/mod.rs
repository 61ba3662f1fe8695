//! A client session: one task per client, from startup to Terminate.
//!
//! In transaction mode a server connection is attached at the first
//! message of a transaction and released at `ReadyForQuery` 'I' once
//! nothing is owed, so the session must carry what PostgreSQL would keep
//! for it: named prepared statements (re-prepared on whichever server runs
//! the `Bind`), reported settings (restored with `SET` on attach), and a
//! pin to one server when a statement leaves state that outlives the
//! transaction.
//!
//! Layout:
//! - `startup`: TLS negotiation, startup packet, authentication, welcome.
//! - `forward`: the forwarding loop and per-message handling.
//! - `local`: `SET`/`SHOW lagrouter.*`, answered by the proxy itself.
//! - `params`: tracked settings and the `SET`s that restore them.
//! - `statements`: the client's prepared statements and their server names.

mod forward;
mod local;
pub mod params;
pub mod startup;
pub mod statements;

pub use startup::handle_client;

/// A client's byte stream: TCP or TLS over it, its socket's reads counted
/// ([`crate::wait::Counted`]), with a direct write for plain TCP
/// ([`crate::wait::Direct`]).
pub trait ClientStream:
    tokio::io::AsyncRead
    + tokio::io::AsyncWrite
    + crate::wait::ReadPolls
    + crate::wait::Direct
    + Unpin
    + Send
{
}

impl<T> ClientStream for T where
    T: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + crate::wait::ReadPolls
        + crate::wait::Direct
        + Unpin
        + Send
{
}
