//! pgbench through lagrouter (pool size 8, 16 clients, 2 threads, 5 s):
//! select-only in simple, extended and prepared mode, and the default
//! TPC-B-like script in prepared mode, and in simple mode on two worker
//! loops (server connections move between the loops). Each run must exit
//! 0 with no failed transactions, no aborted client and a positive tps; a
//! hang is killed after 60 s and fails the test.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use support::process::{Output, pgbench_ok, run};
use support::*;
use tokio::process::Command;
use tokio::sync::Mutex;

/// One pgbench at a time: they share the 2 cores and the pgbench tables.
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn init_once() {
    static INIT: OnceLock<()> = OnceLock::new();
    blocking(|c| {
        INIT.get_or_init(|| c.pgbench_init(10).expect("pgbench -i -s 10"));
    })
    .await;
}

async fn pgbench(mode: &str, select_only: bool) -> Output {
    pgbench_on(mode, select_only, 1).await
}

async fn pgbench_on(mode: &str, select_only: bool, workers: usize) -> Output {
    init_once().await;
    let proxy = ProxyBuilder::new()
        .pool_size(8)
        .server(&format!("workers = {workers}"))
        .start()
        .await;
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-c", "16", "-j", "2", "-T", "5", "-M", mode])
        .args(["-h", "127.0.0.1", "-p", &proxy.port().to_string()])
        .args(["-U", "app", "app"])
        .env("PGPASSWORD", "app")
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10");
    if select_only {
        cmd.arg("-S");
    }
    let out = run(cmd, None, Duration::from_secs(60)).await;
    drop(proxy);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_only_simple() {
    let _serial = SERIAL.lock().await;
    pgbench_ok(&pgbench("simple", true).await, "-S -M simple");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_only_extended() {
    let _serial = SERIAL.lock().await;
    pgbench_ok(&pgbench("extended", true).await, "-S -M extended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_only_prepared() {
    let _serial = SERIAL.lock().await;
    pgbench_ok(&pgbench("prepared", true).await, "-S -M prepared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpcb_like_prepared() {
    let _serial = SERIAL.lock().await;
    pgbench_ok(&pgbench("prepared", false).await, "TPC-B-like -M prepared");
}

/// Two worker loops: a session that takes an idle connection of the other
/// loop moves its socket over, while writes wait for their commit LSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpcb_like_simple_on_two_worker_loops() {
    let _serial = SERIAL.lock().await;
    pgbench_ok(
        &pgbench_on("simple", false, 2).await,
        "TPC-B-like -M simple, 2 workers",
    );
}
