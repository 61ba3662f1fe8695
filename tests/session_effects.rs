//! Session effects are found on the classifier's tokens, not in raw text,
//! through a real driver (tokio-postgres, which names its prepared
//! statements): a string literal that says "discard all" forgets none of
//! the session's prepared statements, one that says "listen" pins nothing,
//! while a real `LISTEN` does pin. A simple-query `DEALLOCATE name` (what
//! Rails and PHP's PDO send when they evict a statement) forgets that one
//! statement, as it would directly.
//!
//! Session state across pooled connections: parameters a client sets
//! follow it; LISTEN, temp tables and session advisory locks pin the
//! session; two sessions may use the same statement name; settings given
//! at startup are applied, or refused at login.

mod support;

use std::time::Duration;

use support::raw::{Msg, RawConn, cstr, message, query};
use support::*;
use tokio_postgres::AsyncMessage;

const T: Duration = Duration::from_secs(30);

async fn proxy(pool_size: usize) -> TestProxy {
    ProxyBuilder::new().pool_size(pool_size).start().await
}

async fn pinned_sessions(proxy: &TestProxy) -> u64 {
    let admin = try_connect_str(&format!(
        "host=127.0.0.1 port={} user=lradmin password=adminpw dbname=lagrouter connect_timeout=10",
        proxy.port()
    ))
    .await
    .unwrap_or_else(|e| panic!("admin console: {}", describe(&e)));
    console_rows(&admin, "SHOW STATS")
        .await
        .into_iter()
        .find(|r| r["stat"] == "pinned_sessions")
        .and_then(|r| r["value"].parse().ok())
        .expect("pinned_sessions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literals_and_comments_have_no_session_effects() {
    within(Duration::from_secs(120), "session effects", async {
        let proxy = ProxyBuilder::new()
            .user("name = \"lradmin\"\npassword = \"adminpw\"\nadmin = true")
            .start()
            .await;
        let c = connect(&proxy).await;
        let st = c.prepare("select $1::int + 1").await.expect("prepare");
        for text in [
            "select 'please discard all of these notes'",
            "select 1 /* deallocate all */",
            "select $$DISCARD ALL$$",
            "select 'listen to this'",
            "select 'create temp table x'",
        ] {
            c.simple_query(text)
                .await
                .unwrap_or_else(|e| panic!("{text}: {}", describe(&e)));
            let v: i32 = c
                .query_one(&st, &[&41i32])
                .await
                .unwrap_or_else(|e| panic!("the prepared statement after {text}: {}", describe(&e)))
                .get(0);
            assert_eq!(v, 42, "after {text}");
        }
        assert_eq!(pinned_sessions(&proxy).await, 0, "no literal pinned");
        c.simple_query("LISTEN lr_effects").await.expect("listen");
        assert_eq!(pinned_sessions(&proxy).await, 1, "LISTEN pins");
        let v: i32 = c
            .query_one(&st, &[&1i32])
            .await
            .expect("still prepared")
            .get(0);
        assert_eq!(v, 2);
    })
    .await
}

/// Parse `name` as `sql` (one int parameter) and Sync.
fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for s in [name, sql] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&23i32.to_be_bytes());
    let mut out = message(b'P', &body);
    out.extend(message(b'S', &[]));
    out
}

/// Bind statement `name` to the text parameter `arg`, Execute, Sync.
fn run(name: &str, arg: &str) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&(arg.len() as i32).to_be_bytes());
    body.extend_from_slice(arg.as_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    let mut out = message(b'B', &body);
    out.extend(message(b'E', &[0, 0, 0, 0, 0]));
    out.extend(message(b'S', &[]));
    out
}

