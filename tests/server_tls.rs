//! TLS from lagrouter to the nodes (`[server_tls]`, per-node `sslmode`).
//!
//! One cluster for the binary, a primary and one replica with `ssl = on`,
//! whose `pg_hba.conf` refuses the application user without TLS and asks
//! it for a client certificate signed by the test CA. The CA, the nodes'
//! certificate (for `localhost` only) and lagrouter's client certificate
//! are made here. So every pool, health, replay-poller and catalog
//! connection that works below went over verified TLS.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use lagrouter::pgcluster::{Cluster, ClusterOptions};
use lagrouter_health::NodeState;
use support::client::{connect, describe, scalar, sqlstate, try_connect_as, within};
use support::proxy::{ProxyBuilder, TestProxy};
use support::tls::{PkiFiles, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Tls {
    cluster: &'static Cluster,
    files: PkiFiles,
}

static TLS: OnceLock<Tls> = OnceLock::new();

/// The binary's cluster and the files lagrouter reads (written into the
/// cluster's directory, so they go when it goes).
async fn tls() -> &'static Tls {
    tokio::task::spawn_blocking(|| {
        TLS.get_or_init(|| {
            let pki = TestPki::new();
            let cluster = Cluster::shared_with(|| ClusterOptions {
                replicas: 1,
                extra_conf: vec!["ssl = on".into(), "ssl_ca_file = 'root.crt'".into()],
                hba_first: vec![
                    "hostnossl all app 127.0.0.1/32 reject".into(),
                    "hostssl all app 127.0.0.1/32 scram-sha-256 clientcert=verify-ca".into(),
                ],
                data_files: vec![
                    ("server.crt".into(), pki.node_cert_pem.clone()),
                    ("server.key".into(), pki.node_key_pem.clone()),
                    ("root.crt".into(), pki.ca_pem.clone()),
                ],
                ..ClusterOptions::default()
            });
            let files = pki.write(&cluster.dir().join("client-pki"));
            Tls { cluster, files }
        })
    })
    .await
    .expect("TLS cluster starts")
}

/// `[[nodes]]` for the cluster under `host`, with optional per-node lines.
fn nodes(t: &Tls, host: &str, primary_extra: &str, replica_extra: &str) -> String {
    let c = t.cluster;
    format!(
        "[[nodes]]\nname = \"{}\"\nhost = \"{host}\"\nport = {}\nrole = \"primary\"\n{primary_extra}\n\
         [[nodes]]\nname = \"{}\"\nhost = \"{host}\"\nport = {}\nrole = \"replica\"\n{replica_extra}\n",
        c.node_name(0),
        c.port(0),
        c.node_name(1),
        c.port(1),
    )
}

/// A proxy with `sslmode`, the client certificate and `sslrootcert` = `root`.
fn builder(t: &Tls, mode: &str, root: Option<&std::path::Path>) -> ProxyBuilder {
    let mut b = ProxyBuilder::new()
        .server_tls(&format!("sslmode = \"{mode}\""))
        .server_tls(&format!("sslcert = \"{}\"", t.files.client_cert.display()))
        .server_tls(&format!("sslkey = \"{}\"", t.files.client_key.display()));
    if let Some(r) = root {
        b = b.server_tls(&format!("sslrootcert = \"{}\"", r.display()));
    }
    b
}

/// Login through `proxy` fails: returns the SQLSTATE and message.
async fn login_fails(proxy: &TestProxy) -> (String, String) {
    match try_connect_as(proxy, "app", "app").await {
        Ok(_) => panic!("login succeeded"),
        Err(e) => {
            let code = sqlstate(&e).unwrap_or_else(|| panic!("no SQLSTATE: {}", describe(&e)));
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default();
            (code, msg)
        }
    }
}

/// The health monitor's last word on node `i`, once it is not Healthy.
async fn unreachable_reason(proxy: &TestProxy, i: usize) -> String {
    support::eventually(Duration::from_secs(10), "node unreachable", || async {
        let snap = proxy.health().snapshot();
        let n = &snap.nodes[i];
        (n.state() == NodeState::Unreachable)
            .then(|| n.unreachable_reason.clone().unwrap_or_default())
    })
    .await
}

