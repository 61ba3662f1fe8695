//! Write safety beyond the gate (which `write_gate.rs` tests), through
//! lagrouter against the shared primary and its two streaming replicas:
//!
//! - `SELECT lagrouter.wait_replicas(n, timeout_ms)` over the simple and
//!   the extended protocol, with and without paused replicas, with a
//!   causal token, bad arguments (22023), and 100 concurrent waiters that
//!   hold no server connection (`SHOW POOLS` in_use stays flat);
//! - data at risk: an inactive physical replication slot on the primary
//!   shows in /metrics and `SHOW SLOTS` with its retained WAL; the
//!   unreplayed / unreceived bytes follow paused replay.
//!
//! The scenarios pause replay on the shared cluster, so they hold `SERIAL`;
//! guards resume replay, drop the slot and drop the tables on drop. Every
//! loop is bounded in count and time. The shared runtime and metrics port:
//! `support::safety`.

mod support;

use support::safety::*;

use std::time::{Duration, Instant};

use support::metrics::{lines_of, one, series, sum};
use support::routing::{Lr, Paused, caught_up, rows};
use support::{blocking, console_rows, describe, sqlstate, within};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

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
        let base_in_use = pools_sum(&a, "in_use").await;
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
