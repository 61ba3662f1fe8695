//! The client protocol through the proxy, against the real cluster: simple
//! and extended queries, named prepared statements across a churning pool,
//! COPY both ways, notices, errors inside
//! transactions and pipelines, a 50 MiB row, a client vanishing
//! mid-transaction, FunctionCall, CancelRequest, and shutdown. Session
//! state (parameters, pinning, startup settings): `session_effects.rs`.
//!
//! Each test starts its own proxy (cheap) on the shared cluster and uses its
//! own tables, channels, lock keys or roles, so tests run in parallel.

mod support;

use std::time::{Duration, Instant};

use support::process::{psql, run};
use support::raw::{
    Msg, RawConn, bind, execute, message, parse, parse_bytes, query, query_bytes,
    startup_message_bytes, sync,
};
use support::*;
use tokio_postgres::{AsyncMessage, NoTls};

const T: Duration = Duration::from_secs(30);

async fn proxy(pool_size: usize) -> TestProxy {
    ProxyBuilder::new().pool_size(pool_size).start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries() {
    within(
        Duration::from_secs(180),
        "test simple_and_extended_queries",
        async {
            let proxy = proxy(4).await;
            let c = connect(&proxy).await;
            let msgs = c
                .simple_query("select 1 as a; select 'two' as b")
                .await
                .unwrap();
            let rows: Vec<String> = msgs
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some(r.get(0).unwrap().to_owned())
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(rows, ["1", "two"]);
            let row = c
                .query_one("select $1::int + 1, $2::text || '!'", &[&41i32, &"hi"])
                .await
                .unwrap();
            assert_eq!(row.get::<_, i32>(0), 42);
            assert_eq!(row.get::<_, String>(1), "hi!");
            // Writes reach the primary and are read back.
            c.batch_execute(
                "create table if not exists lr_simple (id int primary key, v text);\
         truncate lr_simple",
            )
            .await
            .unwrap();
            for i in 0..20i32 {
                c.execute(
                    "insert into lr_simple values ($1, $2)",
                    &[&i, &format!("v{i}")],
                )
                .await
                .unwrap();
            }
            let n: i64 = c
                .query_one("select count(*) from lr_simple", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 20);
            // NULLs and many rows.
            let rows = c
                .query("select nullif(g, 3) from generate_series(1, 10000) g", &[])
                .await
                .unwrap();
            assert_eq!(rows.len(), 10000);
            assert_eq!(rows[2].get::<_, Option<i32>>(0), None);
        },
    )
    .await
}

/// 8 clients on a pool of 2, each with 3 named statements (distinct SQL per
/// client), 200 transactions each: every Bind must run the client's own
/// statement, whichever server connection the transaction gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_survive_pool_churn() {
    within(
        Duration::from_secs(180),
        "test named_prepared_statements_survive_pool_churn",
        async {
            let proxy = proxy(2).await;
            let mut tasks = Vec::new();
            for k in 0..8i32 {
                let c = connect(&proxy).await;
                tasks.push(tokio::spawn(async move {
                    let mul = c
                        .prepare(&format!("select $1::int * {}", k + 2))
                        .await
                        .unwrap();
                    let cat = c
                        .prepare(&format!("select $1::text || '-client{k}'"))
                        .await
                        .unwrap();
                    let sum = c
                        .prepare(&format!(
                            "select sum(g)::int + {k} from generate_series(1, $1::int) g"
                        ))
                        .await
                        .unwrap();
                    let mut c = c;
                    for i in 0..200i32 {
                        let tx = c.client.transaction().await.unwrap();
                        let a: i32 = tx.query_one(&mul, &[&i]).await.unwrap().get(0);
                        assert_eq!(a, i * (k + 2), "client {k} txn {i}: wrong statement ran");
                        let b: String = tx
                            .query_one(&cat, &[&format!("t{i}")])
                            .await
                            .unwrap()
                            .get(0);
                        assert_eq!(b, format!("t{i}-client{k}"));
                        let n = i % 50 + 1;
                        let s: i32 = tx.query_one(&sum, &[&n]).await.unwrap().get(0);
                        assert_eq!(s, n * (n + 1) / 2 + k);
                        tx.commit().await.unwrap();
                        // Outside a transaction too (each statement its own checkout).
                        if i % 10 == 0 {
                            let a: i32 = c.query_one(&mul, &[&7i32]).await.unwrap().get(0);
                            assert_eq!(a, 7 * (k + 2));
                        }
                    }
                }));
            }
            for t in tasks {
                within(Duration::from_secs(120), "8 clients x 200 transactions", t)
                    .await
                    .expect("client task panicked");
            }
        },
    )
    .await
}