/// verify-full with host `localhost` (the name in the certificate): the
/// nodes get healthy over TLS, reads and writes work, and every connection
/// lagrouter holds on the nodes is encrypted; a read-your-writes read waits
/// on the replay poller (its own TLS connections) and is served by the
/// replica once it replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_passes_for_the_name_in_the_certificate() {
    within(Duration::from_secs(120), "verify-full", async {
        let t = tls().await;
        let proxy = builder(t, "verify-full", Some(&t.files.ca))
            .nodes(&nodes(t, "localhost", "", ""))
            .routing("read_your_writes_wait = \"10s\"")
            .start()
            .await;
        let client = connect(&proxy).await;
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS lr_tls_t (x int); INSERT INTO lr_tls_t VALUES (1)")
            .await
            .unwrap();
        // The session's own server connection, from the server's side.
        let ssl = scalar(&client, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await;
        assert_eq!(ssl.as_deref(), Some("true"), "pool connection is not TLS");

        // Reads reach the replica once the function catalog is loaded
        // (over its own TLS connection): until then inet_server_port() is
        // an unknown function and goes to the primary.
        let c = t.cluster;
        let replica_port = i32::from(c.port(1));
        let client_ref = &client;
        support::eventually(Duration::from_secs(20), "reads on the replica", || async move {
            let port = client_ref
                .query_one("SELECT inet_server_port()", &[])
                .await
                .ok()?
                .get::<_, i32>(0);
            (port == replica_port).then_some(())
        })
        .await;

        // Read-your-writes with the replica's replay paused: the read waits
        // for the replay poller to see the write on the replica.
        tokio::task::spawn_blocking(move || c.pause_replay(1)).await.unwrap().unwrap();
        client.batch_execute("INSERT INTO lr_tls_t VALUES (2)").await.unwrap();
        let resume = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tokio::task::spawn_blocking(move || c.resume_replay(1)).await.unwrap().unwrap();
        });
        let row = client
            .query_one("SELECT count(*)::int, inet_server_port() FROM lr_tls_t", &[])
            .await
            .unwrap();
        resume.await.unwrap();
        let (count, port): (i32, i32) = (row.get(0), row.get(1));
        assert!(count >= 2, "read did not see the session's write: {count}");
        assert_eq!(port, replica_port, "the caught-up replica did not serve the read");

        // Every connection of ours on either node is TLS.
        for i in 0..2 {
            let rows = tokio::task::spawn_blocking(move || {
                c.sql(
                    i,
                    "SELECT coalesce(string_agg(a.application_name || ':' || s.ssl::text, ','), '') \
                     FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                     WHERE a.usename = 'app'",
                )
            })
            .await
            .unwrap()
            .unwrap();
            assert!(!rows.is_empty(), "no connections of ours on node {i}");
            assert!(!rows.contains(":false"), "plain-text connection on node {i}: {rows}");
            assert!(rows.contains("lagrouter-health:true"), "health not over TLS on node {i}: {rows}");
        }
    })
    .await
}

/// A CA that did not sign the nodes' certificate: login gets 08006 naming
/// the node and the certificate problem; health says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_fails_with_08006_naming_the_node() {
    within(Duration::from_secs(120), "wrong CA", async {
        let t = tls().await;
        let proxy = builder(t, "verify-ca", Some(&t.files.other_ca))
            .nodes(&nodes(t, "localhost", "", ""))
            .pool("connect_timeout = \"2s\"")
            .no_wait_healthy()
            .start()
            .await;
        let (code, msg) = login_fails(&proxy).await;
        assert_eq!(code, "08006", "{msg}");
        assert!(
            msg.contains(t.cluster.node_name(0)),
            "node not named: {msg}"
        );
        assert!(msg.contains("UnknownIssuer"), "reason not given: {msg}");
        let reason = unreachable_reason(&proxy, 1).await;
        assert!(reason.contains("UnknownIssuer"), "health reason: {reason}");
    })
    .await
}

