//! Pools of server connections, one per (node, user, database).
//!
//! A semaphore with `size` permits bounds the connections; waiting for a
//! permit is FIFO, bounded in count (`max_waiters`) and in time
//! (`checkout_timeout`). Idle connections are kept LIFO so warm ones are
//! reused first; stale or broken ones are dropped at checkout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lagrouter_config::PoolConfig;
use lagrouter_health::{NodeTraffic, Timers, Traffic};
use tokio::sync::Semaphore;

use super::{NodeAddr, ServerConn};
use crate::admin::registry::NodeCounts;

/// Idle time after which a pooled connection is probed before reuse.
const PROBE_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
use crate::auth::ServerLogin;
use crate::error::ProxyError;

/// Identifies a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: Arc<str>,
    pub user: Arc<str>,
    pub database: Arc<str>,
}

/// Gauges a pool keeps for metrics and the admin console. Connections in
/// use and checkouts are counted under the idle list's lock
/// ([`ServerPool::in_use`], [`ServerPool::checkouts`]): every checkout and
/// return takes it anyway.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub open: AtomicUsize,
    pub waiting: AtomicUsize,
    pub timeouts: AtomicUsize,
}

/// What the pool's lock guards: the idle connections, newest last, and the
/// counts that change with them.
#[derive(Default)]
struct Idle {
    /// Boxed: a connection moves in and out of here, and through the
    /// session, on every transaction; a pointer moves cheaper than the
    /// struct (measured: 6% of the proxy's instructions per select-only
    /// transaction).
    #[allow(clippy::vec_box)]
    conns: Vec<Box<ServerConn>>,
    in_use: usize,
    checkouts: usize,
}

/// The server connections of one (node, user, database).
pub struct ServerPool {
    pub key: PoolKey,
    pub node: Arc<NodeAddr>,
    idle: Mutex<Idle>,
    /// One per connection out or being opened. Taken and given back
    /// without an `OwnedSemaphorePermit` (whose `Arc` of the semaphore is
    /// two more atomic operations per transaction): [`Permit`] and
    /// [`PooledConn`] give theirs back when dropped.
    permits: Arc<Semaphore>,
    size: AtomicUsize,
    pub stats: PoolStats,
    /// The node's routing decisions (shared by its pools), counted where
    /// the pool is picked.
    pub counts: Arc<NodeCounts>,
    /// The node's traffic as the health monitor sees it (shared by its
    /// pools): checkouts, bytes arriving, failures.
    pub traffic: Arc<NodeTraffic>,
    /// When a failed connect was last logged: at most one line per
    /// [`CONNECT_WARNING_EVERY`], however many clients try.
    last_connect_warning: Mutex<Option<Instant>>,
    /// The last failed connect or login and when it was, until a connect
    /// succeeds: replica reads skip the node for [`REFUSED_FOR`] after it
    /// (see [`ServerPool::refused_recently`]).
    refused: Mutex<Option<(Instant, ProxyError)>>,
    /// Whether `refused` holds one: every replica read asks, and almost
    /// always there is none (one load instead of a lock).
    any_refused: AtomicBool,
    /// `lagrouter_pool_checkout_wait_seconds` of the node, looked up once:
    /// with many clients most checkouts wait, and a lookup by name and
    /// label on each would cost an allocation and a registry search.
    checkout_wait: metrics::Histogram,
    /// Where the checkout and connect timeouts run.
    timers: Timers,
}

/// Least time between two logged connect failures of one pool.
const CONNECT_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How long after a failed connect or login a replica read goes straight
/// to its fallback, with no new attempt on the node: a role every replica
/// refuses would otherwise cost each of its reads a login there (a fork on
/// the node) before the fallback.
pub const REFUSED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Idle connections looked at for one on the caller's worker loop, newest
/// first, before the newest is taken whatever its loop.
const SAME_LOOP_LOOKS: usize = 4;

