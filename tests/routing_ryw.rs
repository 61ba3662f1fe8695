//! Read-your-writes through lagrouter against the shared primary and two
//! streaming replicas.
//!
//! - 16 sessions each insert a row and read it back at once, for 16 s,
//!   while replica1's replay is paused for 5 s in the middle: no read may
//!   miss its own row, and while the replicas are healthy most reads must
//!   still be served by replicas (read-your-writes must not simply send
//!   everything to the primary).
//! - Causal tokens: a write's LSN (`SHOW lagrouter.last_write_lsn` and the
//!   `lagrouter.last_write_lsn` ParameterStatus) handed to other connections
//!   with `SET lagrouter.min_lsn` or a `/* lagrouter:min_lsn=… */` comment
//!   makes their reads see the write while both replicas are paused; a
//!   connection without the token is served by a stale replica (the control
//!   that shows the check can fail).
//!
//! Which node served a read is identified inside the read itself with
//! `inet_server_port()`. The scenarios pause replay on the shared cluster,
//! so they run one at a time (`SERIAL`), and a guard resumes replay on drop,
//! even when an assertion fails.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use lagrouter_health::Lsn;
use support::raw::{Msg, RawConn, bind, execute, parse, query, sync};
use support::{ProxyBuilder, blocking, describe, scalar, try_connect_str, within};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

use support::routing::{Lr, Paused, caught_up, rows};
const SESSIONS: i64 = 16;
const RUN: Duration = Duration::from_secs(16);
const PAUSE_AT: Duration = Duration::from_secs(5);
const PAUSE_FOR: Duration = Duration::from_secs(5);

/// Phases of the concurrent run.
const HEALTHY: u8 = 0;
const PAUSED: u8 = 1;
const RECOVERING: u8 = 2;
const HEALTHY_AGAIN: u8 = 3;
const PHASES: [&str; 4] = ["healthy", "replica1 paused", "recovering", "healthy again"];

#[derive(Default)]
struct Tally {
    /// Reads by phase and serving node.
    served: [[u64; 3]; 4],
    /// Reads that did not see their own session's committed row.
    violations: Vec<String>,
    /// Any other failure.
    errors: Vec<String>,
}

async fn ryw_session(
    conn_str: String,
    ports: Vec<u16>,
    session: i64,
    started: Instant,
    phase: Arc<AtomicU8>,
) -> Tally {
    let mut t = Tally::default();
    let conn = match try_connect_str(&conn_str).await {
        Ok(c) => c,
        Err(e) => {
            t.errors
                .push(format!("session {session}: connect: {}", describe(&e)));
            return t;
        }
    };
    let prepared = async {
        let ins = conn
            .prepare("INSERT INTO ryw_rows (id, session) VALUES ($1, $2)")
            .await?;
        let sel = conn
            .prepare("SELECT id, inet_server_port() FROM ryw_rows WHERE id = $1")
            .await?;
        Ok::<_, tokio_postgres::Error>((ins, sel))
    };
    let (ins, sel) = match prepared.await {
        Ok(p) => p,
        Err(e) => {
            t.errors
                .push(format!("session {session}: prepare: {}", describe(&e)));
            return t;
        }
    };
    let step = Duration::from_secs(10);
    let mut n: i64 = 0;
    while started.elapsed() < RUN {
        n += 1;
        let id = session * 1_000_000_000 + n;
        let s32 = session as i32;
        match tokio::time::timeout(step, conn.execute(&ins, &[&id, &s32])).await {
            Ok(Ok(1)) => {}
            Ok(Ok(k)) => {
                t.errors
                    .push(format!("session {session}: insert {id} affected {k} rows"));
                continue;
            }
            Ok(Err(e)) => {
                t.errors
                    .push(format!("session {session}: insert {id}: {}", describe(&e)));
                continue;
            }
            Err(_) => {
                t.errors
                    .push(format!("session {session}: insert {id} took over {step:?}"));
                return t;
            }
        }
        let before = phase.load(Ordering::SeqCst);
        let at = started.elapsed();
        let r = tokio::time::timeout(step, conn.query_opt(&sel, &[&id])).await;
        let after = phase.load(Ordering::SeqCst);
        match r {
            Ok(Ok(Some(row))) => {
                let port: i32 = row.get(1);
                let node = ports
                    .iter()
                    .position(|p| i32::from(*p) == port)
                    .expect("served by a cluster node");
                // A read that straddles a phase change counts in neither.
                if before == after {
                    t.served[usize::from(before)][node] += 1;
                }
            }
            Ok(Ok(None)) => {
                // Which node answered "no such row"? Ask again the same way.
                let again = conn
                    .query_one("SELECT inet_server_port()", &[])
                    .await
                    .map(|r| r.get::<_, i32>(0));
                t.violations.push(format!(
                    "session {session}: row {id} missing right after its INSERT \
                     (at {at:?}, phase {}; a plain read then went to port {again:?})",
                    PHASES[usize::from(before)]
                ));
            }
            Ok(Err(e)) => t
                .errors
                .push(format!("session {session}: select {id}: {}", describe(&e))),
            Err(_) => {
                t.errors
                    .push(format!("session {session}: select {id} took over {step:?}"));
                return t;
            }
        }
    }
    t
}

