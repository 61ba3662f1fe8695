//! The lag monitor against a real primary and two streaming replicas (the
//! shared test cluster): lagging on paused replay, hysteresis on recovery,
//! unreachable on a stopped node, heartbeat time lag on and off, and the
//! monitor's own load on the primary.
//!
//! The scenarios pause, stop and write on one shared cluster, so they run
//! one at a time (`SERIAL`). Every wait has a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lagrouter::pgcluster::Cluster;
use lagrouter_config::{Config, ConfigHandle};
use lagrouter_health::{HealthMonitor, HealthSnapshot, NodeState};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

static SERIAL: Mutex<()> = Mutex::const_new(());

const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_secs(1);
const MAX_LAG_BYTES: u64 = 1 << 20;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "lagrouter_health=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Runs a blocking harness call off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce(&'static Cluster) -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(move || f(Cluster::shared()))
        .await
        .expect("harness call panicked")
}

fn config(c: &Cluster, health: &str) -> Config {
    let t = config_text(c, health);
    Config::from_toml_str(&t).expect("test config is valid")
}

fn config_text(c: &Cluster, health: &str) -> String {
    let mut t = format!(
        "[[users]]\nname = \"{}\"\npassword = \"{}\"\n",
        c.app_user(),
        c.app_password()
    );
    t.push_str(&c.nodes_toml());
    t.push_str(&format!(
        "[health]\ndatabase = \"{}\"\ncheck_interval = \"{}ms\"\ncheck_timeout = \"{}ms\"\n\
         max_lag_bytes = {MAX_LAG_BYTES}\nrecover_after_checks = 3\n{health}",
        c.database(),
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    ));
    t
}

/// A running monitor that stops when dropped.
struct Running {
    monitor: HealthMonitor,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(health: &str) -> Running {
    init_logs();
    let cfg = config(Cluster::shared(), health);
    let stop = CancellationToken::new();
    let monitor = HealthMonitor::start(ConfigHandle::new(cfg), stop.clone())
        .await
        .expect("the monitor's threads start");
    Running { monitor, stop }
}

/// A monitor with `[health] database` left at its default, `postgres`,
/// where the test's user may not create tables.
async fn start_in_default_database(health: &str) -> Running {
    init_logs();
    let c = Cluster::shared();
    let text = config_text(c, health).replace(&format!("database = \"{}\"", c.database()), "");
    let cfg = Config::from_toml_str(&text).expect("valid");
    assert_eq!(cfg.health.database, "postgres", "the default");
    let stop = CancellationToken::new();
    let monitor = HealthMonitor::start(ConfigHandle::new(cfg), stop.clone())
        .await
        .expect("the monitor's threads start");
    Running { monitor, stop }
}

/// Snapshots in publication order, each awaited with a deadline.
struct Observer {
    monitor: HealthMonitor,
    rx: tokio::sync::watch::Receiver<u64>,
}

impl Observer {
    fn new(m: &HealthMonitor) -> Observer {
        let mut rx = m.subscribe();
        rx.borrow_and_update();
        Observer {
            monitor: m.clone(),
            rx,
        }
    }

    /// The next published snapshot, or a panic naming `what` at `deadline`.
    async fn next(&mut self, deadline: Instant, what: &str) -> Arc<HealthSnapshot> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.rx.changed()).await {
            Ok(Ok(())) => {
                self.rx.borrow_and_update();
                self.monitor.snapshot()
            }
            _ => panic!(
                "timed out waiting for {what}; last: {:#?}",
                self.monitor.snapshot()
            ),
        }
    }

    /// Skips snapshots until `pred` holds; returns that snapshot.
    async fn until(
        &mut self,
        within: Duration,
        what: &str,
        pred: impl Fn(&HealthSnapshot) -> bool,
    ) -> Arc<HealthSnapshot> {
        let deadline = Instant::now() + within;
        let now = self.monitor.snapshot();
        if pred(&now) {
            return now;
        }
        loop {
            let s = self.next(deadline, what).await;
            if pred(&s) {
                return s;
            }
        }
    }
}