/// Takes an idle connection: the newest on the calling session's loop
/// among the last few, else the newest; and whether it is on that loop.
/// With one loop (the default) that is always the newest, on its loop;
/// with more, a connection from another loop has to move its socket
/// ([`NodeStream::adopt`](crate::server::stream::NodeStream::adopt)).
#[allow(clippy::vec_box)] // the pool's own list: boxes move cheaply
fn take_idle(idle: &mut Vec<Box<ServerConn>>) -> Option<(Box<ServerConn>, bool)> {
    let n = idle.len();
    let on_loop = |c: &ServerConn| c.stream.tcp().on_this_worker();
    if on_loop(idle.last()?) {
        return idle.pop().map(|c| (c, true));
    }
    let same = (n.saturating_sub(SAME_LOOP_LOOKS)..n - 1)
        .rev()
        .find(|&i| on_loop(&idle[i]));
    match same {
        Some(i) => Some((idle.remove(i), true)),
        None => idle.pop().map(|c| (c, false)),
    }
}

impl ServerPool {
    fn new(
        key: PoolKey,
        node: Arc<NodeAddr>,
        size: usize,
        counts: Arc<NodeCounts>,
        traffic: Arc<NodeTraffic>,
        timers: Timers,
    ) -> ServerPool {
        let checkout_wait = metrics::histogram!(
            "lagrouter_pool_checkout_wait_seconds",
            "node" => key.node.to_string()
        );
        ServerPool {
            checkout_wait,
            timers,
            key,
            node,
            counts,
            traffic,
            idle: Mutex::new(Idle::default()),
            last_connect_warning: Mutex::new(None),
            refused: Mutex::new(None),
            any_refused: AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(size)),
            size: AtomicUsize::new(size),
            stats: PoolStats::default(),
        }
    }

    /// `node/user/database`, as errors and metrics name the pool.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.key.node, self.key.user, self.key.database)
    }

    /// Configured size.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.conns.len()).unwrap_or(0)
    }

    /// Connections checked out now.
    pub fn in_use(&self) -> usize {
        self.idle.lock().map(|v| v.in_use).unwrap_or(0)
    }

    /// Checkouts since the pool was made (not the waits that timed out).
    pub fn checkouts(&self) -> usize {
        self.idle.lock().map(|v| v.checkouts).unwrap_or(0)
    }

    /// Runs `f` on the idle list and its counts, poisoned or not: the
    /// counts are plain numbers, never left half-changed.
    #[inline]
    fn with_idle<R>(&self, f: impl FnOnce(&mut Idle) -> R) -> R {
        f(&mut self.idle.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Changes the size live: grows at once, shrinks as connections return.
    pub fn resize(&self, size: usize) {
        let old = self.size.swap(size, Ordering::Relaxed);
        if size > old {
            self.permits.add_permits(size - old);
        } else if size < old {
            let permits = self.permits.clone();
            let n = (old - size) as u32;
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many(n).await {
                    p.forget();
                }
            });
        }
    }

    /// Takes a connection, waiting at most `cfg.checkout_timeout`. `now` is
    /// the caller's clock reading (one less per transaction), retaken after
    /// a wait. The pool's `Arc` moves into the connection (it is there
    /// for the caller, [`PooledConn::pool`]): no count taken and given
    /// back per transaction.
    pub async fn checkout(
        self: Arc<Self>,
        cfg: &PoolConfig,
        login: &ServerLogin,
        now: Instant,
    ) -> Result<PooledConn, ProxyError> {
        match self.try_checkout(cfg, now) {
            Ok(pc) => Ok(pc),
            Err(pool) => pool.checkout_waiting(cfg, login, now).await,
        }
    }

    /// [`Self::checkout`] when it need not wait: a permit is free and a
    /// live idle connection is there, as for most transactions. Otherwise
    /// the pool comes back, nothing taken or counted, for
    /// [`Self::checkout_waiting`]. A plain function: a caller that tries
    /// it first builds no future in the common case.
    pub fn try_checkout(
        self: Arc<Self>,
        cfg: &PoolConfig,
        now: Instant,
    ) -> Result<PooledConn, Arc<Self>> {
        let Ok(p) = self.permits.try_acquire() else {
            return Err(self);
        };
        p.forget();
        let permit = Permit(&self.permits);
        let Some(conn) = self.take_live(cfg, now) else {
            drop(permit);
            return Err(self);
        };
        std::mem::forget(permit);
        Ok(PooledConn {
            conn: Some(conn),
            pool: self,
        })
    }

    /// A live idle connection, counted as a checkout and in use, if the
    /// pool has one (the caller holds a permit). Dead ones found on the
    /// way are closed.
    fn take_live(&self, cfg: &PoolConfig, now: Instant) -> Option<Box<ServerConn>> {
        loop {
            let (mut conn, on_loop) = self.with_idle(|idle| {
                let taken = take_idle(&mut idle.conns);
                if taken.is_some() {
                    idle.in_use += 1;
                    idle.checkouts += 1;
                }
                taken
            })?;
            let idle_for = now.saturating_duration_since(conn.last_used);
            // Probing costs a syscall: only for connections idle long enough
            // that the server (or a middlebox) may have closed them.
            if idle_for > cfg.idle_timeout || (idle_for > PROBE_AFTER_IDLE && !conn.looks_alive()) {
                self.with_idle(|idle| {
                    idle.in_use -= 1;
                    idle.checkouts -= 1;
                });
                self.stats.open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            // With several worker loops, the connection may come from a
            // session of another loop (none of the last few idle ones was
            // on this loop): its answers now wake this one.
            if !on_loop {
                conn.stream.adopt();
            }
            self.traffic.started();
            return Some(conn);
        }
    }

    /// [`Self::checkout`] past [`Self::try_checkout`]: waits for a permit,
    /// then takes an idle connection or opens one.
    async fn checkout_waiting(
        self: Arc<Self>,
        cfg: &PoolConfig,
        login: &ServerLogin,
        now: Instant,
    ) -> Result<PooledConn, ProxyError> {
        let now = match self.permits.try_acquire() {
            Ok(p) => {
                p.forget();
                now
            }
            Err(_) => {
                self.wait_permit(cfg).await?;
                Instant::now()
            }
        };
        let permit = Permit(&self.permits);
        if let Some(conn) = self.take_live(cfg, now) {
            std::mem::forget(permit);
            return Ok(PooledConn {
                conn: Some(conn),
                pool: self,
            });
        }
        self.with_idle(|idle| idle.checkouts += 1);
        // Boxed: connecting (TCP, TLS, authentication) is rare and its
        // future large; inline it would size every client's task.
        let conn = Box::pin(ServerConn::connect(
            self.node.clone(),
            &self.key.user,
            login,
            &self.key.database,
            cfg.connect_timeout,
            &self.timers,
        ))
        .await
        .inspect_err(|e| {
            if matches!(e, ProxyError::NodeConnect { .. }) {
                self.traffic.failed();
            }
            self.warn_connect_failed(e);
            if let Ok(mut r) = self.refused.lock() {
                *r = Some((Instant::now(), e.clone()));
                self.any_refused.store(true, Ordering::Relaxed);
            }
        })?;
        if self.any_refused.load(Ordering::Relaxed)
            && let Ok(mut r) = self.refused.lock()
        {
            *r = None;
            self.any_refused.store(false, Ordering::Relaxed);
        }
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.with_idle(|idle| idle.in_use += 1);
        self.traffic.started();
        std::mem::forget(permit);
        Ok(PooledConn {
            conn: Some(Box::new(conn)),
            pool: self,
        })
    }

    /// The error of a connect or login that failed less than
    /// [`REFUSED_FOR`] before `now`, when no connect succeeded since.
    /// Only replica reads ask: they have a fallback. The primary is always
    /// tried again.
    pub fn refused_recently(&self, now: Instant) -> Option<ProxyError> {
        if !self.any_refused.load(Ordering::Relaxed) {
            return None;
        }
        let r = self.refused.lock().ok()?;
        match &*r {
            Some((at, e)) if now.saturating_duration_since(*at) < REFUSED_FOR => Some(e.clone()),
            _ => None,
        }
    }

    /// Logs a failed connect, unless one was logged in the last
    /// [`CONNECT_WARNING_EVERY`].
    fn warn_connect_failed(&self, e: &ProxyError) {
        let now = Instant::now();
        let Ok(mut last) = self.last_connect_warning.lock() else {
            return;
        };
        if last.is_some_and(|t| now.duration_since(t) < CONNECT_WARNING_EVERY) {
            return;
        }
        *last = Some(now);
        tracing::warn!(pool = %self.label(), "cannot open a server connection: {e}");
    }

    /// Waits for a permit and keeps it (forgotten: the caller gives it
    /// back).
    async fn wait_permit(&self, cfg: &PoolConfig) -> Result<(), ProxyError> {
        let waiting = self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let _guard = Decrement(&self.stats.waiting);
        if waiting >= cfg.max_waiters {
            return Err(ProxyError::TooManyWaiters {
                pool: self.label(),
                limit: cfg.max_waiters,
            });
        }
        let started = Instant::now();
        let permit = self.permits.acquire();
        let got = self.timers.timeout(cfg.checkout_timeout, permit).await;
        // Only checkouts that had to wait are timed: the fast path stays
        // free of metrics work.
        self.checkout_wait.record(started.elapsed().as_secs_f64());
        match got {
            Ok(Ok(p)) => {
                p.forget();
                Ok(())
            }
            _ => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(ProxyError::CheckoutTimeout {
                    pool: self.label(),
                    timeout_ms: cfg.checkout_timeout.as_millis(),
                    size: self.size(),
                })
            }
        }
    }

    fn give_back(&self, mut conn: Box<ServerConn>) {
        conn.last_used = crate::rt::now();
        self.with_idle(|idle| {
            idle.in_use -= 1;
            idle.conns.push(conn);
        });
    }
}

