//! [`HealthMonitor`]: starts the check rounds and the heartbeat writer, and
//! hands out the published snapshot.
//!
//! A coordinator task runs one round every `check_interval` (read from the
//! live config each round, like every other `[health]` key), assembles the
//! next snapshot and stores it into the `ArcSwap`; it is the only writer,
//! so a plain `store` is race-free. When the node list or the connection
//! settings change on reload, the per-node check tasks are rebuilt (keeping
//! it simple) and nodes whose name and address are unchanged keep their
//! state; others start unchecked.
//!
//! Everything the monitor runs (check tasks, coordinator, heartbeat writer,
//! replay poller) runs on a runtime of its own, on its own thread
//! (`lagrouter-health`): a saturated proxy event loop must never make a
//! check late, since a late check is read as a slow node. The monitor also
//! starts the [`Timers`] thread the proxy's timeouts run on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use lagrouter_config::{Config, ConfigHandle, NodeConfig};
use tokio::sync::watch;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::assemble::assemble;
use crate::conn::ConnTarget;
use crate::lag::{PrimaryHistory, PrimarySample};
use crate::probe::{NodeProber, ProbeResult};
use crate::replay::ReplayWaiter;
use crate::round::run_round;
use crate::timers::Timers;
use crate::traffic::Traffic;
use crate::{HealthSnapshot, SharedSnapshot, heartbeat, telemetry};

/// The lag monitor. Cheap to clone; every clone sees the same snapshots.
#[derive(Clone, Debug)]
pub struct HealthMonitor {
    inner: Arc<Inner>,
    replay: ReplayWaiter,
}

#[derive(Debug)]
struct Inner {
    shared: SharedSnapshot,
    seq: watch::Sender<u64>,
    shutdown: CancellationToken,
    traffic: Traffic,
    /// The monitor's own runtime, on its thread (`None`: the caller's).
    runtime: Option<tokio::runtime::Handle>,
    /// Where timeouts run (the proxy's too).
    timers: Timers,
}

impl HealthMonitor {
    /// Spawns the per-node check tasks, the round coordinator and the
    /// heartbeat writer (all tokio tasks, stopped by `shutdown`) on the
    /// monitor's own thread and runtime, and waits for the first round, at
    /// most `check_timeout`, so the first snapshot is meaningful. If the
    /// round takes longer, the initial snapshot (the configured primary, no
    /// replica serving reads) stays until it ends. Fails only if the OS
    /// refuses the monitor's thread or the timer thread.
    pub async fn start(
        config: ConfigHandle,
        shutdown: CancellationToken,
    ) -> std::io::Result<HealthMonitor> {
        let cfg = config.load_full();
        let runtime = own_runtime(&shutdown)?;
        let timers = Timers::spawn()?;
        let mut monitor = HealthMonitor::idle_on(
            HealthSnapshot::initial(&cfg),
            shutdown.clone(),
            Some(runtime.clone()),
            timers.clone(),
        );
        {
            // Spawned onto the monitor's runtime.
            let _entered = runtime.enter();
            monitor.replay = ReplayWaiter::start(
                config.clone(),
                monitor.shared(),
                shutdown.clone(),
                timers.clone(),
            );
            tokio::spawn(coordinate(config.clone(), monitor.clone()));
            tokio::spawn(heartbeat::run(
                config,
                monitor.shared(),
                monitor.subscribe(),
                shutdown,
            ));
        }
        let mut rx = monitor.subscribe();
        let _ = timers
            .timeout(cfg.health.check_timeout, rx.wait_for(|seq| *seq >= 1))
            .await;
        Ok(monitor)
    }

    /// A monitor publishing `initial` and running nothing.
    #[cfg(test)]
    fn idle(initial: HealthSnapshot, shutdown: CancellationToken) -> HealthMonitor {
        HealthMonitor::idle_on(initial, shutdown, None, Timers::default())
    }