fn all_healthy(s: &HealthSnapshot) -> bool {
    s.nodes.iter().all(|n| n.state() == NodeState::Healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replay_lags_then_recovers_after_exactly_three_good_checks() {
    let _serial = SERIAL.lock().await;
    blocking(|c| c.wait_caught_up(Duration::from_secs(30)))
        .await
        .unwrap();
    let run = start("").await;
    let mut obs = Observer::new(&run.monitor);
    obs.until(Duration::from_secs(15), "all healthy", all_healthy)
        .await;

    blocking(|c| c.pause_replay(1)).await.unwrap();
    let write_started = Instant::now();
    blocking(|c| {
        c.sql(
            0,
            "CREATE TABLE IF NOT EXISTS health_lag_fill (id int, pad text);\n\
             INSERT INTO health_lag_fill SELECT g, repeat(md5(g::text), 16) FROM generate_series(1, 6000) g;",
        )
    })
    .await
    .unwrap();
    let written = Instant::now();

    // Every snapshot from now on: a replica measured over the threshold is
    // Lagging in that very snapshot, and it gets there within an interval
    // (plus the round itself) of the write being done.
    let lagging = obs
        .until(Duration::from_secs(10), "replica1 lagging", |s| {
            let r1 = &s.nodes[1];
            if r1.lag_bytes.is_some_and(|b| b > MAX_LAG_BYTES) {
                assert_eq!(r1.state(), NodeState::Lagging, "over threshold but {r1:?}");
            }
            r1.state() == NodeState::Lagging
        })
        .await;
    let seen_after = lagging.nodes[1]
        .last_check
        .unwrap()
        .saturating_duration_since(written);
    eprintln!(
        "write of {} bytes took {:?}; replica1 Lagging {:?} after it finished (lag {:?} bytes)",
        lagging.nodes[1].lag_bytes.unwrap_or(0),
        written - write_started,
        seen_after,
        lagging.nodes[1].lag_bytes
    );
    assert!(lagging.nodes[1].lag_bytes.unwrap() > MAX_LAG_BYTES);
    assert!(
        seen_after <= INTERVAL + TIMEOUT,
        "Lagging only {seen_after:?} after the write"
    );
    // replica2 still replays: it may trail the big write for a round or two
    // on a loaded machine, but it is (back) under the threshold while
    // replica1 stays Lagging.
    let rounds = std::cell::Cell::new(0);
    if lagging.nodes[2].state() != NodeState::Healthy {
        obs.until(
            Duration::from_secs(10),
            "replica2 healthy while replica1 lags",
            |s| {
                assert_eq!(
                    s.nodes[1].state(),
                    NodeState::Lagging,
                    "replica1 is still paused"
                );
                rounds.set(rounds.get() + 1);
                s.nodes[2].state() == NodeState::Healthy
            },
        )
        .await;
    }
    eprintln!(
        "replica2 healthy {} round(s) after replica1 was seen lagging",
        rounds.get()
    );

    // Stays lagging while paused.
    for _ in 0..3 {
        let s = obs
            .next(Instant::now() + Duration::from_secs(5), "a round")
            .await;
        assert_eq!(s.nodes[1].state(), NodeState::Lagging);
    }

    blocking(|c| c.resume_replay(1)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut states = vec![NodeState::Lagging];
    let mut seqs = Vec::new();
    loop {
        let s = obs.next(deadline, "replica1 healthy again").await;
        let r1 = &s.nodes[1];
        if *states.last().unwrap() != r1.state() {
            states.push(r1.state());
            seqs.push(s.seq);
        }
        if r1.state() == NodeState::Healthy {
            assert_eq!(
                r1.status.good_checks, 3,
                "healthy after exactly recover_after_checks"
            );
            break;
        }
    }
    assert_eq!(
        states,
        [
            NodeState::Lagging,
            NodeState::Recovering { good_checks: 1 },
            NodeState::Recovering { good_checks: 2 },
            NodeState::Healthy,
        ]
    );
    assert_eq!(seqs[2] - seqs[0], 2, "three consecutive rounds: {seqs:?}");
    blocking(|c| c.sql(0, "DROP TABLE health_lag_fill"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_replica_is_unreachable_then_recovers() {
    let _serial = SERIAL.lock().await;
    blocking(|c| c.wait_caught_up(Duration::from_secs(30)))
        .await
        .unwrap();
    let run = start("").await;
    let mut obs = Observer::new(&run.monitor);
    obs.until(Duration::from_secs(15), "all healthy", all_healthy)
        .await;

    blocking(|c| c.stop_node(2)).await.unwrap();
    let stopped = Instant::now();
    let s = obs
        .until(TIMEOUT + INTERVAL * 3, "replica2 unreachable", |s| {
            let st = s.nodes[2].state();
            assert_ne!(st, NodeState::Lagging, "unreachable is not lagging");
            st == NodeState::Unreachable
        })
        .await;
    let took = s.nodes[2]
        .last_check
        .unwrap()
        .saturating_duration_since(stopped);
    let reason = s.nodes[2].unreachable_reason.clone().unwrap_or_default();
    eprintln!("replica2 Unreachable {took:?} after stop: {reason}");
    assert!(took <= TIMEOUT + INTERVAL, "took {took:?}");
    assert!(!reason.is_empty());
    assert_eq!(
        s.nodes[1].state(),
        NodeState::Healthy,
        "other replica unaffected"
    );

    blocking(|c| c.start_node(2)).await.unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    let mut states = vec![NodeState::Unreachable];
    loop {
        let s = obs.next(deadline, "replica2 healthy again").await;
        let r2 = &s.nodes[2];
        if *states.last().unwrap() != r2.state() {
            states.push(r2.state());
        }
        if r2.state() == NodeState::Healthy {
            assert_eq!(r2.status.good_checks, 3);
            break;
        }
    }
    eprintln!("replica2 Healthy {:?} after restart", started.elapsed());
    assert_eq!(
        states,
        [
            NodeState::Unreachable,
            NodeState::Recovering { good_checks: 1 },
            NodeState::Recovering { good_checks: 2 },
            NodeState::Healthy,
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_with_heartbeat_time_lag_stays_near_zero() {
    let _serial = SERIAL.lock().await;
    blocking(|c| c.wait_caught_up(Duration::from_secs(30)))
        .await
        .unwrap();
    let run = start("heartbeat_interval = \"500ms\"").await;
    let mut obs = Observer::new(&run.monitor);
    obs.until(
        Duration::from_secs(15),
        "all healthy, heartbeat seen",
        |s| all_healthy(s) && s.nodes[1..].iter().all(|n| n.lag_time.is_some()),
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut times, mut bytes) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let s = obs.next(deadline, "30 rounds").await;
        for n in &s.nodes[1..] {
            times.push(n.lag_time.expect("time lag known with the heartbeat on"));
            bytes.push(n.lag_bytes.expect("byte lag known"));
        }
    }
    let zero_bytes = bytes.iter().filter(|b| **b == 0).count();
    let zero_times = times.iter().filter(|t| t.is_zero()).count();
    let max_time = times.iter().max().unwrap();
    eprintln!(
        "idle: {zero_bytes}/{} samples with zero byte lag (max {} bytes), \
         {zero_times}/{} with zero time lag (max {max_time:?})",
        bytes.len(),
        bytes.iter().max().unwrap(),
        times.len()
    );
    assert!(
        zero_bytes * 10 >= bytes.len() * 9,
        "byte lag returns to zero"
    );
    assert!(zero_times * 10 >= times.len() * 9, "time lag near zero");
    assert!(
        *max_time <= INTERVAL * 2,
        "time lag stays within a round or two"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_off_reports_time_lag_unknown() {
    let _serial = SERIAL.lock().await;
    let run = start("heartbeat_interval = \"0s\"").await;
    let mut obs = Observer::new(&run.monitor);
    obs.until(Duration::from_secs(15), "all healthy", all_healthy)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..10 {
        let s = obs.next(deadline, "10 rounds").await;
        for n in &s.nodes[1..] {
            assert_eq!(n.lag_time, None, "{}: unknown, not zero", n.name);
            assert!(n.lag_bytes.is_some());
        }
    }
}

/// On a fresh install the monitor's user (here `app`, not a superuser) may
/// not create tables in the `postgres` database, lagrouter's default: the
/// heartbeat then commits transaction ids instead, and time lag stays
/// known and small, without any table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_works_where_the_user_may_not_create_the_table() {
    let _serial = SERIAL.lock().await;
    let run =
        start_in_default_database("heartbeat_interval = \"200ms\"\nmax_lag_time = \"1s\"\n").await;
    let mut obs = Observer::new(&run.monitor);
    obs.until(Duration::from_secs(15), "all healthy", all_healthy)
        .await;
    // Without any other write for 2 s, replicas keep replaying fresh
    // commits: the heartbeat's transaction ids.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let age: f64 = blocking(|c| {
        c.sql(
            1,
            "SELECT extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())",
        )
    })
    .await
    .unwrap()
    .parse()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut times = Vec::new();
    for _ in 0..20 {
        let s = obs.next(deadline, "20 rounds").await;
        for n in &s.nodes[1..] {
            assert_eq!(n.state(), NodeState::Healthy, "{n:?}");
            times.push(n.lag_time.expect("time lag known without the table"));
        }
    }
    let max = times.iter().max().unwrap();
    eprintln!(
        "no heartbeat table: newest replayed commit on replica1 {age:.3} s old after 2 s \
         without writes; {} samples, max time lag {max:?}",
        times.len()
    );
    assert!(age < 1.0, "the heartbeat commits: newest is {age} s old");
    assert!(*max < Duration::from_secs(1), "time lag {max:?}");
    let table = blocking(|c| {
        c.sql_in(
            0,
            "postgres",
            "SELECT to_regclass('lagrouter_heartbeat') IS NULL",
        )
    })
    .await
    .unwrap();
    assert_eq!(table, "t", "no table was created in postgres");
}

/// A heartbeat table that belongs to another user (another lagrouter's
/// monitor) may not be read by this monitor (42501). Nodes stay healthy,
/// and the checks leave the table alone for a while instead of failing a
/// read on it every other round (counted as rollbacks on the primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_table_of_another_user_is_left_alone() {
    const TABLE: &str = "lr_others_heartbeat";
    let _serial = SERIAL.lock().await;
    blocking(|c| {
        c.sql_in(
            0,
            "postgres",
            &format!(
                "DROP TABLE IF EXISTS {TABLE}; \
                 CREATE TABLE {TABLE} (id int PRIMARY KEY, ts timestamptz); \
                 REVOKE ALL ON {TABLE} FROM PUBLIC"
            ),
        )
    })
    .await
    .unwrap();
    let run = start_in_default_database(&format!("heartbeat_table = \"{TABLE}\"\n")).await;
    let mut obs = Observer::new(&run.monitor);
    obs.until(Duration::from_secs(15), "all healthy", all_healthy)
        .await;
    let rollbacks = || {
        blocking(|c| {
            c.sql_in(
                0,
                "postgres",
                "SELECT xact_rollback FROM pg_stat_database WHERE datname = 'postgres'",
            )
        })
    };
    // Backends publish their counters at most once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before: u64 = rollbacks().await.unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rounds = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let s = obs.next(deadline, "rounds for 4 s").await;
        assert!(all_healthy(&s), "{:#?}", s.nodes);
        rounds += 1;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after: u64 = rollbacks().await.unwrap().parse().unwrap();
    eprintln!(
        "another user's heartbeat table: {rounds} healthy rounds in 4 s, {} failed reads \
         (rollbacks) on the primary",
        after - before
    );
    assert!(rounds >= 8, "only {rounds} rounds in 4 s");
    assert!(
        after - before <= 1,
        "{} failed reads of {TABLE} in {rounds} rounds",
        after - before
    );
    blocking(|c| c.sql_in(0, "postgres", &format!("DROP TABLE IF EXISTS {TABLE}")))
        .await
        .unwrap();
}
