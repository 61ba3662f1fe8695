//! The primary-read breaker through lagrouter against the shared primary
//! and two streaming replicas, both paused past `max_lag_bytes` so every
//! read falls back to the primary.
//!
//! `breaker_min_reads = 20`, `breaker_window = 5s`, `breaker_cooldown = 2s`,
//! `primary_read_cap = 0.20` (default):
//! - `reject`: the first ~20 fallback reads are served by the primary, then
//!   every one fails with SQLSTATE 53400 naming the breaker and the share;
//!   writes and `route=primary` reads still work; after the cool-down a few
//!   half-open probes get through and it reopens; after resume, reads
//!   succeed on replicas again.
//! - `serve_stale`: the same reads are then served by a (lagging) replica
//!   with a NOTICE naming the breaker and the lag; a session that wrote is
//!   never served by a replica that has not replayed its write.
//!
//! Which node served a read is identified inside it with
//! `inet_server_port()`. The scenarios pause replay on the shared cluster,
//! so they hold `SERIAL`, and a guard resumes replay on drop, even when an
//! assertion fails.

mod support;

use std::time::{Duration, Instant};

use lagrouter_health::NodeState;
use support::{ProxyBuilder, blocking, describe, eventually, sqlstate, within};
use tokio::sync::Mutex;
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};

static SERIAL: Mutex<()> = Mutex::const_new(());

use support::routing::{Lr, Paused, caught_up, rows};
const MAX_LAG_BYTES: u64 = 65536;

fn breaker_builder(on_open: &str) -> ProxyBuilder {
    ProxyBuilder::new()
        .default_routing()
        .routing("breaker_min_reads = 20")
        .routing("breaker_window = \"5s\"")
        .routing("breaker_cooldown = \"2s\"")
        .routing(&format!("on_breaker_open = \"{on_open}\""))
}

/// Until the function catalog is loaded `inet_server_port()` is an unknown
/// function (its reads go to the primary as writes, which the breaker does
/// not count): wait until a plain read reaches a replica.
async fn wait_reads_on_replicas(lr: &Lr) {
    let c = lr.connect().await;
    let c = &c;
    eventually(
        Duration::from_secs(15),
        "plain reads reach a replica",
        || async move {
            let r = rows(c, "SELECT inet_server_port()").await;
            (lr.node_of(r[0][0].as_deref().unwrap().parse().unwrap()) != 0).then_some(())
        },
    )
    .await
}