    fn idle_on(
        initial: HealthSnapshot,
        shutdown: CancellationToken,
        runtime: Option<tokio::runtime::Handle>,
        timers: Timers,
    ) -> HealthMonitor {
        let (seq, _) = watch::channel(initial.seq);
        let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(initial));
        HealthMonitor {
            replay: ReplayWaiter::idle(shared.clone(), shutdown.clone(), timers.clone()),
            inner: Arc::new(Inner {
                shared,
                seq,
                shutdown,
                traffic: Traffic::default(),
                runtime,
                timers,
            }),
        }
    }

    /// Runs `task` on the monitor's thread, away from the sessions' event
    /// loop (on the caller's runtime if the monitor has no thread): for
    /// background work whose connections log in. tokio-postgres derives
    /// a SCRAM key from the password at every connect, 4096 rounds of
    /// HMAC-SHA-256 by default, milliseconds during which its thread runs
    /// nothing else.
    pub fn spawn_background<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.inner.runtime {
            Some(rt) => rt.spawn(task),
            None => tokio::spawn(task),
        }
    }

    /// The timer thread's handle: the proxy's timeouts run there, so the
    /// sessions' runtime needs no timers of its own (see `timers`).
    pub fn timers(&self) -> Timers {
        self.inner.timers.clone()
    }

    /// Where the proxy reports its own traffic per node (see `traffic`).
    pub fn traffic(&self) -> Traffic {
        self.inner.traffic.clone()
    }

    /// The `ArcSwap` routing reads, lock-free.
    pub fn shared(&self) -> SharedSnapshot {
        self.inner.shared.clone()
    }

    /// Waits for replicas to replay an LSN (`lagrouter.wait_replicas`).
    pub fn replay_waiter(&self) -> ReplayWaiter {
        self.replay.clone()
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<HealthSnapshot> {
        self.inner.shared.load_full()
    }

    /// Resolves with the first snapshot whose primary LSN was sampled at or
    /// after `after` (so it is at or past every commit acknowledged before
    /// `after`), or `None` on timeout or shutdown. Checks are not hurried:
    /// expect up to one `check_interval` plus a round.
    pub async fn wait_primary_lsn_after(
        &self,
        after: Instant,
        timeout: Duration,
    ) -> Option<Arc<HealthSnapshot>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.subscribe();
        loop {
            // Mark the current seq seen before reading the snapshot, so a
            // store that lands in between still wakes `changed` below.
            rx.borrow_and_update();
            let snap = self.snapshot();
            if snap.primary_lsn.is_some() && snap.primary_lsn_sampled_at.is_some_and(|t| t >= after)
            {
                return Some(snap);
            }
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return None,
                r = self.inner.timers.timeout_at(deadline, rx.changed()) => {
                    if !matches!(r, Ok(Ok(()))) {
                        return None;
                    }
                }
            }
        }
    }

    /// The seq of the latest snapshot; changes with every round.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.seq.subscribe()
    }

    fn publish(&self, snap: HealthSnapshot) {
        let seq = snap.seq;
        self.inner.shared.store(Arc::new(snap));
        self.inner.seq.send_replace(seq);
    }
}

/// A current-thread runtime driven by a thread of its own until
/// `shutdown`; an error if the OS refuses the thread or the runtime.
/// Dropping the runtime then ends the monitor's tasks and closes their
/// connections.
fn own_runtime(shutdown: &CancellationToken) -> std::io::Result<tokio::runtime::Handle> {
    let stop = shutdown.clone();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    crate::timers::runtime_thread("lagrouter-health", builder, async move {
        stop.cancelled().await
    })
}

/// The running check tasks and what they were built for.
struct NodeSet {
    key: Vec<(NodeConfig, ConnTarget)>,
    probers: Vec<NodeProber>,
}