/// Sends `bytes`, reads to ReadyForQuery: the first DataRow's text or the
/// error's SQLSTATE, and the transaction status.
async fn answer(c: &mut RawConn, bytes: &[u8]) -> (Result<String, String>, u8) {
    c.send(bytes).await.expect("send");
    let msgs = c.until_ready(Duration::from_secs(15)).await;
    let status = msgs.last().map_or(0, |m| m.body[0]);
    if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
        return (Err(e.code()), status);
    }
    let row = msgs.iter().find(|m| m.tag == b'D').map(|m| {
        let len = i32::from_be_bytes(m.body[2..6].try_into().unwrap()) as usize;
        String::from_utf8_lossy(&m.body[6..6 + len]).into_owned()
    });
    let tag = msgs
        .iter()
        .find(|m| m.tag == b'C')
        .map(|m| String::from_utf8_lossy(&m.body[..m.body.len() - 1]).into_owned());
    (Ok(row.or(tag).unwrap_or_default()), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_deallocate_forgets_one_protocol_statement() {
    within(Duration::from_secs(120), "DEALLOCATE name", async {
        let (_proxy, mut c) = trusted_session("lr_effects").await;
        for (name, sql) in [("a1", "select $1 + 1"), ("a2", "select $1 * 2")] {
            assert_eq!(answer(&mut c, &parse(name, sql)).await.1, b'I');
        }
        assert_eq!(answer(&mut c, &run("a1", "41")).await.0, Ok("42".into()));
        // What Rails sends when it evicts a statement.
        let (got, status) = answer(&mut c, &query("DEALLOCATE a1")).await;
        assert_eq!((got, status), (Ok("DEALLOCATE".into()), b'I'));
        assert_eq!(
            answer(&mut c, &run("a1", "1")).await.0,
            Err("26000".into()),
            "a deallocated statement is gone"
        );
        assert_eq!(answer(&mut c, &run("a2", "21")).await.0, Ok("42".into()));
        // Inside a transaction: answered in it, and the transaction goes on.
        assert_eq!(answer(&mut c, &query("BEGIN")).await.1, b'T');
        let (got, status) =
            answer(&mut c, &query("/* evicted */ deallocate prepare \"a2\";")).await;
        assert_eq!((got, status), (Ok("DEALLOCATE".into()), b'T'));
        assert_eq!(
            answer(&mut c, &query("select 7")).await,
            (Ok("7".into()), b'T')
        );
        assert_eq!(answer(&mut c, &query("COMMIT")).await.1, b'I');
        assert_eq!(answer(&mut c, &run("a2", "1")).await.0, Err("26000".into()));
        // A name the client never prepared: the server's own answer, as
        // directly; and in a failed transaction, the server's 25P02.
        assert_eq!(
            answer(&mut c, &query("DEALLOCATE never_prepared")).await.0,
            Err("26000".into())
        );
        assert_eq!(answer(&mut c, &parse("a3", "select $1")).await.1, b'I');
        assert_eq!(answer(&mut c, &query("BEGIN")).await.1, b'T');
        assert_eq!(
            answer(&mut c, &query("select 1/0")).await.0,
            Err("22012".into())
        );
        assert_eq!(
            answer(&mut c, &query("DEALLOCATE a3")).await,
            (Err("25P02".into()), b'E')
        );
        assert_eq!(answer(&mut c, &query("ROLLBACK")).await.1, b'I');
        assert_eq!(answer(&mut c, &run("a3", "5")).await.0, Ok("5".into()));
    })
    .await
}

/// The proxy's own statements inside a transaction, over both protocols:
/// answered in it, with the transaction's status, and the transaction
/// goes on on its server. (Inside a transaction every other message is
/// handled on the session's path with no future; these go the full way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_statements_inside_a_transaction() {
    within(
        Duration::from_secs(120),
        "proxy statements in a transaction",
        async {
            let (_proxy, mut c) = trusted_session("lr_effects").await;
            let show = query("SHOW lagrouter.route");
            let (outside, status) = answer(&mut c, &show).await;
            assert_eq!(status, b'I');
            let outside = outside.expect("SHOW lagrouter.route outside a transaction");
            assert!(!outside.is_empty());
            let backend = query("select pg_backend_pid()");
            assert_eq!(answer(&mut c, &query("BEGIN")).await.1, b'T');
            let (pid, status) = answer(&mut c, &backend).await;
            assert_eq!(status, b'T');
            let pid = pid.expect("pg_backend_pid");
            // Simple protocol.
            assert_eq!(answer(&mut c, &show).await, (Ok(outside.clone()), b'T'));
            // Extended: the unnamed statement, then a named one and a portal.
            for (statement, portal) in [("", ""), ("lr_show", "lr_portal")] {
                let extended = [
                    support::raw::parse(statement, "SHOW lagrouter.route"),
                    support::raw::bind(portal, statement),
                    support::raw::execute(portal),
                    support::raw::sync(),
                ]
                .concat();
                let got = answer(&mut c, &extended).await;
                assert_eq!(got, (Ok(outside.clone()), b'T'), "statement {statement:?}");
            }
            // A statement the proxy refuses: its error, from the proxy.
            let (got, status) = answer(&mut c, &query("SET lagrouter.no_such = 1")).await;
            assert!(got.is_err(), "SET lagrouter.no_such: {got:?}");
            assert_eq!(
                status, b'T',
                "the proxy's refusal leaves the server's transaction as it is"
            );
            // Still the same server connection, and the transaction is open.
            assert_eq!(answer(&mut c, &backend).await, (Ok(pid), b'T'));
            assert_eq!(
                answer(&mut c, &query("COMMIT")).await,
                (Ok("COMMIT".into()), b'I')
            );
        },
    )
    .await
}

