//! Several lagrouter instances in front of the same nodes, each its own
//! process, as they run behind a TCP load balancer (`deploy/haproxy/`):
//!
//! - what each instance's health checks cost the primary, in statements per
//!   second, with the shipped defaults and no client traffic (from the
//!   primary's `pg_stat_database` counters);
//! - read-your-writes across instances: a row written through instance A
//!   is read through instance B with A's causal token while both replicas'
//!   replay is paused (so only the primary has it), and without the token B
//!   reads a stale replica (the control that lets this test fail); once
//!   replay resumes, B's reads with the token go back to the replicas.

mod support;

use std::time::{Duration, Instant};

use support::process::{spawn_run, stop};
use support::routing::{Paused, caught_up};
use support::{ProxyBuilder, TempDir, blocking, ensure_role, eventually, scalar, within};
use tokio_postgres::Client;

const USER: &str = "lr_multi";
/// How long the idle load on the primary is counted.
const LOAD_WINDOW: Duration = Duration::from_secs(10);

/// One instance: its own process, config and port.
struct Instance {
    _dir: TempDir,
    child: tokio::process::Child,
    port: u16,
}

async fn start_instance(tag: &str) -> Instance {
    let c = blocking(|c| c).await;
    let dir = TempDir::new(tag);
    // The shipped routing defaults, as a deployment runs them.
    let toml = ProxyBuilder::new()
        .no_default_user()
        .user(&format!(
            "name = \"{USER}\"\npassword = \"{USER}\"\nauth = \"trust\""
        ))
        .default_routing()
        .toml(c);
    let (child, port) = spawn_run(&dir, &toml).await;
    Instance {
        _dir: dir,
        child,
        port,
    }
}

async fn connect(i: &Instance) -> support::Conn {
    let c = blocking(|c| c).await;
    support::try_connect_str(&format!(
        "host=127.0.0.1 port={} user={USER} dbname={} connect_timeout=10",
        i.port,
        c.database()
    ))
    .await
    .unwrap_or_else(|e| {
        panic!(
            "connect to instance on {}: {}",
            i.port,
            support::describe(&e)
        )
    })
}

/// The node port that served `SELECT inet_server_port()`-style rows.
async fn count_and_port(c: &Client, sql: &str) -> (i64, u16) {
    let r = c
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", support::describe(&e)));
    (r.get::<_, i64>(0), r.get::<_, i32>(1) as u16)
}

/// Statements the primary has run so far, over every database.
async fn primary_statements() -> u64 {
    let sql = "select sum(xact_commit + xact_rollback) from pg_stat_database";
    blocking(move |c| c.sql(c.primary_index(), sql))
        .await
        .expect("pg_stat_database")
        .parse()
        .expect("a number")
}

/// Statements per second on the primary over [`LOAD_WINDOW`].
async fn primary_rate() -> f64 {
    let (before, t0) = (primary_statements().await, Instant::now());
    tokio::time::sleep(LOAD_WINDOW).await;
    let after = primary_statements().await;
    after.saturating_sub(before) as f64 / t0.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_read_your_writes_and_each_costs_the_primary_little() {
    within(Duration::from_secs(240), "two instances", async {
        ensure_role(USER).await;
        caught_up().await;
        let primary_port = blocking(|c| c.port(c.primary_index())).await;
        let baseline = primary_rate().await;

        let a = start_instance("multi-a").await;
        let b = start_instance("multi-b").await;
        // Both are checking and route reads to the replicas.
        for i in [&a, &b] {
            let c = connect(i).await;
            let c = &c;
            eventually(
                Duration::from_secs(20),
                "reads reach a replica",
                || async move {
                    let port = scalar(c, "SELECT inet_server_port()").await?;
                    (port.parse::<u16>().ok()? != primary_port).then_some(())
                },
            )
            .await;
        }
        let with_two = primary_rate().await;
        let per_instance = (with_two - baseline).max(0.0) / 2.0;
        eprintln!(
            "primary statements/s: {baseline:.1} without lagrouter, {with_two:.1} with two idle \
             instances: {per_instance:.1} per instance"
        );
        // A check every 250 ms (4/s) and a heartbeat write every 500 ms
        // (2/s): about 6 per second. Far more means something polls hard.
        assert!(
            per_instance <= 20.0,
            "each idle instance costs the primary {per_instance:.1} statements/s"
        );
        // Each instance beats in a row of its own: none waits on another's
        // row lock when the primary's commits are slow.
        let fresh = blocking(|c| {
            c.sql(
                c.primary_index(),
                "SELECT count(*) FROM lagrouter_heartbeat \
                 WHERE ts > clock_timestamp() - interval '5 seconds'",
            )
        })
        .await
        .expect("read the heartbeat rows");
        eprintln!("heartbeat rows written in the last 5 s: {}", fresh.trim());
        assert!(
            fresh.trim().parse::<u32>().expect("a count") >= 2,
            "two instances beat in {} fresh row(s), not one each",
            fresh.trim()
        );

        blocking(move |c| {
            c.sql(
                c.primary_index(),
                &format!(
                    "DROP TABLE IF EXISTS multi_rows; \
                     CREATE TABLE multi_rows (id int PRIMARY KEY); \
                     GRANT ALL ON multi_rows TO {USER}"
                ),
            )
        })
        .await
        .expect("create table");
        caught_up().await;

        let paused = Paused::new(&[1, 2]).await;
        let writer = connect(&a).await;
        writer
            .batch_execute("INSERT INTO multi_rows VALUES (1)")
            .await
            .unwrap_or_else(|e| panic!("insert through A: {}", support::describe(&e)));
        let token = scalar(&writer, "SHOW lagrouter.last_write_lsn")
            .await
            .expect("A gives a causal token after a write");
        eprintln!("token from instance A: {token}");

        let sel = "SELECT count(*), inet_server_port() FROM multi_rows WHERE id = 1";
        // Control: B without the token reads a paused replica, without the row.
        let stale = connect(&b).await;
        let (count, port) = count_and_port(&stale, sel).await;
        assert_ne!(port, primary_port, "B without a token reads a replica");
        assert_eq!(
            count, 0,
            "the paused replica on {port} must not have the row yet"
        );

        // B with A's token sees the write: only the primary has it.
        let reader = connect(&b).await;
        reader
            .batch_execute(&format!("SET lagrouter.min_lsn = '{token}'"))
            .await
            .unwrap_or_else(|e| panic!("SET lagrouter.min_lsn on B: {}", support::describe(&e)));
        let (count, port) = count_and_port(&reader, sel).await;
        eprintln!("B with A's token: count {count} from port {port}");
        assert_eq!(count, 1, "B with A's token must see A's row");
        assert_eq!(
            port, primary_port,
            "only the primary has replayed the token"
        );

        // Replay resumes: B's token reads return to the replicas.
        paused.resume().await;
        let reader = &reader;
        let resumed = Instant::now();
        let port = eventually(
            Duration::from_secs(10),
            "B's token reads go back to a replica after replay resumes",
            || async move {
                let (count, port) = count_and_port(reader, sel).await;
                assert_eq!(count, 1, "a read with the token never misses the row");
                (port != primary_port).then_some(port)
            },
        )
        .await;
        eprintln!(
            "B with the token read from replica port {port} {:?} after replay resumed",
            resumed.elapsed()
        );

        blocking(|c| c.sql(c.primary_index(), "DROP TABLE IF EXISTS multi_rows"))
            .await
            .expect("drop table");
        stop(a.child).await;
        stop(b.child).await;
    })
    .await;
}