/// verify-full against host `127.0.0.1`, which the certificate does not
/// name, fails; verify-ca on the same host passes. Per-node `sslmode`
/// overrides `[server_tls]`: the primary (verify-ca) serves, the replica
/// (verify-full) is unreachable and reads fall back to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_host_name_fails_under_verify_full_only() {
    within(Duration::from_secs(120), "wrong host name", async {
        let t = tls().await;
        let proxy = builder(t, "verify-full", Some(&t.files.ca))
            .nodes(&nodes(t, "127.0.0.1", "sslmode = \"verify-ca\"", ""))
            .no_wait_healthy()
            .start()
            .await;
        let reason = unreachable_reason(&proxy, 1).await;
        assert!(
            reason.contains("not valid for name"),
            "health reason: {reason}"
        );
        // Writes work: the primary is reached over verify-ca.
        let client = connect(&proxy).await;
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS lr_tls_host_t (x int); INSERT INTO lr_tls_host_t VALUES (1)")
            .await
            .unwrap();
        assert_eq!(
            proxy.health().snapshot().nodes[0].state(),
            NodeState::Healthy
        );

        // The same host name for the primary too: the client's login says why.
        let only = ProxyBuilder::new()
            .server_tls("sslmode = \"verify-full\"")
            .server_tls(&format!("sslrootcert = \"{}\"", t.files.ca.display()))
            .server_tls(&format!("sslcert = \"{}\"", t.files.client_cert.display()))
            .server_tls(&format!("sslkey = \"{}\"", t.files.client_key.display()))
            .nodes(&nodes(t, "127.0.0.1", "", ""))
            .no_wait_healthy()
            .start()
            .await;
        let (code, msg) = login_fails(&only).await;
        assert_eq!(code, "08006", "{msg}");
        assert!(
            msg.contains(t.cluster.node_name(0)),
            "node not named: {msg}"
        );
        assert!(
            msg.contains("not valid for name"),
            "reason not given: {msg}"
        );
    })
    .await
}

/// `require` without `sslrootcert` encrypts without checking the
/// certificate (as libpq); `disable` is refused by the nodes' pg_hba.conf,
/// and so is TLS without lagrouter's client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_and_the_nodes_refuse_the_rest() {
    within(Duration::from_secs(120), "require and refusals", async {
        let t = tls().await;
        let proxy = builder(t, "require", None)
            .nodes(&nodes(t, "127.0.0.1", "", ""))
            .start()
            .await;
        let client = connect(&proxy).await;
        let ssl = scalar(
            &client,
            "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .await;
        assert_eq!(ssl.as_deref(), Some("true"));

        let plain = ProxyBuilder::new()
            .server_tls("sslmode = \"disable\"")
            .nodes(&nodes(t, "127.0.0.1", "", ""))
            .no_wait_healthy()
            .start()
            .await;
        // 28000 from the node, or 08006 from lagrouter when the health
        // monitor has already marked the node unreachable for that reason.
        let (code, msg) = login_fails(&plain).await;
        assert!(code == "28000" || code == "08006", "{code}: {msg}");
        assert!(msg.contains("no encryption"), "{msg}");

        let no_cert = ProxyBuilder::new()
            .server_tls("sslmode = \"require\"")
            .nodes(&nodes(t, "127.0.0.1", "", ""))
            .no_wait_healthy()
            .start()
            .await;
        let (code, msg) = login_fails(&no_cert).await;
        assert!(code == "28000" || code == "08006", "{code}: {msg}");
        assert!(msg.contains("certificate"), "{msg}");
    })
    .await
}

/// A node that answers the TLS request with `N`: `require` gets 08006
/// saying the node does not accept TLS. (A stand-in server, since the
/// cluster's nodes all accept it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_tls_is_refused_under_require() {
    within(Duration::from_secs(60), "node without TLS", async {
        // The binary's cluster must be the TLS one, whichever test runs first.
        tls().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answered = tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                let mut req = [0u8; 8];
                if s.read_exact(&mut req).await.is_ok() && req == [0, 0, 0, 8, 4, 210, 22, 47] {
                    let _ = s.write_all(b"N").await;
                    n += 1;
                }
            }
            n
        });
        let proxy = ProxyBuilder::new()
            .server_tls("sslmode = \"require\"")
            .nodes(&format!(
                "[[nodes]]\nname = \"plainnode\"\nhost = \"127.0.0.1\"\nport = {port}\nrole = \"primary\"\n"
            ))
            .no_wait_healthy()
            .start()
            .await;
        let (code, msg) = login_fails(&proxy).await;
        assert_eq!(code, "08006", "{msg}");
        assert!(msg.contains("plainnode"), "node not named: {msg}");
        // lagrouter's words, or tokio-postgres' when the health monitor
        // has already marked the node unreachable for that reason.
        assert!(
            msg.contains("does not accept TLS") || msg.contains("does not support TLS"),
            "reason not given: {msg}"
        );
        drop(proxy);
        answered.abort();
    })
    .await
}
