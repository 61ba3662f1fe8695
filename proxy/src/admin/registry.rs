//! What the rest of the proxy records for the admin console: the connected
//! clients (`SHOW CLIENTS`) and routing counters per node and per reason
//! (`SHOW NODES`, `SHOW STATS`).
//!
//! Sessions pay atomics per transaction, never a global lock: the client
//! map is locked only when a session starts or ends, and the counter maps
//! are copy-on-write (`ArcSwap`), written only the first time a node name
//! or reason is seen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use lagrouter_routing::Reason;

/// One connected client, as `SHOW CLIENTS` shows it.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub user: String,
    pub database: Arc<str>,
    pub peer: Option<SocketAddr>,
    pub since: SystemTime,
    /// 0 when no server connection is attached, else node index + 1 (one
    /// atomic instead of a lock, written at attach and release).
    attached: AtomicUsize,
    /// Transactions routed for this client.
    pub transactions: AtomicU64,
    /// The session's waker, woken by [`ClientRegistry::stop_all`],
    /// [`ClientRegistry::abandon_node`] and
    /// [`ClientRegistry::release_idle_buffers`] after they set their flag.
    /// Woken by reference and never taken: a wait whose waker is the one
    /// already here registers nothing ([`ClientInfo::watch`]).
    session_waker: Mutex<Option<Waker>>,
    /// The data and vtable pointers of the waker in `session_waker`, as
    /// the session last set it (written and read by the session alone).
    watched: [AtomicUsize; 2],
    /// Node index + 1 whose in-flight work this client must abandon (the
    /// node stopped answering), or 0.
    abandon: AtomicUsize,
    /// Set by [`ClientRegistry::release_idle_buffers`]: the session should
    /// give back its buffers while it waits.
    shrink: AtomicBool,
    /// `transactions` at the last sweep (an idle client's does not move).
    swept_at: AtomicU64,
    /// `transactions` when the client was last asked for its buffers + 1
    /// (0: never): it is asked again only after it ran a transaction.
    asked_at: AtomicU64,
}

impl ClientInfo {
    /// A server connection on node `node` (index) is now attached.
    pub fn attached(&self, node: usize) {
        self.abandon.store(0, Ordering::Relaxed);
        self.attached
            .store(node.saturating_add(1), Ordering::Relaxed);
        // Only the client's own session writes it: a load and a store,
        // not a read-modify-write (readers see one value or the next).
        let t = self.transactions.load(Ordering::Relaxed);
        self.transactions.store(t + 1, Ordering::Relaxed);
    }

    /// The server connection went back to the pool.
    pub fn released(&self) {
        self.attached.store(0, Ordering::Relaxed);
    }

    /// The node index of the attached server connection, if any.
    pub fn attached_node(&self) -> Option<usize> {
        self.attached.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Makes `waker` the one woken for this client's flags, unless it is
    /// already. The flags are loaded after this (SeqCst): a flag set
    /// after that load is followed by a wake of the waker here, and
    /// replacing it takes the lock the wake takes. Every wait on a server
    /// calls this: two plain loads, where registering with an
    /// `AtomicWaker` was two compare-and-swaps.
    #[inline]
    fn watch(&self, waker: &Waker) {
        let id = [
            waker.data() as usize,
            std::ptr::from_ref(waker.vtable()) as usize,
        ];
        if self.watched[0].load(Ordering::Relaxed) == id[0]
            && self.watched[1].load(Ordering::Relaxed) == id[1]
        {
            return;
        }
        // The waker kept here holds the pointers alive: no other waker can
        // have them while it is here.
        *self
            .session_waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
        self.watched[0].store(id[0], Ordering::Relaxed);
        self.watched[1].store(id[1], Ordering::Relaxed);
    }

    /// Wakes the session, after a flag was set (SeqCst).
    fn wake_session(&self) {
        let w = self
            .session_waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = &*w {
            w.wake_by_ref();
        }
    }

    /// Resolves with the node index once the node this client is attached
    /// to has been declared stopped ([`ClientRegistry::abandon_node`]).
    /// Polled with every wait on a server: two loads for the waker, two
    /// for the flag.
    pub fn abandoned(&self) -> impl Future<Output = usize> + '_ {
        std::future::poll_fn(move |cx| {
            self.watch(cx.waker());
            let a = self.abandon.load(Ordering::SeqCst);
            if a != 0 && a == self.attached.load(Ordering::Relaxed) {
                Poll::Ready(a - 1)
            } else {
                Poll::Pending
            }
        })
    }
}

type ClientMap = Arc<Mutex<HashMap<u64, Arc<ClientInfo>>>>;

