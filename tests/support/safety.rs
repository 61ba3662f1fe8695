//! What the write-safety tests (`write_gate`, `write_safety`) share: one
//! runtime for the whole binary (see below), proxies with the admin console
//! and the gate's settings, `SHOW SAFETY` and `SHOW POOLS` readers, table
//! and slot guards that clean up on drop (also when an assertion fails), WAL
//! fills with replay paused, and the gate's refusal checks.
//!
//! Metrics: the exporter installs a process-wide recorder and spawns its
//! HTTP listener on the runtime that starts the first lagrouter; a
//! `#[tokio::test]` runtime ends with its test, taking the listener with
//! it. So these tests run on one runtime shared by the whole binary, and
//! every proxy names the same `metrics_listen` (the first installs it, the
//! later ones log that it exists). Tests run one at a time (`SERIAL`) and
//! each proxy stops when its test ends, so the gauges read are the current
//! proxy's.

use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use lagrouter::pgcluster::Cluster;
use tokio::sync::Mutex;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::routing::{Lr, Paused, caught_up};
use super::{ProxyBuilder, blocking, console_rows, describe, sqlstate, try_connect_str, within};

pub static SERIAL: Mutex<()> = Mutex::const_new(());

/// The gate's lag limit in these tests; a ~1.2 MB write is far past it.
pub const GATE_LAG_BYTES: u64 = 65536;
/// Routing's own limit, far above the fill: replicas keep serving reads
/// while the gate counts them out, so the two thresholds are seen apart.
pub const HEALTH_LAG_BYTES: u64 = 64 << 20;
/// Slow re-admission (10 good checks of 100 ms), so that a write made
/// right after a replica resumes is reliably refused.
pub const RECOVER_AFTER: u32 = 10;
pub const SLOT: &str = "lr_test_slot";

// ---------------------------------------------------------------------------
// Runtime, metrics endpoint, proxies.

pub static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime")
});

/// The port every proxy of this binary exports metrics on.
pub static METRICS_PORT: LazyLock<u16> = LazyLock::new(|| {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
});

/// Runs one test on the shared runtime, bounded to 5 minutes.
pub fn run<F: Future<Output = ()>>(name: &str, f: F) {
    RUNTIME.block_on(within(Duration::from_secs(300), name, f));
}

/// A proxy on the shared metrics port with the admin user `lradmin`.
pub fn builder() -> ProxyBuilder {
    ProxyBuilder::new()
        .server(&format!("metrics_listen = \"127.0.0.1:{}\"", *METRICS_PORT))
        .server("admin_database = \"lagrouter\"")
        .user("name = \"lradmin\"\npassword = \"lradmin\"\nadmin = true")
}

pub fn health_lines() -> String {
    format!("max_lag_bytes = {HEALTH_LAG_BYTES}\nrecover_after_checks = {RECOVER_AFTER}\n")
}

/// A gate needing `min` replicas within [`GATE_LAG_BYTES`].
pub async fn gate_proxy(min: Option<u32>) -> Lr {
    let mut b = builder().safety(&format!("min_replicas_max_lag_bytes = {GATE_LAG_BYTES}"));
    if let Some(min) = min {
        b = b.safety(&format!("min_replicas_to_write = {min}"));
    }
    Lr::start(b, &health_lines()).await
}

pub async fn admin(lr: &Lr) -> super::Conn {
    let s = format!(
        "host=127.0.0.1 port={} user=lradmin password=lradmin dbname=lagrouter connect_timeout=10",
        lr.running.addr.port()
    );
    try_connect_str(&s)
        .await
        .unwrap_or_else(|e| panic!("admin console: {}", describe(&e)))
}

/// `SHOW SAFETY`'s value of `item`.
pub async fn safety_item(a: &Client, item: &str) -> Option<String> {
    let rows = console_rows(a, "SHOW SAFETY").await;
    rows.iter()
        .find(|r| r.get("item").map(String::as_str) == Some(item))
        .map(|r| r["value"].clone())
}

/// Polls `SHOW SAFETY` until `write_gate` is `want` (10 s at most).
pub async fn wait_gate(a: &Client, want: &str) -> Duration {
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

/// Sum of `column` (`in_use`, `checkouts`, …) over every pool (`SHOW POOLS`).
pub async fn pools_sum(a: &Client, column: &str) -> u64 {
    console_rows(a, "SHOW POOLS")
        .await
        .iter()
        .map(|p| p[column].parse::<u64>().unwrap())
        .sum()
}

pub async fn scrape() -> String {
    super::metrics::scrape(*METRICS_PORT).await
}

/// Scrapes until `ok` holds for the text (at most `limit`); returns the
/// text and how long it took.
pub async fn scrape_until(
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
pub struct Tables;

impl Tables {
    pub async fn create() -> Tables {
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
pub struct SlotGuard;

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let r = Cluster::shared().sql(0, &drop_slot_sql());
        if let Err(e) = r {
            eprintln!("could not drop replication slot {SLOT}: {e}");
        }
    }
}

pub fn drop_slot_sql() -> String {
    format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = '{SLOT}'"
    )
}

pub async fn primary_sql(sql: &'static str) -> String {
    blocking(move |c| c.sql(0, sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub async fn wal_lsn_bytes() -> u64 {
    primary_sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        .await
        .parse()
        .unwrap()
}

/// Writes ~1.2 MB of WAL on the primary directly; returns its size in bytes.
pub async fn fill() -> u64 {
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
pub async fn both_paused_past_gate(lr: &Lr) -> (Paused, Paused, u64) {
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
pub async fn primary_ids() -> Vec<i32> {
    let out = primary_sql("SELECT id FROM ws_rows ORDER BY id").await;
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------
// Errors.

/// A refusal's message and hint.
pub struct Refusal {
    pub message: String,
    pub hint: String,
}

/// Asserts `r` is the write gate's refusal: 53000, the documented message
/// (`writes refused:`, `min_replicas_to_write`, the count of replicas that
/// count, the lag limit) and a hint that reads still work.
pub fn refused<T: std::fmt::Debug>(r: Result<T, tokio_postgres::Error>, what: &str) -> Refusal {
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
pub fn names_count_and_limit(r: &Refusal, count: usize) {
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

pub async fn ok(c: &Client, sql: &str) -> Vec<SimpleQueryMessage> {
    within(Duration::from_secs(30), sql, c.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
}
