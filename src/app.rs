//! Starts a whole lagrouter in-process: health monitor, proxy listener.
//! `lagrouter run`, `lagrouter demo` and the integration tests all start
//! through here, so they run the same wiring.

use std::net::SocketAddr;
use std::sync::Arc;

use lagrouter_config::ConfigHandle;
use lagrouter_health::HealthMonitor;
use lagrouter_proxy::{Proxy, Shared, StartError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running lagrouter.
pub struct Running {
    /// Address clients connect to.
    pub addr: SocketAddr,
    /// State shared by sessions (pools, users, router).
    pub shared: Arc<Shared>,
    /// The lag monitor.
    pub health: HealthMonitor,
    /// Cancel to stop; `join` then waits for the listener to drain.
    pub shutdown: CancellationToken,
    /// The listener task.
    pub join: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, waits for sessions (bounded by `shutdown_timeout`).
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.join.await;
    }
}

/// Starts the monitor (one first round, bounded by `check_timeout`) and
/// the proxy on `[server] listen`.
pub async fn start(
    config: ConfigHandle,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    install_metrics(&config);
    let health = HealthMonitor::start(config.clone(), shutdown.child_token())
        .await
        .map_err(StartError::Threads)?;
    let proxy = Proxy::bind(config.clone(), &health, shutdown.clone()).await?;
    let addr = proxy.local_addr().map_err(|source| StartError::Listen {
        addr: "bound socket".into(),
        source,
    })?;
    let shared = proxy.shared();
    // On the health monitor's thread: each load connects, and the
    // connect's SCRAM key derivation would stall every session meanwhile.
    health.spawn_background(crate::catalog::keep_loaded(
        config,
        health.clone(),
        shared.router.clone(),
        shutdown.child_token(),
    ));
    tokio::spawn(lagrouter_proxy::stalls::abandon_stalled_nodes(
        shared.clone(),
        health.clone(),
        shutdown.child_token(),
    ));
    tokio::spawn(release_idle_buffers(shared.clone(), shutdown.child_token()));
    tokio::spawn(close_idle_connections(
        shared.clone(),
        shutdown.child_token(),
    ));
    tokio::spawn(crate::telemetry::export(
        shared.clone(),
        shutdown.child_token(),
    ));
    let join = tokio::spawn(proxy.run());
    Ok(Running {
        addr,
        shared,
        health,
        shutdown,
        join,
    })
}

/// Serves `/metrics` on `[server] metrics_listen`. The exporter installs a
/// process-wide recorder (the `metrics` crate's design), so only the first
/// lagrouter started in a process exports; later ones log and go on.
fn install_metrics(config: &ConfigHandle) {
    let Some(addr) = config.load().server.metrics_listen.clone() else {
        return;
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return;
    };
    let builder = metrics_exporter_prometheus::PrometheusBuilder::new().with_http_listener(addr);
    // Installed from a thread outside any runtime, the exporter gets a
    // thread and runtime of its own: it serves for the life of the process,
    // whichever runtime started this lagrouter, and never competes with the
    // sessions' event loop.
    let installed = std::thread::scope(|s| s.spawn(|| builder.install()).join());
    match installed.unwrap_or_else(|_| {
        Err(
            metrics_exporter_prometheus::BuildError::FailedToCreateRuntime(
                "the install thread panicked".into(),
            ),
        )
    }) {
        Ok(()) => tracing::info!(%addr, "serving Prometheus metrics at /metrics"),
        Err(e) => tracing::warn!(%addr, "metrics endpoint not started: {e}"),
    }
}

/// How often sessions that ran no transaction since the last sweep are
/// asked to give back their buffers (once per idle period): an idle client
/// then costs no read or write buffer, and one that is busy is never asked
/// (it would grow them again at once).
const IDLE_BUFFER_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);
/// Sessions asked per sweep at most, so a sweep never wakes thousands of
/// tasks at once (10,000 idle clients are all asked within 10 s).
const IDLE_BUFFER_BATCH: usize = 1000;

async fn release_idle_buffers(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.timers.sleep(IDLE_BUFFER_SWEEP) => {}
        }
        let asked = shared.clients.release_idle_buffers(IDLE_BUFFER_BATCH);
        if asked > 0 {
            tracing::debug!(asked, "idle sessions give back their buffers");
        }
    }
}

/// Closes server connections idle past `[pool] idle_timeout`, checking a
/// few times per timeout (at most every 30 s).
async fn close_idle_connections(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let timeout = shared.config.load().pool.idle_timeout;
        let every = (timeout / 4).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(30),
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.timers.sleep(every) => {}
        }
        let closed = shared.pools.close_idle(timeout);
        if closed > 0 {
            tracing::debug!(closed, "closed idle server connections");
        }
    }
}
