//! Faults on real processes under a read load, through lagrouter with its
//! default settings, against this binary's own primary and two replicas:
//! the primary stalled (SIGSTOP) for 3 s, a replica stalled for 8 s, a
//! replica crashed (immediate stop) and restarted, the primary stalled
//! past `primary_stall_timeout` under writing transactions, replicas
//! refusing one role's logins, and replicas whose checks are blocked
//! while they serve. Each test states its
//! numbers (errors seen, longest wait, time to recover) in its assertions
//! and prints them.
//!
//! The scenarios stop nodes of the shared cluster, so they run one at a
//! time (`SERIAL`); a stopped node is continued, and a crashed one
//! restarted, even when an assertion fails.

mod support;

use std::time::{Duration, Instant};

use lagrouter_health::{Cause, NodeState};
use support::faults::{Frozen, Lagrouter, Read, ReadLoad, StateLog};
use support::{ProxyBuilder, blocking};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

const READERS: usize = 8;
/// No load runs longer than this, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

async fn start() -> Lagrouter {
    let c = blocking(|c| {
        c.wait_caught_up(Duration::from_secs(30))
            .expect("caught up");
        c
    })
    .await;
    Lagrouter::start(c, ProxyBuilder::new().default_routing(), "").await
}

/// lagrouter with its defaults, a log of its health states and
/// [`READERS`] sessions reading, after one second of steady load.
async fn under_read_load() -> (Lagrouter, StateLog, ReadLoad) {
    let lr = start().await;
    let log = StateLog::start(lr.health());
    let load = ReadLoad::start(lr.conn_str(), lr.ports.clone(), READERS, LOAD_LIMIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    (lr, log, load)
}

fn errors(reads: &[Read]) -> Vec<&Read> {
    reads.iter().filter(|r| r.outcome.is_err()).collect()
}

fn longest(reads: &[&Read]) -> Duration {
    reads.iter().map(|r| r.took()).max().unwrap_or_default()
}

/// A read load through a fault the replicas should not feel: the reads
/// started in its window, and over the whole load the errors and the
/// replicas' demotions.
struct Unfelt<'a> {
    during: Vec<&'a Read>,
    errs: Vec<&'a Read>,
    demotions: Vec<(Instant, NodeState, Option<Cause>)>,
}

impl<'a> Unfelt<'a> {
    fn of(reads: &'a [Read], log: &StateLog, from: Instant, to: Instant) -> Self {
        Unfelt {
            during: reads
                .iter()
                .filter(|r| r.started >= from && r.started < to)
                .collect(),
            errs: errors(reads),
            demotions: [1, 2].iter().flat_map(|&i| log.demotions(i)).collect(),
        }
    }

    /// The load kept reading through the window, from the replicas, with
    /// no error and no replica demoted.
    fn assert_unfelt(&self) {
        assert!(
            self.during.len() > 100,
            "the load kept reading: {}",
            self.during.len()
        );
        assert_eq!(self.errs.len(), 0, "read errors: {:?}", self.errs);
        assert!(
            self.during.iter().all(|r| r.outcome != Ok(0)),
            "reads went to the primary"
        );
        assert_eq!(self.demotions, [], "replica demotions");
    }
}

/// Restarts a crashed node when dropped, even on panic.
struct Restart(usize);

impl Drop for Restart {
    fn drop(&mut self) {
        let c = lagrouter::pgcluster::Cluster::shared();
        if !c.is_running(self.0)
            && let Err(e) = c.start_node(self.0)
        {
            eprintln!("could not restart node {}: {e}", self.0);
        }
    }
}

/// The primary stops for 3 s: reads keep going to the replicas, which are
/// not demoted for the missing primary sample, and no read waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_stall_costs_reads_nothing() {
    let _serial = SERIAL.lock().await;
    let (_lr, log, load) = under_read_load().await;

    let frozen = Frozen::node(0).await;
    let stall_began = frozen.at;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stall_ended = frozen.thaw();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = load.finish().await;
    let seen = log.snapshot();

    let w = Unfelt::of(&reads, &log, stall_began, stall_ended);
    let primary_unreachable = seen.iter().any(|s| s.states[0] == NodeState::Unreachable);
    eprintln!(
        "primary stall 3 s: {} reads ({} during the stall), {} errors, longest read started \
         during the stall {:?}, replica demotions {:?}, primary went {:?}",
        reads.len(),
        w.during.len(),
        w.errs.len(),
        longest(&w.during),
        w.demotions,
        primary_unreachable,
    );
    w.assert_unfelt();
    assert!(
        longest(&w.during) <= Duration::from_secs(1),
        "a read started during the stall waited {:?}",
        longest(&w.during)
    );
}

