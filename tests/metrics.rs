//! The Prometheus endpoint: a scrape shows per-node lag and state,
//! decisions by reason, pools and the breaker, and the values move with
//! traffic and with injected lag. (Its own test binary: the exporter
//! installs a process-wide recorder.)

mod support;

use std::time::Duration;

use lagrouter::pgcluster::Cluster;
use support::metrics::{scrape, sum, value};
use support::{ProxyBuilder, blocking, connect, eventually};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_and_with_injected_lag() {
    let metrics_port = free_port();
    let c: &'static Cluster = blocking(|c| c).await;
    let proxy = ProxyBuilder::new()
        .server(&format!("metrics_listen = \"127.0.0.1:{metrics_port}\""))
        .start()
        .await;
    let before = scrape(metrics_port).await;
    assert!(
        before.contains("lagrouter_node_lag_bytes"),
        "per-node lag:\n{before}"
    );
    assert!(
        before.contains("lagrouter_node_state"),
        "node state:\n{before}"
    );

    // Traffic: writes and reads through lagrouter.
    let conn = connect(&proxy).await;
    conn.client
        .batch_execute("CREATE TABLE IF NOT EXISTS metrics_t (id int)")
        .await
        .unwrap();
    for i in 0..50 {
        conn.client
            .execute("INSERT INTO metrics_t VALUES ($1)", &[&i])
            .await
            .unwrap();
        conn.client
            .query("SELECT count(*) FROM metrics_t", &[])
            .await
            .unwrap();
    }
    // The exporter publishes pool and breaker values once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = scrape(metrics_port).await;
    let writes = |t: &str| sum(t, "lagrouter_route_decisions_total", &["reason=\"write\""]);
    assert!(
        writes(&after) >= writes(&before) + 50.0,
        "write decisions moved:\n{after}"
    );
    let reads = |t: &str| {
        sum(
            t,
            "lagrouter_route_decisions_total",
            &["target=\"replica\""],
        ) + sum(
            t,
            "lagrouter_route_decisions_total",
            &["reason=\"read_your_writes\""],
        )
    };
    assert!(
        reads(&after) >= reads(&before) + 50.0,
        "read decisions moved:\n{after}"
    );
    assert!(
        sum(&after, "lagrouter_pool_checkouts_total", &[]) >= 50.0,
        "pool counters:\n{after}"
    );
    // The client is idle between transactions: every connection is back.
    assert_eq!(
        sum(&after, "lagrouter_pool_in_use_connections", &[]),
        0.0,
        "in use while idle:\n{after}"
    );
    assert!(
        sum(&after, "lagrouter_pool_idle_connections", &[]) >= 1.0,
        "idle connections:\n{after}"
    );
    assert!(
        after.contains("lagrouter_pool_size{"),
        "pool size:\n{after}"
    );
    assert!(value(&after, "lagrouter_client_connections").is_some_and(|v| v >= 1.0));
    assert_eq!(
        value(&after, "lagrouter_breaker_state{state=\"closed\"}"),
        Some(1.0),
        "breaker state:\n{after}"
    );
    // Sessions add their bytes to the counters at each transaction's end,
    // not only when they close: `conn` is still open. 100 statements went
    // each way (50 rows of `count(*)` and 50 `INSERT 0 1` answers), at
    // least 20 bytes each.
    for direction in ["to_servers", "to_clients"] {
        let label = format!("direction=\"{direction}\"");
        let bytes = sum(&after, "lagrouter_forwarded_bytes_total", &[&label]);
        assert!(bytes >= 2000.0, "{direction}: {bytes} bytes:\n{after}");
    }

    // Injected lag: replica1 paused, more than max_lag_bytes written.
    blocking(|c| c.pause_replay(1)).await.unwrap();
    let resume = scopeguard(|| {
        let _ = Cluster::shared().resume_replay(1);
    });
    blocking(|c| {
        c.sql(
            0,
            "CREATE TABLE IF NOT EXISTS metrics_fill (pad text);\n\
             INSERT INTO metrics_fill SELECT repeat(md5(g::text), 16) FROM generate_series(1, 6000) g;",
        )
    })
    .await
    .unwrap();
    let lagging = "lagrouter_node_state{node=\"replica1\",state=\"lagging\"}";
    eventually(
        Duration::from_secs(15),
        "replica1 lagging by over 1 MiB in /metrics",
        || async move {
            let t = scrape(metrics_port).await;
            let bytes = value(&t, "lagrouter_node_lag_bytes{node=\"replica1\"}").unwrap_or(0.0);
            (value(&t, lagging) == Some(1.0) && bytes > 1_048_576.0).then_some(())
        },
    )
    .await;
    drop(resume);
    let _ = c;
}

/// Runs `f` on drop (resumes replay even if an assertion fails).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
