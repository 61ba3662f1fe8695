//! The admin console through a proxy in front of the shared cluster:
//! `SHOW NODES` / `POOLS` / `CLIENTS` / `SERVERS` / `STATS` / `BREAKER` /
//! `CONFIG` / `RELOAD` / `HELP`, `RELOAD` without a file, `DRAIN` and
//! `UNDRAIN` of a replica checked by where reads land
//! (`inet_server_port()`), the primary not drainable, errors for unknown
//! commands and the extended protocol, and non-admin users refused (42501).

mod support;

use std::time::Duration;

use support::*;
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(30);

async fn proxy() -> TestProxy {
    ProxyBuilder::new()
        .server("admin_database = \"lagrouter\"")
        .user("name = \"lradmin\"\npassword = \"adminpw\"\nadmin = true")
        // Equally fresh replicas take turns, so an undrained one is seen soon.
        .routing("balance = \"round_robin\"")
        .start()
        .await
}

fn admin_str(proxy: &TestProxy, user: &str, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname=lagrouter connect_timeout=10",
        proxy.port()
    )
}

async fn admin(proxy: &TestProxy) -> Conn {
    try_connect_str(&admin_str(proxy, "lradmin", "adminpw"))
        .await
        .unwrap_or_else(|e| panic!("admin console connect: {}", describe(&e)))
}

