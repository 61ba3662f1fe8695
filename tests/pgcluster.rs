//! The throwaway cluster harness itself: replication works, replay can be
//! paused and delayed, nodes restart, the roles can log in, and nothing is
//! left behind after a drop or a SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use lagrouter::pgcluster::{Cluster, ClusterErrorKind, ClusterOptions};

const WAIT: Duration = Duration::from_secs(30);
/// Set in the child process of `sigkill_leaves_nothing`.
const HELPER_ENV: &str = "LAGROUTER_PGCLUSTER_SIGKILL_HELPER";

/// Polls `check` until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn count(c: &Cluster, node: usize, table: &str, id: i32) -> String {
    c.sql(
        node,
        &format!("select count(*) from {table} where id = {id}"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn sees(c: &Cluster, node: usize, table: &str, id: i32) -> bool {
    count(c, node, table, id) == "1"
}

#[test]
fn replicas_follow_pause_delay_and_restart() {
    let c = Cluster::shared();
    assert_eq!(c.node_count(), 3);
    assert_eq!(
        (c.node_name(0), c.node_name(1), c.node_name(2)),
        ("primary", "replica1", "replica2")
    );
    assert_eq!(c.sql(0, "select pg_is_in_recovery()").unwrap(), "f");
    assert_eq!(c.sql(1, "select pg_is_in_recovery()").unwrap(), "t");

    c.sql(
        0,
        "create table rep (id int primary key, v text); insert into rep values (1, 'a')",
    )
    .unwrap();
    c.wait_caught_up(WAIT).unwrap();
    assert!(sees(c, 1, "rep", 1) && sees(c, 2, "rep", 1));

    // Paused replay: replica2 gets the write, replica1 does not.
    c.pause_replay(1).unwrap();
    c.sql(0, "insert into rep values (2, 'b')").unwrap();
    assert!(
        eventually(WAIT, || sees(c, 2, "rep", 2)),
        "replica2 never saw row 2"
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(count(c, 1, "rep", 2), "0", "replica1 replayed while paused");
    c.resume_replay(1).unwrap();
    c.wait_caught_up(WAIT).unwrap();
    assert!(sees(c, 1, "rep", 2));

    // Apply delay: same, through recovery_min_apply_delay.
    c.set_apply_delay(1, Some(Duration::from_secs(3600)))
        .unwrap();
    c.sql(0, "insert into rep values (3, 'c')").unwrap();
    assert!(
        eventually(WAIT, || sees(c, 2, "rep", 3)),
        "replica2 never saw row 3"
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count(c, 1, "rep", 3),
        "0",
        "replica1 ignored the apply delay"
    );
    c.set_apply_delay(1, None).unwrap();
    c.wait_caught_up(WAIT).unwrap();
    assert!(sees(c, 1, "rep", 3));

    // A stopped replica is skipped by wait_caught_up and catches up after start.
    c.stop_node(2).unwrap();
    assert!(!c.is_running(2));
    let down = c.sql(2, "select 1").unwrap_err();
    assert_eq!(down.node(), Some("replica2"));
    c.sql(0, "insert into rep values (4, 'd')").unwrap();
    c.wait_caught_up(WAIT).unwrap();
    c.start_node(2).unwrap();
    assert!(c.is_running(2));
    c.wait_caught_up(WAIT).unwrap();
    assert!(sees(c, 2, "rep", 4));
}

#[test]
fn sql_errors_name_the_node_and_keep_the_server_message() {
    let c = Cluster::shared();
    let e = c.sql(1, "select * from no_such_table").unwrap_err();
    assert_eq!(e.kind(), ClusterErrorKind::Sql);
    assert_eq!(e.node(), Some("replica1"));
    assert!(
        e.message().starts_with("ERROR:") && e.message().contains("no_such_table"),
        "{e}"
    );
    assert!(c.sql(7, "select 1").is_err());
}

#[test]
fn app_roles_log_in_over_tcp() {
    let c = Cluster::shared();
    assert_eq!(
        c.sql(
            0,
            "select rolpassword like 'md5%' from pg_authid where rolname = 'app_md5'"
        )
        .unwrap(),
        "t"
    );
    assert_eq!(
        c.sql(
            0,
            "select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = 'app'"
        )
        .unwrap(),
        "t"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for node in 0..c.node_count() {
            let md5 = format!(
                "host={} port={} user={} password={} dbname={}",
                c.host(),
                c.port(node),
                c.md5_user(),
                c.md5_password(),
                c.database()
            );
            for conn_str in [c.conn_string(node), md5] {
                let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|e| panic!("{conn_str}: {e}"));
                let task = tokio::spawn(conn);
                let row = client
                    .query_one("select pg_is_in_recovery()", &[])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, bool>(0), node != 0);
                drop(client);
                task.await.unwrap().unwrap();
            }
        }
        let bad = c.conn_string(0).replace("password=app", "password=wrong");
        assert!(
            tokio_postgres::connect(&bad, tokio_postgres::NoTls)
                .await
                .is_err()
        );
    });
}

/// Processes whose working directory (postgres: the data directory) or
/// command line is inside `dir`.
fn processes_in(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cwd.to_string_lossy().starts_with(&needle) || cmdline.contains(&needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

fn small_cluster() -> Cluster {
    Cluster::start(ClusterOptions {
        replicas: 1,
        ..ClusterOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn dropped_cluster_leaves_nothing() {
    let started = Instant::now();
    let c = Cluster::start(ClusterOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("3-node cluster started in {:?}", started.elapsed());
    let dir: PathBuf = c.dir().to_owned();
    assert!(c.is_running(0) && c.is_running(1));
    assert!(!processes_in(&dir).is_empty());
    c.sql(0, "create table t (id int)").unwrap();
    drop(c);
    assert!(!dir.exists(), "{} still exists", dir.display());
    let left = processes_in(&dir);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Run in a child process by `sigkill_leaves_nothing`: starts a cluster,
/// prints its directory and waits to be killed.
#[test]
#[ignore = "helper for sigkill_leaves_nothing"]
fn sigkill_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let c = small_cluster();
    println!("DIR={}", c.dir().display());
    thread::sleep(Duration::from_secs(120));
}

#[test]
fn sigkill_leaves_nothing() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut dir = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest prints "test sigkill_helper ... " on the same line.
        if let Some((_, d)) = line.split_once("DIR=") {
            dir = Some(PathBuf::from(d));
            break;
        }
    }
    let Some(dir) = dir else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("helper did not start a cluster");
    };
    assert!(!processes_in(&dir).is_empty());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let gone = eventually(WAIT, || processes_in(&dir).is_empty() && !dir.exists());
    assert!(
        gone,
        "after SIGKILL: processes {:?}, dir exists: {}",
        processes_in(&dir),
        dir.exists()
    );
}
