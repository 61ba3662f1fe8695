//! Operating a running lagrouter: live reload from the configuration file
//! (a new routing rule and a new lag threshold apply without a restart; a
//! broken file keeps the old configuration serving) and idle server
//! connections closed after `idle_timeout`.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lagrouter::pgcluster::Cluster;
use lagrouter_config::Config;
use support::{
    ProxyBuilder, TempDir, blocking, eventually, start_lagrouter, try_connect_str, within,
};
use tokio_util::sync::CancellationToken;

/// Starts lagrouter from a file, with the reload watcher, as `lagrouter run` does.
async fn start_from_file(path: &std::path::Path) -> (lagrouter::app::Running, CancellationToken) {
    let config = Config::load(path).expect("valid test config");
    let shutdown = CancellationToken::new();
    let running = within(
        Duration::from_secs(30),
        "starting lagrouter",
        start_lagrouter(config, shutdown.clone()),
    )
    .await
    .expect("lagrouter starts");
    lagrouter::watch::spawn(
        running.shared.clone(),
        path.to_path_buf(),
        shutdown.child_token(),
    );
    (running, shutdown)
}

fn conn_str(running: &lagrouter::app::Running) -> String {
    format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        running.addr.port()
    )
}

/// The port of the node that served `sql` (which must return it as its last column).
async fn served_by(client: &tokio_postgres::Client, sql: &str) -> i32 {
    let row = client
        .query_one(sql, &[])
        .await
        .expect("query through lagrouter");
    row.get::<_, i32>(row.len() - 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_rule_and_rejects_a_broken_file() {
    support::init_logs();
    let c: &'static Cluster = blocking(|c| c).await;
    let primary_port = i32::from(c.port(c.primary_index()));
    let dir = TempDir::new("reload");
    let path = dir.path().join("lagrouter.toml");
    let base = ProxyBuilder::new().toml(c);
    std::fs::write(&path, &base).unwrap();
    let (running, shutdown) = start_from_file(&path).await;
    let conn = try_connect_str(&conn_str(&running)).await.expect("connect");
    let sql = "SELECT 42 AS answer, inet_server_port()";

    // Before: a read, served by a replica once they are healthy.
    let client = &conn.client;
    eventually(
        Duration::from_secs(20),
        "reads reach a replica",
        || async move { (served_by(client, sql).await != primary_port).then_some(()) },
    )
    .await;

    // Load through lagrouter during both reloads; it must see no error.
    blocking(|c| c.pgbench_init(1))
        .await
        .expect("pgbench tables");
    let mut load = tokio::process::Command::new("pgbench");
    load.args([
        "-n", "-S", "-c", "4", "-j", "2", "-T", "6", "-M", "prepared",
    ])
    .args([
        "-h",
        "127.0.0.1",
        "-p",
        &running.addr.port().to_string(),
        "-U",
        "app",
        "app",
    ])
    .env("PGPASSWORD", "app")
    .kill_on_drop(true);
    let load = load.output();
    let load =
        tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(60), load).await });
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A rule and a tighter threshold, written the way editors do (rename).
    // (The rule table goes after the [routing] keys, before [health].)
    let with_rule = base.replace(
        "[health]\n",
        "[[routing.rules]]\npattern = \"^SELECT 42\"\nroute = \"primary\"\n[health]\nmax_lag_bytes = 65536\n",
    );
    let tmp = dir.path().join("lagrouter.toml.new");
    std::fs::write(&tmp, &with_rule).unwrap();
    let written = Instant::now();
    std::fs::rename(&tmp, &path).unwrap();
    loop {
        if served_by(&conn.client, sql).await == primary_port {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "the new rule did not apply within one second of the file change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running.shared.config.load().health.max_lag_bytes, 65536);
    // Other reads still go to replicas: only the rule changed.
    assert_ne!(
        served_by(&conn.client, "SELECT 7, inet_server_port()").await,
        primary_port
    );

    // A broken file: rejected, the running config (and the rule) stay.
    std::fs::write(&path, format!("{with_rule}\n[pool]\nsize = \"many\"\n")).unwrap();
    let shared = &running.shared;
    eventually(
        Duration::from_secs(5),
        "a broken file is reported",
        || async move {
            shared
                .reload
                .last_error
                .lock()
                .unwrap()
                .is_some()
                .then_some(())
        },
    )
    .await;
    let err = running
        .shared
        .reload
        .last_error
        .lock()
        .unwrap()
        .clone()
        .unwrap();
    assert!(err.contains("line"), "the error names the line: {err}");
    assert_eq!(
        served_by(&conn.client, sql).await,
        primary_port,
        "old rule still applies"
    );
    assert_eq!(running.shared.config.load().health.max_lag_bytes, 65536);
    // New clients still get in.
    let other = try_connect_str(&conn_str(&running))
        .await
        .expect("connect after a bad reload");
    other
        .client
        .simple_query("SELECT 1")
        .await
        .expect("serving on the old config");

    let out = load
        .await
        .unwrap()
        .expect("pgbench within 60 s")
        .expect("pgbench runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench under reload:\n{text}");
    assert!(
        text.contains("number of failed transactions: 0"),
        "errors under reload:\n{text}"
    );
    assert!(
        !text.contains("aborted"),
        "aborted clients under reload:\n{text}"
    );

    // An explicit reload of a good file clears the error.
    std::fs::write(&path, &with_rule).unwrap();
    running.shared.reload().expect("good file reloads");
    assert!(running.shared.reload.last_error.lock().unwrap().is_none());
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_connections_are_closed_after_idle_timeout() {
    support::init_logs();
    let c: &'static Cluster = blocking(|c| c).await;
    let text = ProxyBuilder::new().pool("idle_timeout = \"400ms\"").toml(c);
    let config = Config::from_toml_str(&text).expect("valid");
    let shutdown = CancellationToken::new();
    let running = start_lagrouter(config, shutdown.clone())
        .await
        .expect("starts");
    let conn = try_connect_str(&conn_str(&running)).await.expect("connect");
    conn.client
        .simple_query("CREATE TEMP TABLE IF NOT EXISTS x (a int)")
        .await
        .ok();
    drop(conn);
    let c2 = try_connect_str(&conn_str(&running)).await.expect("connect");
    c2.client.simple_query("SELECT 1").await.expect("query");
    drop(c2);
    let open = |shared: &Arc<lagrouter_proxy::Shared>| -> usize {
        shared
            .pools
            .all()
            .iter()
            .map(|p| p.stats.open.load(Ordering::Relaxed))
            .sum()
    };
    assert!(
        open(&running.shared) > 0,
        "traffic opened server connections"
    );
    let shared = &running.shared;
    eventually(
        Duration::from_secs(5),
        "idle connections are closed",
        || async move { (open(shared) == 0).then_some(()) },
    )
    .await;
    shutdown.cancel();
}
