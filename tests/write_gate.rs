//! The write gate (`[safety] min_replicas_to_write`) through lagrouter
//! against the shared primary and its two streaming replicas: with both
//! replicas' replay paused past `min_replicas_max_lag_bytes`, every kind of
//! write (INSERT, DDL, an unknown function, a multi-statement text,
//! `BEGIN`) is refused with SQLSTATE 53000 before it reaches a server,
//! reads and `BEGIN READ ONLY` keep working and no refused row exists on
//! the primary; resuming one replica lets writes through again, but only
//! after the hysteresis (`recover_after_checks`); with the gate off the
//! same state lets writes through; a live reload from 0 to 3 (more than the
//! replicas) and back closes and reopens it.
//!
//! The scenarios pause replay on the shared cluster, so they hold `SERIAL`;
//! guards resume replay and drop the tables on drop. Every loop is bounded
//! in count and time. The shared runtime and metrics port: `support::safety`.

mod support;

use support::safety::*;

use std::time::{Duration, Instant};

use lagrouter_config::Config;
use support::metrics::{lines_of, one, sum};
use support::routing::{Lr, caught_up, rows};
use support::{TempDir, blocking, console_rows, describe, sqlstate, start_lagrouter, within};
use tokio_postgres::SimpleQueryMessage;
use tokio_util::sync::CancellationToken;

/// resuming one replica reopens the gate after its hysteresis.
// ---------------------------------------------------------------------------
// The write gate.
/// Gate on (1 replica within 64 KiB), both replicas paused 1.2 MB behind:
/// every write is refused whole and before any server sees it, reads work;
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
        let checkouts = pools_sum(&a, "checkouts").await;
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
            pools_sum(&a, "checkouts").await,
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
