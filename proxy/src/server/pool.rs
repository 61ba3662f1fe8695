//! Pools of server connections, one per (node, user, database).
//!
//! `size` permits bound the connections out or being opened; waiting for
//! one is FIFO, bounded in count (`max_waiters`) and in time
//! (`checkout_timeout`). A connection that comes back while clients wait
//! goes straight to the first of them, as PgBouncer hands a released
//! server to the next waiting client. Idle connections are kept LIFO so
//! warm ones are reused first; stale or broken ones are dropped at
//! checkout.
//!
//! The permits, the line of waiters and the idle list are under one lock,
//! which every checkout and return takes anyway. Waits have no timer each:
//! one task per pool, on the timer thread, wakes the waiters whose time is
//! up (with 400 clients on 20 connections almost every checkout waits, and
//! a timer and a semaphore wait of their own cost each about 1,700
//! instructions more than this; callgrind, select-only `-c 400`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use lagrouter_config::PoolConfig;
use lagrouter_health::{NodeTraffic, Timers, Traffic};
use tokio::sync::Notify;

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

/// What the pool's lock guards: the idle connections, newest last, the
/// permits, the waiters and the counts that change with them.
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
    /// Permits free: the size less the connections out or being opened.
    /// Below zero after the pool shrank, until enough come back. Never
    /// above zero while someone waits.
    free: isize,
    /// Checkouts waiting for a permit, first come first served. Ones whose
    /// checkout was dropped or timed out stay until they reach the front
    /// or the deadline task sweeps them.
    waiters: VecDeque<Arc<Waiter>>,
    /// When the deadline task wakes next; `None` while none runs.
    watch_until: Option<Instant>,
}

/// One checkout waiting for a permit.
struct Waiter {
    deadline: Instant,
    grant: Mutex<Grant>,
}

/// What a [`Waiter`] has been given.
enum Grant {
    /// Nothing yet; the waker of its last poll.
    Waiting(Option<Waker>),
    /// A connection that came back, with its permit, counted in use.
    Conn(Box<ServerConn>),
    /// A permit with no connection: take an idle one or open one.
    Permit,
    TimedOut,
    /// The checkout took its grant, or was dropped.
    Gone,
}

impl Waiter {
    /// Gives it `conn` (or a permit, for `None`) if it still waits, with
    /// its waker to wake once the pool's lock is let go; else the
    /// connection back.
    fn grant(
        &self,
        conn: Option<Box<ServerConn>>,
    ) -> Result<Option<Waker>, Option<Box<ServerConn>>> {
        let mut g = self.grant.lock().unwrap_or_else(|p| p.into_inner());
        let Grant::Waiting(waker) = &mut *g else {
            return Err(conn);
        };
        let waker = waker.take();
        *g = match conn {
            Some(c) => Grant::Conn(c),
            None => Grant::Permit,
        };
        Ok(waker)
    }
}

/// The server connections of one (node, user, database).
pub struct ServerPool {
    pub key: PoolKey,
    pub node: Arc<NodeAddr>,
    idle: Mutex<Idle>,
    /// Wakes the deadline task early: a waiter came whose deadline is
    /// before the task's (`checkout_timeout` was made shorter).
    watch_sooner: Notify,
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
            idle: Mutex::new(Idle {
                free: size as isize,
                ..Idle::default()
            }),
            last_connect_warning: Mutex::new(None),
            refused: Mutex::new(None),
            any_refused: AtomicBool::new(false),
            watch_sooner: Notify::new(),
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

    /// Permits free now (below zero after a shrink, until connections
    /// come back).
    pub fn free_permits(&self) -> isize {
        self.with_idle(|idle| idle.free)
    }

