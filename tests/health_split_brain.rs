//! The lag monitor on a cluster of its own, because promoting a replica
//! breaks the topology for anyone else: first the monitor's own load on
//! the primary (pg_stat_statements, with everything intact), then split
//! brain after a promotion while the old primary keeps running.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lagrouter::pgcluster::{Cluster, ClusterOptions};
use lagrouter_config::{Config, ConfigHandle};
use lagrouter_health::{HealthMonitor, HealthSnapshot, NodeState, PrimaryStatus};
use support::on_cluster;
use tokio_util::sync::CancellationToken;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "lagrouter_health=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// `roles[i]` for node `i`; `health` is appended to `[health]`.
fn config(c: &Cluster, roles: &[&str], health: &str) -> Config {
    let mut t = format!(
        "[[users]]\nname = \"{}\"\npassword = \"{}\"\n",
        c.app_user(),
        c.app_password()
    );
    for (i, role) in roles.iter().enumerate() {
        t.push_str(&c.node_toml(i, role));
    }
    t.push_str(&format!(
        "[health]\ndatabase = \"{}\"\n{health}",
        c.database()
    ));
    Config::from_toml_str(&t).expect("test config is valid")
}

async fn wait_for(
    m: &HealthMonitor,
    within: Duration,
    what: &str,
    pred: impl Fn(&HealthSnapshot) -> bool,
) -> Arc<HealthSnapshot> {
    let deadline = Instant::now() + within;
    let mut rx = m.subscribe();
    loop {
        rx.borrow_and_update();
        let s = m.snapshot();
        if pred(&s) {
            return s;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !matches!(tokio::time::timeout(left, rx.changed()).await, Ok(Ok(()))) {
            panic!("timed out waiting for {what}; last: {s:#?}");
        }
    }
}

fn all_healthy(s: &HealthSnapshot) -> bool {
    s.nodes.iter().all(|n| n.state() == NodeState::Healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_load_then_split_brain_after_promotion() {
    init_logs();
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| {
            Cluster::start(ClusterOptions {
                extra_conf: vec!["shared_preload_libraries = 'pg_stat_statements'".into()],
                ..ClusterOptions::default()
            })
        })
        .await
        .unwrap()
        .expect("own cluster starts"),
    );
    let c = &cluster;
    on_cluster(c, |c| {
        c.sql(0, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    })
    .await
    .unwrap();

    // --- The monitor's load on the primary, at the defaults (250ms checks,
    // 500ms heartbeat), measured over 10s. ---
    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();
    let cfg = config(c, &["primary", "replica", "replica"], "");
    let fixed = HealthMonitor::start(ConfigHandle::new(cfg), stop.child_token())
        .await
        .expect("the monitor's threads start");
    wait_for(&fixed, Duration::from_secs(15), "all healthy", all_healthy).await;
    let per_query = "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements \
                     WHERE userid = 'app'::regrole";
    let commits = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
    let before = on_cluster(c, move |c| {
        c.sql(0, "SELECT pg_stat_statements_reset()")?;
        c.sql(0, commits)
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (calls, after, breakdown) = on_cluster(c, move |c| {
        Ok::<_, lagrouter::pgcluster::ClusterError>((
            c.sql(0, per_query)?,
            c.sql(0, commits)?,
            c.sql(
                0,
                "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 70) \
                 FROM pg_stat_statements WHERE userid = 'app'::regrole ORDER BY calls DESC",
            )?,
        ))
    })
    .await
    .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let calls: f64 = calls.parse().unwrap();
    let commits_delta: f64 = after.parse::<f64>().unwrap() - before.parse::<f64>().unwrap();
    eprintln!(
        "monitor load on the primary over {secs:.1}s: {:.2} statements/s by the monitor's user \
         (pg_stat_statements), {:.2} commits/s in the database (pg_stat_database, includes \
         the measuring session)\n{breakdown}",
        calls / secs,
        commits_delta / secs
    );
    // One check per 250ms plus one heartbeat per 500ms is 6/s.
    assert!(
        calls / secs <= 7.5,
        "monitor runs more than one query per node per interval"
    );

    // --- Split brain: promote replica1 while the primary runs. ---
    let cfg = config(
        c,
        &["auto", "auto", "auto"],
        "prefer_highest_timeline = true",
    );
    let auto = HealthMonitor::start(ConfigHandle::new(cfg), stop.child_token())
        .await
        .expect("the monitor's threads start");
    wait_for(&auto, Duration::from_secs(15), "auto: primary found", |s| {
        s.primary == PrimaryStatus::One(0)
    })
    .await;

    on_cluster(c, |c| c.promote(1)).await.unwrap();
    let s = wait_for(&fixed, Duration::from_secs(15), "split brain", |s| {
        matches!(s.primary, PrimaryStatus::SplitBrain(_))
    })
    .await;
    eprintln!(
        "fixed roles after promotion: {:?}: {}",
        s.primary,
        s.primary_problem.as_deref().unwrap_or("")
    );
    assert_eq!(s.primary, PrimaryStatus::SplitBrain(vec![0, 1]));
    assert_eq!(s.primary_index(), None, "no node is a write target");
    assert!(
        s.primary_problem
            .as_deref()
            .unwrap()
            .contains("split brain")
    );
    assert_eq!(s.primary_lsn, None);
    // It stays that way, and no replica is trusted for reads meanwhile.
    let later = wait_for(&fixed, Duration::from_secs(5), "three more rounds", |x| {
        x.seq >= s.seq + 3
    })
    .await;
    assert_eq!(later.primary, PrimaryStatus::SplitBrain(vec![0, 1]));
    assert!(later.nodes.iter().all(|n| n.state() != NodeState::Healthy));

    // With prefer_highest_timeline the promoted node (timeline 2) wins.
    let s = wait_for(&auto, Duration::from_secs(15), "highest timeline", |s| {
        s.primary == PrimaryStatus::One(1)
    })
    .await;
    eprintln!(
        "auto + prefer_highest_timeline: {:?} (timelines {:?}): {}",
        s.primary,
        s.nodes.iter().map(|n| n.timeline).collect::<Vec<_>>(),
        s.primary_problem.as_deref().unwrap_or("")
    );
    assert_eq!(s.nodes[1].timeline, Some(2));
    assert_eq!(s.nodes[0].timeline, Some(1));
    // replica2 still follows the old primary on timeline 1: however close
    // its LSN, it never sees the new primary's writes, so it never serves.
    let later = wait_for(&auto, Duration::from_secs(5), "three more rounds", |x| {
        x.seq >= s.seq + 3
    })
    .await;
    assert_eq!(later.primary, PrimaryStatus::One(1));
    assert_eq!(later.nodes[2].timeline, Some(1));
    assert_eq!(
        later.nodes[2].state(),
        NodeState::Lagging,
        "{:?}",
        later.nodes[2]
    );

    stop.cancel();
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
