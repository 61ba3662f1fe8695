//! Write safety (issue 6) through lagrouter against the shared primary and
//! its two streaming replicas:
//!
//! - the write gate (`[safety] min_replicas_to_write`): with both replicas'
//!   replay paused past `min_replicas_max_lag_bytes`, every kind of write
//!   (INSERT, DDL, an unknown function, a multi-statement text, `BEGIN`)
//!   is refused with SQLSTATE 53000 before it reaches a server, reads and
//!   `BEGIN READ ONLY` keep working and no refused row exists on the
//!   primary; resuming one replica lets writes through again, but only
//!   after the hysteresis (`recover_after_checks`); with the gate off the
//!   same state lets writes through; a live reload from 0 to 3 (more than
//!   the replicas) and back closes and reopens it;
//! - `SELECT lagrouter.wait_replicas(n, timeout_ms)` over the simple and
//!   the extended protocol, with and without paused replicas, with a
//!   causal token, bad arguments (22023), and 100 concurrent waiters that
//!   hold no server connection (`SHOW POOLS` in_use stays flat);
//! - data at risk: an inactive physical replication slot on the primary
//!   shows in /metrics and `SHOW SLOTS` with its retained WAL; the
//!   unreplayed / unreceived bytes follow paused replay.
//!
//! The scenarios pause replay on the shared cluster, so they hold `SERIAL`;
//! guards resume replay, drop the slot and drop the tables on drop, also
//! when an assertion fails. Every loop is bounded in count and time.
//!
//! Metrics: the exporter installs a process-wide recorder and spawns its
//! HTTP listener on the runtime that starts the first lagrouter; a
//! `#[tokio::test]` runtime ends with its test, taking the listener with
//! it. So these tests run on one runtime shared by the whole binary, and
//! every proxy names the same `metrics_listen` (the first installs it, the
//! later ones log that it exists). Tests run one at a time (`SERIAL`) and
//! each proxy stops when its test ends, so the gauges read are the current
//! proxy's.

mod support;

use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use lagrouter::pgcluster::Cluster;
use lagrouter_config::Config;
use support::metrics::{lines_of, one, series, sum};
use support::routing::{Lr, Paused, caught_up, rows};
use support::{
    ProxyBuilder, TempDir, blocking, console_rows, describe, sqlstate, start_lagrouter,
    try_connect_str, within,
};
use tokio::sync::Mutex;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// The gate's lag limit in these tests; a ~1.2 MB write is far past it.
const GATE_LAG_BYTES: u64 = 65536;
/// Routing's own limit, far above the fill: replicas keep serving reads
/// while the gate counts them out, so the two thresholds are seen apart.
const HEALTH_LAG_BYTES: u64 = 64 << 20;
/// Slow re-admission (10 good checks of 100 ms), so that a write made
/// right after a replica resumes is reliably refused.
const RECOVER_AFTER: u32 = 10;
const SLOT: &str = "lr_test_slot";

// ---------------------------------------------------------------------------
// Runtime, metrics endpoint, proxies.

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime")
});

/// The port every proxy of this binary exports metrics on.
static METRICS_PORT: LazyLock<u16> = LazyLock::new(|| {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
});

/// Runs one test on the shared runtime, bounded to 5 minutes.
fn run<F: Future<Output = ()>>(name: &str, f: F) {
    RUNTIME.block_on(within(Duration::from_secs(300), name, f));
}

/// A proxy on the shared metrics port with the admin user `lradmin`.
fn builder() -> ProxyBuilder {
    ProxyBuilder::new()
        .server(&format!("metrics_listen = \"127.0.0.1:{}\"", *METRICS_PORT))
        .server("admin_database = \"lagrouter\"")
        .user("name = \"lradmin\"\npassword = \"lradmin\"\nadmin = true")
}

fn health_lines() -> String {
    format!("max_lag_bytes = {HEALTH_LAG_BYTES}\nrecover_after_checks = {RECOVER_AFTER}\n")
}

/// A gate needing `min` replicas within [`GATE_LAG_BYTES`].
async fn gate_proxy(min: Option<u32>) -> Lr {
    let mut b = builder().safety(&format!("min_replicas_max_lag_bytes = {GATE_LAG_BYTES}"));
    if let Some(min) = min {
        b = b.safety(&format!("min_replicas_to_write = {min}"));
    }
    Lr::start(b, &health_lines()).await
}

async fn admin(lr: &Lr) -> support::Conn {
    let s = format!(
        "host=127.0.0.1 port={} user=lradmin password=lradmin dbname=lagrouter connect_timeout=10",
        lr.running.addr.port()
    );
    try_connect_str(&s)
        .await
        .unwrap_or_else(|e| panic!("admin console: {}", describe(&e)))
}

/// `SHOW SAFETY`'s value of `item`.
async fn safety_item(a: &Client, item: &str) -> Option<String> {
    let rows = console_rows(a, "SHOW SAFETY").await;
    rows.iter()
        .find(|r| r.get("item").map(String::as_str) == Some(item))
        .map(|r| r["value"].clone())
}