/// Pauses both replicas, writes ~1.2 MB on the primary and waits until the
/// snapshot has both replicas Lagging.
async fn both_lagging(lr: &Lr) -> Paused {
    let paused = Paused::new(&[1, 2]).await;
    blocking(|c| {
        c.sql(
            0,
            "INSERT INTO brk_fill SELECT g, repeat(md5(g::text), 16) \
             FROM generate_series(1, 2000) g",
        )
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = lr.running.health.snapshot();
        if s.nodes[1].state() == NodeState::Lagging && s.nodes[2].state() == NodeState::Lagging {
            eprintln!(
                "both replicas Lagging: lag {:?} / {:?} bytes",
                s.nodes[1].lag_bytes, s.nodes[2].lag_bytes
            );
            return paused;
        }
        assert!(
            Instant::now() < deadline,
            "replicas not Lagging 10 s after a 1 MB write with replay paused: {:#?}",
            s.nodes
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn setup_tables() {
    blocking(|c| {
        c.sql(
            0,
            "DROP TABLE IF EXISTS brk_fill, brk_rows; \
             CREATE TABLE brk_fill (id int, pad text); \
             CREATE TABLE brk_rows (id int PRIMARY KEY, v text); \
             GRANT ALL ON brk_fill, brk_rows TO app;",
        )
    })
    .await
    .unwrap();
    caught_up().await;
}

/// One read's outcome: the serving node, or the error's SQLSTATE and message.
type Outcome = Result<usize, (String, String)>;

async fn read_port(lr: &Lr, c: &Client) -> Outcome {
    match within(
        Duration::from_secs(10),
        "a read",
        c.simple_query("SELECT inet_server_port()"),
    )
    .await
    {
        Ok(msgs) => {
            let port = msgs
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .expect("a row");
            Ok(lr.node_of(port.parse().unwrap()))
        }
        Err(e) => Err((
            sqlstate(&e).unwrap_or_default(),
            e.as_db_error()
                .map(|d| format!("{} (hint: {:?})", d.message(), d.hint()))
                .unwrap_or_else(|| format!("{e:?}")),
        )),
    }
}

fn summary(outcomes: &[Outcome]) -> String {
    outcomes
        .iter()
        .map(|o| match o {
            Ok(n) => format!("n{n}"),
            Err((code, _)) => code.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// reject: with both replicas lagging, reads fall back to the primary until
/// they are more than 20% of the window's reads (once it holds 20), then
/// fail with 53400 naming the breaker; after the cool-down a few probes get
/// through and it reopens; after resume, reads succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_rejects_fallback_reads_then_recovers() {
    let _serial = SERIAL.lock().await;
    caught_up().await;
    setup_tables().await;
    let lr = Lr::start(
        breaker_builder("reject"),
        &format!("max_lag_bytes = {MAX_LAG_BYTES}\n"),
    )
    .await;
    wait_reads_on_replicas(&lr).await;
    // Let the window forget the warm-up reads.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let paused = both_lagging(&lr).await;

    let c = lr.connect().await;
    let mut outcomes = Vec::new();
    let mut opened_at = None;
    for _ in 0..40 {
        let o = read_port(&lr, &c).await;
        if o.is_err() && opened_at.is_none() {
            opened_at = Some(Instant::now());
        }
        outcomes.push(o);
    }
    eprintln!("lagging, breaker closed → open: {}", summary(&outcomes));
    let first_refused = outcomes
        .iter()
        .position(|o| o.is_err())
        .unwrap_or_else(|| panic!("no read refused: {}", summary(&outcomes)));
    for o in &outcomes[..first_refused] {
        assert_eq!(o, &Ok(0), "a fallback read must be served by the primary");
    }
    assert!(
        (15..=20).contains(&first_refused),
        "breaker opened after {first_refused} fallback reads; expected at about \
         breaker_min_reads = 20: {}",
        summary(&outcomes)
    );
    for o in &outcomes[first_refused..] {
        let (code, message) = o.as_ref().expect_err("open breaker refuses every fallback");
        assert_eq!(code, "53400", "{message}");
        assert!(
            message.contains("breaker") && message.contains('%'),
            "message should name the breaker and the share: {message}"
        );
    }
    let (_, message) = outcomes[first_refused].as_ref().unwrap_err();
    eprintln!("refusal: {message}");
    let opened_at = opened_at.unwrap();

    // Writes and reads forced to the primary are not refused.
    c.batch_execute("INSERT INTO brk_rows VALUES (1, 'while open')")
        .await
        .unwrap_or_else(|e| panic!("write while the breaker is open: {}", describe(&e)));
    let r = rows(
        &c,
        "/* lagrouter:route=primary */ SELECT inet_server_port()",
    )
    .await;
    assert_eq!(lr.node_of(r[0][0].as_deref().unwrap().parse().unwrap()), 0);

    // Cool-down over, still lagging: some probes get through, then it reopens.
    let d = lr.connect().await;
    tokio::time::sleep_until((opened_at + Duration::from_millis(2200)).into()).await;
    let mut probes = Vec::new();
    for _ in 0..20 {
        probes.push(read_port(&lr, &d).await);
    }
    eprintln!("after cool-down, still lagging: {}", summary(&probes));
    let admitted = probes.iter().take_while(|o| **o == Ok(0)).count();
    assert!(
        (1..=10).contains(&admitted),
        "half-open should let a few probes through: {}",
        summary(&probes)
    );
    assert!(
        probes[admitted..]
            .iter()
            .all(|o| matches!(o, Err((code, _)) if code == "53400")),
        "probes spent with the share still over the cap: reopened: {}",
        summary(&probes)
    );

    // Resume: the replicas recover and reads succeed again (bounded).
    paused.resume().await;
    let resumed = Instant::now();
    let mut after = Vec::new();
    let back = loop {
        let o = read_port(&lr, &d).await;
        let ok = o.is_ok();
        after.push(o);
        if ok {
            break resumed.elapsed();
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(15),
            "reads still refused 15 s after resume: {}",
            summary(&after)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut then = Vec::new();
    for _ in 0..30 {
        then.push(read_port(&lr, &d).await);
    }
    eprintln!(
        "after resume: first success {back:?} after resume ({}); next: {}",
        summary(&after),
        summary(&then)
    );
    assert!(
        then.iter().all(|o| matches!(o, Ok(n) if *n != 0)),
        "after recovery every read succeeds on a replica: {}",
        summary(&then)
    );
}

/// serve_stale: once the breaker is open, fallback reads are served by the
/// least-lagged replica with a NOTICE saying how stale it is; a session
/// that wrote is never served by a replica that lacks its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_serves_stale_with_notice_but_never_to_a_writer() {
    let _serial = SERIAL.lock().await;
    caught_up().await;
    setup_tables().await;
    let lr = Lr::start(
        breaker_builder("serve_stale"),
        &format!("max_lag_bytes = {MAX_LAG_BYTES}\n"),
    )
    .await;
    wait_reads_on_replicas(&lr).await;
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let paused = both_lagging(&lr).await;

    // The writer commits a row the paused replicas do not have.
    let w = lr.connect().await;
    w.batch_execute("INSERT INTO brk_rows VALUES (2, 'writer')")
        .await
        .unwrap_or_else(|e| panic!("insert: {}", describe(&e)));

    let mut r = lr.connect().await;
    let mut outcomes = Vec::new();
    let mut notices = Vec::new();
    for _ in 0..30 {
        let o = read_port(&lr, &r).await;
        let mut got = Vec::new();
        while let Some(m) = r.next_message(Duration::from_millis(20)).await {
            if let AsyncMessage::Notice(n) = m {
                got.push(n.message().to_owned());
            }
        }
        notices.push(got);
        outcomes.push(o);
    }
    eprintln!("serve_stale reads: {}", summary(&outcomes));
    let first_stale = outcomes
        .iter()
        .position(|o| *o != Ok(0))
        .unwrap_or_else(|| panic!("never served stale: {}", summary(&outcomes)));
    assert!(
        (15..=20).contains(&first_stale),
        "breaker opened after {first_stale} fallbacks: {}",
        summary(&outcomes)
    );
    for (i, o) in outcomes.iter().enumerate() {
        if i < first_stale {
            assert!(
                notices[i].is_empty(),
                "notice on a primary read: {:?}",
                notices[i]
            );
            continue;
        }
        let node = o
            .as_ref()
            .unwrap_or_else(|e| panic!("serve_stale refused read {i}: {e:?}"));
        assert_ne!(*node, 0, "read {i}: stale reads go to a replica");
        assert_eq!(notices[i].len(), 1, "read {i}: one NOTICE per stale read");
        let n = &notices[i][0];
        assert!(
            n.contains("breaker") && n.contains("behind the primary") && n.contains("of WAL"),
            "NOTICE should name the breaker and the lag: {n}"
        );
    }
    eprintln!("NOTICE: {}", notices[first_stale][0]);

    // The writer, breaker open: 53400 or the primary with its row, never a replica.
    let mut writer = Vec::new();
    for _ in 0..10 {
        let res = w
            .simple_query("SELECT count(*), inet_server_port() FROM brk_rows WHERE id = 2")
            .await;
        writer.push(match res {
            Ok(msgs) => {
                let row = msgs
                    .iter()
                    .find_map(|m| match m {
                        SimpleQueryMessage::Row(r) => Some((
                            r.get(0).unwrap().to_owned(),
                            r.get(1).unwrap().parse::<i32>().unwrap(),
                        )),
                        _ => None,
                    })
                    .unwrap();
                Ok((row.0, lr.node_of(row.1)))
            }
            Err(e) => Err(sqlstate(&e).unwrap_or_default()),
        });
    }
    eprintln!("writer's reads while open: {writer:?}");
    for o in &writer {
        match o {
            Ok((count, node)) => {
                assert_eq!(*node, 0, "the writer was served by a replica: {writer:?}");
                assert_eq!(count, "1");
            }
            Err(code) => assert_eq!(code, "53400", "{writer:?}"),
        }
    }
    paused.resume().await;
    drop(r);
}
