//! Bounded staleness through lagrouter against the shared primary and two
//! streaming replicas: a replica whose replay is paused past
//! `max_lag_bytes` gets no read (plain, `/* lagrouter:route=replica */`,
//! `SET lagrouter.route = replica`, `BEGIN READ ONLY`) while the health
//! snapshot says it is Lagging, none while it is Recovering after resume,
//! and reads again once it is Healthy after `recover_after_checks` good
//! checks.
//!
//! Which node served a read is identified inside the read itself with
//! `inet_server_port()`. The scenario pauses replay on the shared cluster,
//! so it holds `SERIAL`, and a guard resumes replay on drop, even when an
//! assertion fails.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lagrouter_health::NodeState;
use support::{ProxyBuilder, blocking, describe, try_connect_str, within};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

use support::routing::{Lr, Paused, caught_up, rows};
const MAX_LAG_BYTES: u64 = 65536;
const RECOVER_AFTER: u32 = 3;

/// One read through the proxy: which node served it and when it ended.
#[derive(Debug, Clone, Copy)]
struct Read {
    ended: Instant,
    node: usize,
}

/// Reads `SELECT inet_server_port()` in a loop on a fresh connection until
/// `stop` is set; every read is recorded.
async fn reader(lr_conn: String, ports: Vec<u16>, stop: Arc<AtomicBool>) -> Vec<Read> {
    let conn = try_connect_str(&lr_conn)
        .await
        .unwrap_or_else(|e| panic!("connect: {}", describe(&e)));
    let st = conn
        .prepare("SELECT inet_server_port()")
        .await
        .unwrap_or_else(|e| panic!("prepare: {}", describe(&e)));
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let r = within(Duration::from_secs(10), "a read", conn.query_one(&st, &[]))
            .await
            .unwrap_or_else(|e| panic!("read: {}", describe(&e)));
        let port: i32 = r.get(0);
        out.push(Read {
            ended: Instant::now(),
            node: ports
                .iter()
                .position(|p| i32::from(*p) == port)
                .expect("a cluster node"),
        });
    }
    out
}

