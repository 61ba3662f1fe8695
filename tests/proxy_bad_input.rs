//! Bad input on raw sockets and unavailable resources: malformed, truncated
//! and oversized startup packets and messages, garbage message types, a
//! client closing mid-message. Each gets an ErrorResponse or a close within
//! seconds, and other clients keep working (the proxy has ONE server
//! connection, so a leaked one would show as a checkout timeout). Then a
//! node that is down (08006 naming it) and a checkout timeout (53300 naming
//! the pool).

mod support;

use std::time::{Duration, Instant};

use support::raw::{RawConn, message, query, startup_message};
use support::*;

const FEW: Duration = Duration::from_secs(5);

/// The probe table, created once per test binary: two concurrent
/// `CREATE TABLE IF NOT EXISTS` of one name can both miss it and collide
/// (23505 on `pg_type`), as these tests run in parallel.
static PROBE_TABLE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

async fn proxy() -> TestProxy {
    ensure_role("lr_bad").await;
    PROBE_TABLE
        .get_or_init(|| {
            blocking(|c| {
                c.sql(
                    c.primary_index(),
                    "create table if not exists lr_bad_probe (x int); \
                     grant all on lr_bad_probe to public",
                )
                .expect("probe table");
            })
        })
        .await;
    ProxyBuilder::new()
        .pool_size(1)
        .pool("checkout_timeout = \"3s\"")
        .server("client_login_timeout = \"2s\"")
        .user("name = \"lr_bad\"\npassword = \"lr_bad\"\nauth = \"trust\"")
        .start()
        .await
}

