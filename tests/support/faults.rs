//! The fault-injection kit: a lagrouter with default settings whose health
//! the test can follow, a node's processes stopped and continued (resumed
//! even when the test fails), a bounded read load that records every read,
//! and a log of every published health snapshot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lagrouter::pgcluster::Cluster;
use lagrouter_config::Config;
use lagrouter_health::{Cause, HealthMonitor, NodeState};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ProxyBuilder, blocking, describe, sqlstate, try_connect_str};

/// A lagrouter with the defaults (breaker at 20%, 250ms checks, 1s
/// timeout) in front of `c`, once every node is healthy.
pub struct Lagrouter {
    pub running: lagrouter::app::Running,
    pub ports: Vec<u16>,
}

impl Drop for Lagrouter {
    fn drop(&mut self) {
        self.running.shutdown.cancel();
    }
}

impl Lagrouter {
    /// Starts it from `builder`'s TOML (plus `[health]` lines `health`).
    pub async fn start(c: &Cluster, builder: ProxyBuilder, health: &str) -> Lagrouter {
        super::init_logs();
        let text = format!("{}{health}", builder.toml(c));
        let config = Config::from_toml_str(&text)
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"));
        let running = tokio::time::timeout(
            Duration::from_secs(30),
            super::start_lagrouter(config, CancellationToken::new()),
        )
        .await
        .expect("proxy start timed out")
        .expect("proxy starts");
        let lr = Lagrouter {
            running,
            ports: (0..c.node_count()).map(|i| c.port(i)).collect(),
        };
        lr.wait_healthy(Duration::from_secs(30), |_| true).await;
        lr
    }

    pub fn health(&self) -> &HealthMonitor {
        &self.running.health
    }

    pub fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password=app dbname=app connect_timeout=10",
            self.running.addr.port()
        )
    }

    /// Waits until every node `which` selects is `Healthy`.
    pub async fn wait_healthy(&self, within: Duration, which: impl Fn(usize) -> bool) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            let snap = self.health().snapshot();
            let ok = snap
                .nodes
                .iter()
                .enumerate()
                .all(|(i, n)| !which(i) || n.state() == NodeState::Healthy);
            if ok {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "nodes not healthy after {within:?}: {snap:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A node's processes stopped with SIGSTOP, postmaster first; continued
/// with SIGCONT by [`Frozen::thaw`] or, if the test fails first, on drop.
pub struct Frozen {
    pids: Vec<i32>,
    /// When the last process was stopped.
    pub at: Instant,
}

impl Frozen {
    /// Every process of node `i` of the shared cluster.
    pub async fn node(i: usize) -> Frozen {
        let pids = blocking(move |c| c.pids(i)).await.expect("node pids");
        Frozen::pids(pids)
    }

    /// The WAL senders of node `i` of `c` (the primary): nothing it
    /// commits from now on reaches a replica, while it keeps answering.
    pub fn wal_senders(c: &Cluster, i: usize) -> Frozen {
        let pids = c.pids(i).expect("node pids");
        let senders: Vec<i32> = pids
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains("walsender"))
            })
            .collect();
        assert!(!senders.is_empty(), "node {i} has WAL senders");
        Frozen::pids(senders)
    }

    /// Kills the stopped processes (SIGKILL): what they had not sent is
    /// never sent.
    pub fn kill(mut self) {
        for pid in std::mem::take(&mut self.pids) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// These processes, in this order.
    pub fn pids(pids: Vec<i32>) -> Frozen {
        for &pid in &pids {
            // SAFETY: kill(2) with a PID we just read; a process that has
            // exited in between makes it fail harmlessly.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        Frozen {
            pids,
            at: Instant::now(),
        }
    }

    pub fn thaw(mut self) -> Instant {
        self.resume();
        Instant::now()
    }

    fn resume(&mut self) {
        for pid in std::mem::take(&mut self.pids) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.resume();
    }
}

/// One read of the load: when it ran and what came of it.
#[derive(Debug, Clone)]
pub struct Read {
    pub reader: usize,
    /// Which connection of the reader (it reconnects after an error).
    pub connection: usize,
    pub started: Instant,
    pub ended: Instant,
    /// The node that served it, or the SQLSTATE and message.
    pub outcome: Result<usize, (String, String)>,
}

impl Read {
    pub fn took(&self) -> Duration {
        self.ended - self.started
    }
}