async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    scalar(c, &format!("show {name}"))
        .await
        .unwrap_or_else(|| panic!("show {name}: no value"))
}

/// Pool size 1: A and B share one server connection. A's SETs follow A and
/// never leak to B; SET LOCAL and rolled-back SETs do not stick; RESET works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_parameters_follow_the_client_across_pooled_connections() {
    within(
        Duration::from_secs(180),
        "test session_parameters_follow_the_client_across_pooled_connections",
        async {
            let proxy = proxy(1).await;
            let a = connect(&proxy).await;
            let b = connect(&proxy).await;
            let b_tz = show(&b, "TimeZone").await;
            let b_app = show(&b, "application_name").await;
            let b_ds = show(&b, "DateStyle").await;
            assert_ne!(b_tz, "Asia/Tokyo");
            a.batch_execute(
                "SET TimeZone = 'Asia/Tokyo'; SET application_name = 'client_a'; \
         SET DateStyle = 'SQL, DMY'",
            )
            .await
            .unwrap();
            for i in 0..30 {
                assert_eq!(show(&a, "TimeZone").await, "Asia/Tokyo", "round {i}");
                assert_eq!(
                    show(&b, "TimeZone").await,
                    b_tz,
                    "round {i}: A's TimeZone leaked"
                );
                assert_eq!(show(&a, "application_name").await, "client_a");
                assert_eq!(show(&b, "application_name").await, b_app);
                assert_eq!(show(&a, "DateStyle").await, "SQL, DMY");
                assert_eq!(show(&b, "DateStyle").await, b_ds);
                // Extended protocol and explicit transactions see the same.
                let tz: String = a
                    .query_one("select current_setting('TimeZone')", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(tz, "Asia/Tokyo");
                b.batch_execute("begin; select 1; commit").await.unwrap();
                let tz: String = b
                    .query_one("select current_setting('TimeZone')", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(tz, b_tz);
            }
            // SET LOCAL ends with its transaction; a rolled-back SET is undone.
            a.batch_execute("begin; set local application_name = 'only_here'; commit")
                .await
                .unwrap();
            assert_eq!(
                show(&a, "application_name").await,
                "client_a",
                "SET LOCAL stuck"
            );
            a.batch_execute("begin; set DateStyle = 'German'; rollback")
                .await
                .unwrap();
            assert_eq!(show(&b, "DateStyle").await, b_ds);
            assert_eq!(
                show(&a, "DateStyle").await,
                "SQL, DMY",
                "rolled-back SET stuck"
            );
            a.batch_execute("reset TimeZone").await.unwrap();
            assert_eq!(show(&b, "TimeZone").await, b_tz);
            assert_eq!(
                show(&a, "TimeZone").await,
                b_tz,
                "RESET did not restore the default"
            );
        },
    )
    .await
}

/// A startup setting follows its client, and only its client, across a
/// pooled connection shared with others: a client that did not set it
/// sees the default (the proxy's `SET`s return it there), and a
/// non-ASCII value reaches the server intact on a connection another
/// client left in LATIN1 (the `SET`s read the same in any
/// `client_encoding`). A value the server reports cannot be non-ASCII:
/// PostgreSQL makes `application_name` ASCII.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_the_client_across_client_encodings() {
    within(
        Duration::from_secs(120),
        "test settings_follow_the_client_across_client_encodings",
        async {
            ensure_role("lr_latin1").await;
            let proxy = ProxyBuilder::new()
                .pool_size(1)
                .user("name = \"lr_latin1\"\npassword = \"lr_latin1\"\nauth = \"trust\"")
                .start()
                .await;
            let mut latin1 = RawConn::login_trust_with(
                proxy.addr,
                "lr_latin1",
                &[("client_encoding", "LATIN1")],
            )
            .await;
            let base = proxy.conn_str("lr_latin1", "lr_latin1");
            let utf8 = try_connect_str(&format!("{base} options='-c search_path=café☕,public'"))
                .await
                .unwrap_or_else(|e| panic!("{}", describe(&e)));
            // Both (one user: one pool) on the primary's one connection, in
            // turn.
            latin1
                .send(&query("set lagrouter.route = primary"))
                .await
                .unwrap();
            latin1.until_ready(T).await;
            let plain = try_connect_str(&base)
                .await
                .unwrap_or_else(|e| panic!("{}", describe(&e)));
            for c in [&utf8, &plain] {
                c.batch_execute("set lagrouter.route = primary")
                    .await
                    .unwrap();
            }
            let default = "\"$user\", public";
            for i in 0..4 {
                assert_eq!(
                    show(&utf8, "search_path").await,
                    "café☕,public",
                    "round {i}"
                );
                assert_eq!(
                    show(&plain, "search_path").await,
                    default,
                    "round {i}: another client's startup setting leaked"
                );
                assert_eq!(show(&utf8, "search_path").await, "café☕,public");
                latin1.send(&query("show search_path")).await.unwrap();
                let msgs = latin1.until_ready(T).await;
                assert_eq!(Msg::error_codes(&msgs), Vec::<String>::new(), "round {i}");
                let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
                assert_eq!(row.first_value(), default, "round {i}");
            }
        },
    )
    .await
}