/// Polls `SHOW SAFETY` until `write_gate` is `want` (10 s at most).
async fn wait_gate(a: &Client, want: &str) -> Duration {
    let start = Instant::now();
    for _ in 0..500 {
        if safety_item(a, "write_gate").await.as_deref() == Some(want) {
            return start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "write_gate not {want} after {:?}: {:?}",
        start.elapsed(),
        console_rows(a, "SHOW SAFETY").await
    );
}

/// Sum of `in_use` over every pool (`SHOW POOLS`).
async fn pools_in_use(a: &Client) -> u64 {
    console_rows(a, "SHOW POOLS")
        .await
        .iter()
        .map(|p| p["in_use"].parse::<u64>().unwrap())
        .sum()
}

/// Sum of `checkouts` over every pool (`SHOW POOLS`).
async fn pools_checkouts(a: &Client) -> u64 {
    console_rows(a, "SHOW POOLS")
        .await
        .iter()
        .map(|p| p["checkouts"].parse::<u64>().unwrap())
        .sum()
}

async fn scrape() -> String {
    support::metrics::scrape(*METRICS_PORT).await
}

/// Scrapes until `ok` holds for the text (at most `limit`); returns the
/// text and how long it took.
async fn scrape_until(
    limit: Duration,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> (String, Duration) {
    let start = Instant::now();
    let mut text = String::new();
    for _ in 0..1000 {
        text = scrape().await;
        if ok(&text) {
            return (text, start.elapsed());
        }
        if start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: not seen in /metrics after {limit:?}:\n{text}");
}

// ---------------------------------------------------------------------------
// Cluster fixtures.

/// Drops the test tables on the primary when dropped (also on panic).
struct Tables;

impl Tables {
    async fn create() -> Tables {
        blocking(|c| {
            c.sql(
                0,
                "DROP TABLE IF EXISTS ws_fill, ws_rows, ws_refused_ddl, ws_allowed_ddl; \
                 CREATE TABLE ws_fill (id int, pad text); \
                 CREATE TABLE ws_rows (id int PRIMARY KEY, v text); \
                 GRANT ALL ON ws_fill, ws_rows TO app;",
            )
        })
        .await
        .unwrap();
        caught_up().await;
        Tables
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        let r = Cluster::shared().sql(
            0,
            "DROP TABLE IF EXISTS ws_fill, ws_rows, ws_refused_ddl, ws_allowed_ddl",
        );
        if let Err(e) = r {
            eprintln!("could not drop the test tables: {e}");
        }
    }
}

/// Drops the test replication slot when dropped (also on panic).
struct SlotGuard;

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let r = Cluster::shared().sql(0, &drop_slot_sql());
        if let Err(e) = r {
            eprintln!("could not drop replication slot {SLOT}: {e}");
        }
    }
}

fn drop_slot_sql() -> String {
    format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = '{SLOT}'"
    )
}

