//! lagrouter's proxy (in progress).
pub mod auth;
pub mod error;
pub mod protocol;
pub mod server;