/// `n` sessions, each reading `SELECT inet_server_port()` (a prepared
/// statement) in a loop until stopped, at most `limit` long. A reader whose
/// read fails records it, reconnects and goes on.
pub struct ReadLoad {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<Read>>>,
}

impl ReadLoad {
    pub async fn start(conn_str: String, ports: Vec<u16>, n: usize, limit: Duration) -> ReadLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + limit;
        let mut tasks = Vec::new();
        for reader in 0..n {
            let (stop, conn_str, ports) = (stop.clone(), conn_str.clone(), ports.clone());
            tasks.push(tokio::spawn(async move {
                read_loop(reader, &conn_str, &ports, &stop, deadline).await
            }));
        }
        ReadLoad { stop, tasks }
    }

    /// Stops the readers and returns every read, in start order.
    pub async fn finish(self) -> Vec<Read> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("reader panicked"));
        }
        all.sort_by_key(|r| r.started);
        all
    }
}

async fn read_loop(
    reader: usize,
    conn_str: &str,
    ports: &[u16],
    stop: &AtomicBool,
    deadline: Instant,
) -> Vec<Read> {
    let mut reads = Vec::new();
    let mut connection = 0;
    'connect: while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        connection += 1;
        let conn = match try_connect_str(conn_str).await {
            Ok(c) => c,
            Err(e) => panic!("reader {reader} cannot connect: {}", describe(&e)),
        };
        let st = match conn.prepare("SELECT inet_server_port()").await {
            Ok(s) => s,
            Err(e) => panic!("reader {reader} cannot prepare: {}", describe(&e)),
        };
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let started = Instant::now();
            let left = deadline.saturating_duration_since(started) + Duration::from_secs(15);
            let r = tokio::time::timeout(left, conn.query_one(&st, &[])).await;
            let ended = Instant::now();
            let outcome = match r {
                Ok(Ok(row)) => {
                    let port: i32 = row.get(0);
                    Ok(ports
                        .iter()
                        .position(|p| i32::from(*p) == port)
                        .expect("a cluster node"))
                }
                Ok(Err(e)) => Err((sqlstate(&e).unwrap_or_default(), describe(&e))),
                Err(_) => Err(("hang".into(), format!("no answer within {left:?}"))),
            };
            let failed = outcome.is_err();
            reads.push(Read {
                reader,
                connection,
                started,
                ended,
                outcome,
            });
            if failed {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue 'connect;
            }
        }
    }
    reads
}

/// One published health snapshot, reduced to what fault tests check.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub states: Vec<NodeState>,
    pub causes: Vec<Option<Cause>>,
    /// Missed checks in a row, per node.
    pub missed: Vec<u32>,
}

/// Every snapshot published while it runs.
pub struct StateLog {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl StateLog {
    pub fn start(health: &HealthMonitor) -> StateLog {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = CancellationToken::new();
        let mut rx = health.subscribe();
        let (h, log, s) = (health.clone(), seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            loop {
                let snap = h.snapshot();
                log.lock().unwrap().push(Seen {
                    at: Instant::now(),
                    states: snap.nodes.iter().map(|n| n.state()).collect(),
                    causes: snap.nodes.iter().map(|n| n.cause).collect(),
                    missed: snap.nodes.iter().map(|n| n.status.missed).collect(),
                });
                tokio::select! {
                    _ = s.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        });
        StateLog { seen, stop, task }
    }

    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The first time node `i` was seen in a state `pred` accepts.
    pub fn first(&self, i: usize, pred: impl Fn(NodeState) -> bool) -> Option<Seen> {
        self.snapshot().into_iter().find(|s| pred(s.states[i]))
    }

    /// How many times node `i` left `Healthy`, with the causes.
    pub fn demotions(&self, i: usize) -> Vec<(Instant, NodeState, Option<Cause>)> {
        let mut out = Vec::new();
        let mut was_healthy = true;
        for s in self.snapshot() {
            let healthy = s.states[i] == NodeState::Healthy;
            if was_healthy && !healthy {
                out.push((s.at, s.states[i], s.causes[i]));
            }
            was_healthy = healthy;
        }
        out
    }

    pub async fn finish(self) -> Vec<Seen> {
        self.stop.cancel();
        let _ = self.task.await;
        Arc::try_unwrap(self.seen)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|a| a.lock().unwrap().clone())
    }
}
