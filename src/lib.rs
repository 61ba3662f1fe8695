//! The `lagrouter` binary's library: what the CLI commands are made of,
//! shared with the integration tests.
//!
//! Layout:
//! - `pgcluster`: starts a throwaway PostgreSQL primary with streaming
//!   replicas on loopback (used by `lagrouter demo` and the tests).

pub mod pgcluster;