/// The replicas' health checks go unanswered for 7 s while the replicas
/// keep serving reads: the primary holds an ACCESS EXCLUSIVE lock on the
/// heartbeat table the checks read, and the replicas replay it (as they
/// replay a vacuum's truncation). A check that waits on a lock, or on a
/// disk that stalls, is not a node that is down: the proxy's own reads
/// keep getting answers, so the misses hold the replicas in service
/// (`SERVING_MISSES_FACTOR`), and the reads see nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_blocked_on_replicas_that_serve_demote_nothing() {
    let _serial = SERIAL.lock().await;
    let (_lr, log, load) = under_read_load().await;

    // Long enough for several missed checks in a row: a round that waits
    // on the primary's blocked check too takes two `check_timeout`s.
    const HELD: Duration = Duration::from_secs(7);
    let began = Instant::now();
    let locker = blocking(|c| {
        c.sql(
            c.primary_index(),
            "BEGIN; LOCK TABLE lagrouter_heartbeat IN ACCESS EXCLUSIVE MODE; \
             SELECT pg_sleep(7); COMMIT;",
        )
    });
    let locker = tokio::spawn(locker);
    // A commit elsewhere flushes the WAL, the lock's record with it, to the
    // replicas.
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocking(|c| c.sql(c.primary_index(), "SELECT txid_current()"))
        .await
        .expect("a commit on the primary");
    locker
        .await
        .expect("the locking session")
        .expect("the lock held and released");
    let released = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = load.finish().await;
    let seen = log.snapshot();

    let w = Unfelt::of(&reads, &log, began, released);
    let most_missed = |i: usize| seen.iter().map(|s| s.missed[i]).max().unwrap_or(0);
    eprintln!(
        "replica checks blocked {:?}: most missed checks in a row {} and {}, {} reads ({} while \
         blocked), {} errors, longest read started while blocked {:?}, replica demotions {:?}",
        released - began,
        most_missed(1),
        most_missed(2),
        reads.len(),
        w.during.len(),
        w.errs.len(),
        longest(&w.during),
        w.demotions,
    );
    assert!(
        released - began >= HELD,
        "the lock was held {:?}",
        released - began
    );
    assert!(
        most_missed(1) >= 2 && most_missed(2) >= 2,
        "the replicas' checks were blocked (missed {} and {})",
        most_missed(1),
        most_missed(2)
    );
    w.assert_unfelt();
}

