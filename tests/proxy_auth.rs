//! Client authentication by the proxy and the proxy's own login to the
//! nodes: SCRAM, md5 and trust clients; wrong password and unknown user
//! (28P01); a backend role with an md5-stored password; a node refusing the
//! proxy's password; TLS (tokio-postgres over rustls, psql sslmode=require,
//! and sslmode=require against a proxy without TLS); NegotiateProtocolVersion
//! for protocol 3.2; GSSENCRequest refused with 'N'; SCRAM pass-through
//! (a user configured with the node's verifier only), and what a different
//! verifier gets.

mod support;

use std::time::Duration;

use support::process::{psql, run};
use support::raw::{End, RawConn, startup_message};
use support::tls::TestCert;
use support::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_works_and_runs_as_the_user() {
    let proxy = ProxyBuilder::new().start().await;
    let c = connect(&proxy).await;
    assert_eq!(
        scalar(&c, "select current_user").await.as_deref(),
        Some("app")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_28p01() {
    let proxy = ProxyBuilder::new().start().await;
    let r = try_connect_as(&proxy, "app", "not-the-password").await;
    expect_sqlstate(r.map(|_| ()), "28P01", "SCRAM with a wrong password");
    // The proxy still serves the right password afterwards.
    connect(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_is_28p01() {
    let proxy = ProxyBuilder::new().start().await;
    let r = try_connect_as(&proxy, "nobody_here", "app").await;
    expect_sqlstate(r.map(|_| ()), "28P01", "unknown user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_client_auth() {
    let proxy = ProxyBuilder::new()
        .no_default_user()
        .user("name = \"app\"\npassword = \"app\"\nauth = \"md5\"")
        .start()
        .await;
    let c = connect(&proxy).await;
    assert_eq!(
        scalar(&c, "select current_user").await.as_deref(),
        Some("app")
    );
    let r = try_connect_as(&proxy, "app", "wrong").await;
    expect_sqlstate(r.map(|_| ()), "28P01", "md5 with a wrong password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_user_needs_no_password() {
    let proxy = ProxyBuilder::new()
        .no_default_user()
        .user("name = \"app\"\npassword = \"app\"\nauth = \"trust\"")
        .start()
        .await;
    let c = try_connect_str(&format!(
        "host=127.0.0.1 port={} user=app dbname=app",
        proxy.port()
    ))
    .await
    .unwrap_or_else(|e| panic!("trust login: {}", describe(&e)));
    assert_eq!(
        scalar(&c, "select current_user").await.as_deref(),
        Some("app")
    );
}

/// `app_md5`'s password is stored as md5 on the nodes: the proxy must answer
/// the server's md5 challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_md5_login() {
    let (user, pw) = blocking(|c| (c.md5_user().to_owned(), c.md5_password().to_owned())).await;
    let proxy = ProxyBuilder::new()
        .user(&format!("name = \"{user}\"\npassword = \"{pw}\""))
        .start()
        .await;
    let c = connect_as(&proxy, &user, &pw).await;
    assert_eq!(scalar(&c, "select current_user").await, Some(user));
}

/// Client password and node password differ (`server_password`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_password_differs_from_client_password() {
    let proxy = ProxyBuilder::new()
        .no_default_user()
        .user("name = \"app\"\npassword = \"client-secret\"\nserver_password = \"app\"")
        .start()
        .await;
    let c = connect_as(&proxy, "app", "client-secret").await;
    assert_eq!(scalar(&c, "select 1").await.as_deref(), Some("1"));
    let r = try_connect_as(&proxy, "app", "app").await;
    expect_sqlstate(
        r.map(|_| ()),
        "28P01",
        "node password used as client password",
    );
}

/// The client authenticates to the proxy, but the node refuses the proxy's
/// password: the client gets 28P01 naming the node, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_refusing_the_proxy_login_is_reported_with_the_node() {
    // The health monitor logs in as the first user, which works, so the
    // primary is healthy and only `app`'s own login fails.
    let proxy = ProxyBuilder::new()
        .no_default_user()
        .user("name = \"app_md5\"\npassword = \"app_md5\"")
        .user("name = \"app\"\npassword = \"app\"\nserver_password = \"wrong\"")
        .start()
        .await;
    let r = try_connect_as(&proxy, "app", "app").await;
    let msg = expect_sqlstate(r.map(|_| ()), "28P01", "node refuses the login");
    assert!(msg.contains("primary"), "node not named: {msg}");
}

async fn tls_proxy(cert: &TestCert) -> TestProxy {
    ProxyBuilder::new()
        .server(&format!("tls_cert = {:?}", cert.cert_path))
        .server(&format!("tls_key = {:?}", cert.key_path))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_tokio_postgres_and_scram() {
    let cert = TestCert::new();
    let proxy = tls_proxy(&cert).await;
    let conn_str = format!("{} sslmode=require", proxy.conn_str("app", "app"));
    let (client, connection) = within(
        T,
        "TLS connect",
        tokio_postgres::connect(&conn_str, cert.connector()),
    )
    .await
    .unwrap_or_else(|e| panic!("TLS login: {}", describe(&e)));
    let (_messages, _task) = drive(connection);
    let rows = client
        .query("select $1::text", &[&"over tls"])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "over tls");
    // A bad password over TLS is still refused.
    let bad = format!("{} sslmode=require", proxy.conn_str("app", "nope"));
    let r = tokio_postgres::connect(&bad, cert.connector()).await;
    expect_sqlstate(r.map(|_| ()), "28P01", "wrong password over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_psql_sslmode_require() {
    let cert = TestCert::new();
    let proxy = tls_proxy(&cert).await;
    let root = format!("sslrootcert={}", cert.cert_path.display());
    for mode in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-full {root}"),
    ] {
        let out = run(
            psql(proxy.port(), &mode, &["-c", "select 'tls ok'"]),
            None,
            Duration::from_secs(30),
        )
        .await;
        assert!(
            out.status.success(),
            "psql {mode}: {}\n{}",
            out.stderr,
            out.stdout_text()
        );
        assert_eq!(out.stdout_text().trim(), "tls ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_against_a_proxy_without_tls_fails_clearly() {
    let proxy = ProxyBuilder::new().start().await;
    let out = run(
        psql(proxy.port(), "sslmode=require", &["-c", "select 1"]),
        None,
        Duration::from_secs(30),
    )
    .await;
    assert!(!out.status.success(), "psql succeeded without TLS");
    assert!(
        out.stderr.contains("does not support SSL"),
        "unclear message: {}",
        out.stderr
    );
    // And the raw answer to SSLRequest is 'N', after which plain startup works.
    declined_then_plain_startup(proxy.addr, SSL_REQUEST).await;
}

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// GSSENCRequest: length 8, code 80877104.
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

/// Sends `request` on a new connection, expects 'N', then starts in the
/// clear and expects an authentication request.
async fn declined_then_plain_startup(addr: std::net::SocketAddr, request: [u8; 8]) {
    let mut raw = RawConn::connect(addr).await;
    raw.send(&request).await.unwrap();
    assert_eq!(raw.read_byte(T).await, Ok(b'N'));
    raw.send(&startup_message(
        196608,
        &[("user", "app"), ("database", "app")],
    ))
    .await
    .unwrap();
    let m = raw.recv(T).await.expect("auth request after 'N'");
    assert_eq!(m.tag, b'R', "expected an authentication request: {m:?}");
}

/// A 3.2 StartupMessage gets NegotiateProtocolVersion (3.0, no options)
/// first, then authentication continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_2_gets_negotiate_protocol_version() {
    let proxy = ProxyBuilder::new().start().await;
    let mut raw = RawConn::connect(proxy.addr).await;
    raw.send(&startup_message(
        196610,
        &[
            ("user", "app"),
            ("database", "app"),
            ("_pq_.test_option", "1"),
        ],
    ))
    .await
    .unwrap();
    let m = raw.recv(T).await.expect("first message");
    assert_eq!(m.tag, b'v', "expected NegotiateProtocolVersion, got {m:?}");
    let version = i32::from_be_bytes(m.body[0..4].try_into().unwrap());
    let n = i32::from_be_bytes(m.body[4..8].try_into().unwrap());
    // PostgreSQL (and libpq, which compares it with full version numbers)
    // puts the whole version here, 3.0 = 196608, despite the docs' wording.
    assert_eq!(version, 196608, "version offered");
    assert_eq!(n, 1, "unrecognised options count");
    assert_eq!(&m.body[8..], b"_pq_.test_option\0");
    let next = raw.recv(T).await.expect("auth request");
    assert_eq!(next.tag, b'R', "expected authentication next: {next:?}");
}

/// GSSENCRequest gets 'N'; the client may then start in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_request_gets_n() {
    let proxy = ProxyBuilder::new().start().await;
    declined_then_plain_startup(proxy.addr, GSSENC_REQUEST).await;
    // A second GSSENCRequest on one connection is a protocol violation.
    let mut raw = RawConn::connect(proxy.addr).await;
    raw.send(&GSSENC_REQUEST).await.unwrap();
    assert_eq!(raw.read_byte(T).await, Ok(b'N'));
    raw.send(&GSSENC_REQUEST).await.unwrap();
    if let Some(e) = raw.error_or_close(T).await {
        assert_eq!(e.code(), "08P01", "{:?}", e.fields());
    }
    assert_eq!(raw.recv(T).await.err(), Some(End::Closed));
}

/// The SCRAM verifier a role has on the primary (superuser query).
async fn verifier_of(role: &'static str) -> String {
    blocking(move |c| {
        c.sql(
            c.primary_index(),
            &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"),
        )
        .expect("read pg_authid")
    })
    .await
}

/// A user configured with nothing but the node's SCRAM verifier (as in
/// pg_authid): the client logs in with its password, and lagrouter logs
/// into the primary and the replicas with the client key from the
/// client's proof. A wrong password still gets 28P01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_pass_through_logs_into_every_node() {
    ensure_role("lr_pass").await;
    let verifier = verifier_of("lr_pass").await;
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    // The default user `app` comes first: the health monitor logs in as it.
    let proxy = ProxyBuilder::new()
        .user(&format!("name = \"lr_pass\"\npassword = \"{verifier}\""))
        .start()
        .await;
    let c = connect_as(&proxy, "lr_pass", "lr_pass").await;
    assert_eq!(
        scalar(&c, "select current_user").await.as_deref(),
        Some("lr_pass")
    );
    c.batch_execute("CREATE TEMP TABLE lr_pass_t (x int); INSERT INTO lr_pass_t VALUES (1)")
        .await
        .unwrap();
    // Reads reach a replica (once the function catalog is loaded, since
    // inet_server_port() is unknown until then): pass-through there too.
    let primary_port = blocking(|c| c.port(c.primary_index())).await;
    let c2 = connect_as(&proxy, "lr_pass", "lr_pass").await;
    let c2 = &c2;
    let port = eventually(
        Duration::from_secs(20),
        "a read on a replica",
        || async move {
            let p: i32 = c2
                .query_one("SELECT inet_server_port()", &[])
                .await
                .ok()?
                .get(0);
            (p != i32::from(primary_port)).then_some(p)
        },
    )
    .await;
    assert_ne!(port, i32::from(primary_port));
    let r = try_connect_as(&proxy, "lr_pass", "wrong").await;
    expect_sqlstate(r.map(|_| ()), "28P01", "pass-through user, wrong password");
}

/// lagrouter's verifier for the user differs from the node's (same
/// password, another salt): the client passes lagrouter's check, then
/// gets 28P01 naming the node and saying the verifiers differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_pass_through_with_another_verifier_says_so() {
    ensure_role("lr_pass").await;
    // The same password hashed again: a new salt.
    let twin = blocking(|c| {
        c.sql(
            c.primary_index(),
            "SET password_encryption = 'scram-sha-256'; \
             DROP ROLE IF EXISTS lr_pass_twin; CREATE ROLE lr_pass_twin PASSWORD 'lr_pass'; \
             SELECT rolpassword FROM pg_authid WHERE rolname = 'lr_pass_twin'",
        )
        .expect("make a second verifier")
    })
    .await;
    let twin = twin.lines().last().unwrap_or_default().to_owned();
    assert!(twin.starts_with("SCRAM-SHA-256$"), "{twin}");
    assert_ne!(twin, verifier_of("lr_pass").await);
    let proxy = ProxyBuilder::new()
        .user(&format!("name = \"lr_pass\"\npassword = \"{twin}\""))
        .start()
        .await;
    let r = try_connect_as(&proxy, "lr_pass", "lr_pass").await;
    let msg = expect_sqlstate(r.map(|_| ()), "28P01", "verifiers differ");
    assert!(msg.contains("primary"), "node not named: {msg}");
    assert!(msg.contains("verifier"), "reason not given: {msg}");
}