const COPY_ROWS: usize = 100_000;
const COPY_LINE: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_10_mb() {
    within(
        Duration::from_secs(180),
        "test copy_from_stdin_10_mb",
        async {
            let proxy = proxy(4).await;
            let c = connect(&proxy).await;
            c.batch_execute(
                "create table if not exists lr_copy_in (line text); truncate lr_copy_in",
            )
            .await
            .unwrap();
            let mut data = Vec::with_capacity(COPY_ROWS * COPY_LINE);
            for i in 0..COPY_ROWS {
                let line = format!("{i:08}{}", "z".repeat(COPY_LINE - 9));
                data.extend_from_slice(line.as_bytes());
                data.push(b'\n');
            }
            assert_eq!(data.len(), 10_000_000);
            let out = run(
                psql(
                    proxy.port(),
                    "sslmode=disable",
                    &[
                        "-c",
                        "copy lr_copy_in from stdin",
                        "-c",
                        "select count(*) from lr_copy_in",
                    ],
                ),
                Some(data),
                Duration::from_secs(90),
            )
            .await;
            assert!(out.status.success(), "psql copy in: {}", out.stderr);
            assert_eq!(out.stdout_text().trim(), COPY_ROWS.to_string());
            let row = c
        .query_one(
            "select count(*), sum(length(line))::bigint, count(distinct line) from lr_copy_in",
            &[],
        )
        .await
        .unwrap();
            assert_eq!(row.get::<_, i64>(0), COPY_ROWS as i64);
            assert_eq!(row.get::<_, i64>(1), (COPY_ROWS * (COPY_LINE - 1)) as i64);
            assert_eq!(row.get::<_, i64>(2), COPY_ROWS as i64);
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_10_mb() {
    within(Duration::from_secs(180), "test copy_to_stdout_10_mb", async {
    let proxy = proxy(4).await;
    let sql = format!(
        "copy (select lpad(g::text, 8, '0') || repeat('y', {}) from generate_series(0, {}) g) \
         to stdout",
        COPY_LINE - 9,
        COPY_ROWS - 1
    );
    let out = run(
        psql(
            proxy.port(),
            "sslmode=disable",
            &["-c", &sql, "-c", "select 'after copy'"],
        ),
        None,
        Duration::from_secs(90),
    )
    .await;
    assert!(out.status.success(), "psql copy out: {}", out.stderr);
    let tail = b"after copy\n";
    assert!(out.stdout.ends_with(tail), "session broken after COPY OUT");
    let body = &out.stdout[..out.stdout.len() - tail.len()];
    assert_eq!(body.len(), COPY_ROWS * COPY_LINE, "COPY OUT byte count");
    for (i, line) in body.split(|b| *b == b'\n').take(COPY_ROWS).enumerate() {
        assert_eq!(line.len(), COPY_LINE - 1, "line {i}");
        assert_eq!(&line[..8], format!("{i:08}").as_bytes(), "line {i} out of order");
    }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notice_is_delivered() {
    within(
        Duration::from_secs(180),
        "test notice_is_delivered",
        async {
            let proxy = proxy(2).await;
            let mut c = connect(&proxy).await;
            c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
                .await
                .unwrap();
            match c.next_message(Duration::from_secs(5)).await {
                Some(AsyncMessage::Notice(n)) => {
                    assert_eq!(n.message(), "hello 42");
                    assert_eq!(n.severity(), "NOTICE");
                }
                other => panic!("expected a notice, got {other:?}"),
            }
            // Also from the extended protocol, and a WARNING.
            c.execute("DO $$ BEGIN RAISE WARNING 'careful'; END $$", &[])
                .await
                .unwrap();
            match c.next_message(Duration::from_secs(5)).await {
                Some(AsyncMessage::Notice(n)) => assert_eq!(n.message(), "careful"),
                other => panic!("expected a warning, got {other:?}"),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_inside_a_transaction_then_rollback() {
    within(
        Duration::from_secs(180),
        "test error_inside_a_transaction_then_rollback",
        async {
            let proxy = proxy(2).await;
            let mut c = connect(&proxy).await;
            c.batch_execute(
                "create table if not exists lr_txn_err (v text); delete from lr_txn_err",
            )
            .await
            .unwrap();
            let tx = c.client.transaction().await.unwrap();
            tx.execute("insert into lr_txn_err values ('doomed')", &[])
                .await
                .unwrap();
            expect_sqlstate(
                tx.query("select 1/0", &[]).await,
                "22012",
                "division by zero",
            );
            expect_sqlstate(
                tx.query("select 1", &[]).await,
                "25P02",
                "statement in an aborted transaction",
            );
            tx.rollback().await.unwrap();
            let n: i64 = c
                .query_one("select count(*) from lr_txn_err", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 0, "rolled-back row visible");
            // Simple protocol: the error stops the multi-statement query.
            let r = c
                .simple_query("begin; insert into lr_txn_err values ('x'); select 1/0; commit")
                .await;
            expect_sqlstate(r, "22012", "simple query error");
            // The implicit COMMIT never ran: we are in a failed transaction.
            expect_sqlstate(c.simple_query("select 1").await, "25P02", "after error");
            c.batch_execute("rollback").await.unwrap();
            assert_eq!(
                scalar(&c, "select count(*) from lr_txn_err")
                    .await
                    .as_deref(),
                Some("0")
            );
            assert_eq!(scalar(&c, "select 'fine'").await.as_deref(), Some("fine"));
        },
    )
    .await
}

/// Pipelined extended-protocol queries (each with its own Sync): a failing
/// one in the middle fails alone; those before and after succeed in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_in_the_middle_of_a_pipeline() {
    within(
        Duration::from_secs(180),
        "test error_in_the_middle_of_a_pipeline",
        async {
            let proxy = proxy(2).await;
            let c = connect(&proxy).await;
            let good = c.prepare("select $1::int").await.unwrap();
            let bad = c.prepare("select 1 / $1::int").await.unwrap();
            for round in 0..20i32 {
                let (zero, next) = (0i32, round + 1);
                type P<'a> = [&'a (dyn tokio_postgres::types::ToSql + Sync); 1];
                let (p1, p2, p3): (P, P, P) = ([&round], [&zero], [&next]);
                let (r1, r2, r3, r4) = tokio::join!(
                    c.query_one(&good, &p1),
                    c.query_one(&bad, &p2),
                    c.query_one(&good, &p3),
                    c.query_one("select 'unprepared'::text", &[]),
                );
                assert_eq!(r1.unwrap().get::<_, i32>(0), round);
                expect_sqlstate(r2, "22012", "pipelined division by zero");
                assert_eq!(r3.unwrap().get::<_, i32>(0), next);
                assert_eq!(r4.unwrap().get::<_, String>(0), "unprepared");
            }
            // A failing query followed by a good one, one after the other.
            expect_sqlstate(
                c.query("select * from lr_no_such_table", &[]).await,
                "42P01",
                "missing table",
            );
            assert_eq!(scalar(&c, "select 'next'").await.as_deref(), Some("next"));
        },
    )
    .await
}

/// A 50 MiB value comes back whole, and a 20 MiB parameter goes out whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_both_ways() {
    within(
        Duration::from_secs(180),
        "test large_values_both_ways",
        async {
            let proxy = proxy(2).await;
            let c = connect(&proxy).await;
            let n = 5 * 1024 * 1024;
            let row = within(
                Duration::from_secs(60),
                "50 MiB row",
                c.query_one("select repeat('0123456789', $1::int)", &[&(n as i32)]),
            )
            .await
            .unwrap();
            let v: &str = row.get(0);
            assert_eq!(v.len(), 10 * n);
            assert!(
                v.as_bytes().chunks(10).all(|chunk| chunk == b"0123456789"),
                "50 MiB value corrupted"
            );
            let param: Vec<u8> = (0..20 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
            let row = within(
                Duration::from_secs(60),
                "20 MiB parameter",
                c.query_one("select length($1::bytea), md5($1::bytea)", &[&param]),
            )
            .await
            .unwrap();
            assert_eq!(row.get::<_, i32>(0), param.len() as i32);
            // Compare with the server's own md5 of the same bytes generated there.
            let expect: String = c
        .query_one(
            "select md5(string_agg(set_byte('\\x00'::bytea, 0, g % 251), ''::bytea order by g)) \
             from generate_series(0, $1::int - 1) g",
            &[&(param.len() as i32)],
        )
        .await
        .unwrap()
        .get(0);
            assert_eq!(
                row.get::<_, String>(1),
                expect,
                "20 MiB parameter corrupted"
            );
        },
    )
    .await
}

/// BEGIN; INSERT; the client vanishes. The row must not commit and the
/// pooled server connection must not stay in the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_transaction_leaves_nothing_behind() {
    within(
        Duration::from_secs(180),
        "test client_vanishing_mid_transaction_leaves_nothing_behind",
        async {
            ensure_role("lr_ghost").await;
            let proxy = ProxyBuilder::new()
                .pool_size(1)
                .user("name = \"lr_ghost\"\npassword = \"lr_ghost\"")
                .start()
                .await;
            let setup = connect_as(&proxy, "lr_ghost", "lr_ghost").await;
            setup
                .batch_execute(
                    "create table if not exists lr_ghost_t (v text); delete from lr_ghost_t",
                )
                .await
                .unwrap();
            drop(setup);
            for graceful in [false, true] {
                let a = connect_as(&proxy, "lr_ghost", "lr_ghost").await;
                a.batch_execute("begin; insert into lr_ghost_t values ('ghost')")
                    .await
                    .unwrap();
                if graceful {
                    // Terminate message while in the transaction.
                    drop(a);
                } else {
                    a.kill().await;
                }
                let b = connect_as(&proxy, "lr_ghost", "lr_ghost").await;
                let what = if graceful {
                    "Terminate"
                } else {
                    "dropped socket"
                };
                assert_eq!(
                    scalar(&b, "select txid_current_if_assigned()::text").await,
                    None,
                    "{what}: next client inherited a transaction with a txid"
                );
                assert_eq!(
                    scalar(&b, "select (now() = statement_timestamp())::text")
                        .await
                        .as_deref(),
                    Some("true"),
                    "{what}: next client runs inside an old transaction"
                );
                assert_eq!(
                    scalar(&b, "select count(*) from lr_ghost_t")
                        .await
                        .as_deref(),
                    Some("0"),
                    "{what}: the vanished client's row is visible"
                );
                drop(b);
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let idle_in_txn = blocking(|c| {
                        c.sql(
                            c.primary_index(),
                            "select count(*) from pg_stat_activity where usename = 'lr_ghost' \
                     and state like 'idle in transaction%'",
                        )
                        .unwrap()
                    })
                    .await;
                    if idle_in_txn == "0" {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{what}: {idle_in_txn} server connection(s) idle in transaction after 10 s"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            let c = connect_as(&proxy, "lr_ghost", "lr_ghost").await;
            assert_eq!(
                scalar(&c, "select count(*) from lr_ghost_t")
                    .await
                    .as_deref(),
                Some("0")
            );
        },
    )
    .await
}

/// CancelRequest reaches the server connection running the client's query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_cancels_the_running_query() {
    within(
        Duration::from_secs(180),
        "test cancel_request_cancels_the_running_query",
        async {
            let proxy = proxy(2).await;
            let c = connect(&proxy).await;
            let token = c.cancel_token();
            let started = Instant::now();
            let (r, _) = tokio::join!(c.query("select pg_sleep(10)", &[]), async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                token.cancel_query(NoTls).await.expect("send cancel");
            });
            expect_sqlstate(r, "57014", "cancelled query");
            assert!(
                started.elapsed() < Duration::from_millis(2500),
                "cancel took {:?}",
                started.elapsed()
            );
            assert_eq!(scalar(&c, "select 'alive'").await.as_deref(), Some("alive"));
        },
    )
    .await
}

/// A cancel from an idle client must not hit another client's query that
/// now runs on the server connection the idle client used last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_an_idle_client_does_not_hit_another_client() {
    within(
        Duration::from_secs(180),
        "test cancel_from_an_idle_client_does_not_hit_another_client",
        async {
            let proxy = proxy(1).await;
            let idle = connect(&proxy).await;
            let busy = connect(&proxy).await;
            idle.batch_execute("select 1").await.unwrap();
            let token = idle.cancel_token();
            let (r, _) = tokio::join!(busy.query("select pg_sleep(1.5)", &[]), async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                token.cancel_query(NoTls).await.expect("send cancel");
            });
            if let Err(e) = r {
                panic!("idle client's cancel hit another client: {}", describe(&e));
            }
        },
    )
    .await
}

/// FunctionCall ('F') is forwarded and answered with FunctionCallResponse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_message() {
    within(
        Duration::from_secs(180),
        "test function_call_message",
        async {
            ensure_role("lr_raw").await;
            let proxy = ProxyBuilder::new()
                .pool_size(2)
                .user("name = \"lr_raw\"\npassword = \"lr_raw\"\nauth = \"trust\"")
                .start()
                .await;
            let mut raw = RawConn::login_trust(proxy.addr, "lr_raw").await;
            raw.send(&query("select 'int4pl'::regproc::oid"))
                .await
                .unwrap();
            let msgs = raw.until_ready(T).await;
            let row = msgs.iter().find(|m| m.tag == b'D').expect("oid row");
            let len = i32::from_be_bytes(row.body[2..6].try_into().unwrap()) as usize;
            let oid: i32 = std::str::from_utf8(&row.body[6..6 + len])
                .unwrap()
                .parse()
                .unwrap();
            for (a, b) in [(40i32, 2i32), (-5, 5), (1000, 337)] {
                let mut body = Vec::new();
                body.extend_from_slice(&oid.to_be_bytes());
                body.extend_from_slice(&1i16.to_be_bytes()); // one format code
                body.extend_from_slice(&1i16.to_be_bytes()); // binary
                body.extend_from_slice(&2i16.to_be_bytes()); // two arguments
                for v in [a, b] {
                    body.extend_from_slice(&4i32.to_be_bytes());
                    body.extend_from_slice(&v.to_be_bytes());
                }
                body.extend_from_slice(&1i16.to_be_bytes()); // binary result
                raw.send(&message(b'F', &body)).await.unwrap();
                let msgs = raw.until_ready(T).await;
                let v = msgs
                    .iter()
                    .find(|m| m.tag == b'V')
                    .unwrap_or_else(|| panic!("no FunctionCallResponse: {msgs:?}"));
                assert_eq!(&v.body[..4], &4i32.to_be_bytes());
                assert_eq!(i32::from_be_bytes(v.body[4..8].try_into().unwrap()), a + b);
            }
            // The session still answers queries.
            raw.send(&query("select 1")).await.unwrap();
            let msgs = raw.until_ready(T).await;
            assert!(msgs.iter().any(|m| m.tag == b'D'), "{msgs:?}");
        },
    )
    .await
}

/// Two sessions use the same statement name for different SQL on a pool of
/// one server connection: each Bind runs its own session's statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txid_current_runs_on_the_primary() {
    within(
        Duration::from_secs(60),
        "test txid_current_runs_on_the_primary",
        async {
            let proxy = proxy(2).await;
            let c = connect(&proxy).await;
            for i in 0..20 {
                if let Err(e) = c.query_one("select txid_current()", &[]).await {
                    panic!("round {i}: {}", describe(&e));
                }
            }
        },
    )
    .await
}

/// Shutdown: an idle client gets 57P01 at once; a client inside a
/// transaction finishes it, then gets 57P01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_idle_sessions_and_lets_transactions_finish() {
    within(
        Duration::from_secs(180),
        "test shutdown_ends_idle_sessions_and_lets_transactions_finish",
        async {
            ensure_role("lr_stop").await;
            let proxy = ProxyBuilder::new()
                .pool_size(2)
                .user("name = \"lr_stop\"\npassword = \"lr_stop\"\nauth = \"trust\"")
                .start()
                .await;
            let mut idle = RawConn::login_trust(proxy.addr, "lr_stop").await;
            let mut busy = RawConn::login_trust(proxy.addr, "lr_stop").await;
            idle.send(&query("select 1")).await.unwrap();
            idle.until_ready(T).await;
            busy.send(&query("begin; select 1")).await.unwrap();
            busy.until_ready(T).await;
            // A transaction the proxy holds with no server yet (a lone
            // BEGIN) is one too.
            let mut begun = RawConn::login_trust(proxy.addr, "lr_stop").await;
            begun.send(&query("begin")).await.unwrap();
            begun.until_ready(T).await;
            proxy.shut_down();
            let e = idle
                .error_or_close(T)
                .await
                .expect("an error, not a bare close");
            assert_eq!(e.code(), "57P01", "{:?}", e.fields());
            idle.closed(T).await;
            // Draining: the listener is closed, so a load balancer sends
            // new clients elsewhere while the open transaction finishes.
            let refused = tokio::net::TcpStream::connect(proxy.addr).await;
            assert!(
                refused.is_err(),
                "a new connection during shutdown must be refused, not queued"
            );
            busy.send(&query("select 2; commit")).await.unwrap();
            let msgs = busy.until_ready(T).await;
            assert!(msgs.iter().all(|m| m.tag != b'E'), "{msgs:?}");
            begun.send(&query("select 3")).await.unwrap();
            assert_eq!(
                shape(&begun.until_ready(T).await),
                ["T", "D", "C SELECT 1", "Z T"]
            );
            begun.send(&query("commit")).await.unwrap();
            assert_eq!(shape(&begun.until_ready(T).await), ["C COMMIT", "Z I"]);
            let e = begun
                .error_or_close(T)
                .await
                .expect("an error, not a bare close");
            assert_eq!(e.code(), "57P01", "{:?}", e.fields());
            begun.closed(T).await;
            let e = busy
                .error_or_close(T)
                .await
                .expect("an error, not a bare close");
            assert_eq!(e.code(), "57P01", "{:?}", e.fields());
            busy.closed(T).await;
        },
    )
    .await
}

/// Tags and, for ReadyForQuery, the status, of `msgs`, as text: `C BEGIN`,
/// `Z T`, `E 25P02`, `1`; not ParameterStatus (`lagrouter.last_write_lsn`
/// follows a write's ReadyForQuery).
fn shape(msgs: &[support::raw::Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag != b'S')
        .map(|m| match m.tag {
            b'Z' => format!("Z {}", m.body[0] as char),
            b'E' => format!("E {}", m.code()),
            b'C' => format!("C {}", String::from_utf8_lossy(&m.body[..m.body.len() - 1])),
            t => (t as char).to_string(),
        })
        .collect()
}

/// A proxy whose pools hold one connection each (`checkout_timeout` 1 s),
/// and two clients of `user` (a trust login, so the same pools): a driver
/// and a raw connection. The table `{user}_t (v int)` is empty.
async fn pool_of_one(user: &'static str) -> (TestProxy, Conn, RawConn) {
    ensure_role(user).await;
    let proxy = ProxyBuilder::new()
        .pool_size(1)
        .pool("checkout_timeout = \"1s\"")
        .user(&format!(
            "name = \"{user}\"\npassword = \"{user}\"\nauth = \"trust\""
        ))
        .start()
        .await;
    connect(&proxy)
        .await
        .batch_execute(&format!(
            "create table if not exists {user}_t (v int); delete from {user}_t; \
             grant all on {user}_t to public"
        ))
        .await
        .unwrap();
    let driver = connect_as(&proxy, user, user).await;
    let raw = RawConn::login_trust(proxy.addr, user).await;
    (proxy, driver, raw)
}

/// A plain `BEGIN` is answered by the proxy and goes to the server with
/// the transaction's first statement: until then the client holds no
/// server connection (a pool of one serves another client meanwhile), and
/// the transaction starts (`now()`) at that statement. Then it is an
/// ordinary transaction: it holds the connection, and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_begin_holds_no_server_until_its_first_statement() {
    within(
        Duration::from_secs(120),
        "test a_lone_begin_holds_no_server_until_its_first_statement",
        async {
            let (_proxy, other, mut c) = pool_of_one("lr_begin").await;
            c.send(&query("begin")).await.unwrap();
            assert_eq!(shape(&c.until_ready(T).await), ["C BEGIN", "Z T"]);
            // The primary pool's one connection is free: another client
            // uses it.
            for _ in 0..3 {
                assert_eq!(
                    scalar(&other, "select txid_current() > 0").await.as_deref(),
                    Some("t")
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.send(&query(
                "select (statement_timestamp() - now() < interval '100 ms')::text",
            ))
            .await
            .unwrap();
            let msgs = c.until_ready(T).await;
            assert_eq!(shape(&msgs), ["T", "D", "C SELECT 1", "Z T"]);
            assert_eq!(
                msgs[1].first_value(),
                "true",
                "now() is the first statement's start, not the BEGIN's 300 ms before"
            );
            c.send(&query("insert into lr_begin_t values (1)"))
                .await
                .unwrap();
            assert_eq!(shape(&c.until_ready(T).await), ["C INSERT 0 1", "Z T"]);
            // Now the transaction holds the connection.
            expect_sqlstate(
                other
                    .query("insert into lr_begin_t values (9) returning v", &[])
                    .await,
                "53300",
                "the pool's one connection is in the transaction",
            );
            c.send(&query("commit")).await.unwrap();
            assert_eq!(shape(&c.until_ready(T).await), ["C COMMIT", "Z I"]);
            assert_eq!(
                scalar(&other, "select count(*) from lr_begin_t where v = 1")
                    .await
                    .as_deref(),
                Some("1")
            );
            // The same as an extended-protocol batch (libpq's
            // PQsendQueryParams), and as a Bind of a named statement
            // (pgbench -M prepared); the next statement is a simple query
            // or extended.
            let portal_describe = message(b'D', b"P\0");
            c.send(
                &[
                    parse("", "BEGIN"),
                    bind("", ""),
                    portal_describe,
                    execute(""),
                    sync(),
                ]
                .concat(),
            )
            .await
            .unwrap();
            assert_eq!(
                shape(&c.until_ready(T).await),
                ["1", "2", "n", "C BEGIN", "Z T"]
            );
            assert_eq!(
                scalar(&other, "select txid_current() > 0").await.as_deref(),
                Some("t")
            );
            c.send(&query("insert into lr_begin_t values (2)"))
                .await
                .unwrap();
            assert_eq!(shape(&c.until_ready(T).await), ["C INSERT 0 1", "Z T"]);
            c.send(&query("rollback")).await.unwrap();
            assert_eq!(shape(&c.until_ready(T).await), ["C ROLLBACK", "Z I"]);
            c.send(&[parse("s_begin", "begin;"), sync()].concat())
                .await
                .unwrap();
            assert_eq!(shape(&c.until_ready(T).await), ["1", "Z I"]);
            c.send(&[bind("", "s_begin"), execute(""), sync()].concat())
                .await
                .unwrap();
            assert_eq!(shape(&c.until_ready(T).await), ["2", "C BEGIN", "Z T"]);
            assert_eq!(
                scalar(&other, "select txid_current() > 0").await.as_deref(),
                Some("t")
            );
            let batch = [
                parse("", "insert into lr_begin_t values (3)"),
                bind("", ""),
                execute(""),
                sync(),
            ]
            .concat();
            c.send(&batch).await.unwrap();
            assert_eq!(
                shape(&c.until_ready(T).await),
                ["1", "2", "C INSERT 0 1", "Z T"]
            );
            c.send(&[parse("", "commit"), bind("", ""), execute(""), sync()].concat())
                .await
                .unwrap();
            assert_eq!(
                shape(&c.until_ready(T).await),
                ["1", "2", "C COMMIT", "Z I"]
            );
            assert_eq!(
                scalar(
                    &other,
                    "select string_agg(v::text, ',' order by v) from lr_begin_t"
                )
                .await
                .as_deref(),
                Some("1,3")
            );
            // A second BEGIN inside the block reaches the server, which warns.
            c.send(&query("begin")).await.unwrap();
            c.until_ready(T).await;
            c.send(&query("begin")).await.unwrap();
            assert_eq!(shape(&c.until_ready(T).await), ["N", "C BEGIN", "Z T"]);
            c.send(&query("rollback")).await.unwrap();
            assert_eq!(shape(&c.until_ready(T).await), ["C ROLLBACK", "Z I"]);
        },
    )
    .await
}

/// The first statement after a `BEGIN` the proxy answered finds no server
/// (a pool of one, held; `checkout_timeout` 1 s): the client gets 53300
/// and is in a failed transaction block, as on a server. Every statement
/// then gets 25P02, simple or extended, nothing runs, and `ROLLBACK` or
/// `COMMIT` (simple or extended) answers `ROLLBACK` and ends the block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_first_statement_finds_no_server_fails_as_on_the_server() {
    within(
        Duration::from_secs(120),
        "test a_transaction_whose_first_statement_finds_no_server_fails_as_on_the_server",
        async {
            let (_proxy, holder, mut c) = pool_of_one("lr_begin2").await;
            for end in ["rollback", "COMMIT", "extended"] {
                holder.batch_execute("begin; select 1").await.unwrap();
                c.send(&query("begin")).await.unwrap();
                assert_eq!(shape(&c.until_ready(T).await), ["C BEGIN", "Z T"]);
                c.send(&query("insert into lr_begin2_t values (2)"))
                    .await
                    .unwrap();
                assert_eq!(shape(&c.until_ready(T).await), ["E 53300", "Z E"], "{end}");
                // The server is free again: the block stays failed all the same.
                holder.batch_execute("commit").await.unwrap();
                c.send(&query("insert into lr_begin2_t values (3)"))
                    .await
                    .unwrap();
                assert_eq!(shape(&c.until_ready(T).await), ["E 25P02", "Z E"], "{end}");
                c.send(&query("")).await.unwrap();
                assert_eq!(shape(&c.until_ready(T).await), ["I", "Z E"], "{end}");
                let batch = [
                    parse("", "insert into lr_begin2_t values (4)"),
                    bind("", ""),
                    execute(""),
                    sync(),
                ]
                .concat();
                c.send(&batch).await.unwrap();
                assert_eq!(shape(&c.until_ready(T).await), ["E 25P02", "Z E"], "{end}");
                c.send(&[parse("s_ins", "insert into lr_begin2_t values (5)"), sync()].concat())
                    .await
                    .unwrap();
                assert_eq!(shape(&c.until_ready(T).await), ["E 25P02", "Z E"], "{end}");
                if end == "extended" {
                    let batch = [parse("", "ROLLBACK"), bind("", ""), execute(""), sync()].concat();
                    c.send(&batch).await.unwrap();
                    assert_eq!(
                        shape(&c.until_ready(T).await),
                        ["1", "2", "C ROLLBACK", "Z I"]
                    );
                } else {
                    c.send(&query(end)).await.unwrap();
                    assert_eq!(
                        shape(&c.until_ready(T).await),
                        ["C ROLLBACK", "Z I"],
                        "{end}"
                    );
                }
                // Out of the block: statements run again.
                c.send(&query("select 'again'")).await.unwrap();
                assert_eq!(
                    shape(&c.until_ready(T).await),
                    ["T", "D", "C SELECT 1", "Z I"],
                    "{end}"
                );
            }
            assert_eq!(
                scalar(&holder, "select count(*) from lr_begin2_t")
                    .await
                    .as_deref(),
                Some("0"),
                "nothing of the failed transactions ran"
            );
        },
    )
    .await
}

/// The DataRows among `msgs`, their columns as sent.
fn data_rows(msgs: &[support::raw::Msg]) -> Vec<Vec<Vec<u8>>> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(support::raw::Msg::values)
        .collect()
}

/// Parse, Bind and Execute of `sql` (in any encoding) as the unnamed
/// statement.
fn unnamed(sql: &[u8]) -> Vec<u8> {
    [parse_bytes("", sql), bind("", ""), execute("")].concat()
}

/// The transaction status of the ReadyForQuery that ends `msgs`.
fn ready_status(msgs: &[support::raw::Msg]) -> u8 {
    let z = msgs.last().expect("messages");
    assert_eq!(z.tag, b'Z', "{msgs:?}");
    z.body[0]
}

/// Statement texts that are not UTF-8 keep the session: a LATIN1 client's
/// texts reach the server as sent (simple and extended protocol, named
/// statements prepared again from what the client sent, two statements
/// that differ only in an accented letter kept apart); a Shift-JIS
/// client's write behind a string whose last character ends in 0x5C (a
/// backslash, read byte by byte, that would hide the write from routing)
/// goes to the primary; a UTF-8 client's stray byte gets the server's own
/// 22021, in a transaction too, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_in_other_client_encodings() {
    within(
        Duration::from_secs(120),
        "test texts_in_other_client_encodings",
        async {
            ensure_role("lr_enc").await;
            let proxy = ProxyBuilder::new()
                .user("name = \"lr_enc\"\npassword = \"lr_enc\"\nauth = \"trust\"")
                .start()
                .await;
            connect(&proxy)
                .await
                .batch_execute(
                    "create table if not exists lr_enc_t (v text); delete from lr_enc_t; \
                     grant all on lr_enc_t to public",
                )
                .await
                .unwrap();
            let mut c =
                RawConn::login_trust_with(proxy.addr, "lr_enc", &[("client_encoding", "LATIN1")])
                    .await;
            // Two named statements that routing reads alike ('x' and an
            // accented letter), prepared on whichever node runs their Bind.
            let (e, grave) = (b"select 'x\xe9'::text", b"select 'x\xe8'::text");
            let mut batch = [parse_bytes("e", e), parse_bytes("g", grave)].concat();
            for s in ["e", "g"] {
                batch.extend([bind("", s), execute(""), sync()].concat());
            }
            c.send(&batch).await.unwrap();
            let mut rows = Vec::new();
            for _ in 0..2 {
                let msgs = c.until_ready(T).await;
                assert_eq!(Msg::error_codes(&msgs), Vec::<String>::new());
                rows.extend(data_rows(&msgs));
            }
            assert_eq!(rows, [vec![b"x\xe9".to_vec()], vec![b"x\xe8".to_vec()]]);
            // A write, read back; the same statements again in a
            // transaction on the primary.
            c.send(&query_bytes(b"insert into lr_enc_t values ('caf\xe9')"))
                .await
                .unwrap();
            let msgs = c.until_ready(T).await;
            assert_eq!(Msg::error_codes(&msgs), Vec::<String>::new());
            c.send(&query_bytes(
                b"select v, length(v) from lr_enc_t where v like 'caf%'",
            ))
            .await
            .unwrap();
            let msgs = c.until_ready(T).await;
            assert_eq!(data_rows(&msgs), [vec![b"caf\xe9".to_vec(), b"4".to_vec()]]);
            // A batch routed as the one transaction it is: its second
            // statement writes.
            c.send(
                &[
                    unnamed(b"select 'r\xe9'"),
                    unnamed(b"insert into lr_enc_t values ('b\xe9')"),
                    sync(),
                ]
                .concat(),
            )
            .await
            .unwrap();
            let msgs = c.until_ready(T).await;
            assert_eq!(Msg::error_codes(&msgs), Vec::<String>::new(), "{msgs:?}");
            c.send(&query("begin; insert into lr_enc_t values ('t')"))
                .await
                .unwrap();
            assert_eq!(ready_status(&c.until_ready(T).await), b'T');
            c.send(
                &[
                    bind("", "g"),
                    execute(""),
                    unnamed(b"select pg_is_in_recovery()::text"),
                    sync(),
                ]
                .concat(),
            )
            .await
            .unwrap();
            let msgs = c.until_ready(T).await;
            assert_eq!(
                data_rows(&msgs),
                [vec![b"x\xe8".to_vec()], vec![b"false".to_vec()]]
            );
            c.send(&query("commit")).await.unwrap();
            assert_eq!(ready_status(&c.until_ready(T).await), b'I');

            // Shift-JIS: 0x95 0x5C is one character.
            c.send(&query("set client_encoding = 'SJIS'"))
                .await
                .unwrap();
            c.until_ready(T).await;
            c.send(&query_bytes(
                b"select E'\x95\x5c'; insert into lr_enc_t values ('sjis'); -- '",
            ))
            .await
            .unwrap();
            let msgs = c.until_ready(T).await;
            assert_eq!(Msg::error_codes(&msgs), Vec::<String>::new(), "{msgs:?}");
            assert_eq!(data_rows(&msgs), [vec![b"\x95\x5c".to_vec()]]);
            c.send(&query("select count(*) from lr_enc_t where v = 'sjis'"))
                .await
                .unwrap();
            assert_eq!(data_rows(&c.until_ready(T).await), [vec![b"1".to_vec()]]);

            // UTF-8: a stray byte is the server's 22021, not the session's end.
            c.send(&query("set client_encoding = 'UTF8'"))
                .await
                .unwrap();
            c.until_ready(T).await;
            for (sql, status) in [
                (&b"select '\xff'"[..], b'I'),
                (b"begin", b'T'),
                (b"select '\xff'", b'E'),
                (b"rollback", b'I'),
            ] {
                c.send(&query_bytes(sql)).await.unwrap();
                let msgs = c.until_ready(T).await;
                let want: &[&str] = if sql.is_ascii() { &[] } else { &["22021"] };
                assert_eq!(Msg::error_codes(&msgs), want, "{msgs:?}");
                assert_eq!(ready_status(&msgs), status);
            }
            c.send(&[bind("", "e"), execute(""), sync()].concat())
                .await
                .unwrap();
            assert_eq!(
                data_rows(&c.until_ready(T).await),
                [vec!["xé".as_bytes().to_vec()]]
            );

            // A LATIN1 program name in the startup packet is taken as
            // PostgreSQL 15 takes it: each byte outside printable ASCII `?`.
            let mut c = RawConn::login_trust_bytes(
                proxy.addr,
                "lr_enc",
                &[("application_name", b"caf\xe9")],
            )
            .await;
            c.send(&query("show application_name")).await.unwrap();
            assert_eq!(data_rows(&c.until_ready(T).await), [vec![b"caf?".to_vec()]]);
            // Other values must be UTF-8: refused at login, with the reason.
            let mut c = RawConn::connect(proxy.addr).await;
            let startup = startup_message_bytes(
                196608,
                &[
                    ("user", b"lr_enc"),
                    ("database", b"app"),
                    ("search_path", b"caf\xe9"),
                ],
            );
            c.send(&startup).await.unwrap();
            let e = c
                .error_or_close(T)
                .await
                .expect("an error before the close");
            assert_eq!(e.code(), "08P01");
            assert!(
                String::from_utf8_lossy(&e.body).contains("not valid UTF-8"),
                "{e:?}"
            );
        },
    )
    .await
}