/// The primary stops and stays stopped while two writing transactions hold
/// both of a pool's slots: once it has been `Unreachable` for
/// `primary_stall_timeout` (2 s here) they end with 08006 naming it and
/// saying their outcome is unknown, and the slots are free: after it
/// continues, new transactions run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_stall_ends_waiting_writes_after_its_timeout() {
    const LIMIT: Duration = Duration::from_secs(2);
    let _serial = SERIAL.lock().await;
    let c = blocking(|c| {
        c.wait_caught_up(Duration::from_secs(30))
            .expect("caught up");
        c
    })
    .await;
    let primary = c.primary_index();
    let name = c.node_name(primary).to_owned();
    let lr = Lagrouter::start(
        c,
        ProxyBuilder::new().default_routing().pool_size(2),
        "primary_stall_timeout = \"2s\"\n",
    )
    .await;
    let log = StateLog::start(lr.health());
    let a = support::try_connect_str(&lr.conn_str())
        .await
        .expect("connect");
    let b = support::try_connect_str(&lr.conn_str())
        .await
        .expect("connect");
    a.batch_execute("create table if not exists lr_primary_stall (x int)")
        .await
        .expect("create");
    // `a` holds a slot in an open transaction that wrote; `b` will take
    // the other one (opened now: a connection attempt to a stopped node
    // fails by itself, after `connect_timeout`) with an autocommit write.
    a.batch_execute("begin; insert into lr_primary_stall values (1)")
        .await
        .expect("first write");
    b.batch_execute("insert into lr_primary_stall values (0)")
        .await
        .expect("first write");

    let frozen = Frozen::node(primary).await;
    let stalled_at = frozen.at;
    let write = |conn: support::Conn, v: i32| {
        tokio::spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(20),
                conn.batch_execute(&format!("insert into lr_primary_stall values ({v})")),
            )
            .await;
            (r, Instant::now(), conn)
        })
    };
    let (wa, wb) = (write(a, 2), write(b, 3));
    let (ra, ta, _a) = wa.await.unwrap();
    let (rb, tb, _b) = wb.await.unwrap();
    let thawed_at = frozen.thaw();
    let unreachable_at = log
        .first(primary, |s| s == NodeState::Unreachable)
        .map(|s| s.at.saturating_duration_since(stalled_at));
    let mut ended = Vec::new();
    for (what, r, t) in [("in a transaction", ra, ta), ("autocommit", rb, tb)] {
        let e = r
            .unwrap_or_else(|_| panic!("the write {what} still waited after 20 s"))
            .expect_err("a write to a stopped primary cannot succeed");
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_else(|| support::describe(&e));
        ended.push((
            what,
            e.code().map(|c| c.code().to_owned()),
            msg,
            t - stalled_at,
        ));
    }
    eprintln!(
        "primary stopped with 2 writes waiting (primary_stall_timeout 2 s): Unreachable after \
         {unreachable_at:?}; the writes ended: {ended:#?}"
    );
    for (what, code, msg, after) in &ended {
        assert_eq!(code.as_deref(), Some("08006"), "{what}: {msg}");
        assert!(msg.contains(&name), "{what}: the primary not named: {msg}");
        assert!(msg.contains("unknown"), "{what}: outcome not said: {msg}");
        assert!(
            *after >= LIMIT && *after <= LIMIT + Duration::from_millis(2500),
            "{what} ended {after:?} into the stall"
        );
    }

    // Both slots are free again: after the primary continues, two new
    // sessions write at once (a held slot would make one wait for its
    // checkout timeout).
    lr.wait_healthy(Duration::from_secs(10), |i| i == primary)
        .await;
    let back = thawed_at.elapsed();
    let started = Instant::now();
    let mut fresh = Vec::new();
    for v in [4, 5] {
        let conn = support::try_connect_str(&lr.conn_str())
            .await
            .expect("connect");
        conn.batch_execute("begin").await.expect("begin");
        conn.batch_execute(&format!("insert into lr_primary_stall values ({v})"))
            .await
            .expect("write after the primary continued");
        fresh.push(conn);
    }
    let took = started.elapsed();
    for conn in &fresh {
        conn.batch_execute("commit").await.expect("commit");
    }
    eprintln!(
        "primary healthy {back:?} after it continued; two new writing transactions in {took:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "new transactions waited {took:?}"
    );
    let _ = log.finish().await;
}

