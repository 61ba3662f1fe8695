//! `lagrouter demo`: lagrouter at work on a real cluster, from one command.
//!
//! It starts a PostgreSQL primary and two streaming replicas from the local
//! binaries in a temporary directory, starts lagrouter in front of them
//! in-process, and runs a mixed workload through it that checks its own
//! reads. Half-way through, replica1 stops replaying WAL and then resumes;
//! the live view shows it demoted and re-admitted while reads keep seeing
//! their own writes. At the end (or on Ctrl-C) it prints a summary and a
//! verdict, stops everything and removes the directory (`--keep` keeps the
//! data directory and logs; the servers are stopped either way, because
//! the cluster harness never lets them outlive this process).
//!
//! Layout:
//! - `setup`: ports and the configuration lagrouter runs with.
//! - `workload`: the client sessions and their read-your-writes checker.
//! - `scenario`: pausing and resuming replica1's replay on schedule.
//! - `timeline`: events and worst lag seen in the health snapshots.
//! - `view`: the live view.
//! - `summary`: the final table and the verdict.

mod scenario;
mod setup;
mod summary;
mod timeline;
mod view;
mod workload;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lagrouter_health::NodeState;
use tokio_util::sync::CancellationToken;

use crate::app::Running;
use crate::pgcluster::{Cluster, ClusterOptions};
use scenario::{PAUSED_NODE, Plan};
use timeline::Timeline;
use view::{Frame, LiveView};
use workload::Workload;

/// Sessions that write and read back, and sessions that only read.
const WRITERS: usize = 4;
const READERS: usize = 4;
/// Redraw interval of the live view.
const TICK: Duration = Duration::from_millis(500);
/// Interval of "still creating" notes while the cluster starts.
const CREATING_NOTE: Duration = Duration::from_secs(5);
/// Shortest run that leaves time for a demotion and a re-admission.
const MIN_DURATION: Duration = Duration::from_secs(10);
/// How long the replicas may take to be admitted before the workload starts.
const ADMIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Extra time after the planned end for the paused replica to be re-admitted.
const READMIT_GRACE: Duration = Duration::from_secs(10);
/// Bound on stopping the sessions and the proxy.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit status after Ctrl-C (128 + SIGINT), as shells expect.
const INTERRUPTED: u8 = 130;

/// What `lagrouter demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Length of the workload (cluster creation not included).
    pub duration: Duration,
    /// Keep the data directory and logs afterwards.
    pub keep: bool,
}

/// Parses `--duration`: `60s`, `2m`, `1.5m`, `90` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => lagrouter_routing::parse_duration(s)
            .ok_or_else(|| format!("`{s}` is not a duration (try 60s, 2m or 90)"))?,
    };
    if d < MIN_DURATION {
        return Err(format!(
            "the demo needs at least {}s to show a demotion and a re-admission",
            MIN_DURATION.as_secs()
        ));
    }
    Ok(d)
}