/// The proxy still serves a normal client, and its only server connection
/// is not stuck in a transaction.
async fn others_keep_working(proxy: &TestProxy, after: &str) {
    let c = try_connect_as(proxy, "app", "app")
        .await
        .unwrap_or_else(|e| panic!("after {after}: login failed: {}", describe(&e)));
    // Simple protocol: outside a transaction both are this query's start.
    // The insert makes it a write, so it needs the primary's only connection.
    let r = within(
        FEW,
        after,
        c.simple_query(
            "insert into lr_bad_probe values (1); select (now() = statement_timestamp())::text",
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("after {after}: query failed: {}", describe(&e)));
    let v = r.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(
        v.as_deref(),
        Some("true"),
        "after {after}: inherited a transaction"
    );
}

/// Sends `bytes` on a fresh connection; expects an error (with `code` if
/// given) or a close, then a close, all within a few seconds.
async fn refused(proxy: &TestProxy, what: &str, bytes: &[u8], code: Option<&str>) {
    let started = Instant::now();
    let mut raw = RawConn::connect(proxy.addr).await;
    let _ = raw.send(bytes).await;
    if let Some(e) = raw.error_or_close(FEW).await {
        if let Some(code) = code {
            assert_eq!(e.code(), code, "{what}: {:?}", e.fields());
        }
    }
    raw.closed(FEW).await;
    assert!(
        started.elapsed() < FEW,
        "{what}: took {:?}",
        started.elapsed()
    );
    others_keep_working(proxy, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets() {
    within(
        Duration::from_secs(120),
        "test malformed_startup_packets",
        async {
            let proxy = proxy().await;
            let cases: Vec<(&str, Vec<u8>)> = vec![
                ("length 2", vec![0, 0, 0, 2]),
                ("length 0", vec![0, 0, 0, 0, 0, 0, 0, 0]),
                ("negative length", vec![0x80, 0, 0, 0, 0, 3, 0, 0]),
                ("length 1 GiB", vec![0x40, 0, 0, 0, 0, 3, 0, 0]),
                ("length 100 kB", {
                    let mut v = 100_000i32.to_be_bytes().to_vec();
                    v.extend_from_slice(&[0, 3, 0, 0]);
                    v.extend(std::iter::repeat_n(b'a', 1000));
                    v
                }),
                (
                    "unknown protocol 9.0",
                    startup_message(9 << 16, &[("user", "app")]),
                ),
                ("parameter without terminator", {
                    let mut v = 16i32.to_be_bytes().to_vec();
                    v.extend_from_slice(&[0, 3, 0, 0]);
                    v.extend_from_slice(b"userapp\0");
                    v
                }),
                ("no user", startup_message(196608, &[("database", "app")])),
            ];
            for (what, bytes) in cases {
                refused(&proxy, what, &bytes, None).await;
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_startup_then_close_or_silence() {
    within(
        Duration::from_secs(120),
        "test truncated_startup_then_close_or_silence",
        async {
            let proxy = proxy().await;
            // Half a packet, then the client closes its side.
            let mut raw = RawConn::connect(proxy.addr).await;
            let full = startup_message(196608, &[("user", "app"), ("database", "app")]);
            raw.send(&full[..10]).await.unwrap();
            raw.stream.shutdown().await.ok();
            raw.closed(FEW).await;
            others_keep_working(&proxy, "truncated startup + close").await;
            // Half a packet, then nothing: client_login_timeout (2 s) ends it.
            let mut raw = RawConn::connect(proxy.addr).await;
            raw.send(&full[..10]).await.unwrap();
            if let Some(e) = raw.error_or_close(FEW).await {
                assert!(e.code().starts_with("08"), "{:?}", e.fields());
            }
            others_keep_working(&proxy, "truncated startup + silence").await;
        },
    )
    .await
}

use tokio::io::AsyncWriteExt;

/// After login: oversized, negative and short lengths, a garbage type, and
/// a truncated message followed by a close (inside a transaction too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_after_login() {
    within(
        Duration::from_secs(120),
        "test bad_messages_after_login",
        async {
            let proxy = proxy().await;
            let huge = {
                let mut v = vec![b'Q'];
                v.extend_from_slice(&((1i32 << 30) + 1).to_be_bytes());
                v.extend_from_slice(b"select 1");
                v
            };
            let max = {
                let mut v = vec![b'Q'];
                v.extend_from_slice(&i32::MAX.to_be_bytes());
                v
            };
            let negative = vec![b'Q', 0xff, 0xff, 0xff, 0xf0];
            let short = vec![b'Q', 0, 0, 0, 2];
            let garbage = message(b'z', b"hello\0");
            // Sync may not be large (PostgreSQL's 10000-byte limit).
            let big_sync = message(b'S', &[0u8; 20_000]);
            let cases: Vec<(&str, Vec<u8>, &str)> = vec![
                ("length > 1 GiB", huge, "54000"),
                ("length i32::MAX", max, "54000"),
                ("Sync of 20000 bytes", big_sync, "54000"),
                ("negative length", negative, "08"),
                ("length 2", short, "08"),
                ("garbage type 'z'", garbage, "08"),
            ];
            for (what, bytes, code) in cases {
                let started = Instant::now();
                let mut raw = RawConn::login_trust(proxy.addr, "lr_bad").await;
                let _ = raw.send(&bytes).await;
                if let Some(e) = raw.error_or_close(FEW).await {
                    assert!(
                        e.code().starts_with(code),
                        "{what}: unexpected SQLSTATE {:?}",
                        e.fields()
                    );
                }
                raw.closed(FEW).await;
                assert!(started.elapsed() < Duration::from_secs(8), "{what}: slow");
                others_keep_working(&proxy, what).await;
            }
            // Inside a transaction (a server attached: messages take the
            // session's path with no future, which hands these back to the
            // full one): a garbage type and a Bind cut short end the session
            // with FATAL 08P01, as outside one.
            let cut_bind = message(b'B', b"\0lr_stmt");
            let in_txn: [(&str, Vec<u8>); 2] = [
                (
                    "garbage type 'z' in a transaction",
                    message(b'z', b"hello\0"),
                ),
                ("a Bind cut short in a transaction", cut_bind),
            ];
            for (what, bytes) in in_txn {
                let mut raw = RawConn::login_trust(proxy.addr, "lr_bad").await;
                raw.send(&query("begin; select 1")).await.unwrap();
                raw.until_ready(FEW).await;
                raw.send(&bytes).await.unwrap();
                let e = raw
                    .error_or_close(FEW)
                    .await
                    .unwrap_or_else(|| panic!("{what}: closed with no error"));
                assert_eq!(e.code(), "08P01", "{what}: {:?}", e.fields());
                raw.closed(FEW).await;
                others_keep_working(&proxy, what).await;
            }
            // Truncated message, then close; outside and inside a transaction.
            for in_txn in [false, true] {
                let what = format!("truncated message + close (in transaction: {in_txn})");
                let mut raw = RawConn::login_trust(proxy.addr, "lr_bad").await;
                if in_txn {
                    raw.send(&query("begin; select 1")).await.unwrap();
                    raw.until_ready(FEW).await;
                }
                let q = query("select 'never completes'");
                raw.send(&q[..q.len() - 6]).await.unwrap();
                raw.stream.shutdown().await.ok();
                raw.closed(FEW).await;
                others_keep_working(&proxy, &what).await;
            }
            // A truncated message with the socket kept open must not hold the only
            // server connection forever... unless it is in a transaction, where the
            // client owns it; outside a transaction others must get through.
            let mut idle = RawConn::login_trust(proxy.addr, "lr_bad").await;
            let q = query("select 'half'");
            idle.send(&q[..3]).await.unwrap();
            others_keep_working(&proxy, "truncated message, socket open").await;
            drop(idle);
        },
    )
    .await
}

/// A proxy whose only node is down: login fails with 08xxx naming the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_fails_login_naming_the_node() {
    within(Duration::from_secs(120), "test node_down_fails_login_naming_the_node", async {
    let port = closed_port();
    let proxy = ProxyBuilder::new()
        .no_wait_healthy()
        .pool("connect_timeout = \"2s\"")
        .nodes(&format!(
            "[[nodes]]\nname = \"deadnode\"\nhost = \"127.0.0.1\"\nport = {port}\nrole = \"primary\"\n"
        ))
        .start()
        .await;
    let started = Instant::now();
    let r = try_connect_as(&proxy, "app", "app").await;
    let e = match r {
        Ok(_) => panic!("login through a dead node succeeded"),
        Err(e) => e,
    };
    let code = sqlstate(&e).unwrap_or_else(|| panic!("no SQLSTATE: {e:?}"));
    assert!(
        code.starts_with("08") || code == "57P03",
        "unexpected SQLSTATE: {}",
        describe(&e)
    );
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(
        code.starts_with("08"),
        "node down should be 08xxx: {}",
        describe(&e)
    );
    assert!(msg.contains("deadnode"), "node not named: {msg}");
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    })
    .await
}

/// Pool of one, held by an open transaction: another client's query gets
/// 53300 naming the pool within checkout_timeout + 1 s, and works after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_timeout_is_53300_naming_the_pool() {
    within(
        Duration::from_secs(120),
        "test checkout_timeout_is_53300_naming_the_pool",
        async {
            let proxy = ProxyBuilder::new()
                .pool_size(1)
                .pool("checkout_timeout = \"1s\"")
                .start()
                .await;
            let holder = connect(&proxy).await;
            let waiter = connect(&proxy).await;
            holder
                .batch_execute("create table if not exists lr_checkout_t (x int)")
                .await
                .unwrap();
            holder
                .batch_execute("begin; insert into lr_checkout_t values (0)")
                .await
                .unwrap();
            let started = Instant::now();
            let r = within(
                Duration::from_secs(5),
                "query waiting for the pool",
                // A write, so it needs the primary's pool.
                waiter.query("insert into lr_checkout_t values (1) returning x", &[]),
            )
            .await;
            let msg = expect_sqlstate(r, "53300", "checkout timeout");
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(900) && took < Duration::from_secs(2),
                "took {took:?} for a 1 s checkout_timeout"
            );
            assert!(msg.contains("primary/app/app"), "pool not named: {msg}");
            holder.batch_execute("commit").await.unwrap();
            assert_eq!(
                scalar(&waiter, "select 'now ok'").await.as_deref(),
                Some("now ok")
            );
        },
    )
    .await
}

/// An extra replica that is down does not disturb clients: logins, reads
/// and writes work through the other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_replica_does_not_disturb_clients() {
    let c = blocking(|c| c).await;
    let port = closed_port();
    let proxy = ProxyBuilder::new()
        .no_wait_healthy()
        .pool("connect_timeout = \"2s\"")
        .nodes(&format!(
            "{}[[nodes]]\nname = \"deadreplica\"\nhost = \"127.0.0.1\"\nport = {port}\nrole = \"replica\"\n",
            cluster_nodes(c)
        ))
        .start()
        .await;
    // Let the monitor see the dead replica.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let client = within(FEW, "login", try_connect_as(&proxy, "app", "app"))
        .await
        .unwrap_or_else(|e| panic!("login with a dead replica: {}", describe(&e)));
    for i in 0..50 {
        let r = within(FEW, "read", client.query_one("select $1::int", &[&i]))
            .await
            .unwrap_or_else(|e| panic!("read {i}: {}", describe(&e)));
        assert_eq!(r.get::<_, i32>(0), i);
    }
    within(
        FEW,
        "write",
        client.batch_execute(
            "create table if not exists lr_down_t (x int); insert into lr_down_t values (1)",
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("write: {}", describe(&e)));
}

/// `client_login_timeout` (2 s here) bounds the whole login, not each
/// phase: a client that takes 1.5 s to send its startup packet and then
/// sits on the SCRAM exchange is refused 2 s after it connected, not 2 s
/// after its last step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_timeout_bounds_the_whole_login() {
    within(Duration::from_secs(60), "test the_login_timeout", async {
        let proxy = proxy().await;
        let started = Instant::now();
        let mut raw = RawConn::connect(proxy.addr).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        raw.send(&startup_message(
            196608,
            &[("user", "app"), ("database", "app")],
        ))
        .await
        .expect("send startup");
        let sasl = raw.recv(FEW).await.expect("an authentication request");
        assert_eq!(sasl.tag, b'R');
        // Say nothing more: the login must end at 2 s after connecting.
        let e = raw.error_or_close(FEW).await;
        let took = started.elapsed();
        eprintln!("login refused after {took:?}: {e:?}");
        if let Some(e) = e {
            assert_eq!(e.code(), "08006", "{:?}", e.fields());
        }
        assert!(
            took < Duration::from_millis(2600),
            "the login took {took:?} with a 2 s timeout"
        );
    })
    .await
}