/// A replica stops for 8 s: within a second, reads no longer go to it; the
/// reads that were in flight on it end with 08006 naming it; after it
/// continues it is re-admitted and serves reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_stall_moves_reads_and_ends_the_stuck_ones() {
    let _serial = SERIAL.lock().await;
    let (lr, log, load) = under_read_load().await;

    let frozen = Frozen::node(2).await;
    let stall_began = frozen.at;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let stall_ended = frozen.thaw();
    let healthy_again = lr.wait_healthy(Duration::from_secs(15), |i| i == 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = load.finish().await;
    let down = log
        .first(2, |s| s == NodeState::Unreachable)
        .expect("replica2 was seen unreachable");
    let seen = log.finish().await;

    let detected = down.at.saturating_duration_since(stall_began);
    let late: Vec<&Read> = reads
        .iter()
        .filter(|r| r.started >= stall_began + Duration::from_secs(1) && r.started < stall_ended)
        .collect();
    let errs = errors(&reads);
    let stuck_for = longest(&errs);
    let back = reads
        .iter()
        .filter(|r| r.started > healthy_again && r.outcome == Ok(2))
        .count();
    eprintln!(
        "replica stall 8 s: unreachable after {detected:?} (cause {:?}); {} reads started 1 s \
         or more into the stall, longest {:?}, none on replica2: {}; {} errors, each ended after \
         at most {stuck_for:?}; healthy {:?} after it continued; {back} reads on it since",
        down.causes[2],
        late.len(),
        longest(&late),
        late.iter().all(|r| r.outcome != Ok(2)),
        errs.len(),
        healthy_again.saturating_duration_since(stall_ended),
    );
    assert!(
        detected <= Duration::from_secs(1),
        "detected after {detected:?}"
    );
    assert_eq!(down.causes[2], Some(Cause::Stalled));
    assert!(late.len() > 100, "the load kept reading: {}", late.len());
    assert!(
        late.iter().all(|r| r.outcome.is_ok() && r.outcome != Ok(2)),
        "a read started 1 s into the stall failed or went to replica2"
    );
    assert!(
        longest(&late) <= Duration::from_secs(1),
        "a read started 1 s into the stall waited {:?}",
        longest(&late)
    );
    for e in &errs {
        let (code, msg) = e.outcome.clone().unwrap_err();
        assert_eq!(code, "08006", "{msg}");
        assert!(msg.contains("replica2"), "{msg}");
        assert!(e.started < stall_began + Duration::from_secs(1), "{e:?}");
    }
    assert!(
        stuck_for <= Duration::from_secs(2),
        "a stuck read ended only after {stuck_for:?}"
    );
    assert!(back > 0, "replica2 serves reads again");
    assert!(
        seen.iter().all(|s| s.states[1] == NodeState::Healthy),
        "replica1 stayed healthy"
    );
}

/// A replica crashes (immediate stop) and restarts under load: errors only
/// for reads in flight when it went down, and existing sessions reach it
/// again within 2 s of it being healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_crash_and_restart_under_load() {
    let _serial = SERIAL.lock().await;
    let (lr, log, load) = under_read_load().await;

    let restart = Restart(2);
    let crashed = Instant::now();
    blocking(|c| c.crash_node(2).expect("crash replica2")).await;
    let down = loop {
        if let Some(s) = log.first(2, |s| s == NodeState::Unreachable) {
            break s;
        }
        assert!(crashed.elapsed() < Duration::from_secs(5), "not detected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = blocking(|c| {
        c.start_node(2).expect("restart replica2");
        Instant::now()
    })
    .await;
    drop(restart);
    let healthy = lr.wait_healthy(Duration::from_secs(15), |i| i == 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reads = load.finish().await;
    log.finish().await;

    let errs = errors(&reads);
    // Sessions that existed before the crash and read from replica2 again.
    let back: Vec<&Read> = reads
        .iter()
        .filter(|r| r.started >= healthy && r.outcome == Ok(2))
        .collect();
    let first_back = back
        .iter()
        .map(|r| r.ended.saturating_duration_since(healthy))
        .min();
    // Sessions already connected when the node restarted (the ones whose
    // read failed at the crash reconnected before the restart).
    let existing: std::collections::HashSet<(usize, usize)> = reads
        .iter()
        .filter(|r| r.started < restarted)
        .map(|r| (r.reader, r.connection))
        .collect();
    let old_sessions = back
        .iter()
        .filter(|r| existing.contains(&(r.reader, r.connection)))
        .count();
    eprintln!(
        "replica crash: unreachable {:?} after the crash (cause {:?}); {} errors, the last \
         started {:?} after the crash; restart to healthy {:?}; first read on it {:?} after \
         healthy, {old_sessions} of {} by sessions from before the restart",
        down.at.saturating_duration_since(crashed),
        down.causes[2],
        errs.len(),
        errs.iter()
            .map(|e| e.started.saturating_duration_since(crashed))
            .max(),
        healthy.saturating_duration_since(restarted),
        first_back,
        back.len()
    );
    assert_eq!(down.causes[2], Some(Cause::Refused));
    for e in &errs {
        let (code, msg) = e.outcome.clone().unwrap_err();
        assert_eq!(code, "08006", "{msg}");
        assert!(msg.contains("replica2"), "{msg}");
        assert!(
            e.started <= down.at,
            "a read started after replica2 was known down failed: {e:?}"
        );
    }
    assert!(
        first_back.is_some_and(|d| d <= Duration::from_secs(2)),
        "replica2 got no read within 2 s of being healthy: {first_back:?}"
    );
    assert!(
        old_sessions > 0,
        "no session from before the crash came back"
    );
}