async fn primary_sql(sql: &'static str) -> String {
    blocking(move |c| c.sql(0, sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn wal_lsn_bytes() -> u64 {
    primary_sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        .await
        .parse()
        .unwrap()
}

/// Writes ~1.2 MB of WAL on the primary directly; returns its size in bytes.
async fn fill() -> u64 {
    let before = wal_lsn_bytes().await;
    primary_sql(
        "INSERT INTO ws_fill SELECT g, repeat(md5(g::text), 16) \
         FROM generate_series(1, 2000) g",
    )
    .await;
    wal_lsn_bytes().await - before
}

/// Pauses both replicas (one guard each, so one can be resumed alone),
/// writes ~1.2 MB on the primary and waits until the snapshot shows both
/// past [`GATE_LAG_BYTES`].
async fn both_paused_past_gate(lr: &Lr) -> (Paused, Paused, u64) {
    let p1 = Paused::new(&[1]).await;
    let p2 = Paused::new(&[2]).await;
    let wal = fill().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = lr.running.health.snapshot();
        let past = |i: usize| s.nodes[i].lag_bytes.is_some_and(|b| b > GATE_LAG_BYTES);
        if past(1) && past(2) {
            eprintln!(
                "fill wrote {wal} bytes of WAL; replicas behind by {:?} / {:?} bytes",
                s.nodes[1].lag_bytes, s.nodes[2].lag_bytes
            );
            return (p1, p2, wal);
        }
        assert!(
            Instant::now() < deadline,
            "replicas not past {GATE_LAG_BYTES} bytes 10 s after a {wal}-byte write with \
             replay paused: {:#?}",
            s.nodes
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids in `ws_rows` on the primary, read directly.
async fn primary_ids() -> Vec<i32> {
    let out = primary_sql("SELECT id FROM ws_rows ORDER BY id").await;
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------
// Errors.

/// A refusal's message and hint.
struct Refusal {
    message: String,
    hint: String,
}

/// Asserts `r` is the write gate's refusal: 53000, the documented message
/// (`writes refused:`, `min_replicas_to_write`, the count of replicas that
/// count, the lag limit) and a hint that reads still work.
fn refused<T: std::fmt::Debug>(r: Result<T, tokio_postgres::Error>, what: &str) -> Refusal {
    let e = match r {
        Ok(v) => panic!("{what}: expected the write gate's 53000, got success {v:?}"),
        Err(e) => e,
    };
    assert_eq!(
        sqlstate(&e).as_deref(),
        Some("53000"),
        "{what}: wrong error: {}",
        describe(&e)
    );
    let db = e.as_db_error().unwrap();
    let message = db.message().to_owned();
    let hint = db.hint().unwrap_or("").to_owned();
    assert!(
        message.starts_with("writes refused:"),
        "{what}: message should start `writes refused:`: {message}"
    );
    assert!(
        message.contains("min_replicas_to_write"),
        "{what}: message should name min_replicas_to_write: {message}"
    );
    assert!(
        hint.to_lowercase().contains("read"),
        "{what}: hint should say reads still work: {hint:?}"
    );
    Refusal { message, hint }
}

/// Asserts the refusal names `count` replicas and the test's byte limit.
fn names_count_and_limit(r: &Refusal, count: usize) {
    let m = &r.message;
    let digits: Vec<&str> = m
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    assert!(
        digits.contains(&count.to_string().as_str()),
        "message should give the count of replicas that count ({count}): {m}"
    );
    assert!(
        m.contains(&GATE_LAG_BYTES.to_string()) || m.contains("64 KiB") || m.contains("64KiB"),
        "message should give the lag limit ({GATE_LAG_BYTES} bytes): {m}"
    );
}

async fn ok(c: &Client, sql: &str) -> Vec<SimpleQueryMessage> {
    within(Duration::from_secs(30), sql, c.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
}

// ---------------------------------------------------------------------------
// The write gate.

/// Gate on (1 replica within 64 KiB), both replicas paused 1.2 MB behind:
/// every write is refused whole and before any server sees it, reads work;
/// resuming one replica reopens the gate after its hysteresis.
#[test]
fn gate_refuses_writes_while_replicas_lag_and_reopens_after_one_recovers() {
    run("gate refuses then reopens", async {
        let _serial = SERIAL.lock().await;
        caught_up().await;
        let _tables = Tables::create().await;
        let lr = gate_proxy(Some(1)).await;
        let a = admin(&lr).await;
        let c = lr.connect().await;
        wait_gate(&a, "open").await;
        ok(&c, "INSERT INTO ws_rows VALUES (1, 'before the pause')").await;

        let (p1, p2, wal) = both_paused_past_gate(&lr).await;
        let closed_in = wait_gate(&a, "refusing").await;
        eprintln!("gate refusing {closed_in:?} after both replicas were past the limit");
        eprintln!("SHOW SAFETY: {:?}", console_rows(&a, "SHOW SAFETY").await);

        // Every kind of write, each refused before a server sees it: no
        // pool checkout moves while they are refused.
        // (A new session may check out a server connection at startup.)
        let mut d = lr.connect().await;
        let counted_before = sum(&scrape().await, "lagrouter_writes_refused_total", &[]);
        let checkouts = pools_checkouts(&a).await;
        let mut refusals = Vec::new();
        refusals.push(refused(
            c.simple_query("INSERT INTO ws_rows VALUES (10, 'refused')")
                .await,
            "INSERT (simple)",
        ));
        refusals.push(refused(
            c.execute("INSERT INTO ws_rows VALUES ($1, 'refused')", &[&11i32])
                .await,
            "INSERT (extended)",
        ));
        refusals.push(refused(
            c.simple_query(
                "INSERT INTO ws_rows VALUES (12, 'a'); \
                 INSERT INTO ws_rows VALUES (13, 'b'); SELECT 1",
            )
            .await,
            "multi-statement write text",
        ));
        refusals.push(refused(
            c.simple_query("SELECT count(*) FROM ws_rows; INSERT INTO ws_rows VALUES (14, 'c')")
                .await,
            "a read then a write in one text",
        ));
        refusals.push(refused(
            c.simple_query("BEGIN; INSERT INTO ws_rows VALUES (15, 'd'); COMMIT")
                .await,
            "BEGIN; INSERT; COMMIT in one text",
        ));
        refusals.push(refused(
            c.simple_query("CREATE TABLE ws_refused_ddl (a int)").await,
            "DDL",
        ));
        refusals.push(refused(
            c.simple_query("UPDATE ws_rows SET v = 'refused' WHERE id = 1")
                .await,
            "UPDATE",
        ));
        refusals.push(refused(
            c.simple_query("DELETE FROM ws_rows WHERE id = 1").await,
            "DELETE",
        ));
        // Not refused by the server (42883): lagrouter refused it first.
        refusals.push(refused(
            c.simple_query("SELECT ws_no_such_function()").await,
            "a call to an unknown function",
        ));
        refusals.push(refused(
            c.simple_query("BEGIN READ WRITE").await,
            "BEGIN READ WRITE",
        ));
        refusals.push(refused(
            d.client.transaction().await.map(|_| ()),
            "BEGIN (tokio-postgres transaction)",
        ));
        // BEGIN refused; then the INSERT (autocommit) is refused too.
        refusals.push(refused(c.simple_query("BEGIN").await, "BEGIN"));
        refusals.push(refused(
            c.simple_query("INSERT INTO ws_rows VALUES (16, 'e')").await,
            "INSERT after a refused BEGIN",
        ));
        assert_eq!(
            pools_checkouts(&a).await,
            checkouts,
            "a refused write checked out a server connection"
        );
        // A COMMIT with no transaction open: the server's warning, or the
        // gate (routed like a write); either way nothing is written.
        if let Err(e) = c.simple_query("COMMIT").await {
            assert_eq!(sqlstate(&e).as_deref(), Some("53000"), "{}", describe(&e));
        }
        let n_refused = refusals.len();
        eprintln!(
            "{n_refused} writes refused; message: {}\nhint: {}",
            refusals[0].message, refusals[0].hint
        );
        names_count_and_limit(&refusals[0], 0);

        // The session is usable; reads and read-only transactions work.
        let r = rows(&c, "SELECT count(*) FROM ws_rows").await;
        assert!(r[0][0].is_some());
        let r = rows(&d, "SELECT count(*) FROM ws_fill").await;
        assert!(r[0][0].is_some());
        let msgs = ok(
            &c,
            "BEGIN READ ONLY; SELECT count(*) FROM ws_rows; SELECT 2; COMMIT",
        )
        .await;
        assert!(msgs.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))));
        ok(&c, "BEGIN READ ONLY").await;
        rows(&c, "SELECT count(*) FROM ws_rows").await;
        ok(&c, "COMMIT").await;
        let t = d
            .client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .unwrap_or_else(|e| panic!("read-only transaction: {}", describe(&e)));
        t.query("SELECT count(*) FROM ws_rows", &[])
            .await
            .unwrap_or_else(|e| panic!("read in a read-only transaction: {}", describe(&e)));
        t.commit().await.unwrap();
        c.query("SELECT id FROM ws_rows WHERE id = $1", &[&1i32])
            .await
            .unwrap_or_else(|e| panic!("extended read: {}", describe(&e)));

        // Nothing of any refused write is on the primary.
        assert_eq!(primary_ids().await, vec![1], "no write was half-applied");
        assert_eq!(
            primary_sql("SELECT to_regclass('ws_refused_ddl') IS NULL").await,
            "t",
            "refused DDL applied"
        );
        assert_eq!(
            primary_sql("SELECT v FROM ws_rows WHERE id = 1").await,
            "before the pause"
        );

        // Metrics: the refusals are counted; the gate is closed with 0 replicas.
        let (m, _) = scrape_until(Duration::from_secs(5), "gate closed", |t| {
            one(t, "lagrouter_write_gate_open", &[]) == Some(0.0)
                && one(t, "lagrouter_write_gate_replicas", &[]) == Some(0.0)
        })
        .await;
        let counted = sum(&m, "lagrouter_writes_refused_total", &[]) - counted_before;
        assert!(
            counted >= n_refused as f64,
            "lagrouter_writes_refused_total {counted} < {n_refused} refusals:\n{}",
            lines_of(&m, "lagrouter_writes_refused_total")
        );
        let unreplayed = one(
            &m,
            "lagrouter_data_at_risk_bytes",
            &["stage=\"unreplayed\""],
        );
        assert!(
            unreplayed.is_some_and(|b| b >= wal as f64),
            "data at risk should cover the {wal} bytes written while paused:\n{}",
            lines_of(&m, "lagrouter_data_at_risk")
        );

        // Resume replica1 alone: it is Recovering for RECOVER_AFTER checks,
        // and writes stay refused meanwhile.
        p1.resume().await;
        let resumed = Instant::now();
        let first = refused(
            c.simple_query("INSERT INTO ws_rows VALUES (20, 'right after resume')")
                .await,
            "a write right after replica1 resumed (still recovering)",
        );
        names_count_and_limit(&first, 0);
        let mut refused_after_resume = 1;
        let mut next_id = 21;
        let mut states = Vec::new();
        let reopened = loop {
            let state = safety_item(&a, "gate_state_replica1").await;
            if states.last() != Some(&state) {
                states.push(state);
            }
            let sql = format!("INSERT INTO ws_rows VALUES ({next_id}, 'after resume')");
            match c.simple_query(&sql).await {
                Ok(_) => break resumed.elapsed(),
                Err(e) => {
                    assert_eq!(sqlstate(&e).as_deref(), Some("53000"), "{}", describe(&e));
                    refused_after_resume += 1;
                }
            }
            next_id += 1;
            assert!(
                resumed.elapsed() < Duration::from_secs(20) && next_id < 1000,
                "writes still refused {:?} after replica1 resumed: {:?}",
                resumed.elapsed(),
                console_rows(&a, "SHOW SAFETY").await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        eprintln!(
            "replica1 resumed: {refused_after_resume} writes refused while it recovered \
             (its gate state: {states:?}), the first one accepted {reopened:?} after resume"
        );
        assert!(
            states.contains(&Some("recovering".to_owned())),
            "replica1 never seen recovering in SHOW SAFETY before writes resumed: {states:?}"
        );
        assert_eq!(safety_item(&a, "write_gate").await.as_deref(), Some("open"));
        assert_eq!(
            safety_item(&a, "replicas_counted").await.as_deref(),
            Some("1")
        );
        let shown: u64 = safety_item(&a, "refused_writes")
            .await
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(
            shown >= (n_refused + refused_after_resume) as u64,
            "SHOW SAFETY refused_writes {shown}"
        );
        // More writes go through, multi-statement and transactions too.
        ok(&c, "BEGIN; INSERT INTO ws_rows VALUES (2000, 'tx'); COMMIT").await;
        let t = d.client.transaction().await.unwrap();
        t.execute("INSERT INTO ws_rows VALUES ($1, 'tx2')", &[&2001i32])
            .await
            .unwrap();
        t.commit().await.unwrap();
        let ids = primary_ids().await;
        assert_eq!(
            ids,
            vec![1, next_id, 2000, 2001],
            "only the accepted writes"
        );
        scrape_until(Duration::from_secs(5), "gate open with 1 replica", |t| {
            one(t, "lagrouter_write_gate_open", &[]) == Some(1.0)
                && one(t, "lagrouter_write_gate_replicas", &[]) == Some(1.0)
        })
        .await;
        p2.resume().await;
    });
}

/// Gate off (the default), the same paused state: writes go through.
#[test]
fn gate_off_lets_writes_through_while_replicas_lag() {
    run("gate off", async {
        let _serial = SERIAL.lock().await;
        caught_up().await;
        let _tables = Tables::create().await;
        let lr = gate_proxy(None).await;
        let a = admin(&lr).await;
        let c = lr.connect().await;
        let (p1, p2, wal) = both_paused_past_gate(&lr).await;
        // The replicas no longer count, but nobody asked for any.
        let (m, took) = scrape_until(Duration::from_secs(5), "0 replicas count", |t| {
            one(t, "lagrouter_write_gate_replicas", &[]) == Some(0.0)
        })
        .await;
        eprintln!("gate replicas 0 after {took:?}");
        assert_eq!(one(&m, "lagrouter_write_gate_open", &[]), Some(1.0));
        assert_eq!(safety_item(&a, "write_gate").await.as_deref(), Some("open"));

        ok(&c, "INSERT INTO ws_rows VALUES (1, 'gate off')").await;
        c.execute("INSERT INTO ws_rows VALUES ($1, 'extended')", &[&2i32])
            .await
            .unwrap_or_else(|e| panic!("extended insert: {}", describe(&e)));
        ok(&c, "BEGIN; INSERT INTO ws_rows VALUES (3, 'tx'); COMMIT").await;
        ok(&c, "CREATE TABLE ws_allowed_ddl (a int)").await;
        assert_eq!(primary_ids().await, vec![1, 2, 3]);
        assert_eq!(
            primary_sql("SELECT to_regclass('ws_allowed_ddl') IS NOT NULL").await,
            "t"
        );

        // Data at risk follows the paused replay: everything written since
        // the pause is unreplayed, but it has been received.
        let (m, took) = scrape_until(Duration::from_secs(10), "data at risk", |t| {
            let unreplayed = one(t, "lagrouter_data_at_risk_bytes", &["stage=\"unreplayed\""]);
            let unreceived = one(t, "lagrouter_data_at_risk_bytes", &["stage=\"unreceived\""]);
            unreplayed.is_some_and(|b| b >= wal as f64)
                && unreceived.is_some_and(|b| b < GATE_LAG_BYTES as f64)
        })
        .await;
        eprintln!(
            "data at risk after {took:?}:\n{}\n{}",
            lines_of(&m, "lagrouter_data_at_risk"),
            lines_of(&m, "lagrouter_synchronous_replication")
        );
        assert_eq!(
            one(&m, "lagrouter_synchronous_replication", &[]),
            Some(0.0),
            "the test cluster replicates asynchronously"
        );
        drop((p1, p2));
    });
}

/// Live reload: 0 → 3 (more than the 2 replicas) refuses writes, back to
/// 0 lets them through, without a restart.
#[test]
fn reload_raises_and_lowers_min_replicas_to_write() {
    run("reload of the gate", async {
        let _serial = SERIAL.lock().await;
        caught_up().await;
        let _tables = Tables::create().await;
        support::init_logs();
        let c = blocking(|c| c).await;
        let dir = TempDir::new("write-safety-reload");
        let path = dir.path().join("lagrouter.toml");
        let text = builder()
            .safety("min_replicas_to_write = 0")
            .toml(c)
            .replace(
                "check_interval = \"250ms\"\n",
                "check_interval = \"100ms\"\n",
            );
        assert!(text.contains("min_replicas_to_write = 0\n"), "{text}");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).expect("valid test config");
        let shutdown = CancellationToken::new();
        let running = within(
            Duration::from_secs(30),
            "proxy start",
            start_lagrouter(config, shutdown.clone()),
        )
        .await
        .expect("proxy starts");
        lagrouter::watch::spawn(running.shared.clone(), path.clone(), shutdown.child_token());
        let lr = Lr {
            running,
            ports: (0..c.node_count()).map(|i| c.port(i)).collect(),
        };
        lr.wait_all_healthy(Duration::from_secs(20)).await;
        let conn = lr.connect().await;
        ok(&conn, "INSERT INTO ws_rows VALUES (1, 'gate 0')").await;

        // Written the way editors do (a new file renamed over the old one).
        let rewrite = |min: u32| {
            let new = text.replace(
                "min_replicas_to_write = 0\n",
                &format!("min_replicas_to_write = {min}\n"),
            );
            let tmp = dir.path().join("lagrouter.toml.new");
            std::fs::write(&tmp, new).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        rewrite(3);
        let written = Instant::now();
        let mut id = 100;
        let refusal = loop {
            let sql = format!("INSERT INTO ws_rows VALUES ({id}, 'before the reload applied')");
            match conn.simple_query(&sql).await {
                Ok(_) => {}
                Err(e) => break refused(Err::<(), _>(e), "write after raising the gate to 3"),
            }
            id += 1;
            assert!(
                written.elapsed() < Duration::from_secs(10) && id < 1000,
                "writes still accepted {:?} after min_replicas_to_write = 3 was written",
                written.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!(
            "raised to 3: refused {:?} after the file changed: {}",
            written.elapsed(),
            refusal.message
        );
        assert!(refusal.message.contains('3'), "{}", refusal.message);
        assert_eq!(
            lr.running.shared.config.load().safety.min_replicas_to_write,
            3
        );
        // Healthy replicas, still refused: reads work.
        for _ in 0..3 {
            refused(
                conn.simple_query("INSERT INTO ws_rows VALUES (5000, 'refused')")
                    .await,
                "write with min_replicas_to_write = 3",
            );
            rows(&conn, "SELECT count(*) FROM ws_rows").await;
        }

        rewrite(0);
        let written = Instant::now();
        loop {
            if conn
                .simple_query("INSERT INTO ws_rows VALUES (6000, 'gate 0 again')")
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "writes still refused {:?} after min_replicas_to_write = 0 was written",
                written.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "lowered to 0: writes accepted {:?} after the file changed",
            written.elapsed()
        );
        let ids = primary_ids().await;
        assert!(!ids.contains(&5000) && !ids.contains(&id), "{ids:?}");
        assert!(ids.contains(&1) && ids.contains(&6000), "{ids:?}");
        shutdown.cancel();
    });
}

// ---------------------------------------------------------------------------
// wait_replicas.

/// `wait_replicas(n, ms)` over the simple protocol: the value and the time.
async fn wait_simple(c: &Client, n: i64, ms: i64) -> (i32, Duration) {
    let sql = format!("SELECT lagrouter.wait_replicas({n}, {ms})");
    let start = Instant::now();
    let msgs = within(Duration::from_secs(60), &sql, c.simple_query(&sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    let took = start.elapsed();
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 1, "{sql}: one row");
    let r = rows[0];
    assert_eq!(r.len(), 1, "{sql}: one column");
    assert_eq!(r.columns()[0].name(), "wait_replicas");
    (r.get(0).unwrap().parse().unwrap(), took)
}

/// The same over the extended protocol (Parse/Describe/Bind/Execute).
async fn wait_extended(c: &Client, n: i64, ms: i64) -> (i32, Duration) {
    let sql = format!("SELECT lagrouter.wait_replicas({n}, {ms})");
    let start = Instant::now();
    let rows = within(Duration::from_secs(60), &sql, c.query(sql.as_str(), &[]))
        .await
        .unwrap_or_else(|e| panic!("{sql} (extended): {}", describe(&e)));
    let took = start.elapsed();
    assert_eq!(rows.len(), 1, "{sql}: one row");
    let col = &rows[0].columns()[0];
    assert_eq!(col.name(), "wait_replicas");
    assert_eq!(col.type_(), &Type::INT4);
    (rows[0].get::<_, i32>(0), took)
}

/// The waits counted by outcome so far.
fn wait_outcomes(m: &str) -> (f64, f64) {
    (
        sum(m, "lagrouter_wait_replicas_total", &["outcome=\"reached\""]),
        sum(m, "lagrouter_wait_replicas_total", &["outcome=\"timeout\""]),
    )
}

#[test]
fn wait_replicas_counts_replicas_that_replayed_the_write() {
    run("wait_replicas", async {
        let _serial = SERIAL.lock().await;
        caught_up().await;
        let _tables = Tables::create().await;
        let lr = Lr::start(builder(), "").await;
        let c = lr.connect().await;
        let counts0 = wait_outcomes(&scrape().await);

        // Streaming replicas: the write is replayed within the timeout.
        ok(&c, "INSERT INTO ws_rows VALUES (1, 'w1')").await;
        let (n, took) = wait_simple(&c, 1, 2000).await;
        eprintln!("wait_replicas(1, 2000) after a write, streaming: {n} in {took:?}");
        assert!((1..=2).contains(&n), "{n}");
        c.execute("INSERT INTO ws_rows VALUES ($1, 'w2')", &[&2i32])
            .await
            .unwrap();
        let (n, took) = wait_extended(&c, 1, 2000).await;
        eprintln!("extended: {n} in {took:?}");
        assert!((1..=2).contains(&n), "{n}");
        ok(&c, "INSERT INTO ws_rows VALUES (3, 'w3')").await;
        let (n, took) = wait_simple(&c, 2, 2000).await;
        eprintln!("wait_replicas(2, 2000): {n} in {took:?}");
        assert_eq!(n, 2, "both replicas stream and replay");

        // Bad arguments.
        for args in ["-1, 100", "1, -1", "1", "1, 2, 3"] {
            let sql = format!("SELECT lagrouter.wait_replicas({args})");
            let r = c.simple_query(&sql).await;
            let e = r.expect_err(&sql);
            assert_eq!(
                sqlstate(&e).as_deref(),
                Some("22023"),
                "{sql}: {}",
                describe(&e)
            );
            let r = c.query(sql.as_str(), &[]).await;
            let e = r.expect_err(&sql);
            assert_eq!(
                sqlstate(&e).as_deref(),
                Some("22023"),
                "{sql} (extended): {}",
                describe(&e)
            );
        }
        eprintln!(
            "bad arguments: {}",
            describe(
                &c.simple_query("SELECT lagrouter.wait_replicas(-1, 100)")
                    .await
                    .unwrap_err()
            )
        );
        // The session survived.
        rows(&c, "SELECT 1").await;

        // Both replicas paused: nobody replays the write; 0 after the timeout.
        let paused = Paused::new(&[1, 2]).await;
        ok(&c, "INSERT INTO ws_rows VALUES (4, 'unreplayed')").await;
        let (n, took) = wait_simple(&c, 1, 2000).await;
        eprintln!("paused, simple: {n} after {took:?}");
        assert_eq!(n, 0);
        assert!(
            took >= Duration::from_millis(2000),
            "returned before the timeout: {took:?}"
        );
        assert!(took < Duration::from_secs(20), "{took:?}");
        let (n, took) = wait_extended(&c, 1, 1000).await;
        eprintln!("paused, extended: {n} after {took:?}");
        assert_eq!(n, 0);
        assert!(took >= Duration::from_millis(1000), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");

        // A causal token on another connection: it waits for that LSN.
        let lsn = primary_sql("SELECT pg_current_wal_lsn()").await;
        let other = lr.connect().await;
        ok(&other, &format!("SET lagrouter.min_lsn = '{lsn}'")).await;
        let (n, took) = wait_simple(&other, 1, 500).await;
        eprintln!("paused, min_lsn {lsn}: {n} after {took:?}");
        assert_eq!(n, 0);
        assert!(took >= Duration::from_millis(500), "{took:?}");

        // Resumed: the same waits reach their replicas.
        paused.resume().await;
        let (n, took) = wait_simple(&c, 1, 10_000).await;
        eprintln!("resumed: {n} in {took:?}");
        assert!(n >= 1, "{n}");
        let (n, took) = wait_extended(&other, 2, 10_000).await;
        eprintln!("resumed, min_lsn, 2 replicas: {n} in {took:?}");
        assert_eq!(n, 2);

        let (m, _) = scrape_until(Duration::from_secs(5), "wait outcomes", |t| {
            let (reached, timeout) = wait_outcomes(t);
            reached >= counts0.0 + 5.0 && timeout >= counts0.1 + 3.0
        })
        .await;
        eprintln!("{}", lines_of(&m, "lagrouter_wait_replicas"));
    });
}

/// 100 connections wait at once with replay paused: none of them holds a
/// server connection (pool in_use stays flat), all get 0; after resume a
/// new wait reaches a replica.
#[test]
fn hundred_waiters_hold_no_server_connection() {
    run("100 waiters", async {
        let _serial = SERIAL.lock().await;
        caught_up().await;
        let _tables = Tables::create().await;
        let lr = Lr::start(builder(), "").await;
        let a = admin(&lr).await;
        let paused = Paused::new(&[1, 2]).await;

        const WAITERS: i32 = 100;
        let mut conns = Vec::new();
        for i in 0..WAITERS {
            let c = lr.connect().await;
            c.execute("INSERT INTO ws_rows VALUES ($1, 'waiter')", &[&i])
                .await
                .unwrap_or_else(|e| panic!("waiter {i} write: {}", describe(&e)));
            conns.push(c);
        }
        let base_in_use = pools_in_use(&a).await;
        let pool_rows = console_rows(&a, "SHOW POOLS").await;
        eprintln!("{WAITERS} writers connected; in_use {base_in_use}; pools {pool_rows:?}");

        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, c) in conns.into_iter().enumerate() {
            tasks.spawn(async move {
                let r = wait_simple(&c, 1, 2000).await;
                (i, r, c)
            });
        }
        // Sample while they wait.
        let (mut max_in_use, mut max_waiting_gauge, mut max_pool_waiting) = (0u64, 0f64, 0u64);
        let mut active_clients_max = 0usize;
        let mut samples = 0;
        while tasks.len() == WAITERS as usize
            && started.elapsed() < Duration::from_millis(1800)
            && samples < 100
        {
            let pools = console_rows(&a, "SHOW POOLS").await;
            let in_use: u64 = pools
                .iter()
                .map(|p| p["in_use"].parse::<u64>().unwrap())
                .sum();
            let waiting: u64 = pools
                .iter()
                .map(|p| p["waiting"].parse::<u64>().unwrap())
                .sum();
            max_in_use = max_in_use.max(in_use);
            max_pool_waiting = max_pool_waiting.max(waiting);
            let clients = console_rows(&a, "SHOW CLIENTS").await;
            let active = clients.iter().filter(|c| c["state"] == "active").count();
            active_clients_max = active_clients_max.max(active);
            let m = scrape().await;
            let g = sum(&m, "lagrouter_wait_replicas_waiting", &[]);
            max_waiting_gauge = max_waiting_gauge.max(g);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut results = Vec::new();
        let mut conns = Vec::new();
        while let Some(r) = within(Duration::from_secs(60), "waiters", tasks.join_next()).await {
            let (i, (n, took), c) = r.expect("waiter task");
            results.push((i, n, took));
            conns.push(c);
        }
        let all = started.elapsed();
        let slowest = results.iter().map(|r| r.2).max().unwrap();
        let fastest = results.iter().map(|r| r.2).min().unwrap();
        eprintln!(
            "{WAITERS} waiters: {samples} samples: pool in_use max {max_in_use} (before {base_in_use}), \
             pool waiting max {max_pool_waiting}, active clients max {active_clients_max}, \
             lagrouter_wait_replicas_waiting max {max_waiting_gauge}; waits took {fastest:?}..{slowest:?}, \
             all done in {all:?}"
        );
        assert!(samples >= 3, "too few samples while waiting ({samples})");
        assert!(
            max_in_use <= base_in_use.max(1),
            "server connections in use grew with the waiters: {max_in_use} (before {base_in_use})"
        );
        assert_eq!(max_pool_waiting, 0, "waiters queued for server connections");
        assert!(
            active_clients_max <= 1,
            "clients attached to servers while waiting: {active_clients_max}"
        );
        assert!(
            max_waiting_gauge >= 1.0,
            "lagrouter_wait_replicas_waiting never moved"
        );
        assert_eq!(results.len(), WAITERS as usize);
        for (i, n, took) in &results {
            assert_eq!(*n, 0, "waiter {i}");
            assert!(
                *took >= Duration::from_millis(2000),
                "waiter {i} returned after {took:?}"
            );
            assert!(*took < Duration::from_secs(20), "waiter {i} took {took:?}");
        }

        paused.resume().await;
        let (n, took) = wait_simple(&conns[0], 1, 10_000).await;
        eprintln!("after resume: {n} in {took:?}");
        assert!(n >= 1);
        let (n, _) = wait_extended(&conns[WAITERS as usize - 1], 1, 10_000).await;
        assert!(n >= 1);
    });
}

// ---------------------------------------------------------------------------
// Replication slots.

/// An inactive slot on the primary, retaining WAL, in /metrics and SHOW
/// SLOTS; gone from both once dropped.
#[test]
fn inactive_slot_shows_in_metrics_and_show_slots() {
    run("inactive slot", async {
        let _serial = SERIAL.lock().await;
        caught_up().await;
        let _tables = Tables::create().await;
        let lr = Lr::start(builder(), "").await;
        let a = admin(&lr).await;
        blocking(|c| c.sql(0, &drop_slot_sql())).await.unwrap();
        let _slot = SlotGuard;
        let created = Instant::now();
        blocking(|c| {
            c.sql(
                0,
                &format!("SELECT pg_create_physical_replication_slot('{SLOT}', true)"),
            )
        })
        .await
        .unwrap();
        fill().await;
        let direct: f64 = blocking(|c| {
            c.sql(
                0,
                &format!(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
                     FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
                ),
            )
        })
        .await
        .unwrap()
        .parse()
        .unwrap();
        assert!(direct > 1_000_000.0, "the slot retains the fill: {direct}");
        let slot_label = format!("slot=\"{SLOT}\"");
        let (m, took) = scrape_until(Duration::from_secs(5), "the inactive slot", |t| {
            one(
                t,
                "lagrouter_replication_slot_retained_bytes",
                &[&slot_label, "active=\"false\""],
            )
            .is_some_and(|b| b >= direct)
        })
        .await;
        eprintln!(
            "slot {SLOT} ({direct} bytes retained) in /metrics {took:?} after the fill, \
             {:?} after it was created:\n{}\n{}",
            created.elapsed(),
            lines_of(&m, "lagrouter_replication_slot"),
            lines_of(&m, "lagrouter_data_at_risk")
        );
        let retained = one(
            &m,
            "lagrouter_replication_slot_retained_bytes",
            &[&slot_label, "active=\"false\""],
        )
        .unwrap();
        assert!(
            retained < direct + 16.0 * 1048576.0,
            "{retained} vs {direct}"
        );
        assert!(
            one(&m, "lagrouter_replication_slots_inactive", &[]).is_some_and(|n| n >= 1.0),
            "{}",
            lines_of(&m, "lagrouter_replication_slots_inactive")
        );
        // The replicas' own slots are active.
        assert!(
            series(
                &m,
                "lagrouter_replication_slot_retained_bytes",
                &["active=\"true\""]
            )
            .len()
                >= 2,
            "{}",
            lines_of(&m, "lagrouter_replication_slot")
        );
        assert!(
            series(
                &m,
                "lagrouter_data_at_risk_bytes",
                &["stage=\"unreplayed\""]
            )
            .len()
                == 1
                && series(
                    &m,
                    "lagrouter_data_at_risk_bytes",
                    &["stage=\"unreceived\""]
                )
                .len()
                    == 1,
            "{}",
            lines_of(&m, "lagrouter_data_at_risk")
        );

        let slots = console_rows(&a, "SHOW SLOTS").await;
        eprintln!("SHOW SLOTS: {slots:?}");
        let row = slots
            .iter()
            .find(|r| r["slot_name"] == SLOT)
            .unwrap_or_else(|| panic!("{SLOT} not in SHOW SLOTS: {slots:?}"));
        assert_eq!(row["slot_type"], "physical", "{row:?}");
        assert!(["false", "f"].contains(&row["active"].as_str()), "{row:?}");
        let shown: f64 = row["retained_bytes"].parse().unwrap();
        assert!(
            shown >= direct,
            "SHOW SLOTS retained_bytes {shown} < {direct}"
        );
        assert!(
            slots
                .iter()
                .filter(|r| ["true", "t"].contains(&r["active"].as_str()))
                .count()
                >= 2,
            "the replicas' slots: {slots:?}"
        );

        // Dropped: it leaves the console, and its series leaves /metrics or
        // turns NaN (the exporter cannot delete a series; NaN crosses no
        // alert threshold).
        blocking(|c| c.sql(0, &drop_slot_sql())).await.unwrap();
        let (m, took) = scrape_until(Duration::from_secs(5), "the dropped slot gone", |t| {
            series(
                t,
                "lagrouter_replication_slot_retained_bytes",
                &[&slot_label],
            )
            .iter()
            .all(|v| v.is_nan())
                && one(t, "lagrouter_replication_slots_inactive", &[]) == Some(0.0)
        })
        .await;
        eprintln!(
            "dropped slot gone from /metrics after {took:?}: {:?}",
            series(
                &m,
                "lagrouter_replication_slot_retained_bytes",
                &[&slot_label]
            )
        );
        let slots = console_rows(&a, "SHOW SLOTS").await;
        assert!(!slots.iter().any(|r| r["slot_name"] == SLOT), "{slots:?}");
    });
}