/// 16 sessions write-then-read for 16 s; replica1 is paused from 5 s to 10 s.
/// `max_lag_bytes` is large so that the paused replica stays `Healthy` in
/// the snapshot: only the LSN bookkeeping can keep reads off it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_read_their_own_writes_while_a_replica_pauses() {
    let _serial = SERIAL.lock().await;
    caught_up().await;
    let lr = Lr::start(
        ProxyBuilder::new().pool_size(20),
        "max_lag_bytes = 268435456\n",
    )
    .await;
    {
        let setup = lr.connect().await;
        setup
            .batch_execute(
                "DROP TABLE IF EXISTS ryw_rows; \
                 CREATE TABLE ryw_rows (id bigint PRIMARY KEY, session int NOT NULL, \
                 at timestamptz NOT NULL DEFAULT clock_timestamp())",
            )
            .await
            .unwrap_or_else(|e| panic!("create table: {}", describe(&e)));
    }
    caught_up().await;
    lr.wait_all_healthy(Duration::from_secs(10)).await;

    let phase = Arc::new(AtomicU8::new(HEALTHY));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 1..=SESSIONS {
        tasks.push(tokio::spawn(ryw_session(
            lr.conn_str("app"),
            lr.ports.clone(),
            s,
            started,
            phase.clone(),
        )));
    }

    tokio::time::sleep_until((started + PAUSE_AT).into()).await;
    phase.store(PAUSED, Ordering::SeqCst);
    let paused = Paused::new(&[1]).await;
    let paused_at = started.elapsed();
    let r1_lsn_paused = blocking(|c| c.sql(1, "select pg_last_wal_replay_lsn()"))
        .await
        .unwrap();
    tokio::time::sleep(PAUSE_FOR).await;
    let r1_state_paused = lr.running.health.snapshot().nodes[1].clone();
    let primary_lsn = blocking(|c| c.sql(0, "select pg_current_wal_lsn()"))
        .await
        .unwrap();
    phase.store(RECOVERING, Ordering::SeqCst);
    paused.resume().await;
    let resumed_at = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lr.all_healthy() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let healthy_again_at = started.elapsed();
    phase.store(HEALTHY_AGAIN, Ordering::SeqCst);

    let mut total = Tally::default();
    for t in tasks {
        let t = within(Duration::from_secs(40), "a session to finish", t)
            .await
            .expect("session task panicked");
        for p in 0..4 {
            for n in 0..3 {
                total.served[p][n] += t.served[p][n];
            }
        }
        total.violations.extend(t.violations);
        total.errors.extend(t.errors);
    }
    let elapsed = started.elapsed();

    eprintln!(
        "run {elapsed:?}: replica1 paused {paused_at:?}..{resumed_at:?} at replay LSN \
         {r1_lsn_paused} (primary at {primary_lsn} before resume; replica1 was {} with \
         lag {:?} bytes), all healthy again at {healthy_again_at:?}",
        r1_state_paused.state().as_str(),
        r1_state_paused.lag_bytes
    );
    for (p, name) in PHASES.iter().enumerate() {
        let s = total.served[p];
        eprintln!(
            "  {name:>14}: {} reads: primary {}, replica1 {}, replica2 {}",
            s.iter().sum::<u64>(),
            s[0],
            s[1],
            s[2]
        );
    }
    eprintln!(
        "  violations {}, other errors {}",
        total.violations.len(),
        total.errors.len()
    );

    assert!(
        total.violations.is_empty(),
        "{} read-your-writes violations, first ones:\n{}",
        total.violations.len(),
        total.violations[..total.violations.len().min(20)].join("\n")
    );
    assert!(
        total.errors.is_empty(),
        "{} errors, first ones:\n{}",
        total.errors.len(),
        total.errors[..total.errors.len().min(20)].join("\n")
    );
    let reads: u64 = total.served.iter().flatten().sum();
    assert!(reads >= 500, "only {reads} reads in {RUN:?}");
    // While replica1 was paused, its replay position was frozen below every
    // row written after the pause: it may not have served any of those.
    // (Reads it served right at the start of the phase predate the pause.)
    let healthy: Vec<[u64; 3]> = vec![total.served[HEALTHY as usize], total.served[3]];
    let healthy_reads: u64 = healthy.iter().flatten().sum();
    let replica_reads: u64 = healthy.iter().map(|s| s[1] + s[2]).sum();
    let share = replica_reads as f64 / healthy_reads.max(1) as f64;
    eprintln!(
        "  while all healthy: {replica_reads} of {healthy_reads} reads on replicas ({:.1}%)",
        share * 100.0
    );
    assert!(
        healthy_reads >= 200,
        "only {healthy_reads} reads while healthy"
    );
    assert!(
        share >= 0.5,
        "read-your-writes sent most reads to the primary while replicas were healthy: \
         {replica_reads} of {healthy_reads} on replicas"
    );
}

