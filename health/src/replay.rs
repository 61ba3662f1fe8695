//! [`ReplayWaiter`]: "how many replicas have replayed LSN X", answered
//! within milliseconds, for `SELECT lagrouter.wait_replicas(n, ms)`.
//!
//! The check rounds run every `check_interval` (250 ms by default), too
//! slow to confirm a write, and hurrying them would also hurry the
//! re-admission hysteresis. So while anyone waits, one poller task asks
//! each following replica `pg_last_wal_replay_lsn()` every
//! [`POLL_INTERVAL`] over its own connection (never a client pool's) and
//! publishes the positions; waiters only watch them. One poll serves every
//! waiter, so the load on the replicas does not grow with the number of
//! waiters, and with no waiter there is no polling at all. Connections idle
//! for [`IDLE_CLOSE`] are closed.
//!
//! Which replicas count comes from the latest health snapshot: not the
//! write target, in recovery, answering, and on the write target's
//! timeline (a replica of another timeline may be past the LSN without
//! having the write).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lagrouter_config::ConfigHandle;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

use crate::conn::{ConnTarget, connect};
use crate::timers::Timers;
use crate::{HealthSnapshot, Lsn, NodeState, SharedSnapshot};

/// How often replicas are polled while someone waits.
pub const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// A node whose poll failed is not asked again for this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Poll connections unused this long are closed.
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// Replay positions by node name, as last polled.
type Positions = HashMap<String, Lsn>;

/// Waits for replicas to replay an LSN. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReplayWaiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    health: SharedSnapshot,
    positions: watch::Sender<Positions>,
    waiters: AtomicUsize,
    wake: Notify,
    shutdown: CancellationToken,
    /// Where a waiter's limit runs: waiters are sessions, whose runtime
    /// has no timers of its own.
    timers: Timers,
}

/// Decrements the waiter count however the wait ends.
struct Waiting<'a>(&'a Inner);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("lagrouter_wait_replicas_waiting").decrement(1.0);
    }
}

impl ReplayWaiter {
    /// Starts the poller task (idle until someone waits; stops on `shutdown`).
    pub fn start(
        config: ConfigHandle,
        health: SharedSnapshot,
        shutdown: CancellationToken,
        timers: Timers,
    ) -> ReplayWaiter {
        let w = ReplayWaiter::idle(health, shutdown, timers);
        tokio::spawn(poll(config, w.inner.clone()));
        w
    }

    /// A waiter with no poller: it only sees the health snapshots.
    pub fn idle(
        health: SharedSnapshot,
        shutdown: CancellationToken,
        timers: Timers,
    ) -> ReplayWaiter {
        ReplayWaiter {
            inner: Arc::new(Inner {
                health,
                positions: watch::channel(Positions::new()).0,
                waiters: AtomicUsize::new(0),
                wake: Notify::new(),
                shutdown,
                timers,
            }),
        }
    }

    /// Clients waiting now.
    pub fn waiting(&self) -> usize {
        self.inner.waiters.load(Ordering::Relaxed)
    }

    /// Replicas that have replayed `lsn` now (every following replica when
    /// `lsn` is `None`).
    pub fn count(&self, lsn: Option<Lsn>) -> usize {
        count(
            &self.inner.health.load(),
            &self.inner.positions.borrow(),
            lsn,
        )
    }

    /// Waits until at least `n` replicas have replayed `lsn`, or `limit`
    /// passes (or shutdown); returns how many had, which may be fewer.
    pub async fn wait(&self, lsn: Option<Lsn>, n: usize, limit: Duration) -> usize {
        self.wait_until(limit, || self.count(lsn) >= n).await;
        self.count(lsn)
    }

    /// Waits until the following replica `node` has replayed `lsn`, or
    /// `limit` passes (or shutdown); whether it has. This is a session's
    /// read-your-writes catch-up: it shares the one poller with
    /// `wait_replicas`, so many sessions catching up cost the replica one
    /// query per [`POLL_INTERVAL`], not one each.
    pub async fn wait_node(&self, node: &str, lsn: Lsn, limit: Duration) -> bool {
        self.wait_until(limit, || self.has_replayed(node, lsn))
            .await
    }

    /// Whether `node`, a following replica, has replayed `lsn` now.
    fn has_replayed(&self, node: &str, lsn: Lsn) -> bool {
        let snap = self.inner.health.load();
        let polled = self.inner.positions.borrow();
        following(&snap)
            .any(|i| snap.nodes[i].name == node && position(&snap, &polled, i) >= Some(lsn))
    }