/// A permit taken and not yet in a [`PooledConn`]: given back if the
/// checkout fails or is dropped (the client left while it waited for a
/// connect).
struct Permit<'a>(&'a Semaphore);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

struct Decrement<'a>(&'a AtomicUsize);
impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A checked-out connection, holding one of its pool's permits.
/// [`PooledConn::release`] returns it; dropping it otherwise closes the
/// connection (a dirty connection never returns). Either way the permit
/// goes back when it is dropped.
pub struct PooledConn {
    conn: Option<Box<ServerConn>>,
    pool: Arc<ServerPool>,
}

impl PooledConn {
    /// The connection.
    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("present until released")
    }

    /// The pool it came from.
    pub fn pool(&self) -> &Arc<ServerPool> {
        &self.pool
    }

    /// Read-only access.
    pub fn get(&self) -> &ServerConn {
        self.conn.as_ref().expect("present until released")
    }

    /// The connection and its node's traffic counters, borrowed apart.
    pub fn conn_and_traffic(&mut self) -> (&mut ServerConn, &NodeTraffic) {
        let conn = self.conn.as_mut().expect("present until released");
        (conn, &self.pool.traffic)
    }

    /// The connection broke: tell the health monitor's second path.
    pub fn report_failure(&self) {
        self.pool.traffic.failed();
    }

    /// Returns a clean, idle connection to the pool.
    pub fn release(mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.traffic.ended();
            self.pool.give_back(c);
        }
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.with_idle(|idle| idle.in_use -= 1);
            self.pool.traffic.ended();
            self.pool.stats.open.fetch_sub(1, Ordering::Relaxed);
        }
        // After the connection is back (or closed): a waiter woken by the
        // permit finds it idle.
        self.pool.permits.add_permits(1);
    }
}