fn node_set_key(cfg: &Config) -> Vec<(NodeConfig, ConnTarget)> {
    cfg.nodes
        .iter()
        .map(|n| (n.clone(), ConnTarget::new(cfg, n)))
        .collect()
}

async fn coordinate(config: ConfigHandle, monitor: HealthMonitor) {
    let shutdown = monitor.inner.shutdown.clone();
    let mut set: Option<NodeSet> = None;
    let mut history = PrimaryHistory::default();
    loop {
        let cfg = config.load_full();
        let key = node_set_key(&cfg);
        let mut prev = monitor.snapshot();
        if set.as_ref().map(|s| &s.key) != Some(&key) {
            if let Some(old) = &set {
                tracing::info!(
                    "node list or connection settings changed; restarting health checks"
                );
                prev = Arc::new(realign(&prev, &old.key, &cfg));
            }
            let probers = key
                .iter()
                .map(|(n, t)| NodeProber::spawn(n.name.clone(), t.clone(), &shutdown))
                .collect();
            set = Some(NodeSet { key, probers });
        }
        let Some(nodes) = &set else { return };
        let started = tokio::time::Instant::now();
        let outcomes = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = run_round(&nodes.probers, &prev, &cfg, &monitor.inner.traffic) => o,
        };
        let results: Vec<ProbeResult> = outcomes.iter().map(|o| o.result.clone()).collect();
        let now = tokio::time::Instant::now().into_std();
        let assembled = assemble(
            &prev,
            &cfg.nodes,
            &results,
            &cfg.health,
            &cfg.safety,
            &history,
            now,
        );
        telemetry::record_round(&prev, &assembled, &outcomes);
        let snap = &assembled.snapshot;
        let sample = snap
            .primary_lsn
            .zip(snap.primary_lsn_sampled_at)
            .map(|(lsn, sent_at)| PrimarySample { lsn, sent_at });
        let primary = snap.primary_index().map(|i| snap.nodes[i].name.as_str());
        history.record(primary, sample);
        monitor.publish(assembled.snapshot);
        // A failed client connection to a node cuts the wait short (but
        // never below a tenth of the interval, so a flapping node cannot
        // make the monitor spin).
        let earliest = started + cfg.health.check_interval / 10;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sleep_until(started + cfg.health.check_interval) => {}
            _ = monitor.inner.traffic.urgent() => sleep_until(earliest).await,
        }
    }
}