    /// Changes the size live: grows at once, shrinks as connections return.
    pub fn resize(&self, size: usize) {
        let old = self.size.swap(size, Ordering::Relaxed);
        if size > old {
            for _ in old..size {
                self.return_permit();
            }
        } else if size < old {
            self.with_idle(|idle| idle.free -= (old - size) as isize);
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
        match self.take_live(cfg, now, true) {
            Some(conn) => Ok(PooledConn {
                conn: Some(conn),
                pool: self,
            }),
            None => Err(self),
        }
    }

    /// A live idle connection, counted as a checkout and in use, if the
    /// pool has one. With `take_permit`, only if a permit is free too, and
    /// it is taken with the connection; otherwise the caller holds one.
    /// Dead ones found on the way are closed.
    fn take_live(
        &self,
        cfg: &PoolConfig,
        now: Instant,
        take_permit: bool,
    ) -> Option<Box<ServerConn>> {
        // Whether this call holds a permit it took.
        let mut holds = false;
        loop {
            let taken = self.with_idle(|idle| {
                let take = take_permit && !holds;
                if take && idle.free <= 0 {
                    return None;
                }
                let taken = take_idle(&mut idle.conns)?;
                idle.in_use += 1;
                idle.checkouts += 1;
                if take {
                    idle.free -= 1;
                }
                Some(taken)
            });
            let Some((mut conn, on_loop)) = taken else {
                if holds {
                    // Taken with a dead connection, and no live one left.
                    self.return_permit();
                }
                return None;
            };
            holds |= take_permit;
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

    /// [`Self::checkout`] past [`Self::try_checkout`]: waits for a permit
    /// (at most `cfg.checkout_timeout` from `now`), then takes an idle
    /// connection or opens one. For a caller whose `try_checkout` just
    /// failed: it does not try again.
    pub async fn checkout_waiting(
        self: Arc<Self>,
        cfg: &PoolConfig,
        login: &ServerLogin,
        now: Instant,
    ) -> Result<PooledConn, ProxyError> {
        let turn = Turn {
            pool: &self,
            state: TurnState::New {
                deadline: now + cfg.checkout_timeout,
                max_waiters: cfg.max_waiters,
            },
        };
        let now = match turn.await? {
            Turned::Free => now,
            Turned::Permit => {
                self.waited(now);
                Instant::now()
            }
            Turned::Conn(mut conn) => {
                self.waited(now);
                // Handed over as it came back, by a session that may be on
                // another worker loop.
                if !conn.stream.tcp().on_this_worker() {
                    conn.stream.adopt();
                }
                self.traffic.started();
                return Ok(PooledConn {
                    conn: Some(conn),
                    pool: self,
                });
            }
            Turned::TimedOut => {
                self.waited(now);
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(ProxyError::CheckoutTimeout {
                    pool: self.label(),
                    timeout_ms: cfg.checkout_timeout.as_millis(),
                    size: self.size(),
                });
            }
        };
        let permit = Permit(&self);
        if let Some(conn) = self.take_live(cfg, now, false) {
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

    /// Records a checkout that waited since `since`. Only checkouts that
    /// had to wait are timed: the fast path stays free of metrics work.
    fn waited(&self, since: Instant) {
        self.checkout_wait.record(since.elapsed().as_secs_f64());
    }

    /// Queues a waiter that `waker` wakes, unless a permit is free (then
    /// taken: `Ok(None)`) or the line is full. Its first poll is the one
    /// that queues it, so the waker goes in with it: no poll after that
    /// finds it still waiting, and no lock on its grant is taken for it.
    fn enqueue(
        self: &Arc<Self>,
        deadline: Instant,
        max_waiters: usize,
        waker: &Waker,
    ) -> Result<Option<Arc<Waiter>>, ProxyError> {
        let mut start_watch = false;
        let mut hurry_watch = false;
        let waiter = self.with_idle(|idle| {
            if idle.free > 0 {
                idle.free -= 1;
                return Ok(None);
            }
            let waiting = self.stats.waiting.fetch_add(1, Ordering::Relaxed);
            if waiting >= max_waiters {
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                return Err(ProxyError::TooManyWaiters {
                    pool: self.label(),
                    limit: max_waiters,
                });
            }
            let w = Arc::new(Waiter {
                deadline,
                grant: Mutex::new(Grant::Waiting(Some(waker.clone()))),
            });
            idle.waiters.push_back(w.clone());
            match idle.watch_until {
                None => start_watch = true,
                Some(t) => hurry_watch = deadline < t,
            }
            if start_watch || hurry_watch {
                idle.watch_until = Some(deadline);
            }
            Ok(Some(w))
        })?;
        if start_watch {
            self.timers.run(watch_deadlines(self.clone()));
        } else if hurry_watch {
            self.watch_sooner.notify_one();
        }
        Ok(waiter)
    }

    /// Takes back a connection that is clean and idle: to the first
    /// waiter, with its permit, or to the idle list.
    fn give_back(&self, mut conn: Box<ServerConn>) {
        conn.last_used = crate::rt::now();
        self.hand_on(Some(conn));
    }

    /// Takes back a permit with no connection: to the first waiter, or
    /// free.
    fn return_permit(&self) {
        self.hand_on(None);
    }

    /// Gives a permit that came back, with `conn` if a connection came
    /// back with it, to the first waiter still waiting; else the permit is
    /// free and the connection idle. While the pool is over its size (it
    /// shrank), the permit is kept back instead.
    fn hand_on(&self, mut conn: Option<Box<ServerConn>>) {
        let returned = conn.is_some();
        let waker = self.with_idle(|idle| {
            if returned {
                idle.in_use -= 1;
            }
            while idle.free >= 0
                && let Some(w) = idle.waiters.pop_front()
            {
                match w.grant(conn.take()) {
                    Ok(waker) => {
                        if returned {
                            idle.in_use += 1;
                            idle.checkouts += 1;
                        }
                        return waker;
                    }
                    Err(c) => conn = c,
                }
            }
            idle.conns.extend(conn.take());
            idle.free += 1;
            None
        });
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// What a [`Turn`] came to.
enum Turned {
    /// A permit that was free: no wait.
    Free,
    /// A permit, after a wait.
    Permit,
    /// A connection as it came back, with its permit.
    Conn(Box<ServerConn>),
    /// Nothing: the deadline passed first.
    TimedOut,
}

/// A checkout's turn in its pool's line. Its first poll takes a free
/// permit ([`Turned::Free`]), or refuses a full line, or queues a
/// [`Waiter`] with the poll's waker; a queued turn is ready with what the
/// waiter was given, or [`Turned::TimedOut`]. Dropped while queued, it
/// gives back what it was given.
struct Turn<'a> {
    pool: &'a Arc<ServerPool>,
    state: TurnState,
}

enum TurnState {
    New {
        deadline: Instant,
        max_waiters: usize,
    },
    /// In the line, counted in `stats.waiting`.
    Queued(Arc<Waiter>),
    Done,
}

impl Future for Turn<'_> {
    type Output = Result<Turned, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let got = match &this.state {
            TurnState::New {
                deadline,
                max_waiters,
            } => match this.pool.enqueue(*deadline, *max_waiters, cx.waker()) {
                Ok(Some(w)) => {
                    this.state = TurnState::Queued(w);
                    return Poll::Pending;
                }
                Ok(None) => {
                    this.state = TurnState::Done;
                    return Poll::Ready(Ok(Turned::Free));
                }
                Err(e) => {
                    this.state = TurnState::Done;
                    return Poll::Ready(Err(e));
                }
            },
            TurnState::Queued(w) => {
                let mut g = w.grant.lock().unwrap_or_else(|p| p.into_inner());
                match std::mem::replace(&mut *g, Grant::Gone) {
                    Grant::Waiting(w) => {
                        *g = Grant::Waiting(match w {
                            Some(w) if w.will_wake(cx.waker()) => Some(w),
                            _ => Some(cx.waker().clone()),
                        });
                        return Poll::Pending;
                    }
                    Grant::Conn(c) => Turned::Conn(c),
                    Grant::Permit => Turned::Permit,
                    Grant::TimedOut | Grant::Gone => Turned::TimedOut,
                }
            }
            TurnState::Done => panic!("Turn polled after it was ready"),
        };
        // The grant is `Gone` now: nothing for `drop` to give back.
        this.state = TurnState::Done;
        this.pool.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        Poll::Ready(Ok(got))
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let TurnState::Queued(w) = &self.state else {
            return;
        };
        self.pool.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        let given = {
            let mut g = w.grant.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *g, Grant::Gone)
        };
        match given {
            Grant::Conn(c) => self.pool.give_back(c),
            Grant::Permit => self.pool.return_permit(),
            _ => {}
        }
    }
}

/// Times out `pool`'s waiters: sleeps until the earliest deadline among
/// them (or until a waiter with an earlier one comes), wakes those whose
/// time is up, and ends when none is left. One runs per pool while anyone
/// waits, on the timer thread.
async fn watch_deadlines(pool: Arc<ServerPool>) {
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        let next = pool.with_idle(|idle| {
            let mut next: Option<Instant> = None;
            idle.waiters.retain(|w| {
                let mut g = w.grant.lock().unwrap_or_else(|p| p.into_inner());
                let Grant::Waiting(waker) = &mut *g else {
                    // Dropped: swept.
                    return false;
                };
                if w.deadline <= now {
                    due.extend(waker.take());
                    *g = Grant::TimedOut;
                    return false;
                }
                next = Some(next.map_or(w.deadline, |n| n.min(w.deadline)));
                true
            });
            idle.watch_until = next;
            next
        });
        for w in due {
            w.wake();
        }
        let Some(next) = next else {
            return;
        };
        tokio::select! {
            _ = pool.timers.sleep_until(tokio::time::Instant::from_std(next)) => {}
            _ = pool.watch_sooner.notified() => {}
        }
    }
}

/// A permit taken and not yet in a [`PooledConn`]: given back if the
/// checkout fails or is dropped (the client left while it waited for a
/// connect).
struct Permit<'a>(&'a ServerPool);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.return_permit();
    }
}