/// Every pool, created on first use.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<ServerPool>>>,
    traffic: Traffic,
    timers: Timers,
}

impl Pools {
    /// Pools that report their traffic to `traffic` (the health monitor's)
    /// and take their timeouts on `timers`.
    pub fn new(traffic: Traffic, timers: Timers) -> Pools {
        Pools {
            pools: Mutex::default(),
            traffic,
            timers,
        }
    }

    /// The pool for `key`, created with `size` and the node's decision
    /// counters (`counts(node name)`) if new.
    pub fn get(
        &self,
        key: PoolKey,
        node: Arc<NodeAddr>,
        size: usize,
        counts: impl FnOnce(&Arc<str>) -> Arc<NodeCounts>,
    ) -> Arc<ServerPool> {
        let mut pools = self.pools.lock().expect("pool map lock");
        if let Some(p) = pools.get(&key)
            && p.node == node
        {
            return p.clone();
        }
        let counts = counts(&key.node);
        let traffic = self.traffic.node(&key.node);
        let p = Arc::new(ServerPool::new(
            key.clone(),
            node,
            size,
            counts,
            traffic,
            self.timers.clone(),
        ));
        pools.insert(key, p.clone());
        p
    }

    /// Closes idle connections unused for longer than `idle_timeout`.
    /// Returns how many were closed.
    pub fn close_idle(&self, idle_timeout: std::time::Duration) -> usize {
        let now = Instant::now();
        let mut closed = 0;
        for pool in self.all() {
            let n = pool.with_idle(|idle| {
                let before = idle.conns.len();
                idle.conns
                    .retain(|c| now.saturating_duration_since(c.last_used) <= idle_timeout);
                before - idle.conns.len()
            });
            pool.stats.open.fetch_sub(n, Ordering::Relaxed);
            closed += n;
        }
        closed
    }