/// `prev` rearranged for a new node list: a node keeps its health if its
/// name, host and port are unchanged; any other node starts unchecked.
fn realign(
    prev: &HealthSnapshot,
    old: &[(NodeConfig, ConnTarget)],
    cfg: &Config,
) -> HealthSnapshot {
    let mut next = HealthSnapshot::initial(cfg);
    next.seq = prev.seq;
    for (slot, n) in next.nodes.iter_mut().zip(&cfg.nodes) {
        let same = |o: &NodeConfig| o.name == n.name && o.host == n.host && o.port == n.port;
        let kept = old
            .iter()
            .position(|(o, _)| same(o))
            .and_then(|i| prev.nodes.get(i));
        if let Some(h) = kept {
            *slot = h.clone();
            slot.role = n.role;
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lsn, NodeState};

    fn config(nodes: &str) -> Config {
        Config::from_toml_str(&format!(
            "[[users]]\nname = \"app\"\npassword = \"app\"\n{nodes}"
        ))
        .unwrap()
    }

    const TWO: &str = "[[nodes]]\nname = \"p\"\nhost = \"127.0.0.1\"\nrole = \"primary\"\n\
                       [[nodes]]\nname = \"r\"\nhost = \"127.0.0.1\"\nport = 5433\nrole = \"replica\"\n";

    #[tokio::test]
    async fn background_work_runs_on_the_monitors_thread() {
        // Nodes on a port nothing listens on: the checks fail fast.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = config(&format!(
            "[[nodes]]\nname = \"p\"\nhost = \"127.0.0.1\"\nport = {port}\nrole = \"primary\"\n\
             [health]\ncheck_timeout = \"200ms\"\n"
        ));
        let stop = CancellationToken::new();
        let m = HealthMonitor::start(ConfigHandle::new(cfg), stop.clone())
            .await
            .expect("threads start");
        let thread = |h: tokio::task::JoinHandle<Option<String>>| async move { h.await.unwrap() };
        let here = std::thread::current().name().map(str::to_owned);
        let there =
            thread(m.spawn_background(async { std::thread::current().name().map(str::to_owned) }))
                .await;
        assert_eq!(there.as_deref(), Some("lagrouter-health"));
        assert_ne!(here, there);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn wait_primary_lsn_after_resolves_on_a_later_sample() {
        let cfg = config(TWO);
        let m = HealthMonitor::idle(HealthSnapshot::initial(&cfg), CancellationToken::new());
        let after = tokio::time::Instant::now().into_std();
        let waiter = tokio::spawn({
            let m = m.clone();
            async move {
                m.wait_primary_lsn_after(after, Duration::from_secs(5))
                    .await
            }
        });
        tokio::time::advance(Duration::from_millis(100)).await;
        // A snapshot sampled before `after` does not count.
        let mut early = HealthSnapshot::initial(&cfg);
        early.seq = 1;
        early.primary_lsn = Some(Lsn(10));
        early.primary_lsn_sampled_at = Some(after - Duration::from_millis(1));
        m.publish(early);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let mut later = HealthSnapshot::initial(&cfg);
        later.seq = 2;
        later.primary_lsn = Some(Lsn(20));
        later.primary_lsn_sampled_at = Some(after);
        m.publish(later);
        let got = waiter.await.unwrap().expect("resolves");
        assert_eq!(got.primary_lsn, Some(Lsn(20)));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_primary_lsn_after_times_out_and_stops_on_shutdown() {
        let cfg = config(TWO);
        let stop = CancellationToken::new();
        let m = HealthMonitor::idle(HealthSnapshot::initial(&cfg), stop.clone());
        let after = tokio::time::Instant::now().into_std();
        let t0 = tokio::time::Instant::now();
        assert!(
            m.wait_primary_lsn_after(after, Duration::from_secs(2))
                .await
                .is_none()
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        let waiter = tokio::spawn({
            let m = m.clone();
            async move {
                m.wait_primary_lsn_after(after, Duration::from_secs(3600))
                    .await
            }
        });
        tokio::time::advance(Duration::from_millis(10)).await;
        stop.cancel();
        assert!(waiter.await.unwrap().is_none());
    }

    #[test]
    fn realign_keeps_unchanged_nodes_by_name_and_address() {
        let old_cfg = config(TWO);
        let old = node_set_key(&old_cfg);
        let mut prev = HealthSnapshot::initial(&old_cfg);
        prev.seq = 7;
        prev.nodes[0].status.state = NodeState::Healthy;
        prev.nodes[1].status.state = NodeState::Lagging;
        // r moves to another port and a new node q is added in front.
        let new_cfg = config(
            "[[nodes]]\nname = \"q\"\nhost = \"127.0.0.1\"\nport = 5434\nrole = \"replica\"\n\
             [[nodes]]\nname = \"p\"\nhost = \"127.0.0.1\"\nrole = \"primary\"\n\
             [[nodes]]\nname = \"r\"\nhost = \"127.0.0.1\"\nport = 6000\nrole = \"replica\"\n",
        );
        let next = realign(&prev, &old, &new_cfg);
        assert_eq!(next.seq, 7);
        let states: Vec<_> = next
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.state()))
            .collect();
        let unchecked = NodeState::Recovering { good_checks: 0 };
        assert_eq!(
            states,
            [
                ("q", unchecked),
                ("p", NodeState::Healthy),
                ("r", unchecked)
            ]
        );
    }
}