    /// Waits until `done()` holds, re-asking it whenever a polled position
    /// moves, for at most `limit` (or until shutdown); whether it held.
    async fn wait_until(&self, limit: Duration, done: impl Fn() -> bool) -> bool {
        if done() || limit.is_zero() {
            return done();
        }
        let deadline = Instant::now() + limit;
        let inner = &*self.inner;
        inner.waiters.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("lagrouter_wait_replicas_waiting").increment(1.0);
        let _waiting = Waiting(inner);
        inner.wake.notify_one();
        let mut rx = inner.positions.subscribe();
        loop {
            rx.borrow_and_update();
            if done() {
                return true;
            }
            tokio::select! {
                _ = inner.shutdown.cancelled() => return done(),
                r = inner.timers.timeout_at(deadline, rx.changed()) => {
                    if !matches!(r, Ok(Ok(()))) {
                        return done();
                    }
                }
            }
        }
    }
}

/// Indices of the replicas whose replay counts: see the module docs.
fn following(snap: &HealthSnapshot) -> impl Iterator<Item = usize> + '_ {
    let target = snap.primary_index();
    let tl = target.and_then(|t| snap.nodes[t].timeline);
    snap.nodes.iter().enumerate().filter_map(move |(i, n)| {
        let same_tl = match (tl, n.timeline) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        (Some(i) != target
            && n.in_recovery == Some(true)
            && n.state() != NodeState::Unreachable
            && same_tl)
            .then_some(i)
    })
}

/// How many following replicas have replayed `lsn`, by the snapshot or
/// the later polled positions (replay only moves forward).
fn count(snap: &HealthSnapshot, polled: &Positions, lsn: Option<Lsn>) -> usize {
    following(snap)
        .filter(|&i| lsn.is_none_or(|want| position(snap, polled, i) >= Some(want)))
        .count()
}

/// Node `i`'s replay position: the snapshot's or the later polled one
/// (replay only moves forward).
fn position(snap: &HealthSnapshot, polled: &Positions, i: usize) -> Option<Lsn> {
    let n = &snap.nodes[i];
    n.replay_lsn.max(polled.get(&n.name).copied())
}

async fn poll(config: ConfigHandle, inner: Arc<Inner>) {
    let mut clients: HashMap<String, (ConnTarget, Arc<Client>)> = HashMap::new();
    // A node whose poll failed is left alone for a while: the health
    // rounds will mark it unreachable; no reconnect storm every poll.
    let mut failed: HashMap<String, Instant> = HashMap::new();
    let mut last_busy = Instant::now();
    loop {
        if inner.waiters.load(Ordering::Relaxed) == 0 {
            let idle_left = (last_busy + IDLE_CLOSE).saturating_duration_since(Instant::now());
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = inner.wake.notified() => {}
                _ = sleep(idle_left), if !clients.is_empty() => {
                    clients.clear();
                    continue;
                }
            }
        }
        last_busy = Instant::now();
        let cfg = config.load_full();
        let snap = inner.health.load_full();
        let now = Instant::now();
        failed.retain(|_, until| *until > now);
        let asks: Vec<_> = following(&snap)
            .filter_map(|i| {
                let name = &snap.nodes[i].name;
                if failed.contains_key(name) {
                    return None;
                }
                let node = cfg.nodes.iter().find(|n| &n.name == name)?;
                Some((name.clone(), ConnTarget::new(&cfg, node)))
            })
            .collect();
        clients.retain(|name, (t, c)| {
            !c.is_closed() && asks.iter().any(|a| &a.0 == name && &a.1 == t)
        });
        let limit = cfg.health.check_timeout;
        let mut polls = tokio::task::JoinSet::new();
        for (name, target) in asks {
            let existing = clients.get(&name).map(|(_, c)| c.clone());
            polls.spawn(async move {
                let r = timeout(limit, async {
                    let client = match existing {
                        Some(c) => c,
                        None => Arc::new(connect(&target).await.ok()?),
                    };
                    let lsn = replay_lsn(&client).await;
                    Some((client, lsn))
                })
                .await;
                (name, target, r.ok().flatten())
            });
        }
        let answers = polls.join_all().await;
        let mut got = Positions::new();
        for (name, target, r) in answers {
            match r {
                Some((client, lsn)) => {
                    if let Some(lsn) = lsn {
                        got.insert(name.clone(), lsn);
                    }
                    clients.insert(name, (target, client));
                }
                None => {
                    clients.remove(&name);
                    failed.insert(name, Instant::now() + RETRY_AFTER);
                }
            }
        }
        // Wake the waiters only when a position moved.
        inner.positions.send_if_modified(|p| {
            let mut moved = false;
            for (name, lsn) in got {
                let e = p.entry(name).or_insert(Lsn(0));
                if lsn > *e {
                    *e = lsn;
                    moved = true;
                }
            }
            moved
        });
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = sleep(POLL_INTERVAL) => {}
        }
    }
}