/// A checked-out connection, holding one of its pool's permits.
/// [`PooledConn::release`] returns it with its permit; dropping it
/// otherwise closes the connection (a dirty connection never returns) and
/// gives the permit back.
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
        // Released: the permit went back with the connection.
        if self.conn.take().is_some() {
            self.pool.with_idle(|idle| idle.in_use -= 1);
            self.pool.traffic.ended();
            self.pool.stats.open.fetch_sub(1, Ordering::Relaxed);
            self.pool.return_permit();
        }
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

    /// A node that logs in every connection at once (no password asked)
    /// and then keeps it, silent: `(port, connections accepted)`.
    fn trusting_node() -> (u16, Arc<AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().expect("its address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            for (pid, sock) in listener.incoming().enumerate() {
                let Ok(mut sock) = sock else { return };
                let mut len = [0u8; 4];
                if sock.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
                if sock.read_exact(&mut startup).is_err() {
                    continue;
                }
                let mut answer = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'K', 0, 0, 0, 12];
                answer.extend((pid as u32 + 1).to_be_bytes());
                answer.extend([0, 0, 0, 7, b'Z', 0, 0, 0, 5, b'I']);
                if sock.write_all(&answer).is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                    kept.push(sock);
                }
            }
        });
        (port, accepted)
    }

    /// A node that logs every connection in by SCRAM-SHA-256 against
    /// `verifier` (as PostgreSQL would, with the role's one salt), then
    /// keeps it, silent: `(port, logins that succeeded)`. A wrong proof
    /// gets 28P01 and the connection closed.
    fn scram_node(verifier: String) -> (u16, Arc<AtomicUsize>) {
        use crate::auth::{ScramExchange, ScramSecret};
        use std::io::{Read, Write};
        fn read_msg(sock: &mut std::net::TcpStream, tagged: bool) -> Option<Vec<u8>> {
            let mut head = vec![0u8; if tagged { 5 } else { 4 }];
            sock.read_exact(&mut head).ok()?;
            let len = u32::from_be_bytes(head[head.len() - 4..].try_into().ok()?) as usize;
            let mut body = vec![0u8; len.checked_sub(4)?];
            sock.read_exact(&mut body).ok()?;
            Some(body)
        }
        fn auth(code: u32, data: &[u8]) -> Vec<u8> {
            let mut m = vec![b'R'];
            m.extend((8 + data.len() as u32).to_be_bytes());
            m.extend(code.to_be_bytes());
            m.extend(data);
            m
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().expect("its address").port();
        let logins = Arc::new(AtomicUsize::new(0));
        let count = logins.clone();
        std::thread::spawn(move || {
            let secret = ScramSecret::parse(&verifier).expect("a verifier");
            // A thread per connection: logins run side by side, as a
            // node's backends do.
            for (pid, sock) in listener.incoming().enumerate() {
                let Ok(mut sock) = sock else { return };
                let (secret, count) = (secret.clone(), count.clone());
                std::thread::spawn(move || {
                    let login = (|| {
                        read_msg(&mut sock, false)?;
                        sock.write_all(&auth(10, b"SCRAM-SHA-256\0\0")).ok()?;
                        let initial = read_msg(&mut sock, true)?;
                        // Mechanism name, then the client-first's length.
                        let at = initial.iter().position(|&b| b == 0)? + 1 + 4;
                        let (ex, first) = ScramExchange::start(secret, initial.get(at..)?).ok()?;
                        sock.write_all(&auth(11, first.as_bytes())).ok()?;
                        let fin = read_msg(&mut sock, true)?;
                        let Ok((server_final, _)) = ex.finish(&fin) else {
                            let mut e = vec![b'E', 0, 0, 0, 0];
                            e.extend(b"SFATAL\0C28P01\0Mpassword authentication failed\0\0");
                            let len = (e.len() - 1) as u32;
                            e[1..5].copy_from_slice(&len.to_be_bytes());
                            let _ = sock.write_all(&e);
                            return None;
                        };
                        let mut ok = auth(12, server_final.as_bytes());
                        ok.extend(auth(0, b""));
                        ok.extend([b'K', 0, 0, 0, 12]);
                        ok.extend((pid as u32 + 1).to_be_bytes());
                        ok.extend([0, 0, 0, 7, b'Z', 0, 0, 0, 5, b'I']);
                        sock.write_all(&ok).ok()
                    })();
                    if login.is_some() {
                        count.fetch_add(1, Ordering::SeqCst);
                        // Kept open, silent, until the test ends.
                        let mut byte = [0u8; 1];
                        let _ = sock.read(&mut byte);
                    }
                });
            }
        });
        (port, logins)
    }

    #[tokio::test]
    async fn a_plain_text_password_is_stretched_once_for_every_connection_to_a_node() {
        let verifier = postgres_protocol::password::scram_sha_256(b"pencil");
        let (port, logins) = scram_node(verifier);
        let pool = pool_at(port);
        pool.resize(3);
        let cfg = cfg_waiting(10_000, 10);
        let login = ServerLogin::password("pencil");
        // Opened together, as a pool fills: they wait for one stretching.
        let checkout = || pool.clone().checkout(&cfg, &login, Instant::now());
        let (a, b, c) = tokio::join!(checkout(), checkout(), checkout());
        let _held = [a, b, c].map(|r| r.expect("a login"));
        assert_eq!(logins.load(Ordering::SeqCst), 3);
        let ServerLogin::Password(p) = &login else {
            unreachable!()
        };
        assert_eq!(p.derivations(), 1, "three logins, one key stretching");
        // A wrong password is the node's refusal, not a protocol error.
        let (port, logins) = scram_node(postgres_protocol::password::scram_sha_256(b"pencil"));
        let err = pool_at(port)
            .checkout(&cfg, &ServerLogin::password("pencils"), Instant::now())
            .await
            .map(drop)
            .expect_err("refused");
        assert!(
            matches!(&err, ProxyError::NodeAuth { code, .. } if code == "28P01"),
            "{err:?}"
        );
        assert_eq!(logins.load(Ordering::SeqCst), 0);
    }

    fn cfg_waiting(checkout_timeout_ms: u64, max_waiters: usize) -> PoolConfig {
        PoolConfig {
            checkout_timeout: std::time::Duration::from_millis(checkout_timeout_ms),
            max_waiters,
            ..PoolConfig::default()
        }
    }

    /// A pool of one on a [`trusting_node`], its connection checked out:
    /// the pool, its config, the login, the held connection and the
    /// node's count of connections accepted.
    async fn pool_of_one_held(
        checkout_timeout_ms: u64,
        max_waiters: usize,
    ) -> (
        Arc<ServerPool>,
        PoolConfig,
        ServerLogin,
        PooledConn,
        Arc<AtomicUsize>,
    ) {
        let (port, accepted) = trusting_node();
        let pool = pool_at(port);
        pool.resize(1);
        let cfg = cfg_waiting(checkout_timeout_ms, max_waiters);
        let login = ServerLogin::password("p");
        let held = pool
            .clone()
            .checkout(&cfg, &login, Instant::now())
            .await
            .expect("a connection");
        (pool, cfg, login, held, accepted)
    }

    /// Lets spawned checkouts run until they wait.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_connection_that_comes_back_goes_to_the_first_waiter() {
        let (pool, cfg, login, held, accepted) = pool_of_one_held(10_000, 10).await;
        let pid = held.get().pid;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for name in ["first", "second"] {
            let (pool, cfg, login, order) =
                (pool.clone(), cfg.clone(), login.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let c = pool
                    .checkout(&cfg, &login, Instant::now())
                    .await
                    .expect("its turn");
                order.lock().unwrap().push((name, c.get().pid));
                c.release();
            }));
            settle().await;
        }
        assert_eq!(pool.stats.waiting.load(Ordering::Relaxed), 2);
        assert!(order.lock().unwrap().is_empty(), "both wait");
        held.release();
        for t in tasks {
            t.await.expect("the checkout task");
        }
        // One connection served all three, in the order they came.
        assert_eq!(*order.lock().unwrap(), [("first", pid), ("second", pid)]);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "no connection opened for a waiter"
        );
        assert_eq!(
            (pool.checkouts(), pool.in_use(), pool.idle_count()),
            (3, 0, 1)
        );
        assert_eq!(pool.free_permits(), 1);
        assert_eq!(pool.stats.waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_waiter_times_out_and_one_past_max_waiters_is_refused_at_once() {
        let (pool, cfg, login, held, _) = pool_of_one_held(300, 1).await;
        let waiter = {
            let (pool, cfg, login) = (pool.clone(), cfg.clone(), login.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let r = pool.checkout(&cfg, &login, started).await.map(drop);
                (r, started.elapsed())
            })
        };
        settle().await;
        // The line is full: the next one is turned away without waiting.
        let started = Instant::now();
        let err = pool
            .clone()
            .checkout(&cfg, &login, started)
            .await
            .map(drop)
            .expect_err("line full");
        assert!(
            matches!(err, ProxyError::TooManyWaiters { limit: 1, .. }),
            "{err}"
        );
        let (r, waited) = waiter.await.expect("the waiter");
        let err = r.expect_err("no connection came back");
        assert!(
            matches!(
                err,
                ProxyError::CheckoutTimeout {
                    timeout_ms: 300,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            waited >= std::time::Duration::from_millis(300),
            "timed out early: {waited:?}"
        );
        assert!(
            waited < std::time::Duration::from_secs(5),
            "timed out late: {waited:?}"
        );
        assert_eq!(pool.stats.timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(pool.stats.waiting.load(Ordering::Relaxed), 0);
        // The timed-out waiter left the line: the connection goes idle.
        held.release();
        assert_eq!((pool.idle_count(), pool.free_permits()), (1, 1));
    }

    #[tokio::test]
    async fn a_dropped_waiter_passes_its_turn_and_a_closed_connection_its_permit() {
        let (pool, cfg, login, held, accepted) = pool_of_one_held(10_000, 10).await;
        let spawn = |pool: Arc<ServerPool>| {
            let (cfg, login) = (cfg.clone(), login.clone());
            tokio::spawn(async move {
                pool.checkout(&cfg, &login, Instant::now())
                    .await
                    .map(|c| c.get().pid)
            })
        };
        let gone = spawn(pool.clone());
        settle().await;
        let next = spawn(pool.clone());
        settle().await;
        gone.abort();
        assert!(gone.await.expect_err("aborted").is_cancelled());
        // Dropped, not released: the connection closes and its permit goes
        // to the waiter left, which opens a new one.
        drop(held);
        let pid = next.await.expect("the waiter").expect("a new connection");
        assert_eq!(pid, 2, "the second connection the node accepted");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.stats.waiting.load(Ordering::Relaxed), 0);
        // Its checkout was dropped unreleased in the task: closed too.
        assert_eq!(
            (pool.in_use(), pool.idle_count(), pool.free_permits()),
            (0, 0, 1)
        );
    }

    #[tokio::test]
    async fn a_pool_that_shrank_keeps_returned_permits_until_it_fits_and_grows_to_waiters() {
        let (port, _) = trusting_node();
        let pool = pool_at(port);
        let cfg = cfg_waiting(10_000, 10);
        let login = ServerLogin::password("p");
        let a = pool
            .clone()
            .checkout(&cfg, &login, Instant::now())
            .await
            .expect("one");
        let b = pool
            .clone()
            .checkout(&cfg, &login, Instant::now())
            .await
            .expect("two");
        pool.resize(1);
        assert_eq!(pool.free_permits(), -1, "one too many out");
        let waiter = {
            let (pool, cfg, login) = (pool.clone(), cfg.clone(), login.clone());
            tokio::spawn(async move { pool.checkout(&cfg, &login, Instant::now()).await.map(drop) })
        };
        settle().await;
        a.release();
        settle().await;
        assert!(!waiter.is_finished(), "the first one back pays the shrink");
        assert_eq!((pool.free_permits(), pool.idle_count()), (0, 1));
        pool.resize(2);
        waiter
            .await
            .expect("the waiter")
            .expect("a permit from the growth");
        b.release();
        assert_eq!((pool.free_permits(), pool.in_use()), (2, 0));
    }

    #[tokio::test]
    async fn a_refused_connect_is_remembered_for_refused_for() {
        let pool = refusing_pool();
        let now = Instant::now();
        assert!(pool.refused_recently(now).is_none(), "nothing failed yet");
        let login = ServerLogin::password("p");
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
        assert_eq!(pool.free_permits(), 2);
    }

    #[tokio::test]
    async fn a_checkout_dropped_while_it_connects_gives_its_permit_back() {
        // Accepts (the backlog does) and never answers the startup.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let pool = pool_at(silent.local_addr().expect("its address").port());
        let login = ServerLogin::password("p");
        let cfg = PoolConfig::default();
        let checkout = pool.clone().checkout(&cfg, &login, Instant::now());
        let waited = tokio::time::timeout(std::time::Duration::from_millis(300), checkout).await;
        assert!(waited.is_err(), "the login never finishes");
        assert_eq!(pool.free_permits(), 2, "the permit is back");
        assert_eq!(pool.checkouts(), 1);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.stats.open.load(Ordering::Relaxed), 0);
    }
}