/// The session's last write as `SHOW lagrouter.last_write_lsn` gives it
/// (`None` before its first write).
async fn last_write_lsn(c: &tokio_postgres::Client) -> Option<Lsn> {
    let v = scalar(c, "SHOW lagrouter.last_write_lsn").await?;
    Some(
        v.parse()
            .unwrap_or_else(|e| panic!("{v:?} is no LSN: {e:?}")),
    )
}

/// Reads messages until a `lagrouter.last_write_lsn` ParameterStatus, or
/// `None` after `within`.
async fn last_write_lsn_status(raw: &mut RawConn, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = raw.recv(left).await.ok()?;
        if m.tag == b'E' {
            panic!("error from the proxy: {:?}", m.fields());
        }
        if m.tag == b'S' {
            let mut parts = m.body.split(|b| *b == 0);
            let name = parts.next().unwrap_or_default();
            let value = parts.next().unwrap_or_default();
            if name == b"lagrouter.last_write_lsn" {
                return Some(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
}

/// Causal tokens across connections, with both replicas paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_token_makes_other_connections_see_the_write() {
    let _serial = SERIAL.lock().await;
    caught_up().await;
    support::ensure_role("lr_tok").await;
    let lr = Lr::start(
        ProxyBuilder::new().user("name = \"lr_tok\"\npassword = \"lr_tok\"\nauth = \"trust\""),
        "max_lag_bytes = 268435456\n",
    )
    .await;
    let a = lr.connect().await;
    a.batch_execute(
        "DROP TABLE IF EXISTS tok_rows; \
         CREATE TABLE tok_rows (id int PRIMARY KEY, who text); \
         GRANT ALL ON tok_rows TO lr_tok",
    )
    .await
    .unwrap_or_else(|e| panic!("create table: {}", describe(&e)));
    caught_up().await;
    lr.wait_all_healthy(Duration::from_secs(10)).await;

    let paused = Paused::new(&[1, 2]).await;

    // A writes and asks for its token at once.
    a.execute("INSERT INTO tok_rows VALUES (1, 'a')", &[])
        .await
        .unwrap_or_else(|e| panic!("insert: {}", describe(&e)));
    let token = scalar(&a, "SHOW lagrouter.last_write_lsn")
        .await
        .expect("SHOW lagrouter.last_write_lsn has a value after a write");
    let lsn: Lsn = token
        .parse()
        .unwrap_or_else(|e| panic!("token {token:?} is no LSN: {e:?}"));
    eprintln!("token after A's insert: {token}");
    // The token is a real position: at or before the primary's insert
    // position (what lagrouter asks for; the write position can trail it
    // while WAL inserted since, the heartbeat's say, is not written yet),
    // and past what the paused replicas replayed (else this test could
    // not fail).
    let check = format!(
        "select pg_current_wal_insert_lsn() >= '{lsn}'::pg_lsn, \
         exists (select from tok_rows where id = 1)"
    );
    assert_eq!(
        blocking(move |c| c.sql(0, &check)).await.unwrap(),
        "t|t",
        "primary is past the token and has the row"
    );
    for r in [1, 2] {
        let check =
            format!("select pg_last_wal_replay_lsn() < '{lsn}'::pg_lsn, count(*) from tok_rows");
        assert_eq!(
            blocking(move |c| c.sql(r, &check)).await.unwrap(),
            "t|0",
            "paused replica {r} has not replayed the token's write"
        );
    }

    let sel = "SELECT count(*), inet_server_port() FROM tok_rows WHERE id = 1";

    // Control: a connection without the token reads from a (stale) replica.
    let d = lr.connect().await;
    let r = rows(&d, sel).await;
    let served = lr.node_of(r[0][1].as_deref().unwrap().parse().unwrap());
    eprintln!("no token: count {:?} from node {served}", r[0][0]);
    assert_ne!(
        served, 0,
        "a fresh connection without a token should be served by a healthy replica"
    );
    assert_eq!(r[0][0].as_deref(), Some("0"), "paused replica has the row?");

    // B: SET lagrouter.min_lsn.
    let b = lr.connect().await;
    b.batch_execute(&format!("SET lagrouter.min_lsn = '{token}'"))
        .await
        .unwrap_or_else(|e| panic!("SET lagrouter.min_lsn: {}", describe(&e)));
    let shown = scalar(&b, "SHOW lagrouter.min_lsn").await;
    eprintln!("B: SHOW lagrouter.min_lsn = {shown:?}");
    for proto in ["simple", "extended"] {
        let (count, port) = if proto == "simple" {
            let r = rows(&b, sel).await;
            (
                r[0][0].clone().unwrap(),
                r[0][1].as_deref().unwrap().parse::<i32>().unwrap(),
            )
        } else {
            let r = b
                .query_one(sel, &[])
                .await
                .unwrap_or_else(|e| panic!("{sel}: {}", describe(&e)));
            (r.get::<_, i64>(0).to_string(), r.get::<_, i32>(1))
        };
        let node = lr.node_of(port);
        eprintln!("B (SET min_lsn, {proto}): count {count} from node {node}");
        assert_eq!(count, "1", "B with the token did not see A's row ({proto})");
        assert_eq!(node, 0, "only the primary has replayed the token");
    }

    // C: the comment form, per statement.
    let c = lr.connect().await;
    let hinted = format!("/* lagrouter:min_lsn={token} */ {sel}");
    let r = rows(&c, &hinted).await;
    let node = lr.node_of(r[0][1].as_deref().unwrap().parse().unwrap());
    eprintln!("C (comment): count {:?} from node {node}", r[0][0]);
    assert_eq!(
        r[0][0].as_deref(),
        Some("1"),
        "C with the comment token did not see A's row"
    );
    assert_eq!(node, 0);
    let r = c
        .query_one(&hinted, &[])
        .await
        .unwrap_or_else(|e| panic!("{hinted}: {}", describe(&e)));
    assert_eq!(
        (r.get::<_, i64>(0), lr.node_of(r.get(1))),
        (1, 0),
        "C with the comment token, extended protocol"
    );

    // The ParameterStatus form: a raw client writes, takes the token from
    // the ParameterStatus that follows, and hands it to a new connection.
    let mut raw = RawConn::login_trust(lr.running.addr, "lr_tok").await;
    raw.send(&query("INSERT INTO tok_rows VALUES (2, 'raw')"))
        .await
        .unwrap();
    let status = last_write_lsn_status(&mut raw, Duration::from_secs(5))
        .await
        .expect("a lagrouter.last_write_lsn ParameterStatus after a write");
    eprintln!("ParameterStatus lagrouter.last_write_lsn = {status}");
    let status_lsn: Lsn = status.parse().expect("ParameterStatus value is an LSN");
    assert!(status_lsn > lsn, "second write's token {status} <= {token}");
    let e = lr.connect().await;
    e.batch_execute(&format!("SET lagrouter.min_lsn TO '{status}'"))
        .await
        .unwrap_or_else(|err| panic!("SET lagrouter.min_lsn: {}", describe(&err)));
    let r = rows(
        &e,
        "SELECT count(*), inet_server_port() FROM tok_rows WHERE id = 2",
    )
    .await;
    assert_eq!(
        r[0][0].as_deref(),
        Some("1"),
        "token from ParameterStatus did not show the raw write"
    );
    assert_eq!(lr.node_of(r[0][1].as_deref().unwrap().parse().unwrap()), 0);

    // Resumed: the token no longer pins B to the primary once a replica has
    // replayed it (within the health interval plus the catch-up wait).
    paused.resume().await;
    caught_up().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = rows(&b, sel).await;
        assert_eq!(r[0][0].as_deref(), Some("1"));
        let node = lr.node_of(r[0][1].as_deref().unwrap().parse().unwrap());
        if node != 0 {
            eprintln!("B served by replica node {node} after resume");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still pinned to the primary 10 s after the replicas caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((a, b, c, d, e));
}

/// EXECUTE on the function the commit-LSN question calls, revoked from
/// every role but superusers while the guard lives; granted back on drop,
/// even when an assertion fails.
struct Revoked;

const INSERT_LSN_FN: &str = "FUNCTION pg_catalog.pg_current_wal_insert_lsn()";

impl Revoked {
    async fn new() -> Revoked {
        blocking(|c| {
            c.sql(
                c.primary_index(),
                &format!("REVOKE EXECUTE ON {INSERT_LSN_FN} FROM PUBLIC"),
            )
        })
        .await
        .expect("revoke");
        Revoked
    }
}

impl Drop for Revoked {
    fn drop(&mut self) {
        let c = lagrouter::pgcluster::Cluster::shared();
        if let Err(e) = c.sql(
            c.primary_index(),
            &format!("GRANT EXECUTE ON {INSERT_LSN_FN} TO PUBLIC"),
        ) {
            eprintln!("could not grant {INSERT_LSN_FN} back: {e}");
        }
    }
}

/// When the commit-LSN question fails on a connection that lives on (its
/// function's EXECUTE revoked from the session's role), the write is
/// committed but its position unknown. No replica can be shown to have it,
/// so the session's reads go to the primary, with both replicas paused
/// (where a replica read would miss the row: the control, a connection
/// without the write, is served by one). Once the question works again,
/// the end of the session's next transaction on the primary learns a
/// position, and after the replicas replay it reads go back to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_commit_position_keeps_the_sessions_reads_on_the_primary() {
    let _serial = SERIAL.lock().await;
    caught_up().await;
    support::ensure_role("lr_unk").await;
    let lr = Lr::start(
        ProxyBuilder::new().user("name = \"lr_unk\"\npassword = \"lr_unk\"\nauth = \"trust\""),
        "max_lag_bytes = 268435456\n",
    )
    .await;
    let a = lr.connect().await;
    a.batch_execute(
        "DROP TABLE IF EXISTS unk_rows; \
         CREATE TABLE unk_rows (id int PRIMARY KEY)",
    )
    .await
    .unwrap_or_else(|e| panic!("create table: {}", describe(&e)));
    let before = last_write_lsn(&a).await;
    caught_up().await;
    lr.wait_all_healthy(Duration::from_secs(10)).await;

    let revoked = Revoked::new().await;
    let paused = Paused::new(&[1, 2]).await;
    a.execute("INSERT INTO unk_rows VALUES (1)", &[])
        .await
        .unwrap_or_else(|e| panic!("insert: {}", describe(&e)));
    assert_eq!(
        last_write_lsn(&a).await,
        before,
        "a position was recorded though the question could not run"
    );
    let sel = "SELECT count(*), inet_server_port() FROM unk_rows WHERE id = 1";
    let served =
        |r: &[Vec<Option<String>>]| lr.node_of(r[0][1].as_deref().unwrap().parse().unwrap());

    // Control: a connection that did not write reads from a paused replica.
    let d = lr.connect().await;
    let r = rows(&d, sel).await;
    assert_ne!(
        served(&r),
        0,
        "a fresh connection should read from a replica"
    );
    assert_eq!(
        r[0][0].as_deref(),
        Some("0"),
        "a paused replica has the row?"
    );

    // The writer: every read on the primary while the position is unknown.
    for i in 0..3 {
        let r = rows(&a, sel).await;
        eprintln!("unknown position, read {i}: {r:?}");
        assert_eq!(
            r[0][0].as_deref(),
            Some("1"),
            "read {i} missed the session's own row"
        );
        assert_eq!(served(&r), 0, "read {i} left the primary");
        let r = a
            .query_one(sel, &[])
            .await
            .unwrap_or_else(|e| panic!("{sel}: {}", describe(&e)));
        assert_eq!(
            (r.get::<_, i64>(0), lr.node_of(r.get::<_, i32>(1))),
            (1, 0),
            "extended read {i}"
        );
    }

    // The question works again: the next read on the primary learns a
    // position past the insert.
    drop(revoked);
    let r = rows(&a, sel).await;
    assert_eq!((r[0][0].as_deref(), served(&r)), (Some("1"), 0));
    let learned = last_write_lsn(&a)
        .await
        .expect("a position once the question works");
    assert!(Some(learned) > before, "{learned} is not past {before:?}");
    // A real position (see the token's check above).
    let check = format!("select pg_current_wal_insert_lsn() >= '{learned}'::pg_lsn");
    assert_eq!(blocking(move |c| c.sql(0, &check)).await.unwrap(), "t");

    paused.resume().await;
    caught_up().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = rows(&a, sel).await;
        assert_eq!(r[0][0].as_deref(), Some("1"));
        if served(&r) != 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the writer still reads from the primary 10 s after the replicas caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((a, d));
}

/// A transaction routed as a write because it starts with `BEGIN`, whose
/// statements only read, commits no WAL of its own: lagrouter asks no
/// commit LSN for it, so the session's last write stays where it was (and
/// no `lagrouter.last_write_lsn` goes to the client). The first statement
/// that may write, in the same kind of transaction, moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_only_reads_records_no_write() {
    // The commit-LSN question must be answered: one test revokes it.
    let _serial = SERIAL.lock().await;
    within(Duration::from_secs(60), "read-only BEGIN…COMMIT", async {
        let proxy = ProxyBuilder::new().start().await;
        let c = support::connect(&proxy).await;
        c.batch_execute("CREATE TABLE IF NOT EXISTS lr_ro_txn (x int)")
            .await
            .unwrap();
        c.execute("INSERT INTO lr_ro_txn VALUES (0)", &[])
            .await
            .unwrap();
        let lsn = |c| async move { last_write_lsn(c).await.expect("a write was made") };
        let first = lsn(&c).await;
        // Something else writes, so a needless capture would move the LSN.
        blocking(|cl| cl.sql(cl.primary_index(), "INSERT INTO lr_ro_txn VALUES (-1)"))
            .await
            .unwrap();
        for _ in 0..3 {
            c.batch_execute("BEGIN").await.unwrap();
            scalar(&c, "SELECT count(*)::text FROM lr_ro_txn").await;
            let one: i32 = c.query_one("SELECT $1::int", &[&1]).await.unwrap().get(0);
            assert_eq!(one, 1);
            c.batch_execute("SAVEPOINT s; RELEASE s; COMMIT")
                .await
                .unwrap();
        }
        assert_eq!(
            lsn(&c).await,
            first,
            "a transaction that only read recorded a write"
        );

        c.batch_execute("BEGIN").await.unwrap();
        scalar(&c, "SELECT count(*)::text FROM lr_ro_txn").await;
        c.execute("INSERT INTO lr_ro_txn VALUES ($1)", &[&1])
            .await
            .unwrap();
        c.batch_execute("COMMIT").await.unwrap();
        let second = lsn(&c).await;
        assert!(
            second > first,
            "the write moved nothing: {first} then {second}"
        );

        // One prepared statement run in many transactions keeps the
        // analysis of its text: each run that writes still moves the LSN.
        let insert = c
            .prepare("INSERT INTO lr_ro_txn VALUES ($1)")
            .await
            .unwrap();
        let mut last = second;
        for i in 2..4 {
            c.batch_execute("BEGIN").await.unwrap();
            c.execute(&insert, &[&i]).await.unwrap();
            c.batch_execute("COMMIT").await.unwrap();
            let now = lsn(&c).await;
            assert!(
                now > last,
                "run {i} of a prepared write moved nothing: {last} then {now}"
            );
            last = now;
        }
    })
    .await
}

/// Session pooling with replicas: a session keeps its server connection
/// for good, so it is on the primary from its first statement. Before, a
/// session that began with a read stayed on a replica and its writes failed
/// with 25006. A write in a later transaction of the session still records
/// its commit LSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_sessions_live_on_the_primary() {
    // The commit-LSN question must be answered: one test revokes it.
    let _serial = SERIAL.lock().await;
    within(Duration::from_secs(60), "session pooling", async {
        let proxy = ProxyBuilder::new().pool("mode = \"session\"").start().await;
        let primary_port = blocking(|c| c.port(c.primary_index())).await;
        let c = support::connect(&proxy).await;
        let port: i32 = c
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            port,
            i32::from(primary_port),
            "a session-mode session began on a replica"
        );
        c.batch_execute("CREATE TABLE IF NOT EXISTS lr_session_mode (x int)")
            .await
            .unwrap();
        let first = last_write_lsn(&c).await;
        c.execute("INSERT INTO lr_session_mode VALUES (1)", &[])
            .await
            .unwrap_or_else(|e| panic!("insert after a read: {}", describe(&e)));
        let second = last_write_lsn(&c).await.expect("a write was recorded");
        if let Some(first) = first {
            assert!(second > first, "the later write moved nothing");
        }
    })
    .await
}