/// The connected clients.
#[derive(Default)]
pub struct ClientRegistry {
    next: AtomicU64,
    clients: ClientMap,
    /// Set once, when the proxy shuts down.
    stopping: Arc<AtomicBool>,
}

impl ClientRegistry {
    /// Registers a client; it is unregistered when the returned entry is
    /// dropped, whichever way the session ends.
    pub fn register(
        &self,
        user: &str,
        database: Arc<str>,
        peer: Option<SocketAddr>,
    ) -> ClientEntry {
        let info = Arc::new(ClientInfo {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            user: user.to_string(),
            database,
            peer,
            since: SystemTime::now(),
            attached: AtomicUsize::new(0),
            transactions: AtomicU64::new(0),
            session_waker: Mutex::new(None),
            watched: [AtomicUsize::new(0), AtomicUsize::new(0)],
            abandon: AtomicUsize::new(0),
            shrink: AtomicBool::new(false),
            swept_at: AtomicU64::new(0),
            asked_at: AtomicU64::new(0),
        });
        if let Ok(mut m) = self.clients.lock() {
            m.insert(info.id, info.clone());
        }
        ClientEntry {
            info,
            map: self.clients.clone(),
            stopping: self.stopping.clone(),
        }
    }

    /// Tells every session, present and future, that the proxy is shutting
    /// down ([`ClientEntry::stopping`]).
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Ok(m) = self.clients.lock() {
            for c in m.values() {
                c.wake_session();
            }
        }
    }

    /// Wakes every client attached to node `node` (index) so it abandons
    /// its transaction with 08006: the node stopped answering. Returns how
    /// many were told.
    pub fn abandon_node(&self, node: usize) -> usize {
        let Ok(m) = self.clients.lock() else {
            return 0;
        };
        let mut n = 0;
        for c in m.values() {
            if c.attached_node() == Some(node) {
                c.abandon.store(node + 1, Ordering::SeqCst);
                c.wake_session();
                n += 1;
            }
        }
        n
    }

    /// Asks up to `most` clients that have no server connection, ran no
    /// transaction since the last call, and were not asked since their
    /// last transaction, to give back their buffers: an idle session then
    /// costs its task and a few small structs, not its read and write
    /// buffers. Each client is woken once per idle period, and a sweep
    /// wakes at most `most` (no burst of thousands of wakeups). Returns how
    /// many were asked.
    pub fn release_idle_buffers(&self, most: usize) -> usize {
        let Ok(m) = self.clients.lock() else {
            return 0;
        };
        let mut n = 0;
        for c in m.values() {
            let t = c.transactions.load(Ordering::Relaxed);
            let idle = c.swept_at.swap(t, Ordering::Relaxed) == t;
            if n < most
                && idle
                && c.attached_node().is_none()
                && c.asked_at.load(Ordering::Relaxed) != t + 1
            {
                c.asked_at.store(t + 1, Ordering::Relaxed);
                c.shrink.store(true, Ordering::SeqCst);
                c.wake_session();
                n += 1;
            }
        }
        n
    }

    /// Every connected client, oldest first.
    pub fn list(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self
            .clients
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|c| c.id);
        v
    }
}

/// A registered client; unregisters on drop.
pub struct ClientEntry {
    info: Arc<ClientInfo>,
    map: ClientMap,
    stopping: Arc<AtomicBool>,
}

/// What an idle session is woken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleEvent {
    /// The proxy is shutting down.
    Stop,
    /// Give back the buffers ([`ClientRegistry::release_idle_buffers`]).
    Shrink,
}

impl ClientEntry {
    /// Resolves once the proxy is shutting down, or the session should give
    /// back its buffers. A session awaits it each time it goes idle, so it
    /// takes no lock ([`ClientInfo::watch`]) and loads two flags.
    pub fn idle_event(&self) -> impl Future<Output = IdleEvent> + '_ {
        std::future::poll_fn(move |cx| {
            self.info.watch(cx.waker());
            if self.stopping.load(Ordering::SeqCst) {
                Poll::Ready(IdleEvent::Stop)
            } else if self.info.shrink.load(Ordering::SeqCst)
                && self.info.shrink.swap(false, Ordering::SeqCst)
            {
                Poll::Ready(IdleEvent::Shrink)
            } else {
                Poll::Pending
            }
        })
    }

    /// Resolves once the proxy is shutting down (a shrink request is
    /// ignored: for the admin console, whose buffers are small anyway).
    pub async fn stopping(&self) {
        while self.idle_event().await != IdleEvent::Stop {}
    }
}