/// Puts back the default pg_hba.conf of the replicas when dropped.
struct HbaReset(Vec<usize>);

impl Drop for HbaReset {
    fn drop(&mut self) {
        let c = lagrouter::pgcluster::Cluster::shared();
        for &i in &self.0 {
            if let Err(e) = c.set_hba_first(i, &[]) {
                eprintln!("could not reset pg_hba.conf of node {i}: {e}");
            }
        }
    }
}

/// Both replicas refuse one role's logins (their own pg_hba.conf), while
/// they stay healthy for everyone else: as a replica does that has not
/// replayed a new role yet, or that restarts. Each of that role's reads is
/// placed on a replica, cannot be had there, and goes to the primary, with
/// no error, while the primary-read breaker admits it; past its 20% cap the
/// read is refused as the breaker refuses (53400), never with the replica's
/// login error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_refusing_a_login_send_its_reads_to_the_primary_within_the_cap() {
    const ROLE: &str = "lr_norepl";
    const OTHERS: usize = 160;
    const READS: usize = 80;
    let _serial = SERIAL.lock().await;
    support::ensure_role(ROLE).await;
    let c = blocking(|c| c).await;
    let replicas: Vec<usize> = (0..c.node_count())
        .filter(|&i| i != c.primary_index())
        .collect();
    let _reset = HbaReset(replicas.clone());
    let reject = vec![format!("host all {ROLE} 127.0.0.1/32 reject")];
    for &i in &replicas {
        let reject = reject.clone();
        blocking(move |c| c.set_hba_first(i, &reject).expect("pg_hba.conf")).await;
        let direct = format!(
            "host=127.0.0.1 port={} user={ROLE} password={ROLE} dbname={}",
            c.port(i),
            c.database()
        );
        support::eventually(Duration::from_secs(10), "the replica refuses", || {
            let direct = direct.clone();
            async move {
                match tokio_postgres::connect(&direct, tokio_postgres::NoTls).await {
                    Err(e) => (support::sqlstate(&e).as_deref() == Some("28000")).then_some(()),
                    Ok(_) => None,
                }
            }
        })
        .await;
    }
    let primary_port = c.port(c.primary_index()).to_string();
    let lr = ProxyBuilder::new()
        .default_routing()
        .user(&format!("name = \"{ROLE}\"\npassword = \"{ROLE}\""))
        .start()
        .await;
    // Reads of another role fill the breaker's window from the replicas.
    // Until the function catalog is loaded from the primary,
    // inet_server_port() is an unknown function and goes to the primary as
    // a possible write, which the window does not count: the first read on
    // a replica is the first of the window's OTHERS.
    let app = support::connect(&lr).await;
    let (app_ref, primary) = (&app, primary_port.as_str());
    support::eventually(
        Duration::from_secs(20),
        "reads leave the primary",
        || async move {
            let port = support::scalar(&app_ref.client, "select inet_server_port()").await;
            (port.as_deref() != Some(primary)).then_some(())
        },
    )
    .await;
    for _ in 1..OTHERS {
        let port = support::scalar(&app.client, "select inet_server_port()").await;
        assert_ne!(
            port.as_deref(),
            Some(primary_port.as_str()),
            "app read on the primary"
        );
    }
    let conn = support::connect_as(&lr, ROLE, ROLE).await;
    // Logins the replicas refused, from their logs.
    let refusals = move || {
        let needle = format!("rejects connection for host \"127.0.0.1\", user \"{ROLE}\"");
        let replicas = replicas.clone();
        blocking(move |c| {
            replicas
                .iter()
                .map(|&i| {
                    std::fs::read_to_string(c.log_path(i))
                        .map_or(0, |log| log.matches(&needle).count())
                })
                .sum::<usize>()
        })
    };
    let refusals_before = refusals().await;
    let reads_started = Instant::now();
    let mut served = 0;
    let mut refused = Vec::new();
    let mut longest = Duration::ZERO;
    for i in 0..READS {
        let started = Instant::now();
        let r = conn.client.simple_query("select inet_server_port()").await;
        longest = longest.max(started.elapsed());
        match r {
            Ok(msgs) => {
                let port = msgs.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                });
                assert_eq!(port.as_deref(), Some(primary_port.as_str()), "read {i}");
                assert!(refused.is_empty(), "read {i} served after a refusal");
                served += 1;
            }
            Err(e) => refused.push(e),
        }
    }
    let reads_took = reads_started.elapsed();
    let attempts = refusals().await - refusals_before;
    eprintln!(
        "replicas refusing {ROLE}: {served} of {READS} of its reads served by the primary \
         after {OTHERS} replica reads, {} refused, the longest read {longest:?}; \
         {attempts} logins tried on the replicas in {reads_took:?}",
        refused.len()
    );
    // After a refused login, a replica is not asked again for REFUSED_FOR
    // (1 s): at most one attempt a second on each replica, not one a read.
    let most = 2 * (1 + reads_took.as_secs() as usize);
    assert!(
        (1..=most).contains(&attempts),
        "{attempts} logins tried on the replicas for {READS} reads in {reads_took:?}"
    );
    // The breaker's share: served / (OTHERS + served) <= 20% gives 40.
    assert!(
        (30..=40).contains(&served),
        "{served} reads served from the primary"
    );
    assert!(!refused.is_empty(), "the breaker never refused");
    for e in &refused {
        assert_eq!(
            support::sqlstate(e).as_deref(),
            Some("53400"),
            "{}",
            support::describe(e)
        );
    }
    assert!(longest < Duration::from_secs(2), "a read took {longest:?}");
}

