//! Writes never reach a replica, through lagrouter against the shared
//! primary and two streaming replicas.
//!
//! Statements that write without looking like writes (nextval, a
//! data-modifying CTE, SELECT … FOR UPDATE, a user function that inserts,
//! txid_current, advisory locks, SELECT … INTO, EXPLAIN ANALYZE of a write,
//! NOTIFY, large objects, maintenance commands) must all succeed: a hot
//! standby answers each with an error (mostly SQLSTATE 25006), and the
//! `control` test shows that it does. Advisory locks, which a standby
//! would grant, are checked by the serving port instead.
//!
//! Also routing hints (`/* lagrouter:route=primary */`,
//! `SET lagrouter.route`), `BEGIN READ ONLY` on a replica, and
//! extended-protocol batches where a read precedes a write before the Sync
//! (sent with the raw client from `tests/support`).
//!
//! No test here pauses replay; which node served a read is identified with
//! `inet_server_port()` inside it.

mod support;

use std::time::Duration;

use support::raw::{Msg, RawConn, bind, execute, message, parse, sync};
use support::{ProxyBuilder, TestProxy, blocking, connect, describe, eventually, within};
use tokio::sync::OnceCell;
use tokio_postgres::{Client, SimpleQueryMessage};

/// User the raw-protocol client logs in as (trust auth in the proxy).
const RAW_USER: &str = "lr_wr";

/// A proxy for one test (each test has its own runtime), after the
/// schema the tests use has been created once.
async fn proxy() -> TestProxy {
    static SCHEMA: OnceCell<()> = OnceCell::const_new();
    SCHEMA
        .get_or_init(|| async {
            support::ensure_role(RAW_USER).await;
            blocking(|c| {
                c.sql(
                    c.primary_index(),
                    "DROP TABLE IF EXISTS wr_t CASCADE; DROP SEQUENCE IF EXISTS wr_seq; \
                     CREATE TABLE wr_t (id serial PRIMARY KEY, v text); \
                     CREATE SEQUENCE wr_seq; \
                     INSERT INTO wr_t (v) VALUES ('seed'); \
                     CREATE OR REPLACE FUNCTION wr_insert(t text) RETURNS int \
                       LANGUAGE plpgsql AS $$ DECLARE n int; BEGIN \
                       INSERT INTO wr_t (v) VALUES (t) RETURNING id INTO n; RETURN n; END $$; \
                     CREATE OR REPLACE FUNCTION wr_insert_sql(t text) RETURNS int \
                       LANGUAGE sql AS $$ INSERT INTO wr_t (v) VALUES (t) RETURNING id $$; \
                     CREATE OR REPLACE PROCEDURE wr_proc(t text) \
                       LANGUAGE sql AS $$ INSERT INTO wr_t (v) VALUES (t) $$; \
                     GRANT ALL ON wr_t, wr_seq, wr_t_id_seq TO app, lr_wr; \
                     ALTER TABLE wr_t OWNER TO app; ALTER SEQUENCE wr_seq OWNER TO app; \
                     ALTER FUNCTION wr_insert(text) OWNER TO app; \
                     ALTER FUNCTION wr_insert_sql(text) OWNER TO app; \
                     ALTER PROCEDURE wr_proc(text) OWNER TO app;",
                )
                .expect("schema")
            })
            .await;
            blocking(|c| c.wait_caught_up(Duration::from_secs(30)))
                .await
                .expect("replicas catch up");
        })
        .await;
    let p = ProxyBuilder::new()
        .user(&format!(
            "name = \"{RAW_USER}\"\npassword = \"{RAW_USER}\"\nauth = \"trust\""
        ))
        .start()
        .await;
    // Until the function catalog is loaded, `inet_server_port()` is an
    // unknown function and its reads go to the primary: wait for that.
    let c = connect(&p).await;
    let c = &c;
    eventually(
        Duration::from_secs(15),
        "plain reads reach a replica",
        || async move { (served_by(c, "SELECT inet_server_port()").await != 0).then_some(()) },
    )
    .await;
    p
}

async fn ports() -> Vec<u16> {
    blocking(|c| (0..c.node_count()).map(|i| c.port(i)).collect()).await
}

fn node_of(ports: &[u16], port: i32) -> usize {
    ports
        .iter()
        .position(|p| i32::from(*p) == port)
        .unwrap_or_else(|| panic!("port {port} is no cluster node ({ports:?})"))
}

/// Runs `sql` as a simple query; the first column of every row.
async fn simple(client: &Client, sql: &str) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
    let msgs = within(Duration::from_secs(30), sql, client.simple_query(sql)).await?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect())
}

