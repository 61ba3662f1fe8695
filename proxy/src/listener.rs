//! The client listener and the state every session shares.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use lagrouter_config::{Config, ConfigHandle};
use lagrouter_health::{HealthMonitor, ReplayWaiter, Timers};
use lagrouter_routing::Router;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::UserDirectory;
use crate::cancel::CancelRegistry;
use crate::protocol::backend::{self, Severity};
use crate::server::{NodeAddr, Pools};

/// Counters the proxy keeps about its clients.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub clients: AtomicUsize,
    pub pinned_sessions: AtomicUsize,
    /// Bytes written to servers (client traffic and the proxy's own).
    pub bytes_to_servers: std::sync::atomic::AtomicU64,
    /// Bytes written to clients.
    pub bytes_to_clients: std::sync::atomic::AtomicU64,
}

/// What every session shares. Components get handles, never globals.
pub struct Shared {
    pub config: ConfigHandle,
    pub users: ArcSwap<UserDirectory>,
    /// `[auth_query]` lookups and their cache.
    pub auth_query: crate::auth::AuthQuery,
    /// The configured nodes' addresses. Behind an `Arc`: a session keeps a
    /// [`NodesCache`] of it.
    pub nodes: Arc<ArcSwap<Vec<Arc<NodeAddr>>>>,
    pub router: Router,
    pub pools: Pools,
    pub cancel: Arc<CancelRegistry>,
    pub tls: Option<TlsAcceptor>,
    pub stats: ProxyStats,
    pub reload: crate::reload::ReloadState,
    /// Connected clients, for the admin console's `SHOW CLIENTS`.
    pub clients: crate::admin::registry::ClientRegistry,
    /// Routing decisions per node and reason, for `SHOW NODES` / `SHOW STATS`.
    pub route_counters: crate::admin::registry::RouteCounters,
    /// Replay positions for `lagrouter.wait_replicas`.
    pub replay: ReplayWaiter,
    /// Where every timeout the sessions take runs: `lagrouter run`'s
    /// runtime has no timers (see `lagrouter_health::Timers`).
    pub timers: Timers,
    pub shutdown: CancellationToken,
    /// The worker threads the sessions run on (`server.workers`).
    pub engine: crate::rt::Engine,
}

/// A session's cache of [`Shared::nodes`]: one plain atomic load while no
/// reload changed them.
pub type NodesCache = arc_swap::Cache<Arc<ArcSwap<Vec<Arc<NodeAddr>>>>, Arc<Vec<Arc<NodeAddr>>>>;

impl Shared {
    /// Applies a new (validated) config to users and nodes.
    pub fn apply_config(&self, config: &Config) {
        self.users
            .store(Arc::new(self.users.load().reloaded(config)));
        self.auth_query.clear();
        self.nodes.store(Arc::new(node_addrs(config)));
    }
}

fn node_addrs(config: &Config) -> Vec<Arc<NodeAddr>> {
    config
        .nodes
        .iter()
        .map(|n| {
            Arc::new(NodeAddr {
                name: n.name.as_str().into(),
                host: n.host.clone(),
                port: n.port,
                tls: config.node_tls(n),
            })
        })
        .collect()
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot start the health monitor's, the timer or a worker thread: {0}")]
    Threads(std::io::Error),
}

/// A bound proxy, ready to serve.
pub struct Proxy {
    shared: Arc<Shared>,
    listener: TcpListener,
}

impl Proxy {
    /// Binds `[server] listen` and prepares shared state.
    pub async fn bind(
        config: ConfigHandle,
        health: &HealthMonitor,
        shutdown: CancellationToken,
    ) -> Result<Proxy, StartError> {
        let cfg = config.load_full();
        let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
            (Some(c), Some(k)) => Some(crate::tls::acceptor(c, k).map_err(StartError::Tls)?),
            _ => None,
        };
        let engine = crate::rt::Engine::start(
            cfg.server.workers,
            tokio::runtime::Handle::try_current().ok(),
        )
        .map_err(StartError::Threads)?;
        let listener = TcpListener::bind(&cfg.server.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: cfg.server.listen.clone(),
                source,
            })?;
        let shared = Arc::new(Shared {
            users: ArcSwap::from_pointee(UserDirectory::from_config(&cfg)),
            auth_query: crate::auth::AuthQuery::default(),
            nodes: Arc::new(ArcSwap::from_pointee(node_addrs(&cfg))),
            router: Router::new(config.clone(), health.shared()),
            config,
            pools: Pools::new(health.traffic(), health.timers()),
            cancel: Arc::new(CancelRegistry::default()),
            tls,
            stats: ProxyStats::default(),
            reload: crate::reload::ReloadState::default(),
            clients: Default::default(),
            route_counters: Default::default(),
            replay: health.replay_waiter(),
            timers: health.timers(),
            shutdown,
            engine,
        });
        Ok(Proxy { shared, listener })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The state sessions share (for the admin console, metrics, reload).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accepts clients until shutdown, then closes the listening socket and
    /// waits up to `server.shutdown_timeout` for sessions to finish.
    pub async fn run(self) {
        // However this ends (shutdown, or its runtime dropped), the
        // sessions' workers stop with it.
        struct StopWorkers(Arc<Shared>);
        impl Drop for StopWorkers {
            fn drop(&mut self) {
                self.0.engine.stop();
            }
        }
        let _stop = StopWorkers(self.shared.clone());
        let max = self.shared.config.load().server.max_client_connections;
        let slots = Arc::new(Semaphore::new(max));
        let mut refusals = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = self.shared.shutdown.cancelled() => break,
                a = self.listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    self.shared
                        .timers
                        .sleep(std::time::Duration::from_millis(50))
                        .await;
                    continue;
                }
            };
            while refusals.try_join_next().is_some() {}
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                refusals.spawn(too_many_clients(tcp, max));
                continue;
            };
            let shared = self.shared.clone();
            self.shared.engine.spawn(async move {
                tracing::trace!(%peer, "client connected");
                crate::session::handle_client(shared, tcp, peer).await;
                drop(permit);
            });
        }
        // Refuse new clients at once (a load balancer's check then fails
        // and new connections go to another instance), before idle
        // sessions are ended and running transactions may finish.
        drop(self.listener);
        self.shared.clients.stop_all();
        let grace = self.shared.config.load().server.shutdown_timeout;
        // Every session holds a slot until it ends: all slots back, all
        // sessions done.
        let drained = async {
            let _ = slots
                .acquire_many(u32::try_from(max).unwrap_or(u32::MAX))
                .await;
            while refusals.join_next().await.is_some() {}
        };
        let _ = self.shared.timers.timeout(grace, drained).await;
    }
}

async fn too_many_clients(mut tcp: TcpStream, max: usize) {
    let mut out = BytesMut::new();
    backend::error_response(
        &mut out,
        Severity::Fatal,
        "53300",
        &format!("lagrouter: sorry, too many clients already (max_client_connections = {max})"),
        Some("Raise [server] max_client_connections or use fewer connections."),
    );
    let _ = tcp.write_all(&out).await;
}
