//! A lagrouter started in-process on `127.0.0.1:0` in front of the shared
//! cluster, configured from TOML like a user would.

use std::net::SocketAddr;

use lagrouter::pgcluster::Cluster;
use lagrouter_config::{Config, ConfigHandle};
use lagrouter_health::NodeState;
use tokio_util::sync::CancellationToken;

/// Builds the TOML of one proxy. By default: the cluster's nodes (primary
/// and replicas), user `app`/`app` with SCRAM, default pool, health on the
/// app database.
pub struct ProxyBuilder {
    server: Vec<String>,
    pool: Vec<String>,
    users: Vec<String>,
    nodes: Option<String>,
    routing: Vec<String>,
    safety: Vec<String>,
    server_tls: Vec<String>,
    sections: Vec<String>,
    wait_healthy: bool,
}

impl Default for ProxyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyBuilder {
    pub fn new() -> ProxyBuilder {
        ProxyBuilder {
            server: Vec::new(),
            pool: Vec::new(),
            users: vec!["name = \"app\"\npassword = \"app\"".into()],
            nodes: None,
            // These tests are about the protocol, not the primary-read
            // breaker: reads that fall back to the primary (replicas not yet
            // healthy after start, or lagging under a 10 MB COPY) must not
            // be refused.
            routing: vec!["primary_read_cap = 1.0".into()],
            safety: Vec::new(),
            server_tls: Vec::new(),
            sections: Vec::new(),
            wait_healthy: true,
        }
    }

    /// One `key = value` line of `[server]`.
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.into());
        self
    }

    /// One `key = value` line of `[pool]`.
    pub fn pool(mut self, line: &str) -> Self {
        self.pool.push(line.into());
        self
    }

    /// `[pool] size`.
    pub fn pool_size(self, n: usize) -> Self {
        self.pool(&format!("size = {n}"))
    }

    /// Replaces the default users with none (add them with [`Self::user`]).
    pub fn no_default_user(mut self) -> Self {
        self.users.clear();
        self
    }

    /// The body of one more `[[users]]` table.
    pub fn user(mut self, body: &str) -> Self {
        self.users.push(body.into());
        self
    }

    /// One `key = value` line of `[routing]`.
    pub fn routing(mut self, line: &str) -> Self {
        self.routing.push(line.into());
        self
    }

    /// One `key = value` line of `[safety]` (the section is written only
    /// when there is at least one line, between `[routing]` and `[health]`).
    pub fn safety(mut self, line: &str) -> Self {
        self.safety.push(line.into());
        self
    }

    /// One `key = value` line of `[server_tls]` (the section is written
    /// only when there is at least one line).
    pub fn server_tls(mut self, line: &str) -> Self {
        self.server_tls.push(line.into());
        self
    }

    /// A whole section (header and lines), written last.
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.into());
        self
    }

    /// Keeps the default `[routing]` (primary-read breaker at 20%).
    pub fn default_routing(mut self) -> Self {
        self.routing.clear();
        self
    }

    /// Do not wait for every node to be healthy before returning from
    /// [`Self::start`] (for proxies in front of dead nodes).
    pub fn no_wait_healthy(mut self) -> Self {
        self.wait_healthy = false;
        self
    }

    /// Replaces the cluster's nodes with these `[[nodes]]` tables (full TOML).
    pub fn nodes(mut self, toml: &str) -> Self {
        self.nodes = Some(toml.into());
        self
    }

    /// The configuration file text.
    pub fn toml(&self, c: &Cluster) -> String {
        let mut t = String::from("[server]\nlisten = \"127.0.0.1:0\"\n");
        for l in &self.server {
            t.push_str(l);
            t.push('\n');
        }
        t.push_str("[pool]\n");
        for l in &self.pool {
            t.push_str(l);
            t.push('\n');
        }
        for u in &self.users {
            t.push_str("[[users]]\n");
            t.push_str(u);
            t.push('\n');
        }
        match &self.nodes {
            Some(n) => t.push_str(n),
            None => t.push_str(&cluster_nodes(c)),
        }
        t.push_str("[routing]\n");
        for l in &self.routing {
            t.push_str(l);
            t.push('\n');
        }
        if !self.safety.is_empty() {
            t.push_str("[safety]\n");
            for l in &self.safety {
                t.push_str(l);
                t.push('\n');
            }
        }
        if !self.server_tls.is_empty() {
            t.push_str("[server_tls]\n");
            for l in &self.server_tls {
                t.push_str(l);
                t.push('\n');
            }
        }
        t.push_str(&format!(
            "[health]\ndatabase = \"{}\"\ncheck_interval = \"250ms\"\n",
            c.database()
        ));
        for s in &self.sections {
            t.push_str(s);
            t.push('\n');
        }
        t
    }

    /// Starts it (and the shared cluster, on first use).
    pub async fn start(self) -> TestProxy {
        super::init_logs();
        let c = super::blocking(|c| c).await;
        let text = self.toml(c);
        let config = Config::from_toml_str(&text)
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"));
        let shutdown = CancellationToken::new();
        let running = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            start_lagrouter(config, shutdown.clone()),
        )
        .await
        .expect("proxy start timed out")
        .expect("proxy starts");
        if self.wait_healthy {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let snap = running.health.snapshot();
                if snap.nodes.iter().all(|n| n.state() == NodeState::Healthy) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "nodes not all healthy 20 s after proxy start: {snap:#?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        TestProxy {
            addr: running.addr,
            shutdown,
            _running: running,
        }
    }
}