async fn replay_lsn(client: &Client) -> Option<Lsn> {
    let msgs = client
        .simple_query("SELECT pg_last_wal_replay_lsn()::text")
        .await
        .ok()?;
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arc_swap::ArcSwap;
    use lagrouter_config::Config;

    fn snapshot() -> HealthSnapshot {
        let cfg = Config::from_toml_str(
            "[[users]]\nname = \"app\"\npassword = \"app\"\n\
             [[nodes]]\nname = \"p\"\nhost = \"h\"\nrole = \"primary\"\n\
             [[nodes]]\nname = \"r1\"\nhost = \"h\"\nrole = \"replica\"\n\
             [[nodes]]\nname = \"r2\"\nhost = \"h\"\nrole = \"replica\"\n",
        )
        .unwrap();
        let mut s = HealthSnapshot::initial(&cfg);
        for (i, n) in s.nodes.iter_mut().enumerate() {
            n.status.state = NodeState::Healthy;
            n.in_recovery = Some(i != 0);
            n.timeline = Some(1);
            n.replay_lsn = Some(Lsn(100));
        }
        s
    }

    #[test]
    fn counts_following_replicas_that_replayed() {
        let mut s = snapshot();
        let polled = Positions::from([("r2".to_string(), Lsn(300))]);
        assert_eq!(count(&s, &polled, None), 2);
        assert_eq!(count(&s, &polled, Some(Lsn(100))), 2);
        assert_eq!(
            count(&s, &polled, Some(Lsn(200))),
            1,
            "r2 by its polled position"
        );
        s.nodes[2].timeline = Some(2);
        assert_eq!(
            count(&s, &polled, Some(Lsn(200))),
            0,
            "another timeline never counts"
        );
        s.nodes[1].status.state = NodeState::Unreachable;
        assert_eq!(count(&s, &polled, None), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_returns_when_a_poll_shows_the_lsn_or_at_the_timeout() {
        let w = ReplayWaiter::idle(
            Arc::new(ArcSwap::from_pointee(snapshot())),
            CancellationToken::new(),
            Timers::default(),
        );
        assert_eq!(w.wait(Some(Lsn(100)), 2, Duration::from_secs(1)).await, 2);
        let t0 = Instant::now();
        assert_eq!(w.wait(Some(Lsn(150)), 1, Duration::from_secs(2)).await, 0);
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.wait(Some(Lsn(150)), 1, Duration::from_secs(60)).await }
        });
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(w.waiting(), 1);
        w.inner.positions.send_modify(|p| {
            p.insert("r1".into(), Lsn(150));
        });
        assert_eq!(waiter.await.unwrap(), 1);
        assert_eq!(w.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_node_watches_that_replica_only() {
        let mut snap = snapshot();
        snap.nodes[0].replay_lsn = Some(Lsn(900));
        let w = ReplayWaiter::idle(
            Arc::new(ArcSwap::from_pointee(snap)),
            CancellationToken::new(),
            Timers::default(),
        );
        assert!(w.wait_node("r1", Lsn(100), Duration::ZERO).await);
        assert!(
            !w.has_replayed("p", Lsn(100)),
            "the write target is no replica to catch up on"
        );
        assert!(!w.has_replayed("gone", Lsn(1)));
        let t0 = Instant::now();
        assert!(
            !w.wait_node("r1", Lsn(150), Duration::from_millis(300))
                .await
        );
        assert_eq!(t0.elapsed(), Duration::from_millis(300));
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.wait_node("r1", Lsn(150), Duration::from_secs(60)).await }
        });
        tokio::time::advance(Duration::from_millis(5)).await;
        w.inner.positions.send_modify(|p| {
            p.insert("r2".into(), Lsn(150));
        });
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(!waiter.is_finished(), "r2's replay does not answer for r1");
        assert_eq!(w.waiting(), 1);
        w.inner.positions.send_modify(|p| {
            p.insert("r1".into(), Lsn(150));
        });
        assert!(waiter.await.unwrap());
        assert_eq!(w.waiting(), 0);
    }
}