/// LISTEN pins the session; a NOTIFY from another client reaches the
/// listener while it is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_reaches_an_idle_listener() {
    within(
        Duration::from_secs(180),
        "test listen_notify_reaches_an_idle_listener",
        async {
            let proxy = proxy(3).await;
            let mut l = connect(&proxy).await;
            let n = connect(&proxy).await;
            l.batch_execute("LISTEN lr_chan").await.unwrap();
            // Other clients churn the pool meanwhile.
            for i in 0..20 {
                n.batch_execute(&format!("select {i}")).await.unwrap();
            }
            n.batch_execute("NOTIFY lr_chan, 'hello from n'")
                .await
                .unwrap();
            let got = l.next_message(Duration::from_secs(5)).await;
            let got = match got {
                Some(m) => m,
                None => {
                    // Tell a late delivery (only on the next query) from a lost one.
                    l.batch_execute("select 1").await.unwrap();
                    let late = l.next_message(Duration::from_secs(2)).await;
                    panic!("no notification while idle within 5 s; after a query: {late:?}");
                }
            };
            match got {
                AsyncMessage::Notification(note) => {
                    assert_eq!(note.channel(), "lr_chan");
                    assert_eq!(note.payload(), "hello from n");
                }
                other => panic!("expected a notification, got {other:?}"),
            }
            // A second one after more traffic on the listener itself.
            l.batch_execute("select 1").await.unwrap();
            n.batch_execute("select pg_notify('lr_chan', 'second')")
                .await
                .unwrap();
            match l.next_message(Duration::from_secs(5)).await {
                Some(AsyncMessage::Notification(note)) => assert_eq!(note.payload(), "second"),
                other => panic!("second notification: {other:?}"),
            }
        },
    )
    .await
}

