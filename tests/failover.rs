//! Failover under a write load, on a cluster of this test's own (a
//! promotion breaks the topology for anyone else), with every node
//! `role = "auto"`: the primary crashes (immediate stop), the replica that
//! received the most WAL is promoted and the other re-pointed at it.
//! Stated numbers: the first write within 1 s of the promotion, no write
//! sent to a node in recovery (no 25006), none to the old primary when it
//! comes back on its old timeline, and a session whose last write was lost
//! with the old primary is told so instead of waiting for it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lagrouter::pgcluster::{Cluster, ClusterOptions};
use support::faults::{Frozen, Lagrouter};
use support::{ProxyBuilder, describe, on_cluster, sqlstate, try_connect_str};
use tokio::task::JoinHandle;

/// One INSERT of the write load.
#[derive(Debug)]
struct Write {
    started: Instant,
    ended: Instant,
    outcome: Result<i64, (String, String)>,
}

/// A writer inserting rows one transaction at a time until `stop`,
/// reconnecting after a failure; at most `limit` long.
fn writer(conn_str: String, stop: Arc<AtomicBool>, limit: Duration) -> JoinHandle<Vec<Write>> {
    tokio::spawn(async move {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let Ok(conn) = try_connect_str(&conn_str).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let started = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(15),
                    conn.query_one(
                        "INSERT INTO failover_writes (writer) VALUES (1) RETURNING id",
                        &[],
                    ),
                )
                .await;
                let outcome = match r {
                    Ok(Ok(row)) => Ok(row.get(0)),
                    Ok(Err(e)) => Err((sqlstate(&e).unwrap_or_default(), describe(&e))),
                    Err(_) => Err(("hang".into(), "no answer within 15 s".into())),
                };
                let failed = outcome.is_err();
                out.push(Write {
                    started,
                    ended: Instant::now(),
                    outcome,
                });
                if failed {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if conn.is_closed() {
                        break;
                    }
                }
            }
        }
        out
    })
}

fn auto_nodes(c: &Cluster) -> String {
    (0..c.node_count())
        .map(|i| c.node_toml(i, "auto"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_write_load() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default()))
            .await
            .unwrap()
            .expect("own cluster starts"),
    );
    let c = &cluster;
    on_cluster(c, |c| {
        c.sql(
            0,
            "CREATE TABLE failover_writes (id bigserial PRIMARY KEY, writer int NOT NULL, \
             at timestamptz NOT NULL DEFAULT clock_timestamp());\n\
             ALTER TABLE failover_writes OWNER TO app",
        )?;
        c.wait_caught_up(Duration::from_secs(30))
    })
    .await
    .expect("table");
    let lr = Lagrouter::start(
        c,
        ProxyBuilder::new().default_routing().nodes(&auto_nodes(c)),
        "",
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| writer(lr.conn_str(), stop.clone(), Duration::from_secs(60)))
        .collect();
    let ryw = try_connect_str(&lr.conn_str()).await.expect("connect");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Neither replica receives what comes next; the ryw session's write
    // is acknowledged by the primary alone, then the primary crashes.
    let senders = on_cluster(c, |c| Frozen::wal_senders(c, 0)).await;
    let lost_id: i64 = ryw
        .query_one(
            "INSERT INTO failover_writes (writer) VALUES (2) RETURNING id",
            &[],
        )
        .await
        .expect("the ryw session writes")
        .get(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    senders.kill();
    on_cluster(c, |c| c.crash_node(0))
        .await
        .expect("crash the primary");

    // Promote the replica that received the most, re-point the other.
    let (promoted, other) = on_cluster(c, |c| {
        let received = |i| {
            c.sql(
                i,
                "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint",
            )
            .map(|s| s.parse::<i64>().unwrap_or(0))
        };
        let (r1, r2) = (received(1)?, received(2)?);
        let (p, o) = if r2 > r1 { (2, 1) } else { (1, 2) };
        c.promote(p)?;
        Ok::<_, lagrouter::pgcluster::ClusterError>((p, o))
    })
    .await
    .expect("promote");
    let promoted_at = Instant::now();
    on_cluster(c, move |c| c.follow(other, promoted))
        .await
        .expect("re-point");

    // The first write after the promotion.
    let first = loop {
        let snap = lr.health().snapshot();
        if snap.primary_index() == Some(promoted) {
            break Instant::now();
        }
        assert!(promoted_at.elapsed() < Duration::from_secs(10), "{snap:#?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The session whose write was lost reads: it must not hang, and it
    // must be told.
    let mut ryw = ryw;
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        ryw.query_one(
            // Ids handed out by the old primary can be handed out again
            // by the new one (sequences log ahead): match the writer too.
            "SELECT count(*) FROM failover_writes WHERE id = $1 AND writer = 2",
            &[&lost_id],
        ),
    )
    .await
    .expect("the ryw read does not hang")
    .expect("the ryw read works");
    let found: i64 = read.get(0);
    let mut notices = Vec::new();
    while let Some(m) = ryw.next_message(Duration::from_millis(200)).await {
        if let tokio_postgres::AsyncMessage::Notice(n) = m {
            notices.push(n.message().to_string());
        }
    }

    // The old primary comes back on its old timeline.
    let restarted = Instant::now();
    on_cluster(c, |c| c.start_node(0))
        .await
        .expect("old primary restarts");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let mut writes = Vec::new();
    for w in writers {
        writes.extend(w.await.expect("writer"));
    }
    writes.sort_by_key(|w| w.started);
    let on_old: i64 = on_cluster(c, |c| {
        c.sql(
            0,
            "SELECT count(*) FROM failover_writes WHERE at >= pg_postmaster_start_time()",
        )
    })
    .await
    .expect("count on the old primary")
    .parse()
    .unwrap();

    let first_ok = writes
        .iter()
        .filter(|w| w.started >= promoted_at && w.outcome.is_ok())
        .map(|w| w.ended.saturating_duration_since(promoted_at))
        .min();
    let in_recovery = writes
        .iter()
        .filter(|w| matches!(&w.outcome, Err((code, _)) if code == "25006"))
        .count();
    let hung = writes
        .iter()
        .filter(|w| matches!(&w.outcome, Err((code, _)) if code == "hang"))
        .count();
    let failed = writes.iter().filter(|w| w.outcome.is_err()).count();
    let after_restart_ok = writes
        .iter()
        .filter(|w| w.started >= restarted && w.outcome.is_ok())
        .count();
    eprintln!(
        "failover: promoted replica{promoted}; lagrouter wrote to it {:?} after the promotion; \
         first write {first_ok:?} after it; {} writes, {failed} failed, {in_recovery} with 25006, \
         {hung} hung; lost write found {found} time(s), notices {notices:?}; old primary back: \
         {on_old} rows written on it, {after_restart_ok} writes succeeded elsewhere since",
        first.saturating_duration_since(promoted_at),
        writes.len(),
    );
    assert!(
        first_ok.is_some_and(|d| d <= Duration::from_secs(1)),
        "first write after the promotion: {first_ok:?}"
    );
    assert_eq!(in_recovery, 0, "writes sent to a node in recovery");
    assert_eq!(hung, 0, "hung writes");
    assert_eq!(on_old, 0, "writes on the old primary after it came back");
    assert_eq!(found, 0, "the write was lost with the old primary");
    assert!(
        notices.iter().any(|n| n.contains("may have been lost")),
        "the session was told: {notices:?}"
    );
}