/// Ports of `n` reads of `inet_server_port()`, each its own transaction.
async fn read_ports(c: &Client, n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    for _ in 0..n {
        let v = scalar(c, "SELECT inet_server_port()")
            .await
            .expect("a port");
        ports.push(v.parse().expect("port number"));
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_state_and_drains_replicas() {
    within(Duration::from_secs(180), "admin console test", async {
        let proxy = proxy().await;
        let cluster = blocking(|c| c).await;
        let replica1 = cluster.node_name(1).to_string();
        let replica1_port = cluster.port(1);
        let app = connect(&proxy).await;
        // Until the function catalog is loaded from the primary,
        // inet_server_port() is an unknown function and goes to the
        // primary as a possible write: wait for replica reads.
        let primary_port = cluster.port(cluster.primary_index());
        let app_ref = &app;
        eventually(
            Duration::from_secs(20),
            "reads leave the primary",
            || async move { (read_ports(app_ref, 1).await != [primary_port]).then_some(()) },
        )
        .await;
        read_ports(&app, 4).await;
        let a = admin(&proxy).await;

        let nodes = console_rows(&a, "SHOW NODES").await;
        assert_eq!(nodes.len(), 3, "{nodes:?}");
        for n in &nodes {
            assert_eq!(n["state"], "healthy", "{n:?}");
            assert!(n.contains_key("lag_bytes") && n.contains_key("good_checks"));
        }
        let served: u64 = nodes
            .iter()
            .map(|n| n["reads_served"].parse::<u64>().unwrap())
            .sum();
        assert!(served >= 5, "reads served: {nodes:?}");
        assert_eq!(
            nodes.iter().filter(|n| n["write_target"] == "true").count(),
            1
        );

        let pools = console_rows(&a, "show pools;").await;
        assert!(
            pools
                .iter()
                .any(|p| p["user"] == "app" && p["database"] == "app"),
            "{pools:?}"
        );
        assert!(!console_rows(&a, "SHOW SERVERS").await.is_empty());
        let clients = console_rows(&a, "SHOW CLIENTS").await;
        assert!(
            clients
                .iter()
                .any(|c| c["user"] == "app" && c["addr"] == "127.0.0.1"),
            "{clients:?}"
        );
        let stats = console_rows(&a, "Show Stats").await;
        assert!(
            stats.iter().any(|s| s["stat"] == "transactions_replica"),
            "{stats:?}"
        );
        let breaker = console_rows(&a, "SHOW BREAKER").await;
        assert_eq!(breaker.len(), 1);
        assert_eq!(breaker[0]["state"], "closed", "{breaker:?}");
        let config = console_rows(&a, "SHOW CONFIG").await;
        let text = format!("{config:?}");
        assert!(!text.contains("adminpw") && !text.contains("\"app\\npassword"));
        let user = config
            .iter()
            .find(|r| r["key"] == "users.lradmin")
            .expect("users.lradmin row");
        assert!(
            user["value"].contains("password=<redacted>") && user["value"].contains("admin=true"),
            "{user:?}"
        );
        assert_eq!(console_rows(&a, "SHOW HELP").await.len(), 14);

        // No file to reload: a clear error, and the console stays usable.
        let e = expect_sqlstate(a.simple_query("RELOAD").await, "F0000", "RELOAD");
        assert!(e.contains("no configuration file"), "{e}");
        let reload = console_rows(&a, "SHOW RELOAD").await;
        assert_eq!(reload.len(), 1, "{reload:?}");

        let e = expect_sqlstate(a.simple_query("SHOW everything").await, "42601", "bad");
        assert!(e.contains("everything"), "{e}");
        expect_sqlstate(a.simple_query("DRAIN nosuchnode").await, "42704", "unknown");
        let primary = cluster.node_name(cluster.primary_index()).to_string();
        let e = expect_sqlstate(
            a.simple_query(&format!("DRAIN {primary}")).await,
            "55000",
            "drain primary",
        );
        assert!(e.contains("primary"), "{e}");
        // The extended protocol is refused, the connection survives.
        expect_sqlstate(a.query("SHOW NODES", &[]).await, "0A000", "extended");

        // Drained: no read reaches replica1 (a session already open included).
        console_rows(&a, &format!("drain {replica1};")).await;
        let n = console_rows(&a, "SHOW NODES").await;
        let r1 = n.iter().find(|r| r["name"] == replica1).unwrap();
        assert_eq!(r1["drained"], "true", "{r1:?}");
        let ports = read_ports(&app, 20).await;
        assert!(
            !ports.contains(&replica1_port),
            "drained but read: {ports:?}"
        );
        let fresh = connect(&proxy).await;
        let ports = read_ports(&fresh, 20).await;
        assert!(
            !ports.contains(&replica1_port),
            "drained but read: {ports:?}"
        );

        // Undrained: replica1 serves reads again. Right after the undrain
        // its lag may be a step behind replica2's while the heartbeat
        // replays (least_lag then prefers replica2), so reads go on for up
        // to 10 s, not for a fixed count.
        console_rows(&a, &format!("UNDRAIN \"{replica1}\"")).await;
        let started = std::time::Instant::now();
        let mut ports = Vec::new();
        while !ports.contains(&replica1_port) && started.elapsed() < Duration::from_secs(10) {
            ports.extend(read_ports(&app, 20).await);
        }
        assert!(
            ports.contains(&replica1_port),
            "undrained, unused after {:?}: {ports:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_users_are_refused() {
    within(Duration::from_secs(120), "non-admin refusal", async {
        let proxy = proxy().await;
        let r = try_connect_str(&admin_str(&proxy, "app", "app")).await;
        let e = expect_sqlstate(r.map(|_| ()), "42501", "non-admin user");
        assert!(e.contains("admin console"), "{e}");
        // Wrong password to the console: refused like any login.
        let r = try_connect_str(&admin_str(&proxy, "lradmin", "wrong")).await;
        expect_sqlstate(r.map(|_| ()), "28P01", "bad password");
    })
    .await;
}

/// A proxy started from a file, as `lagrouter run -c` does, so RELOAD has
/// something to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_errors_show_in_the_console() {
    within(Duration::from_secs(120), "reload through the console", async {
        init_logs();
        let c = blocking(|c| c).await;
        let dir = TempDir::new("admin-reload");
        let path = dir.path().join("lagrouter.toml");
        let builder = ProxyBuilder::new()
            .server("admin_database = \"lagrouter\"")
            .user("name = \"lradmin\"\npassword = \"adminpw\"\nadmin = true");
        let text = builder.toml(c);
        std::fs::write(&path, &text).unwrap();
        let config = lagrouter_config::Config::from_toml_str(&text).unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = start_lagrouter(config, shutdown.clone())
        .await
        .expect("proxy starts");
        let _stop = shutdown.clone().drop_guard();
        running.shared.set_config_path(path.clone());
        let conn_str = format!(
            "host=127.0.0.1 port={} user=lradmin password=adminpw dbname=lagrouter connect_timeout=10",
            running.addr.port()
        );
        let a = try_connect_str(&conn_str)
            .await
            .unwrap_or_else(|e| panic!("admin console: {}", describe(&e)));

        console_rows(&a, "RELOAD").await;
        let r = console_rows(&a, "SHOW RELOAD").await;
        assert_eq!(r[0]["file"], path.display().to_string(), "{r:?}");
        assert_eq!(r[0]["last_error"], "", "{r:?}");

        // A file that does not parse: refused, the error stays visible.
        std::fs::write(&path, "[pool]\nsize = \"lots\"\n").unwrap();
        let e = expect_sqlstate(a.simple_query("reload;").await, "F0000", "bad file");
        assert!(e.contains("size"), "{e}");
        let r = console_rows(&a, "SHOW RELOAD").await;
        assert!(r[0]["last_error"].contains("size"), "{r:?}");
        let cfg = console_rows(&a, "SHOW CONFIG").await;
        let last = cfg.iter().find(|r| r["key"] == "reload.last_error").unwrap();
        assert!(last["value"].contains("size"), "{last:?}");
        let size = cfg.iter().find(|r| r["key"] == "pool.size").unwrap();
        assert_eq!(size["value"], "20", "the running config is kept");

        // Fixed (and changed): applied, and the error is cleared.
        std::fs::write(&path, text.replace("[pool]\n", "[pool]\nsize = 7\n")).unwrap();
        console_rows(&a, "RELOAD").await;
        let cfg = console_rows(&a, "SHOW CONFIG").await;
        let size = cfg.iter().find(|r| r["key"] == "pool.size").unwrap();
        assert_eq!(size["value"], "7");
        assert_eq!(console_rows(&a, "SHOW RELOAD").await[0]["last_error"], "");
    })
    .await;
}

/// What drivers never send: empty queries, several commands in one text,
/// extended-protocol messages, an oversized message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_bad_input() {
    use support::raw::{Msg, RawConn, message, query, startup_message};
    within(Duration::from_secs(120), "console bad input", async {
        let proxy = ProxyBuilder::new()
            .server("admin_database = \"lagrouter\"")
            .user("name = \"rawadmin\"\nauth = \"trust\"\nadmin = true")
            .start()
            .await;
        let mut c = RawConn::connect(proxy.addr).await;
        let startup = startup_message(196608, &[("user", "rawadmin"), ("database", "lagrouter")]);
        c.send(&startup).await.unwrap();
        let welcome = c.until_ready(T).await;
        assert!(welcome.iter().any(|m| m.tag == b'K'), "{welcome:?}");

        c.send(&query(" ; ")).await.unwrap();
        let tags: Vec<u8> = c.until_ready(T).await.iter().map(|m| m.tag).collect();
        assert_eq!(tags, b"IZ");
        // Two commands, the second bad: the first answers, then the error.
        c.send(&query("show breaker; show nonsense; show nodes"))
            .await
            .unwrap();
        let tags: Vec<u8> = c.until_ready(T).await.iter().map(|m| m.tag).collect();
        assert_eq!(tags, b"TDCEZ");
        // Parse/Bind/Execute/Sync: one 0A000, then ReadyForQuery.
        let mut ext = message(b'P', b"\0SHOW NODES\0\0\0");
        ext.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        ext.extend(message(b'E', b"\0\0\0\0\0"));
        ext.extend(message(b'S', b""));
        c.send(&ext).await.unwrap();
        let msgs = c.until_ready(T).await;
        let errors = Msg::error_codes(&msgs);
        assert_eq!(errors, ["0A000"], "{msgs:?}");
        // Still usable.
        c.send(&query("SHOW HELP")).await.unwrap();
        assert_eq!(c.until_ready(T).await.last().unwrap().tag, b'Z');
        // Over 64 KiB: FATAL, closed.
        c.send(&query(&"x".repeat(100_000))).await.unwrap();
        // (The close may reset the socket before the error is read, since
        // the client is still sending: then only the close is seen.)
        if let Some(e) = c.error_or_close(T).await {
            assert_eq!(e.code(), "08P01", "{:?}", e.fields());
            c.closed(T).await;
        }
    })
    .await;
}
