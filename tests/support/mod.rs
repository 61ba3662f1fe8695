//! Shared helpers for the proxy integration tests: a lagrouter started
//! in-process in front of the shared test cluster, tokio-postgres clients
//! through it (with their notices and notifications), a raw wire-protocol
//! client for malformed input, and bounded child processes (psql, pgbench,
//! the CLI).
//!
//! Every wait has a deadline so a hang fails the test instead of blocking it.
//!
//! Layout:
//! - `proxy`: [`ProxyBuilder`] and [`TestProxy`].
//! - `client`: tokio-postgres connections and SQLSTATE helpers.
//! - `raw`: [`raw::RawConn`], a byte-level protocol client.
//! - `process`: child processes with a timeout.
//! - `tls`: self-signed certificates and a rustls connector for tokio-postgres.
//! - `faults`: stopped and crashed nodes, a recorded read load, the health
//!   states seen, for the fault-injection tests.

#![allow(dead_code)]

pub mod client;
pub mod faults;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod routing;
pub mod safety;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lagrouter::pgcluster::Cluster;

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use proxy::*;

/// Logs from the proxy into the test output; `RUST_LOG` overrides.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "lagrouter_proxy=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// How often [`eventually`] asks again.
pub const EVERY: Duration = Duration::from_millis(20);

/// Asks `f` every [`EVERY`] until it gives `Some`, and returns that; after
/// `limit`, fails the test saying `what` did not happen. `f` is always
/// asked once more after the deadline, so a slow last call still counts.
pub async fn eventually<T, Fut>(limit: Duration, what: &str, mut f: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = Instant::now() >= deadline;
        if let Some(v) = f().await {
            return v;
        }
        assert!(!last, "not within {limit:?}: {what}");
        tokio::time::sleep(EVERY).await;
    }
}

/// Runs a blocking harness call off the runtime's workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce(&'static Cluster) -> T + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(move || f(Cluster::shared()))
        .await
        .expect("harness call panicked")
}

/// Runs a blocking harness call on a cluster of the test's own, off the
/// runtime's workers.
pub async fn on_cluster<T: Send + 'static>(
    c: &std::sync::Arc<Cluster>,
    f: impl FnOnce(&Cluster) -> T + Send + 'static,
) -> T {
    let c = c.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .expect("harness call panicked")
}

/// Creates a login role (SCRAM-stored password equal to its name) that may
/// use the app database and schema, unless it exists, and waits until the
/// running replicas have replayed it. Tests that look at
/// `pg_stat_activity` or need a pool of their own use their own role.
pub async fn ensure_role(name: &'static str) {
    // Tests run in parallel threads: concurrent CREATE ROLE collides on the
    // unique index and concurrent GRANTs on "tuple concurrently updated".
    static ROLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = ROLES.lock().await;
    blocking(move |c| {
        c.sql(
            c.primary_index(),
            &format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') \
                 THEN CREATE ROLE {name} LOGIN PASSWORD '{name}'; END IF; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;\n\
                 GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {name};\n\
                 GRANT USAGE, CREATE ON SCHEMA public TO {name};",
                db = c.database()
            ),
        )
        .expect("create role");
        // A replica that has not replayed the role yet is still healthy
        // (a few bytes behind) and refuses its logins with 28P01; so a
        // test's first reads through the proxy could fail. Paused replicas
        // are not waited for.
        c.wait_caught_up(Duration::from_secs(60))
            .expect("replicas replay the new role");
    })
    .await;
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lagrouter-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP port on loopback that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