    /// Connections in use in the pool of (`node`, `user`, `database`).
    pub fn in_use(&self, node: &str, user: &str, database: &str) -> usize {
        let pools = self.pools.lock().expect("pool map lock");
        pools
            .iter()
            .find(|(k, _)| &*k.node == node && &*k.user == user && &*k.database == database)
            .map_or(0, |(_, p)| p.in_use())
    }

    /// Every pool, for metrics and the admin console.
    pub fn all(&self) -> Vec<Arc<ServerPool>> {
        self.pools
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of a node nothing listens on: every connect is refused.
    fn refusing_pool() -> Arc<ServerPool> {
        // Bind and drop: the port is free and refuses connections.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        pool_at(port)
    }

    /// A pool of size 2 of a node at `port` on loopback.
    fn pool_at(port: u16) -> Arc<ServerPool> {
        let node = Arc::new(NodeAddr {
            name: "replica9".into(),
            host: "127.0.0.1".into(),
            port,
            tls: lagrouter_config::NodeTls::disabled(),
        });
        let key = PoolKey {
            node: node.name.clone(),
            user: "u".into(),
            database: "d".into(),
        };
        Arc::new(ServerPool::new(
            key,
            node,
            2,
            Arc::default(),
            Arc::default(),
            Timers::default(),
        ))
    }

    #[tokio::test]
    async fn a_refused_connect_is_remembered_for_refused_for() {
        let pool = refusing_pool();
        let now = Instant::now();
        assert!(pool.refused_recently(now).is_none(), "nothing failed yet");
        let login = ServerLogin::Password("p".into());
        let err = match pool
            .clone()
            .checkout(&PoolConfig::default(), &login, now)
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("connected to a closed port"),
        };
        assert!(matches!(err, ProxyError::NodeConnect { .. }), "{err}");
        // Asked at a time no later than the failure: remembered.
        let kept = pool.refused_recently(now).expect("remembered");
        assert_eq!(kept.to_string(), err.to_string());
        assert!(
            pool.refused_recently(Instant::now() + REFUSED_FOR)
                .is_none(),
            "forgotten after REFUSED_FOR"
        );
        // The failed connect gave its permit back.
        assert_eq!(pool.permits.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_checkout_dropped_while_it_connects_gives_its_permit_back() {
        // Accepts (the backlog does) and never answers the startup.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let pool = pool_at(silent.local_addr().expect("its address").port());
        let login = ServerLogin::Password("p".into());
        let cfg = PoolConfig::default();
        let checkout = pool.clone().checkout(&cfg, &login, Instant::now());
        let waited = tokio::time::timeout(std::time::Duration::from_millis(300), checkout).await;
        assert!(waited.is_err(), "the login never finishes");
        assert_eq!(pool.permits.available_permits(), 2, "the permit is back");
        assert_eq!(pool.checkouts(), 1);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.stats.open.load(Ordering::Relaxed), 0);
    }
}