/// A temp table pins its session: with a pool of 3 and two other clients
/// holding transactions, A keeps its server connection and its table; the
/// others never see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_table_survives_across_transactions() {
    within(
        Duration::from_secs(180),
        "test temp_table_survives_across_transactions",
        async {
            let proxy = proxy(3).await;
            let a = connect(&proxy).await;
            let b1 = connect(&proxy).await;
            let b2 = connect(&proxy).await;
            a.batch_execute("create temp table lr_tmp (x int); insert into lr_tmp values (1)")
                .await
                .unwrap();
            let pid = scalar(&a, "select pg_backend_pid()").await;
            for i in 0..20 {
                b1.batch_execute("begin; select 1").await.unwrap();
                b2.batch_execute("begin; select 1").await.unwrap();
                let n = within(
                    Duration::from_secs(10),
                    "A's query while B1 and B2 hold transactions",
                    a.query_one("select count(*) from lr_tmp", &[]),
                )
                .await
                .unwrap_or_else(|e| panic!("round {i}: temp table lost: {}", describe(&e)));
                assert_eq!(n.get::<_, i64>(0), 1 + i);
                a.execute("insert into lr_tmp values ($1)", &[&(i as i32)])
                    .await
                    .unwrap();
                assert_eq!(
                    scalar(&a, "select pg_backend_pid()").await,
                    pid,
                    "round {i}"
                );
                for b in [&b1, &b2] {
                    assert_eq!(
                        scalar(b, "select to_regclass('lr_tmp')::text").await,
                        None,
                        "another client sees A's temp table"
                    );
                    b.batch_execute("commit").await.unwrap();
                }
            }
        },
    )
    .await
}