/// The node that served `sql`, which must return `inet_server_port()` first.
async fn served_by(client: &Client, sql: &str) -> usize {
    let rows = simple(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    let port: i32 = rows
        .iter()
        .flatten()
        .next()
        .unwrap_or_else(|| panic!("{sql}: no port returned"))
        .parse()
        .unwrap();
    node_of(&ports().await, port)
}

/// Statements that write (or need a primary) but read like reads, each run
/// on a fresh connection (no read-your-writes state) through the proxy.
const DISGUISED_WRITES: &[&str] = &[
    "SELECT nextval('wr_seq')",
    "select NEXTVAL('wr_seq')",
    "SELECT pg_catalog.nextval('wr_seq')",
    "SELECT \"nextval\"('wr_seq')",
    "(SELECT nextval('wr_seq'))",
    "VALUES (nextval('wr_seq'))",
    "SELECT setval('wr_seq', 1000)",
    "SELECT 1 WHERE nextval('wr_seq') > 0",
    "/* leading comment */ SELECT nextval('wr_seq')",
    "-- line comment\nSELECT nextval('wr_seq')",
    "WITH x AS (INSERT INTO wr_t (v) VALUES ('cte') RETURNING *) SELECT * FROM x",
    "WITH a AS (SELECT 1 AS one), b AS (UPDATE wr_t SET v = v WHERE id = 1 RETURNING id) \
     SELECT * FROM a, b",
    "WITH d AS (DELETE FROM wr_t WHERE v = 'nothing' RETURNING id) SELECT count(*) FROM d",
    "SELECT * FROM wr_t WHERE id = 1 FOR UPDATE",
    "SELECT * FROM wr_t WHERE id = 1 FOR SHARE",
    "SELECT * FROM wr_t WHERE id = 1 FOR NO KEY UPDATE SKIP LOCKED",
    "select * from wr_t where id = 1 for key share nowait",
    "BEGIN; SELECT * FROM wr_t WHERE id = 1 FOR UPDATE; COMMIT",
    "SELECT wr_insert('plpgsql')",
    "SELECT public.wr_insert('qualified')",
    "SELECT wr_insert_sql('sql function')",
    "SELECT * FROM wr_insert('from clause')",
    "SELECT 1 FROM wr_t WHERE id = wr_insert('in where')",
    "CALL wr_proc('procedure')",
    "DO $$ BEGIN INSERT INTO wr_t (v) VALUES ('do block'); END $$",
    "SELECT txid_current()",
    "SELECT pg_current_xact_id()",
    "SELECT pg_current_wal_lsn()",
    "SELECT * INTO TEMP wr_into FROM wr_t LIMIT 1",
    "EXPLAIN ANALYZE INSERT INTO wr_t (v) VALUES ('explain analyze')",
    "EXPLAIN (ANALYZE, FORMAT JSON) DELETE FROM wr_t WHERE v = 'nothing'",
    "EXPLAIN ANALYZE SELECT wr_insert('explain analyze select')",
    "SELECT pg_notify('wr_channel', 'x')",
    "NOTIFY wr_channel",
    "SELECT lo_unlink(lo_create(0))",
    "ANALYZE wr_t",
    "VACUUM wr_t",
    "BEGIN; LOCK TABLE wr_t IN SHARE ROW EXCLUSIVE MODE; COMMIT",
    "SELECT 1; INSERT INTO wr_t (v) VALUES ('multi-statement')",
    "SELECT 1; SELECT nextval('wr_seq')",
    "PREPARE wr_prep AS INSERT INTO wr_t (v) VALUES ('prepared'); EXECUTE wr_prep",
];

/// The premise: each of these fails on a replica (else succeeding through
/// the proxy would prove nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_disguised_writes_fail_on_a_replica() {
    let _ = proxy().await;
    let conn = blocking(|c| c.conn_string(1)).await;
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect to replica1 directly");
    tokio::spawn(connection);
    let mut accepted = Vec::new();
    for sql in DISGUISED_WRITES {
        match simple(&client, sql).await {
            Ok(_) => accepted.push(*sql),
            Err(e) => {
                eprintln!("replica1 refuses {sql:?}: {}", describe(&e));
                // A failed multi-statement query leaves its transaction open.
                client.batch_execute("ROLLBACK").await.unwrap();
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "a replica accepts these, so they cannot show where the proxy sent them: {accepted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disguised_writes_go_to_the_primary() {
    let p = &proxy().await;
    let mut failed = Vec::new();
    for sql in DISGUISED_WRITES {
        // Simple protocol on a fresh connection.
        let c = connect(p).await;
        if let Err(e) = simple(&c, sql).await {
            failed.push(format!("simple {sql:?}: {}", describe(&e)));
        }
        // Extended protocol (single statements only), fresh connection.
        let single = !sql.trim_end_matches(';').contains(';');
        if single {
            let c = connect(p).await;
            if let Err(e) = within(Duration::from_secs(30), sql, c.query(*sql, &[])).await {
                failed.push(format!("extended {sql:?}: {}", describe(&e)));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} writes were refused (sent to a replica?):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// Advisory locks work on a standby too, so check the node and that the
/// unlock reaches the connection holding the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_locks_are_taken_on_the_primary_and_released_there() {
    let p = &proxy().await;
    let c = connect(p).await;
    let node = served_by(&c, "SELECT inet_server_port(), pg_advisory_lock(424242)").await;
    assert_eq!(node, 0, "pg_advisory_lock served by node {node}");
    let held = blocking(|c| {
        c.sql(
            0,
            "select count(*) from pg_locks where locktype = 'advisory' and objid = 424242 \
             and granted",
        )
    })
    .await
    .unwrap();
    assert_eq!(held, "1", "the primary shows the advisory lock held");
    let r = simple(&c, "SELECT pg_advisory_unlock(424242), inet_server_port()")
        .await
        .unwrap_or_else(|e| panic!("unlock: {}", describe(&e)));
    assert_eq!(
        r[0].as_deref(),
        Some("t"),
        "unlock ran where the lock is held"
    );
    let held = blocking(|c| {
        c.sql(
            0,
            "select count(*) from pg_locks where locktype = 'advisory' and objid = 424242",
        )
    })
    .await
    .unwrap();
    assert_eq!(held, "0", "released on the primary");
    // The try/xact forms inside a transaction.
    let r = simple(
        &c,
        "BEGIN; SELECT pg_try_advisory_xact_lock(424243); SELECT inet_server_port(); COMMIT",
    )
    .await
    .unwrap_or_else(|e| panic!("xact lock: {}", describe(&e)));
    assert_eq!(r[0].as_deref(), Some("t"));
    let port: i32 = r[1].as_deref().unwrap().parse().unwrap();
    assert_eq!(node_of(&ports().await, port), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_and_read_only_transactions() {
    let p = &proxy().await;
    let port_sql = "SELECT inet_server_port()";

    // Baseline: a plain read from a fresh connection goes to a replica.
    let c = connect(p).await;
    assert_ne!(served_by(&c, port_sql).await, 0, "plain read");

    // Comment hint, simple and extended.
    let hinted = "/* lagrouter:route=primary */ SELECT inet_server_port()";
    assert_eq!(served_by(&c, hinted).await, 0, "route=primary hint");
    let port: i32 = c.query_one(hinted, &[]).await.unwrap().get(0);
    assert_eq!(
        node_of(&ports().await, port),
        0,
        "route=primary hint, extended"
    );
    // The hint is per statement.
    assert_ne!(
        served_by(&c, port_sql).await,
        0,
        "after the hinted statement"
    );

    // SET lagrouter.route.
    let s = connect(p).await;
    s.batch_execute("SET lagrouter.route = primary")
        .await
        .unwrap_or_else(|e| panic!("SET lagrouter.route = primary: {}", describe(&e)));
    assert_eq!(
        simple(&s, "SHOW lagrouter.route").await.unwrap()[0].as_deref(),
        Some("primary")
    );
    for _ in 0..5 {
        assert_eq!(served_by(&s, port_sql).await, 0, "route = primary");
    }
    s.batch_execute("SET lagrouter.route = replica")
        .await
        .unwrap_or_else(|e| panic!("SET lagrouter.route = replica: {}", describe(&e)));
    for _ in 0..5 {
        assert_ne!(served_by(&s, port_sql).await, 0, "route = replica");
        let port: i32 = s.query_one(port_sql, &[]).await.unwrap().get(0);
        assert_ne!(
            node_of(&ports().await, port),
            0,
            "route = replica, extended"
        );
    }
    // Statements classified as writes still go to the primary under
    // route = replica (and under the comment hint).
    for sql in [
        "INSERT INTO wr_t (v) VALUES ('route=replica')",
        "SELECT * FROM wr_t WHERE id = 1 FOR UPDATE",
        "WITH x AS (INSERT INTO wr_t (v) VALUES ('route=replica cte') RETURNING *) SELECT * FROM x",
        "/* lagrouter:route=replica */ UPDATE wr_t SET v = v WHERE id = 1",
        "/* lagrouter:route=replica */ SELECT * FROM wr_t WHERE id = 1 FOR SHARE",
    ] {
        simple(&s, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} with route = replica: {}", describe(&e)));
    }
    s.batch_execute("SET lagrouter.route = default")
        .await
        .unwrap();
    assert_eq!(
        simple(&s, "SHOW lagrouter.route").await.unwrap()[0].as_deref(),
        Some("default")
    );

    // Transactions.
    let t = connect(p).await;
    for sql in [
        "BEGIN READ ONLY; SELECT inet_server_port(); COMMIT",
        "START TRANSACTION READ ONLY; SELECT inet_server_port(); COMMIT",
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT inet_server_port(); COMMIT",
    ] {
        assert_ne!(served_by(&t, sql).await, 0, "{sql}");
    }
    // tokio-postgres' own read-only transaction, statement by statement.
    let mut t = t.client;
    {
        let tx = t
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .unwrap_or_else(|e| panic!("START TRANSACTION READ ONLY: {}", describe(&e)));
        let port: i32 = tx.query_one(port_sql, &[]).await.unwrap().get(0);
        assert_ne!(node_of(&ports().await, port), 0, "read-only transaction");
        tx.commit().await.unwrap();
    }
    // A plain BEGIN on its own goes to the primary (what follows is unknown).
    {
        let tx = t.transaction().await.unwrap();
        let port: i32 = tx.query_one(port_sql, &[]).await.unwrap().get(0);
        assert_eq!(node_of(&ports().await, port), 0, "read-write transaction");
        tx.commit().await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// Extended protocol with the raw client.

/// Parse, Bind, Execute of `sql` (unnamed statement and portal).
fn run(sql: &str) -> Vec<u8> {
    [parse("", sql), bind("", ""), execute("")].concat()
}

fn flush() -> Vec<u8> {
    message(b'H', &[])
}

/// Messages up to ReadyForQuery; panics after 15 s.
async fn until_ready(raw: &mut RawConn) -> Vec<Msg> {
    raw.until_ready(Duration::from_secs(15)).await
}

fn errors(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'E')
        .map(|m| {
            let f = m.fields();
            format!(
                "{} {}",
                f.get(&b'C').cloned().unwrap_or_default(),
                f.get(&b'M').cloned().unwrap_or_default()
            )
        })
        .collect()
}

/// A SELECT then an INSERT before one Sync: one implicit transaction, so
/// the whole batch goes to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_batch_read_then_write_before_sync_goes_to_primary() {
    let p = &proxy().await;
    let ports = ports().await;
    for round in 0..5 {
        let mut raw = RawConn::login_trust(p.addr, RAW_USER).await;
        let batch = [
            run("SELECT inet_server_port()"),
            run("INSERT INTO wr_t (v) VALUES ('raw batch')"),
            sync(),
        ]
        .concat();
        raw.send(&batch).await.unwrap();
        let msgs = until_ready(&mut raw).await;
        assert!(
            errors(&msgs).is_empty(),
            "round {round}: batch failed: {:?}",
            errors(&msgs)
        );
        let row = msgs.iter().find(|m| m.tag == b'D').expect("a DataRow");
        let node = node_of(&ports, row.first_value().parse().unwrap());
        assert_eq!(
            node, 0,
            "round {round}: the SELECT of a batch that writes ran on node {node}"
        );
        let tags: Vec<String> = msgs
            .iter()
            .filter(|m| m.tag == b'C')
            .map(|m| {
                String::from_utf8_lossy(&m.body)
                    .trim_end_matches('\0')
                    .to_owned()
            })
            .collect();
        assert_eq!(tags, ["SELECT 1", "INSERT 0 1"], "round {round}");
    }
}

/// The same batch, but the client flushes after the SELECT and reads its
/// result before sending the INSERT and the Sync (legal: a Flush does not
/// end the implicit transaction). The proxy must pick a node at the Flush,
/// before it can see the INSERT; the INSERT must still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_read_flush_then_write_before_sync_succeeds() {
    let p = &proxy().await;
    let mut raw = RawConn::login_trust(p.addr, RAW_USER).await;
    raw.send(&[run("SELECT inet_server_port()"), flush()].concat())
        .await
        .unwrap();
    let mut first = Vec::new();
    loop {
        let m = raw
            .recv(Duration::from_secs(10))
            .await
            .expect("results of the flushed SELECT");
        let done = m.tag == b'C' || m.tag == b'E';
        first.push(m);
        if done {
            break;
        }
    }
    let row = first.iter().find(|m| m.tag == b'D');
    let ports = ports().await;
    let node = row.map(|r| node_of(&ports, r.first_value().parse().unwrap()));
    eprintln!("flushed SELECT served by node {node:?}");
    raw.send(&[run("INSERT INTO wr_t (v) VALUES ('after flush')"), sync()].concat())
        .await
        .unwrap();
    let msgs = until_ready(&mut raw).await;
    assert!(
        errors(&first).is_empty() && errors(&msgs).is_empty(),
        "INSERT after a flushed SELECT in the same implicit transaction failed \
         (the SELECT went to node {node:?}): {:?} {:?}",
        errors(&first),
        errors(&msgs)
    );
}

/// Serializable transactions opened and closed in separate statements go
/// to the primary (a hot standby refuses serializable mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_transaction_statement_by_statement_goes_to_primary() {
    let p = &proxy().await;
    for begin in [
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ] {
        let c = connect(p).await;
        simple(&c, begin)
            .await
            .unwrap_or_else(|e| panic!("{begin}: {}", describe(&e)));
        assert_eq!(
            served_by(&c, "SELECT inet_server_port()").await,
            0,
            "{begin}; SELECT"
        );
        simple(&c, "COMMIT").await.unwrap();
    }
}

/// The same transactions sent as one simple query. The classifier folds
/// `BEGIN …; SELECT …; COMMIT` into a plain read and loses the
/// serializable mode, so the query goes to a replica, which refuses it:
/// `ERROR 0A000: cannot use serializable mode in a hot standby`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_transaction_in_one_query_goes_to_primary() {
    let p = &proxy().await;
    let mut failed = Vec::new();
    for sql in [
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY; SELECT count(*) FROM wr_t; COMMIT",
        "BEGIN READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM wr_t; COMMIT",
        "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM wr_t; COMMIT",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM wr_t; COMMIT",
    ] {
        let c = connect(p).await;
        if let Err(e) = simple(&c, sql).await {
            failed.push(format!("{sql:?}: {}", describe(&e)));
        }
    }
    assert!(failed.is_empty(), "refused:\n{}", failed.join("\n"));
}

/// Functions known to write (DESIGN: nextval, setval, advisory locks …;
/// `txid_current` is on the routing crate's primary-only list) are
/// classified `Unknown` like any volatile function, and `Unknown` may be
/// sent to a replica by a `route=replica` override, where they fail.
/// DESIGN: the replica override is "not honoured for statements classified
/// as writes".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_replica_override_keeps_known_writers_on_the_primary() {
    let p = &proxy().await;
    let mut failed = Vec::new();
    for sql in [
        "SELECT nextval('wr_seq')",
        "SELECT setval('wr_seq', 5000)",
        "SELECT txid_current()",
        "SELECT pg_current_xact_id()",
        "SELECT lo_unlink(lo_create(0))",
        "SELECT pg_notify('wr_channel', 'x')",
        "SELECT wr_insert('route=replica')",
    ] {
        let c = connect(p).await;
        c.batch_execute("SET lagrouter.route = replica")
            .await
            .unwrap();
        if let Err(e) = simple(&c, sql).await {
            failed.push(format!("{sql:?}: {}", describe(&e)));
        }
        let c = connect(p).await;
        let hinted = format!("/* lagrouter:route=replica */ {sql}");
        if let Err(e) = simple(&c, &hinted).await {
            failed.push(format!("{hinted:?}: {}", describe(&e)));
        }
    }
    assert!(
        failed.is_empty(),
        "refused by a replica:\n{}",
        failed.join("\n")
    );
}

/// A session-pinning statement sent to a replica by a `route=replica` hint
/// (here a session advisory lock, classified `Unknown`) pins the client to
/// that replica's connection; every later statement of the session,
/// writes included, then runs on the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pinned_on_a_replica_still_writes_on_the_primary() {
    let p = &proxy().await;
    let c = connect(p).await;
    let lock_node = served_by(
        &c,
        "/* lagrouter:route=replica */ SELECT inet_server_port(), pg_advisory_lock(77)",
    )
    .await;
    eprintln!("advisory lock taken on node {lock_node}");
    let r = simple(
        &c,
        "INSERT INTO wr_t (v) VALUES ('after a lock on a replica')",
    )
    .await;
    assert!(
        r.is_ok(),
        "INSERT after pinning to node {lock_node}: {}",
        r.map_err(|e| describe(&e)).unwrap_err()
    );
}