/// Runs the demo; the exit status is the verdict (0: passed, 1: failed or
/// could not start, 130: stopped by Ctrl-C).
pub async fn run(opts: DemoOptions) -> ExitCode {
    let interrupted = CancellationToken::new();
    let redrawing = Arc::new(AtomicBool::new(false));
    tokio::spawn(watch_ctrl_c(interrupted.clone(), redrawing.clone()));
    say(&format!(
        "lagrouter demo: a primary, two streaming replicas and lagrouter in front, for {}s.\n\
         creating the PostgreSQL cluster (initdb, two base backups)…",
        opts.duration.as_secs()
    ));
    let started = Instant::now();
    let cluster_opts = ClusterOptions {
        keep: opts.keep,
        ..ClusterOptions::default()
    };
    // Not cancellable half-way; on Ctrl-C we finish starting, then clean up.
    let creating = tokio::task::spawn_blocking(move || Cluster::start(cluster_opts));
    let cluster = match still_creating(creating, started).await {
        Ok(Ok(c)) => Arc::new(c),
        Ok(Err(e)) => {
            eprintln!("lagrouter demo: cannot start the cluster: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("lagrouter demo: cluster start failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    say(&format!(
        "cluster ready in {:.1}s in {}",
        started.elapsed().as_secs_f64(),
        cluster.dir().display()
    ));
    if interrupted.is_cancelled() {
        return finish(cluster, opts.keep, ExitCode::from(INTERRUPTED)).await;
    }
    let log = cluster.dir().join("log").join("lagrouter.log");
    log_to(&log);
    let verdict = match setup::start_proxy(&cluster).await {
        Ok((running, metrics)) => {
            say(&setup::ports_text(&cluster, &running, metrics, &log));
            let verdict = demo(&cluster, &running, &opts, &interrupted, &redrawing).await;
            let _ = tokio::time::timeout(STOP_TIMEOUT, running.stop()).await;
            verdict
        }
        Err(e) => {
            eprintln!("lagrouter demo: {e}");
            return finish(cluster, opts.keep, ExitCode::FAILURE).await;
        }
    };
    let code = match verdict {
        // A violation fails the run even when it was cut short.
        Some(o) if o.violations > 0 => ExitCode::FAILURE,
        _ if interrupted.is_cancelled() => ExitCode::from(INTERRUPTED),
        Some(o) if o.passed => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    };
    finish(cluster, opts.keep, code).await
}

/// The workload, the script and the live view; prints the summary and
/// returns the verdict (`None` when the workload could not start).
async fn demo(
    cluster: &Arc<Cluster>,
    running: &Running,
    opts: &DemoOptions,
    interrupted: &CancellationToken,
    redrawing: &AtomicBool,
) -> Option<summary::Outcome> {
    let conn_str = format!(
        "host={} port={} user={} password={} dbname={} application_name=lagrouter-demo",
        running.addr.ip(),
        running.addr.port(),
        cluster.app_user(),
        cluster.app_password(),
        cluster.database()
    );
    if let Err(e) = prepare(cluster, running, &conn_str).await {
        eprintln!("lagrouter demo: {e}");
        return None;
    }
    let plan = Plan::for_duration(opts.duration);
    let paused = cluster.node_name(PAUSED_NODE).to_owned();
    say(&format!(
        "workload: {WRITERS} sessions insert a row and read it back at once, {READERS} only read.\n\
         at {}s {paused}'s replay pauses, at {}s it resumes. Ctrl-C stops early and cleans up.\n",
        plan.pause_at.as_secs(),
        plan.resume_at.as_secs()
    ));

    let timeline = Timeline::new(Instant::now());
    let stop = interrupted.child_token();
    tokio::spawn(timeline.clone().follow(
        running.health.clone(),
        running.shared.clone(),
        stop.clone(),
    ));
    let ports = (0..cluster.node_count()).map(|i| cluster.port(i)).collect();
    let workload = Workload::start(&conn_str, ports, WRITERS, READERS, &stop);
    let stats = workload.stats.clone();
    tokio::spawn(scenario::run(
        cluster.clone(),
        conn_str.clone(),
        plan,
        timeline.clone(),
        stop.clone(),
    ));

    let tty = std::io::stdout().is_terminal();
    let mut view = LiveView::new(tty);
    redrawing.store(tty, Ordering::Relaxed);
    let draw = |view: &mut LiveView, phase: &str, force: bool| {
        let snapshot = running.health.snapshot();
        let breaker = running.shared.router.breaker_status(Instant::now());
        let events = timeline.events();
        view.draw(
            &Frame {
                elapsed: timeline.elapsed(),
                total: opts.duration,
                phase,
                snapshot: &snapshot,
                breaker: &breaker,
                stats: &stats,
                events: &events,
            },
            force,
        );
    };
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = interrupted.cancelled() => break,
            _ = tick.tick() => {}
        }
        let elapsed = timeline.elapsed();
        let waiting = elapsed >= opts.duration;
        if waiting && (readmitted(running, &timeline) || elapsed >= opts.duration + READMIT_GRACE) {
            break;
        }
        let phase = if waiting {
            format!("waiting for {paused}")
        } else {
            "running".to_owned()
        };
        draw(&mut view, &phase, false);
    }
    stop.cancel();
    let _ = tokio::time::timeout(STOP_TIMEOUT, workload.join()).await;
    redrawing.store(false, Ordering::Relaxed);
    let phase = if interrupted.is_cancelled() {
        "stopped by Ctrl-C"
    } else {
        "done"
    };
    draw(&mut view, phase, true);

    let breaker = running.shared.router.breaker_status(Instant::now());
    let outcome = summary::summarize(&summary::Report {
        ran: timeline.elapsed(),
        total: opts.duration,
        interrupted: interrupted.is_cancelled(),
        sessions: WRITERS + READERS,
        stats: &stats,
        timeline: &timeline,
        breaker: &breaker,
        paused: &paused,
    });
    say(&outcome.text);
    Some(outcome)
}

/// Waits for the cluster, saying every few seconds that it is still coming:
/// on a busy machine initdb and the base backups can take a while.
async fn still_creating<T>(
    mut creating: tokio::task::JoinHandle<T>,
    started: Instant,
) -> Result<T, tokio::task::JoinError> {
    let mut every =
        tokio::time::interval_at(tokio::time::Instant::now() + CREATING_NOTE, CREATING_NOTE);
    loop {
        tokio::select! {
            done = &mut creating => return done,
            _ = every.tick() => say(&format!(
                "  … still creating ({}s)",
                started.elapsed().as_secs()
            )),
        }
    }
}

/// Whether the paused replica has been demoted and serves reads again (or
/// was never demoted, when the script did not get that far).
fn readmitted(running: &Running, timeline: &Timeline) -> bool {
    let serving = matches!(
        running
            .health
            .snapshot()
            .nodes
            .get(PAUSED_NODE)
            .map(|n| n.state()),
        Some(NodeState::Healthy)
    );
    serving || timeline.demotions().is_empty()
}

/// Creates the tables through lagrouter, then waits until every replica has
/// replayed them and serves reads, so the first reads find the tables.
async fn prepare(cluster: &Arc<Cluster>, running: &Running, conn_str: &str) -> Result<(), String> {
    let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect through lagrouter: {e}"))?;
    tokio::spawn(connection);
    client
        .batch_execute(workload::SCHEMA)
        .await
        .map_err(|e| format!("cannot create the demo tables: {e}"))?;
    drop(client);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.wait_caught_up(ADMIT_TIMEOUT))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + ADMIT_TIMEOUT;
    while !running
        .health
        .snapshot()
        .nodes
        .iter()
        .all(|n| n.state() == NodeState::Healthy)
    {
        if Instant::now() > deadline {
            return Err("the replicas were not admitted within 20s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Stops the servers and removes the directory (unless `keep`), off the
/// runtime because stopping PostgreSQL blocks; returns `code`.
async fn finish(cluster: Arc<Cluster>, keep: bool, code: ExitCode) -> ExitCode {
    let dir = cluster.dir().to_path_buf();
    say("stopping PostgreSQL…");
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    if keep {
        say(&format!(
            "stopped; data and logs kept in {} (servers are not left running)",
            dir.display()
        ));
    } else if dir.exists() {
        say(&format!("stopped; could not remove {}", dir.display()));
    } else {
        say(&format!("stopped; removed {}", dir.display()));
    }
    code
}

/// First Ctrl-C: stop gracefully. Second: leave at once; the cluster's
/// janitor still stops the servers and removes the directory. While the
/// block is redrawn in place its last frame says it instead: a line printed
/// under it would shift the redraw.
async fn watch_ctrl_c(interrupted: CancellationToken, redrawing: Arc<AtomicBool>) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    if !redrawing.load(Ordering::Relaxed) {
        say("\nCtrl-C: stopping (again to quit at once)…");
    }
    interrupted.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(i32::from(INTERRUPTED));
    }
}

/// Prints and flushes, so progress shows even when stdout is a pipe.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Sends lagrouter's own logs to a file in the demo directory: on the
/// terminal they would tear the live view apart.
fn log_to(path: &Path) {
    let Ok(file) = std::fs::File::create(path) else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}