/// A session advisory lock pins the session: the lock stays A's across
/// transactions (others cannot take it), A can release it, and it is
/// released when A disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_advisory_lock_is_held_by_the_session() {
    within(
        Duration::from_secs(180),
        "test session_advisory_lock_is_held_by_the_session",
        async {
            let proxy = proxy(3).await;
            let a = connect(&proxy).await;
            let b = connect(&proxy).await;
            a.batch_execute("select pg_advisory_lock(424242)")
                .await
                .unwrap();
            for i in 0..20 {
                a.batch_execute("select 1").await.unwrap();
                let got = scalar(&b, "select pg_try_advisory_lock(424242)").await;
                if got.as_deref() == Some("t") {
                    b.batch_execute("select pg_advisory_unlock(424242)")
                        .await
                        .unwrap();
                    panic!("round {i}: B took the lock A holds");
                }
            }
            assert_eq!(
                scalar(&a, "select pg_advisory_unlock(424242)")
                    .await
                    .as_deref(),
                Some("t"),
                "A's unlock ran on a connection that does not hold the lock"
            );
            assert_eq!(
                scalar(&b, "select pg_try_advisory_lock(424242)")
                    .await
                    .as_deref(),
                Some("t")
            );
            b.batch_execute("select pg_advisory_unlock(424242)")
                .await
                .unwrap();
            // Locked again by A, then A vanishes: the lock must go with it.
            a.batch_execute("select pg_advisory_lock(424242)")
                .await
                .unwrap();
            a.kill().await;
            let b = &b;
            let try_lock = "select pg_try_advisory_lock(424242)";
            eventually(
                Duration::from_secs(10),
                "a disconnected client's session lock is released",
                || async move { (scalar(b, try_lock).await.as_deref() == Some("t")).then_some(()) },
            )
            .await;
            b.batch_execute("select pg_advisory_unlock(424242)")
                .await
                .unwrap();
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_statement_name_in_two_sessions() {
    within(
        Duration::from_secs(180),
        "test same_statement_name_in_two_sessions",
        async {
            ensure_role("lr_raw").await;
            let proxy = ProxyBuilder::new()
                .pool_size(1)
                .user("name = \"lr_raw\"\npassword = \"lr_raw\"\nauth = \"trust\"")
                .start()
                .await;
            let mut sessions = Vec::new();
            for who in ["A", "B"] {
                let mut raw = RawConn::login_trust(proxy.addr, "lr_raw").await;
                let mut parse = cstr("stmt");
                parse.extend(cstr(&format!("select '{who}'::text")));
                parse.extend_from_slice(&0i16.to_be_bytes());
                let mut batch = message(b'P', &parse);
                batch.extend(message(b'S', &[]));
                raw.send(&batch).await.unwrap();
                let msgs = raw.until_ready(T).await;
                assert!(msgs.iter().any(|m| m.tag == b'1'), "{who}: {msgs:?}");
                sessions.push((who, raw));
            }
            let mut bind = cstr("");
            bind.extend(cstr("stmt"));
            bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, params, result formats
            let mut exec = cstr("");
            exec.extend_from_slice(&0i32.to_be_bytes());
            let mut batch = message(b'B', &bind);
            batch.extend(message(b'E', &exec));
            batch.extend(message(b'S', &[]));
            for round in 0..20 {
                for (who, raw) in sessions.iter_mut() {
                    raw.send(&batch).await.unwrap();
                    let msgs = raw.until_ready(T).await;
                    let row = msgs
                        .iter()
                        .find(|m| m.tag == b'D')
                        .unwrap_or_else(|| panic!("round {round} {who}: {msgs:?}"));
                    assert_eq!(
                        &row.body[6..],
                        who.as_bytes(),
                        "round {round}: wrong statement"
                    );
                }
            }
        },
    )
    .await
}

/// `txid_current()` assigns a transaction id: it is a write and must run on
/// the primary (a replica refuses it with 25006).
/// Startup settings (`options=-c ...`) are applied on the first server
/// connection and kept across pooled ones; a bad one is refused at login
/// with PostgreSQL's own SQLSTATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_settings_are_applied_or_refused() {
    within(Duration::from_secs(60), "startup settings", async {
        let proxy = proxy(1).await;
        let base = proxy.conn_str("app", "app");
        let good = try_connect_str(&format!(
            "{base} options='-c search_path=lr_startup,public'"
        ))
        .await
        .unwrap_or_else(|e| panic!("good setting refused: {}", describe(&e)));
        // As PostgreSQL applies it: a list of two schemas (of which only
        // `public` exists), not one schema called "lr_startup,public".
        for _ in 0..2 {
            assert_eq!(
                scalar(&good, "show search_path").await.as_deref(),
                Some("lr_startup,public")
            );
            assert_eq!(
                scalar(&good, "select array_to_string(current_schemas(false), ',')")
                    .await
                    .as_deref(),
                Some("public")
            );
        }
        for (setting, code) in [
            ("statement_timeout=bogus", "22023"),
            ("no_such_setting=1", "42704"),
        ] {
            let err = try_connect_str(&format!("{base} options='-c {setting}'"))
                .await
                .err()
                .unwrap_or_else(|| panic!("{setting} was accepted"));
            assert_eq!(
                err.code().map(|c| c.code()),
                Some(code),
                "{setting}: {}",
                describe(&err)
            );
        }
        // The refused logins left the pool's one connection usable.
        assert_eq!(scalar(&good, "select 1").await.as_deref(), Some("1"));
    })
    .await
}

/// A session pinned to its server connection that writes in a transaction
/// and ends it with a plain `COMMIT` goes on: its connection is never
/// released, so the commit-LSN question lagrouter sends behind a `COMMIT`
/// (for sessions that give their connection back) must not be asked, or
/// its answer would hold the client's next message for good. Both
/// protocols, several transactions, each statement bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_session_writes_and_commits_and_goes_on() {
    within(Duration::from_secs(60), "pinned commits", async {
        let proxy = proxy(3).await;
        let c = connect(&proxy).await;
        c.batch_execute("CREATE TEMP TABLE lr_pinned_w (x int)")
            .await
            .unwrap_or_else(|e| panic!("create temp table: {}", describe(&e)));
        let step = Duration::from_secs(5);
        for i in 0..3i32 {
            let txn = async {
                c.batch_execute("BEGIN").await?;
                c.execute("INSERT INTO lr_pinned_w VALUES ($1)", &[&i])
                    .await?;
                c.batch_execute("INSERT INTO lr_pinned_w VALUES (100)")
                    .await?;
                if i % 2 == 0 {
                    c.batch_execute("COMMIT").await?;
                } else {
                    c.execute("COMMIT", &[]).await?;
                }
                c.query_one("SELECT count(*) FROM lr_pinned_w", &[]).await
            };
            let n: i64 = tokio::time::timeout(step, txn)
                .await
                .unwrap_or_else(|_| {
                    panic!("transaction {i} of a pinned session took over {step:?}")
                })
                .unwrap_or_else(|e| panic!("transaction {i}: {}", describe(&e)))
                .get(0);
            assert_eq!(n, 2 * i64::from(i + 1), "rows after transaction {i}");
        }
    })
    .await
}