/// `[[nodes]]` for every node of the cluster (node 0 primary).
pub fn cluster_nodes(c: &Cluster) -> String {
    c.nodes_toml()
}

/// Starts lagrouter as `lagrouter run` does: on a runtime of its own, in a
/// thread of its own, with the sessions on `server.workers` worker
/// threads, so the tests exercise the threads users get. The runtime lives
/// until the listener has drained after `shutdown`; `Running::join` ends
/// then.
pub async fn start_lagrouter(
    config: Config,
    shutdown: CancellationToken,
) -> Result<lagrouter::app::Running, lagrouter_proxy::StartError> {
    let handle = ConfigHandle::new(config);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("lagrouter".into())
        .spawn(move || {
            let rt = lagrouter::cli::runtime().expect("lagrouter's runtime starts");
            rt.block_on(async move {
                match lagrouter::app::start(handle, shutdown).await {
                    Ok(running) => {
                        let lagrouter::app::Running {
                            addr,
                            shared,
                            health,
                            shutdown,
                            join,
                        } = running;
                        let _ = started_tx.send(Ok((addr, shared, health, shutdown)));
                        let _ = join.await;
                        let _ = done_tx.send(());
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                    }
                }
            });
        })
        .expect("spawn lagrouter's thread");
    let (addr, shared, health, shutdown) = started_rx.await.expect("lagrouter's thread ran")?;
    Ok(lagrouter::app::Running {
        addr,
        shared,
        health,
        shutdown,
        join: tokio::spawn(async move {
            let _ = done_rx.await;
        }),
    })
}

/// A running proxy; stops (without waiting) when dropped.
pub struct TestProxy {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    _running: lagrouter::app::Running,
}

impl TestProxy {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The proxy's health monitor.
    pub fn health(&self) -> &lagrouter_health::HealthMonitor {
        &self._running.health
    }

    /// Starts the proxy's shutdown (as SIGTERM does), without waiting.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }

    /// A libpq-style connection string for `user`/`password` on the app database.
    pub fn conn_str(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=app \
             connect_timeout=10",
            self.port()
        )
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A proxy with `role` (created if missing) as a `trust` user, and a raw
/// protocol session of it.
pub async fn trusted_session(role: &'static str) -> (TestProxy, super::raw::RawConn) {
    super::ensure_role(role).await;
    let proxy = ProxyBuilder::new()
        .user(&format!(
            "name = \"{role}\"\npassword = \"{role}\"\nauth = \"trust\""
        ))
        .start()
        .await;
    let c = super::raw::RawConn::login_trust(proxy.addr, role).await;
    (proxy, c)
}