/// How a client ends its writing transaction.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// A simple-query `COMMIT` (or `END`) text.
    Simple(&'static str),
    /// `COMMIT` as the unnamed extended-protocol statement.
    Unnamed,
    /// `COMMIT` as a named statement, prepared inside the transaction.
    Named,
    /// `COMMIT` parsed and bound but never executed: the block stays open,
    /// another row goes in, and a simple `COMMIT` ends it.
    BoundOnly,
}

/// The recorded write of each way to end a transaction covers its commit
/// record. lagrouter sends its commit-LSN question (a FunctionCall of
/// `pg_current_wal_insert_lsn()` by its OID, which is checked here against
/// the server's catalog) right behind a plain `COMMIT` (the simple query,
/// or the Sync of the batch that has it), so the
/// answer must still come from after the commit, and a `COMMIT` that did not
/// end the block must record nothing until the real end. The commit record
/// is looked up with pg_walinspect by the transaction's id: the token must
/// be at or past its end (what a replica has replayed once it has the
/// commit), and the ParameterStatus must come only after the real end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_write_covers_the_commit_however_it_is_sent() {
    // The commit-LSN question must be answered: one test revokes it.
    let _serial = SERIAL.lock().await;
    within(Duration::from_secs(90), "commit endings", async {
        blocking(|c| {
            c.sql(
                c.primary_index(),
                "CREATE EXTENSION IF NOT EXISTS pg_walinspect",
            )
        })
        .await
        .expect("pg_walinspect (PostgreSQL contrib)");
        let oid = blocking(|c| {
            c.sql(
                c.primary_index(),
                "SELECT 'pg_catalog.pg_current_wal_insert_lsn()'::regprocedure::oid",
            )
        })
        .await
        .unwrap();
        assert_eq!(
            oid, "2852",
            "pg_current_wal_insert_lsn()'s OID, which lagrouter calls by (PG_CURRENT_WAL_INSERT_LSN)"
        );
        let (_proxy, mut raw) = support::trusted_session("lr_cmt").await;
        let wait = Duration::from_secs(10);
        raw.send(&query("CREATE TABLE IF NOT EXISTS lr_commit_lsn (x int)"))
            .await
            .unwrap();
        no_errors(&raw.until_ready(wait).await, "create table");
        // The ParameterStatus of the create, if any, is read here.
        let _ = last_write_lsn_status(&mut raw, Duration::from_millis(500)).await;
        let mut last: Option<Lsn> = None;
        for ending in [
            Ending::Simple("COMMIT"),
            Ending::Simple(" end work ;"),
            Ending::Unnamed,
            Ending::Named,
            Ending::BoundOnly,
        ] {
            let start = blocking(|c| c.sql(c.primary_index(), "SELECT pg_current_wal_lsn()"))
                .await
                .unwrap();
            raw.send(&query("BEGIN")).await.unwrap();
            no_errors(&raw.until_ready(wait).await, "BEGIN");
            let insert = "INSERT INTO lr_commit_lsn VALUES (1) RETURNING txid_current()::text";
            raw.send(&query(insert)).await.unwrap();
            let msgs = raw.until_ready(wait).await;
            no_errors(&msgs, "insert");
            let xid = msgs
                .iter()
                .find(|m| m.tag == b'D')
                .expect("the insert's row")
                .first_value();
            let end = match ending {
                Ending::Simple(text) => query(text),
                Ending::Unnamed => {
                    [parse("", "COMMIT"), bind("", ""), execute(""), sync()].concat()
                }
                Ending::Named => {
                    [parse("cmt", "COMMIT"), bind("", "cmt"), execute(""), sync()].concat()
                }
                Ending::BoundOnly => [parse("", "COMMIT"), bind("", ""), sync()].concat(),
            };
            raw.send(&end).await.unwrap();
            let msgs = raw.until_ready(wait).await;
            no_errors(&msgs, &format!("{ending:?}"));
            let status = *msgs.last().unwrap().body.first().unwrap();
            if let Ending::BoundOnly = ending {
                assert_eq!(status, b'T', "a COMMIT never executed ended the block");
                // Whatever lagrouter asked behind that Sync ran inside the
                // block: no write may be reported from it.
                assert_eq!(
                    last_write_lsn_status(&mut raw, Duration::from_millis(500)).await,
                    None,
                    "a write was reported while the transaction was still open"
                );
                raw.send(&query("INSERT INTO lr_commit_lsn VALUES (2)"))
                    .await
                    .unwrap();
                no_errors(&raw.until_ready(wait).await, "second insert");
                raw.send(&query("COMMIT")).await.unwrap();
                let msgs = raw.until_ready(wait).await;
                no_errors(&msgs, "the real COMMIT");
                assert_eq!(*msgs.last().unwrap().body.first().unwrap(), b'I');
            } else {
                assert_eq!(status, b'I', "{ending:?} did not end the block");
            }
            let token = last_write_lsn_status(&mut raw, wait)
                .await
                .unwrap_or_else(|| panic!("{ending:?}: no lagrouter.last_write_lsn"));
            let token: Lsn = token.parse().expect("an LSN");
            // Up to the flush position: pg_walinspect refuses an end past
            // it ("cannot accept future end LSN"), and the write position
            // runs ahead of it while another backend's WAL (a health
            // heartbeat) is written but not flushed. The client's commit
            // record is flushed: synchronous_commit is on.
            let find = format!(
                "SELECT end_lsn FROM pg_get_wal_records_info('{start}', pg_current_wal_flush_lsn()) \
                 WHERE xid::text = '{xid}' AND resource_manager = 'Transaction' \
                 AND record_type = 'COMMIT'"
            );
            let commit = blocking(move |c| c.sql(c.primary_index(), &find))
                .await
                .unwrap();
            let commit: Lsn = commit.parse().unwrap_or_else(|e| {
                panic!("{ending:?}: commit record of {xid}: {commit:?}: {e:?}")
            });
            eprintln!("{ending:?}: xid {xid} committed at {commit}, recorded {token}");
            assert!(
                token >= commit,
                "{ending:?}: recorded {token}, before the commit record's end {commit}"
            );
            if let Some(l) = last {
                assert!(token > l, "{ending:?}: the write moved nothing");
            }
            last = Some(token);
        }
    })
    .await
}