/// Replica1 paused past `max_lag_bytes`: it is Lagging and gets no read of
/// any kind; after resume it gets none until the snapshot has shown
/// Recovering for `recover_after_checks - 1` checks and then Healthy, and
/// then it serves reads again. `balance = "round_robin"` so that replica1
/// would get every other read if it were eligible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_gets_no_reads_until_recovered() {
    let _serial = SERIAL.lock().await;
    caught_up().await;
    let lr = Lr::start(
        ProxyBuilder::new().routing("balance = \"round_robin\""),
        &format!("max_lag_bytes = {MAX_LAG_BYTES}\nrecover_after_checks = {RECOVER_AFTER}\n"),
    )
    .await;
    blocking(|c| {
        c.sql(
            0,
            "DROP TABLE IF EXISTS stale_fill; \
             CREATE TABLE stale_fill (id int, pad text); GRANT SELECT ON stale_fill TO app;",
        )
    })
    .await
    .unwrap();
    caught_up().await;
    lr.wait_all_healthy(Duration::from_secs(10)).await;

    // Both replicas serve reads to begin with. (Prepared: an unprepared
    // tokio-postgres query is two routed batches, Parse/Describe and
    // Bind/Execute, so round robin would always land it on the same replica.)
    {
        let c = lr.connect().await;
        let st = c.prepare("SELECT inet_server_port()").await.unwrap();
        let mut seen = [0u32; 3];
        for _ in 0..40 {
            let r = c.query_one(&st, &[]).await.unwrap();
            seen[lr.node_of(r.get(0))] += 1;
        }
        eprintln!("healthy: reads by node {seen:?}");
        assert!(
            seen[1] > 0 && seen[2] > 0,
            "round robin over two healthy replicas: {seen:?}"
        );
    }

    let mut updates = lr.running.health.subscribe();
    let paused = Paused::new(&[1]).await;
    let wrote = Instant::now();
    blocking(|c| {
        c.sql(
            0,
            "INSERT INTO stale_fill SELECT g, repeat(md5(g::text), 16) \
             FROM generate_series(1, 2000) g",
        )
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // replica2 streams the same megabyte: it may be over the limit for a
    // check or two while it replays, and is back right after.
    let lagging = loop {
        let s = lr.running.health.snapshot();
        if s.nodes[1].state() == NodeState::Lagging && s.nodes[2].state() == NodeState::Healthy {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after a 1 MB write with replay paused on replica1, want replica1 \
             Lagging and replica2 Healthy: {:#?}",
            &s.nodes[1..]
        );
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, updates.changed()).await;
    };
    eprintln!(
        "replica1 Lagging {:?} after the write started, lag {:?} bytes; replica2 {}",
        wrote.elapsed(),
        lagging.nodes[1].lag_bytes,
        lagging.nodes[2].state().as_str()
    );
    assert!(lagging.nodes[1].lag_bytes.unwrap_or(0) > MAX_LAG_BYTES);
    assert_eq!(lagging.nodes[2].state(), NodeState::Healthy);

    // Every kind of read, from several connections, 50 in a row each so
    // that round robin would offer replica1 every other one: none on it.
    let mut seen = [0u32; 3];
    let plain = lr.connect().await;
    let st = plain.prepare("SELECT inet_server_port()").await.unwrap();
    let hinted = lr.connect().await;
    let routed = lr.connect().await;
    routed
        .batch_execute("SET lagrouter.route = replica")
        .await
        .unwrap_or_else(|e| panic!("SET lagrouter.route: {}", describe(&e)));
    let routed_st = routed.prepare("SELECT inet_server_port()").await.unwrap();
    let ro = lr.connect().await;
    let still_lagging = |lr: &Lr| {
        assert_eq!(
            lr.running.health.snapshot().nodes[1].state(),
            NodeState::Lagging,
            "replica1 must stay Lagging while paused"
        );
    };
    let port_of =
        |r: Vec<Vec<Option<String>>>| -> i32 { r[0][0].as_deref().unwrap().parse().unwrap() };
    for _ in 0..50 {
        let port: i32 = plain.query_one(&st, &[]).await.unwrap().get(0);
        seen[lr.node_of(port)] += 1;
    }
    still_lagging(&lr);
    for _ in 0..50 {
        let r = rows(
            &plain,
            "SELECT inet_server_port(), count(*) FROM stale_fill",
        )
        .await;
        seen[lr.node_of(port_of(r))] += 1;
    }
    still_lagging(&lr);
    for _ in 0..50 {
        let r = rows(
            &hinted,
            "/* lagrouter:route=replica */ SELECT inet_server_port()",
        )
        .await;
        seen[lr.node_of(port_of(r))] += 1;
    }
    still_lagging(&lr);
    for _ in 0..50 {
        let port: i32 = routed.query_one(&routed_st, &[]).await.unwrap().get(0);
        seen[lr.node_of(port)] += 1;
    }
    still_lagging(&lr);
    for _ in 0..50 {
        let r = rows(&ro, "BEGIN READ ONLY; SELECT inet_server_port(); COMMIT").await;
        seen[lr.node_of(port_of(r))] += 1;
    }
    still_lagging(&lr);
    eprintln!("replica1 lagging: reads by node {seen:?}");
    assert_eq!(
        seen[1], 0,
        "reads served by Lagging replica1 (plain, hinted, SET route, BEGIN READ ONLY): {seen:?}"
    );
    assert!(
        seen[2] >= 200,
        "healthy replica2 should serve the reads: {seen:?}"
    );

    // Resume while readers run; watch the state sequence.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(reader(lr.conn_str("app"), lr.ports.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut updates = lr.running.health.subscribe();
    updates.borrow_and_update();
    paused.resume().await;
    let resumed = Instant::now();
    let deadline = resumed + Duration::from_secs(15);
    let mut states = vec![NodeState::Lagging];
    let mut seqs = Vec::new();
    let healthy = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, updates.changed()).await.is_err() {
            stop.store(true, Ordering::SeqCst);
            panic!(
                "replica1 not Healthy 15 s after resume; states {states:?}; {:#?}",
                lr.running.health.snapshot().nodes[1]
            );
        }
        updates.borrow_and_update();
        let s = lr.running.health.snapshot();
        let r1 = &s.nodes[1];
        if *states.last().unwrap() != r1.state() {
            states.push(r1.state());
            seqs.push(s.seq);
        }
        if r1.state() == NodeState::Healthy {
            break s;
        }
    };
    let healthy_since = healthy.nodes[1].status.since;
    eprintln!(
        "after resume: states {states:?} (snapshot seqs {seqs:?}); Healthy {:?} after resume",
        healthy_since.saturating_duration_since(resumed)
    );
    // Then reads reach replica1 again: the readers go on for a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let mut reads = Vec::new();
    for r in readers {
        reads.extend(
            within(Duration::from_secs(20), "readers", r)
                .await
                .expect("reader panicked"),
        );
    }
    let before: Vec<&Read> = reads.iter().filter(|r| r.ended < healthy_since).collect();
    let during_recovery: Vec<&Read> = before
        .iter()
        .copied()
        .filter(|r| r.ended >= resumed)
        .collect();
    let early: Vec<&Read> = before.iter().copied().filter(|r| r.node == 1).collect();
    let after_on_r1 = reads
        .iter()
        .filter(|r| r.ended >= healthy_since && r.node == 1)
        .count();
    let first_back = reads
        .iter()
        .filter(|r| r.ended >= healthy_since && r.node == 1)
        .map(|r| r.ended.saturating_duration_since(healthy_since))
        .min();
    let mut by_node = [0usize; 3];
    for r in &during_recovery {
        by_node[r.node] += 1;
    }
    eprintln!(
        "readers: {} reads; {} between resume and Healthy (by node {by_node:?}); \
         {} on replica1 before Healthy; {after_on_r1} on replica1 after",
        reads.len(),
        during_recovery.len(),
        early.len()
    );
    assert!(
        early.is_empty(),
        "{} reads served by replica1 before it was Healthy again (first ended {:?} before Healthy)",
        early.len(),
        healthy_since.saturating_duration_since(early[0].ended)
    );
    assert_eq!(
        states,
        [
            NodeState::Lagging,
            NodeState::Recovering { good_checks: 1 },
            NodeState::Recovering { good_checks: 2 },
            NodeState::Healthy,
        ],
        "replica1's states after resume"
    );
    assert!(
        !during_recovery.is_empty(),
        "no read ran while replica1 was recovering: the check above proved nothing"
    );
    eprintln!("first reader read on replica1 {first_back:?} after it was Healthy");
    assert!(
        after_on_r1 > 0,
        "replica1 served no read in the second after it was Healthy again"
    );
    blocking(|c| c.sql(0, "DROP TABLE stale_fill"))
        .await
        .unwrap();
}
