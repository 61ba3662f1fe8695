//! The `lagrouter` binary's library: what the CLI commands are made of,
//! shared with the integration tests.
//!
//! Layout:
//! - `app`: starts a whole lagrouter in-process (health, proxy).
//! - `catalog`: keeps the classifier's function volatility loaded from `pg_proc`.
//! - `cli`: what `lagrouter run` and `check-config` do.
//! - `demo`: `lagrouter demo`: a cluster, lagrouter and a checked workload
//!   with a replica that falls behind and catches up, shown live.
//! - `watch`: live reload on SIGHUP and on changes to the config file.
//! - `telemetry`: exports the proxy's pool, client, breaker and byte counters.
//! - `pgcluster`: starts a throwaway PostgreSQL primary with streaming
//!   replicas on loopback (used by `lagrouter demo` and the tests).

pub mod app;
pub mod catalog;
pub mod cli;
pub mod demo;
pub mod pgcluster;
pub mod telemetry;
pub mod watch;