/// A writing transaction's `COMMIT` travels with lagrouter's commit-LSN
/// question (right behind a simple query or a batch's Sync), so
/// what the client sees when the `COMMIT` fails, or when the question
/// itself fails, must be what PostgreSQL alone would show it: the
/// `COMMIT`'s own error and one ReadyForQuery for a failed `COMMIT` (a
/// deferred unique check); and for a `COMMIT` bound but never executed in
/// an aborted block, where the question fails (25P02), just the client's
/// own answers, with no error at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_commit_shows_the_client_only_its_own_answers() {
    // The commit-LSN question must be answered: one test revokes it.
    let _serial = SERIAL.lock().await;
    within(Duration::from_secs(90), "failing commits", async {
        let (_proxy, mut raw) = support::trusted_session("lr_cmt").await;
        let wait = Duration::from_secs(10);
        let setup = "CREATE TABLE IF NOT EXISTS lr_deferred \
                     (x int UNIQUE DEFERRABLE INITIALLY DEFERRED)";
        raw.send(&query(setup)).await.unwrap();
        no_errors(&raw.until_ready(wait).await, "create table");
        let _ = last_write_lsn_status(&mut raw, Duration::from_millis(500)).await;
        let tags = |msgs: &[Msg]| msgs.iter().map(|m| m.tag as char).collect::<String>();
        for (how, end) in [
            ("simple", query("COMMIT")),
            (
                "extended",
                [parse("", "COMMIT"), bind("", ""), execute(""), sync()].concat(),
            ),
        ] {
            for sql in ["BEGIN", "INSERT INTO lr_deferred VALUES (7), (7)"] {
                raw.send(&query(sql)).await.unwrap();
                no_errors(&raw.until_ready(wait).await, sql);
            }
            raw.send(&end).await.unwrap();
            let msgs = raw.until_ready(wait).await;
            let errors = Msg::error_codes(&msgs);
            assert_eq!(
                errors,
                ["23505"],
                "{how}: the COMMIT's error: {}",
                tags(&msgs)
            );
            let want = if how == "simple" { "EZ" } else { "12EZ" };
            assert_eq!(tags(&msgs), want, "{how}: what the client got");
            assert_eq!(*msgs.last().unwrap().body.first().unwrap(), b'I', "{how}");
            // The question runs behind the failed COMMIT (the transaction
            // is over) and records the primary's position after it: later
            // than anything the transaction could have written, so it only
            // makes reads wait longer. Its answers are not the client's.
            let reported = last_write_lsn_status(&mut raw, wait).await;
            assert!(
                reported
                    .as_deref()
                    .is_some_and(|l| l.parse::<Lsn>().is_ok()),
                "{how}: the position after a failed COMMIT: {reported:?}"
            );
        }
        // An aborted block that wrote, and a COMMIT bound in it but never
        // executed: the question behind it fails inside the block.
        for sql in ["BEGIN", "INSERT INTO lr_deferred VALUES (8)"] {
            raw.send(&query(sql)).await.unwrap();
            no_errors(&raw.until_ready(wait).await, sql);
        }
        raw.send(&query("SELECT 1/0")).await.unwrap();
        let msgs = raw.until_ready(wait).await;
        assert_eq!(tags(&msgs), "EZ", "the failing statement");
        raw.send(&[parse("", "COMMIT"), bind("", ""), sync()].concat())
            .await
            .unwrap();
        let msgs = raw.until_ready(wait).await;
        assert_eq!(tags(&msgs), "12Z", "a COMMIT bound in an aborted block");
        assert_eq!(*msgs.last().unwrap().body.first().unwrap(), b'E');
        raw.send(&query("ROLLBACK")).await.unwrap();
        let msgs = raw.until_ready(wait).await;
        no_errors(&msgs, "ROLLBACK");
        assert_eq!(*msgs.last().unwrap().body.first().unwrap(), b'I');
        // The session goes on, and a COMMIT that works still records.
        for sql in ["BEGIN", "INSERT INTO lr_deferred VALUES (9)", "COMMIT"] {
            raw.send(&query(sql)).await.unwrap();
            no_errors(&raw.until_ready(wait).await, sql);
        }
        assert!(
            last_write_lsn_status(&mut raw, wait).await.is_some(),
            "no lagrouter.last_write_lsn after a COMMIT that worked"
        );
        raw.send(&query("DROP TABLE lr_deferred")).await.unwrap();
        no_errors(&raw.until_ready(wait).await, "drop table");
    })
    .await
}

fn no_errors(msgs: &[Msg], what: &str) {
    if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
        panic!("{what}: {:?}", e.fields());
    }
}
