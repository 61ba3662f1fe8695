//! Helpers for the routing tests: a lagrouter whose health snapshot the
//! test can read, paused replicas that resume even on panic, and reads that
//! return rows as text.

use std::time::Duration;

use lagrouter::pgcluster::Cluster;
use lagrouter_config::Config;
use lagrouter_health::NodeState;
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

use super::{ProxyBuilder, blocking, describe, eventually, try_connect_str, within};

// ---------------------------------------------------------------------------
// Helpers shared by the routing tests.

/// A lagrouter started in-process whose health snapshot the test can read.
pub struct Lr {
    pub running: lagrouter::app::Running,
    /// Port of each cluster node, by node index (0 = primary).
    pub ports: Vec<u16>,
}

impl Drop for Lr {
    fn drop(&mut self) {
        self.running.shutdown.cancel();
    }
}

impl Lr {
    /// Starts a proxy from `builder`'s TOML with `check_interval = 100ms`
    /// and the extra `[health]` lines, then waits until every node is healthy.
    pub async fn start(builder: ProxyBuilder, health: &str) -> Lr {
        super::init_logs();
        let c = blocking(|c| c).await;
        let mut text = builder.toml(c);
        assert!(text.contains("check_interval = \"250ms\"\n"), "{text}");
        text = text.replace(
            "check_interval = \"250ms\"\n",
            "check_interval = \"100ms\"\n",
        );
        text.push_str(health);
        let config = Config::from_toml_str(&text)
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"));
        let running = within(
            Duration::from_secs(30),
            "proxy start",
            super::start_lagrouter(config, CancellationToken::new()),
        )
        .await
        .expect("proxy starts");
        let lr = Lr {
            running,
            ports: (0..c.node_count()).map(|i| c.port(i)).collect(),
        };
        lr.wait_all_healthy(Duration::from_secs(20)).await;
        lr
    }

    pub fn conn_str(&self, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={user} dbname=app connect_timeout=10",
            self.running.addr.port()
        )
    }

    pub async fn connect(&self) -> super::Conn {
        try_connect_str(&self.conn_str("app"))
            .await
            .unwrap_or_else(|e| panic!("connect through the proxy: {}", describe(&e)))
    }

    pub fn all_healthy(&self) -> bool {
        self.running
            .health
            .snapshot()
            .nodes
            .iter()
            .all(|n| n.state() == NodeState::Healthy)
    }

    pub async fn wait_all_healthy(&self, within: Duration) {
        eventually(within, "all nodes healthy", || async move {
            self.all_healthy().then_some(())
        })
        .await;
    }

    /// The node index listening on `port`.
    pub fn node_of(&self, port: i32) -> usize {
        self.ports
            .iter()
            .position(|p| i32::from(*p) == port)
            .unwrap_or_else(|| panic!("port {port} is no cluster node ({:?})", self.ports))
    }
}

/// Pauses replay on replicas; resumes them when dropped (also on panic).
pub struct Paused(pub Vec<usize>);

impl Paused {
    pub async fn new(nodes: &[usize]) -> Paused {
        let guard = Paused(nodes.to_vec());
        for &n in nodes {
            blocking(move |c| c.pause_replay(n))
                .await
                .unwrap_or_else(|e| panic!("pause replay on node {n}: {e}"));
        }
        guard
    }

    pub async fn resume(mut self) {
        let nodes = std::mem::take(&mut self.0);
        blocking(move |c| {
            for n in nodes {
                c.resume_replay(n).expect("resume replay");
            }
        })
        .await;
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let c = Cluster::shared();
        for &n in &self.0 {
            if let Err(e) = c.resume_replay(n) {
                eprintln!("could not resume replay on node {n}: {e}");
            }
        }
    }
}

pub async fn caught_up() {
    blocking(|c| c.wait_caught_up(Duration::from_secs(30)))
        .await
        .expect("replicas catch up");
}

/// Rows of a simple query, as text.
pub async fn rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let msgs = within(Duration::from_secs(30), sql, client.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
