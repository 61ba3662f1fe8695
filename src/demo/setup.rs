//! The lagrouter the demo puts in front of its cluster: which ports it
//! listens on, the configuration it runs with, and starting it.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use lagrouter_config::{Config, ConfigError, ConfigHandle};
use tokio_util::sync::CancellationToken;

use crate::app::Running;
use crate::pgcluster::Cluster;

/// Where clients connect by default, so the printed psql line is the one
/// the README shows; used only when free.
const PREFERRED_LISTEN: &str = "127.0.0.1:6432";
/// The conventional postgres-exporter port; used only when free.
const PREFERRED_METRICS: &str = "127.0.0.1:9187";

/// The addresses the demo's lagrouter will use.
pub struct Addresses {
    /// Client listener; its port may be 0 (then the bound one is printed).
    pub listen: SocketAddr,
    /// Prometheus endpoint.
    pub metrics: SocketAddr,
}

impl Addresses {
    /// The preferred ports when nobody holds them, otherwise free ones.
    /// Probing then releasing leaves a small race with other programs; the
    /// client listener falls back to port 0 rather than failing on it.
    pub fn choose() -> Addresses {
        Addresses {
            listen: free_or(PREFERRED_LISTEN, false),
            metrics: free_or(PREFERRED_METRICS, true),
        }
    }
}

/// `preferred` if it can be bound now; otherwise a free port chosen by the
/// kernel (`concrete`) or port 0 (not `concrete`: the listener binds it).
fn free_or(preferred: &str, concrete: bool) -> SocketAddr {
    let preferred: SocketAddr = preferred.parse().expect("constant address");
    if TcpListener::bind(preferred).is_ok() {
        return preferred;
    }
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    if !concrete {
        return any;
    }
    // The metrics exporter does not report the port it bound, so we must
    // name one ourselves.
    TcpListener::bind(any)
        .and_then(|l| l.local_addr())
        .unwrap_or(any)
}

/// The demo's configuration: fast checks so a demotion shows within a
/// second, a heartbeat so time lag is measured, the defaults elsewhere
/// (read-your-writes on, breaker cap 20%) because those are what users get.
pub fn config(cluster: &Cluster, addrs: &Addresses) -> Result<Config, ConfigError> {
    let mut t = format!(
        r#"[server]
listen = "{listen}"
metrics_listen = "{metrics}"
shutdown_timeout = "5s"

[[users]]
name = "{user}"
password = "{password}"
admin = true

[pool]
size = 10

[health]
database = "{database}"
check_interval = "250ms"
check_timeout = "1s"
max_lag_bytes = 1048576
max_lag_time = "2s"
heartbeat_interval = "500ms"
recover_after_checks = 3
"#,
        listen = addrs.listen,
        metrics = addrs.metrics,
        user = cluster.app_user(),
        password = cluster.app_password(),
        database = cluster.database(),
    );
    t.push_str(&cluster.nodes_toml());
    Config::from_toml_str(&t)
}

/// Starts lagrouter on the preferred ports, or on any when they are taken.
pub async fn start_proxy(cluster: &Cluster) -> Result<(Running, SocketAddr), String> {
    let mut addrs = Addresses::choose();
    for attempt in 0..2 {
        let config = config(cluster, &addrs).map_err(|e| format!("demo config: {e}"))?;
        match crate::app::start(ConfigHandle::new(config), CancellationToken::new()).await {
            Ok(r) => return Ok((r, addrs.metrics)),
            // Someone took the preferred port since we probed it.
            Err(_) if attempt == 0 => addrs.listen.set_port(0),
            Err(e) => return Err(format!("cannot start lagrouter: {e}")),
        }
    }
    unreachable!("the second attempt returns")
}

/// Where everything listens, and how to connect with psql.
pub fn ports_text(cluster: &Cluster, running: &Running, metrics: SocketAddr, log: &Path) -> String {
    let mut t = String::new();
    for i in 0..cluster.node_count() {
        t.push_str(&format!(
            "  {:<10} {}:{}\n",
            cluster.node_name(i),
            cluster.host(),
            cluster.port(i)
        ));
    }
    let conn = format!(
        "host={} port={} user={} password={}",
        running.addr.ip(),
        running.addr.port(),
        cluster.app_user(),
        cluster.app_password()
    );
    t.push_str(&format!(
        "  {:<10} {}   metrics http://{metrics}/metrics   log {}\n\
         connect while it runs:\n  psql \"{conn} dbname={}\"\n  \
         psql \"{conn} dbname=lagrouter\"   (admin console: SHOW NODES; SHOW BREAKER;)",
        "lagrouter",
        running.addr,
        log.display(),
        cluster.database()
    ));
    t
}