/// How long the saturation load runs.
const SATURATION: Duration = Duration::from_secs(60);

/// pgbench through lagrouter with `args`, as app/app, bounded in time.
fn pgbench(port: u16, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("pgbench");
    cmd.args(["-n", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .args(["-U", "app", "app"])
        .env("PGPASSWORD", "app")
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10");
    cmd
}

/// Both cores saturated for 60 s: 64 select-only clients (extended
/// protocol) plus 200 writes a second, through lagrouter with its
/// defaults. No client is aborted, and no replica is demoted while the
/// true lag, sampled on the primary itself, stays under the threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_saturation_demotes_nothing() {
    let _serial = SERIAL.lock().await;
    blocking(|c| c.pgbench_init(1).expect("pgbench -i -s 1")).await;
    let lr = start().await;
    let max_lag = lr.running.shared.config.load().health.max_lag_bytes;
    let log = StateLog::start(lr.health());
    let port = lr.running.addr.port();
    let secs = SATURATION.as_secs().to_string();
    let limit = SATURATION + Duration::from_secs(60);
    let reads = support::process::run(
        pgbench(
            port,
            &["-S", "-M", "extended", "-c", "64", "-j", "2", "-T", &secs],
        ),
        None,
        limit,
    );
    let writes = support::process::run(
        pgbench(
            port,
            &["-N", "-R", "200", "-c", "4", "-j", "1", "-T", &secs],
        ),
        None,
        limit,
    );
    // The true lag, straight from the primary's pg_stat_replication.
    let primary = blocking(|c| c.conn_string(0)).await;
    let sampler = tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&primary, tokio_postgres::NoTls)
            .await
            .expect("connect to the primary");
        tokio::spawn(conn);
        let end = Instant::now() + SATURATION;
        let mut max = 0i64;
        while Instant::now() < end {
            let row = client
                .query_one(
                    "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)\
                     ::bigint FROM pg_stat_replication",
                    &[],
                )
                .await
                .expect("sample the lag");
            max = max.max(row.get(0));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        max
    });
    let (reads, writes) = tokio::join!(reads, writes);
    let true_lag = sampler.await.expect("sampler");
    let demotions: Vec<_> = [1, 2].iter().flat_map(|&i| log.demotions(i)).collect();
    let seen = log.finish().await;
    let r = support::process::pgbench_ok(&reads, "select-only");
    let w = support::process::pgbench_ok(&writes, "writes");
    eprintln!(
        "CPU saturation {SATURATION:?}: reads {r:.0} tps; writes {w:.0} tps; true lag at most {true_lag} \
         bytes (threshold {max_lag}); replica demotions {demotions:?}; {} snapshots",
        seen.len()
    );
    assert!(
        seen.len() > 100,
        "the monitor kept publishing: {}",
        seen.len()
    );
    if (true_lag as u64) < max_lag {
        assert_eq!(
            demotions,
            [],
            "demotions while the true lag stayed under {max_lag}"
        );
    }
}
