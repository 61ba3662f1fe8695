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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

tokio::task_local! {
    /// The peer address of the client the current task serves. Set by the
    /// accept loop, which is the only place that knows it before TLS wraps
    /// the socket.
    pub static PEER: SocketAddr;
}

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
}

impl ClientInfo {
    /// A server connection on node `node` (index) is now attached.
    pub fn attached(&self, node: usize) {
        self.attached
            .store(node.saturating_add(1), Ordering::Relaxed);
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }

    /// The server connection went back to the pool.
    pub fn released(&self) {
        self.attached.store(0, Ordering::Relaxed);
    }

    /// The node index of the attached server connection, if any.
    pub fn attached_node(&self) -> Option<usize> {
        self.attached.load(Ordering::Relaxed).checked_sub(1)
    }
}

type ClientMap = Arc<Mutex<HashMap<u64, Arc<ClientInfo>>>>;

/// The connected clients.
#[derive(Default)]
pub struct ClientRegistry {
    next: AtomicU64,
    clients: ClientMap,
}

impl ClientRegistry {
    /// Registers a client; it is unregistered when the returned entry is
    /// dropped, whichever way the session ends.
    pub fn register(&self, user: &str, database: Arc<str>) -> ClientEntry {
        let info = Arc::new(ClientInfo {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            user: user.to_string(),
            database,
            peer: PEER.try_with(|p| *p).ok(),
            since: SystemTime::now(),
            attached: AtomicUsize::new(0),
            transactions: AtomicU64::new(0),
        });
        if let Ok(mut m) = self.clients.lock() {
            m.insert(info.id, info.clone());
        }
        ClientEntry {
            info,
            map: self.clients.clone(),
        }
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
    }
}

/// Transactions a node was given, by kind.
#[derive(Debug, Default)]
pub struct NodeCounts {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
}

/// A `lagrouter_route_decisions_total` series: node, `primary`, reason.
pub type DecisionKey = (Arc<str>, bool, &'static str);

/// Routing decisions, counted since start. The forwarding path only bumps
/// atomics; the metrics exporter reads them once a second.
#[derive(Default)]
pub struct RouteCounters {
    nodes: ArcSwap<HashMap<Arc<str>, Arc<NodeCounts>>>,
    reasons: ArcSwap<HashMap<&'static str, Arc<AtomicU64>>>,
    decisions: ArcSwap<HashMap<DecisionKey, Arc<AtomicU64>>>,
    pub to_primary: AtomicU64,
    pub to_replica: AtomicU64,
    pub refused_breaker_open: AtomicU64,
    pub refused_no_primary: AtomicU64,
    pub refused_write_gate: AtomicU64,
}

impl RouteCounters {
    /// Counts a transaction routed to `node`.
    pub fn record(&self, node: &Arc<str>, primary: bool, write: bool, reason: &'static str) {
        let target = if primary {
            &self.to_primary
        } else {
            &self.to_replica
        };
        target.fetch_add(1, Ordering::Relaxed);
        let counts = self.node(node);
        let kind = if write { &counts.writes } else { &counts.reads };
        kind.fetch_add(1, Ordering::Relaxed);
        counted(&self.reasons, reason).fetch_add(1, Ordering::Relaxed);
        counted(&self.decisions, (node.clone(), primary, reason)).fetch_add(1, Ordering::Relaxed);
    }

    /// Every (node, primary, reason) series with its count.
    pub fn decisions(&self) -> Vec<(DecisionKey, u64)> {
        self.decisions
            .load()
            .iter()
            .map(|(k, c)| (k.clone(), c.load(Ordering::Relaxed)))
            .collect()
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

    /// The counts of `node` (zero if it never got a transaction).
    pub fn node(&self, node: &Arc<str>) -> Arc<NodeCounts> {
        counted(&self.nodes, node.clone())
    }

    /// Decisions by reason, sorted by reason.
    pub fn reasons(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .reasons
            .load()
            .iter()
            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
            .collect();
        v.sort();
        v
    }
}

/// The counter under `key`, inserted on first use (copy-on-write: rare).
fn counted<K, V>(map: &ArcSwap<HashMap<K, Arc<V>>>, key: K) -> Arc<V>
where
    K: std::hash::Hash + Eq + Clone,
    V: Default,
{
    if let Some(c) = map.load().get(&key) {
        return c.clone();
    }
    let fresh = Arc::new(V::default());
    let mut out = fresh.clone();
    map.rcu(|m| {
        let mut m = HashMap::clone(m);
        out = m
            .entry(key.clone())
            .or_insert_with(|| fresh.clone())
            .clone();
        m
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_unregister_on_drop() {
        let r = ClientRegistry::default();
        let a = r.register("app", "db".into());
        let b = r.register("other", "db".into());
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

    #[test]
    fn counters_count_by_node_and_reason() {
        let c = RouteCounters::default();
        let r1: Arc<str> = "replica1".into();
        c.record(&r1, false, false, "healthy");
        c.record(&r1, false, false, "healthy");
        c.record(&"primary".into(), true, true, "write");
        assert_eq!(c.node(&r1).reads.load(Ordering::Relaxed), 2);
        assert_eq!(c.node(&"nope".into()).reads.load(Ordering::Relaxed), 0);
        assert_eq!(c.reasons(), vec![("healthy", 2), ("write", 1)]);
        assert_eq!(c.to_primary.load(Ordering::Relaxed), 1);
    }
}