impl std::ops::Deref for ClientEntry {
    type Target = ClientInfo;
    fn deref(&self) -> &ClientInfo {
        &self.info
    }
}

impl Drop for ClientEntry {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&self.info.id);
        }
        // The session's task holds this entry: its waker must not outlive
        // it here (an `Arc<ClientInfo>` may, in an admin listing).
        *self
            .info
            .session_waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Transactions routed to one node, by target kind (primary or replica),
/// by whether they may write, and by [`Reason`]. Sessions hold it through
/// their pool: counting is one atomic add.
#[derive(Debug, Default)]
pub struct NodeCounts {
    by: [[AtomicU64; Reason::ALL.len()]; 4],
}

impl NodeCounts {
    /// Counts one transaction.
    pub fn record(&self, primary: bool, write: bool, reason: Reason) {
        self.by[slot(primary, write)][reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Transactions matching `primary`, `write` and `reason` (`None`: any).
    fn count(&self, primary: Option<bool>, write: Option<bool>, reason: Option<Reason>) -> u64 {
        let mut n = 0;
        for p in [false, true] {
            for w in [false, true] {
                if primary.is_some_and(|x| x != p) || write.is_some_and(|x| x != w) {
                    continue;
                }
                let row = &self.by[slot(p, w)];
                n += match reason {
                    Some(r) => row[r.index()].load(Ordering::Relaxed),
                    None => row.iter().map(|c| c.load(Ordering::Relaxed)).sum(),
                };
            }
        }
        n
    }

    /// Read transactions.
    pub fn reads(&self) -> u64 {
        self.count(None, Some(false), None)
    }

    /// Transactions that may write.
    pub fn writes(&self) -> u64 {
        self.count(None, Some(true), None)
    }
}

fn slot(primary: bool, write: bool) -> usize {
    (primary as usize) << 1 | write as usize
}

/// A `lagrouter_route_decisions_total` series: node, `primary`, reason.
pub type DecisionKey = (Arc<str>, bool, &'static str);

/// Routing decisions, counted since start, per node. The forwarding path
/// only bumps atomics ([`NodeCounts::record`]); the metrics exporter and
/// the admin console sum them when asked.
#[derive(Default)]
pub struct RouteCounters {
    nodes: ArcSwap<HashMap<Arc<str>, Arc<NodeCounts>>>,
    pub refused_breaker_open: AtomicU64,
    pub refused_no_primary: AtomicU64,
    pub refused_write_gate: AtomicU64,
}

impl RouteCounters {
    /// Every (node, primary, reason) series that counted something.
    pub fn decisions(&self) -> Vec<(DecisionKey, u64)> {
        let mut v = Vec::new();
        for (node, c) in self.nodes.load().iter() {
            for primary in [false, true] {
                for r in Reason::ALL {
                    let n = c.count(Some(primary), None, Some(r));
                    if n > 0 {
                        v.push(((node.clone(), primary, r.as_str()), n));
                    }
                }
            }
        }
        v
    }

    /// Transactions sent to a primary (`true`) or a replica (`false`).
    pub fn routed(&self, primary: bool) -> u64 {
        let nodes = self.nodes.load();
        nodes
            .values()
            .map(|c| c.count(Some(primary), None, None))
            .sum()
    }

    /// Counts a refused transaction by its `lagrouter_route_decisions_total`
    /// reason (`breaker_open`, `write_gate`, `no_primary`).
    pub fn refused(&self, reason: &str) {
        let c = match reason {
            "breaker_open" => &self.refused_breaker_open,
            "write_gate" => &self.refused_write_gate,
            _ => &self.refused_no_primary,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts of `node`, created on first use (copy-on-write: rare).
    pub fn node(&self, node: &Arc<str>) -> Arc<NodeCounts> {
        if let Some(c) = self.nodes.load().get(node) {
            return c.clone();
        }
        let fresh = Arc::new(NodeCounts::default());
        let mut out = fresh.clone();
        self.nodes.rcu(|m| {
            let mut m = HashMap::clone(m);
            out = m
                .entry(node.clone())
                .or_insert_with(|| fresh.clone())
                .clone();
            m
        });
        out
    }

    /// Decisions that counted something, by reason, sorted by reason.
    pub fn reasons(&self) -> Vec<(&'static str, u64)> {
        let nodes = self.nodes.load();
        let mut v: Vec<_> = Reason::ALL
            .iter()
            .map(|&r| {
                let n = nodes.values().map(|c| c.count(None, None, Some(r))).sum();
                (r.as_str(), n)
            })
            .filter(|&(_, n)| n > 0)
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_unregister_on_drop() {
        let r = ClientRegistry::default();
        let a = r.register("app", "db".into(), None);
        let b = r.register("other", "db".into(), None);
        assert_eq!(a.attached_node(), None);
        a.attached(2);
        assert_eq!(a.attached_node(), Some(2));
        a.released();
        assert_eq!(a.attached_node(), None);
        assert_eq!(r.list().len(), 2);
        drop(a);
        let left = r.list();
        assert_eq!((left.len(), left[0].user.as_str()), (1, "other"));
        drop(b);
        assert!(r.list().is_empty());
    }

    /// Counts the wake-ups of a waker.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A session's waker stays registered through the wakes its flags
    /// cause, is cloned only when it changes, and each flag wakes it.
    #[test]
    fn flags_wake_the_session_whose_waker_stays_registered() {
        use std::future::Future;
        let r = ClientRegistry::default();
        let e = r.register("app", "db".into(), None);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let woken = || wakes.0.load(Ordering::SeqCst);

        e.attached(1);
        let poll_abandoned =
            |cx: &mut std::task::Context<'_>| std::pin::pin!(e.abandoned()).as_mut().poll(cx);
        assert!(poll_abandoned(&mut cx).is_pending());
        // Ours, the waker's and the one kept for the flags.
        assert_eq!(Arc::strong_count(&wakes), 3);
        assert!(poll_abandoned(&mut cx).is_pending());
        assert_eq!(
            Arc::strong_count(&wakes),
            3,
            "the same waker is not cloned again"
        );
        assert_eq!(r.abandon_node(0), 0, "only the clients of that node");
        assert_eq!(r.abandon_node(1), 1);
        assert_eq!(woken(), 1);
        assert_eq!(poll_abandoned(&mut cx), Poll::Ready(1));

        // Attached again: the wait registers nothing (the same waker), and
        // the waker the last wake woke is still there to be woken.
        e.released();
        e.attached(1);
        assert!(poll_abandoned(&mut cx).is_pending());
        r.abandon_node(1);
        assert_eq!(woken(), 2, "the waker stayed registered after a wake");

        e.released();
        let poll_idle =
            |cx: &mut std::task::Context<'_>| std::pin::pin!(e.idle_event()).as_mut().poll(cx);
        assert!(poll_idle(&mut cx).is_pending());
        assert_eq!(
            r.release_idle_buffers(10),
            0,
            "ran a transaction since the last sweep"
        );
        assert_eq!(r.release_idle_buffers(10), 1);
        assert_eq!(woken(), 3);
        assert_eq!(poll_idle(&mut cx), Poll::Ready(IdleEvent::Shrink));
        assert!(
            poll_idle(&mut cx).is_pending(),
            "a shrink request is taken once"
        );

        // Another waker replaces the first, which is woken no more.
        let wakes2 = Arc::new(Wakes::default());
        let waker2 = Waker::from(wakes2.clone());
        assert!(poll_idle(&mut std::task::Context::from_waker(&waker2)).is_pending());
        assert_eq!(Arc::strong_count(&wakes), 2, "the first waker was let go");
        r.stop_all();
        assert_eq!((woken(), wakes2.0.load(Ordering::SeqCst)), (3, 1));
        assert_eq!(
            poll_idle(&mut std::task::Context::from_waker(&waker2)),
            Poll::Ready(IdleEvent::Stop)
        );
        drop(e);
        assert_eq!(Arc::strong_count(&wakes2), 2, "the entry let its waker go");
    }

    #[test]
    fn counters_count_by_node_and_reason() {
        let c = RouteCounters::default();
        let r1: Arc<str> = "replica1".into();
        let primary = c.node(&"primary".into());
        c.node(&r1).record(false, false, Reason::Healthy);
        c.node(&r1).record(false, false, Reason::Healthy);
        primary.record(true, true, Reason::Write);
        primary.record(true, false, Reason::ReadYourWrites);
        assert_eq!(c.node(&r1).reads(), 2);
        assert_eq!((primary.reads(), primary.writes()), (1, 1));
        assert_eq!(c.node(&"nope".into()).reads(), 0);
        assert_eq!(
            c.reasons(),
            vec![("healthy", 2), ("read_your_writes", 1), ("write", 1)]
        );
        assert_eq!((c.routed(true), c.routed(false)), (2, 2));
        let mut d = c.decisions();
        d.sort();
        let key = |n: &str, p, r| (Arc::<str>::from(n), p, r);
        assert_eq!(
            d,
            vec![
                (key("primary", true, "read_your_writes"), 1),
                (key("primary", true, "write"), 1),
                (key("replica1", false, "healthy"), 2),
            ]
        );
    }
}
