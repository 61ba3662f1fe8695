//! The routing entry point the proxy calls at each transaction boundary.
//!
//! [`Router`] is cheap to clone and shared by every session. It holds what
//! is shared: the classification cache and function catalog
//! ([`Classifier`]), the primary-read [`Breaker`] (behind a `Mutex`: one
//! short, uncontended critical section per read) and the round-robin
//! counter. Per-client state is the caller's [`SessionRouting`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::{ArcSwap, Cache};
use lagrouter_config::{Balance, Config, ConfigHandle};
use lagrouter_health::{HealthSnapshot, Lsn, SharedSnapshot};

use crate::session::SessionRouting;

use crate::breaker::{Breaker, BreakerSettings, BreakerState};
use crate::cache::{Classifier, InputsCache, Memo};
use crate::decide::{BreakerUse, Decided, RouteContext, decide, settle};
use crate::functions::FunctionCatalog;
use crate::gate::{GateStatus, WriteGate, gate_status};
use crate::hints::RouteOverride;
use crate::{Analysis, CatchUp, Reason, RouteDecision, RouteError};

/// Statements the classification cache holds at most.
pub const CACHE_CAPACITY: usize = 10_000;

/// The breaker as the admin console and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerStatus {
    pub state: BreakerState,
    /// Share of reads in the window that fell back to the primary.
    pub share: f64,
    /// Reads the router placed in the window.
    pub reads: u64,
    /// Of those, reads served by the primary as a fallback.
    pub fallbacks: u64,
}

struct Shared {
    classifier: Classifier,
    breaker: Mutex<Breaker>,
    ticket: AtomicUsize,
    /// Drained node names. ArcSwap: every read decision loads it (a
    /// session through its [`RouterView`]), an operator rarely changes it.
    drained: Arc<ArcSwap<Vec<String>>>,
}

/// Shared router: reads the latest health snapshot and config, decides.
#[derive(Clone)]
pub struct Router {
    config: ConfigHandle,
    health: SharedSnapshot,
    shared: Arc<Shared>,
}

impl Router {
    /// A router over the given live config and health snapshot.
    pub fn new(config: ConfigHandle, health: SharedSnapshot) -> Self {
        Self {
            config,
            health,
            shared: Arc::new(Shared {
                classifier: Classifier::new(CACHE_CAPACITY),
                breaker: Mutex::new(Breaker::new()),
                ticket: AtomicUsize::new(0),
                drained: Arc::new(ArcSwap::from_pointee(Vec::new())),
            }),
        }
    }

    /// The latest health snapshot.
    pub fn health(&self) -> arc_swap::Guard<Arc<HealthSnapshot>> {
        self.health.load()
    }

    /// Sets the drained nodes (by name): from the next decision on they get
    /// no reads; transactions already running on them are not touched.
    /// Writes still go to the primary whatever this says.
    pub fn set_drained(&self, names: Vec<String>) {
        self.shared.drained.store(Arc::new(names));
    }

    /// The drained nodes, by name.
    pub fn drained(&self) -> Vec<String> {
        self.shared.drained.load().as_ref().clone()
    }

    /// Installs the function catalog loaded from the primary's `pg_proc`
    /// (at start and on refresh). Until then a built-in list is used.
    pub fn set_function_catalog(&self, catalog: FunctionCatalog) {
        self.shared.classifier.set_catalog(catalog);
    }

    /// The classifier (cached classification), e.g. to learn whether a
    /// statement is a write: `router.classifier().classify(sql).is_write()`.
    pub fn classifier(&self) -> &Classifier {
        &self.shared.classifier
    }

    /// The analysis of `sql` (cached), with the `read_only_functions` of
    /// `config`, the config the caller holds for the transaction.
    pub fn analyze(&self, config: &Config, sql: &str, memo: Memo<'_>) -> Arc<Analysis> {
        self.shared
            .classifier
            .analyze_with(sql, memo, &config.routing.read_only_functions)
    }

    /// Decides where the transaction that starts with `sql` goes, from its
    /// [`Router::analyze`], on `config` and the health snapshot `snap`,
    /// which the caller loads just before (a decision on an old snapshot
    /// could send a read to a replica demoted since) and keeps for what it
    /// does with the decision, so that both see the same nodes.
    /// `in_use(node)` is the number of server connections in use to that
    /// node (index in `snap`), for `balance = "least_connections"`.
    ///
    /// Effects of the text on the session (`SET lagrouter.min_lsn` inside a
    /// multi-statement text, `SET default_transaction_read_only`) are
    /// applied first. Statements the proxy answers itself should be
    /// intercepted with [`crate::parse_proxy_command`] before this. A
    /// decision with `catch_up` set is settled by [`Router::catch_up_done`]
    /// once the proxy waited for the replica.
    #[allow(clippy::too_many_arguments)]
    pub fn route(
        &self,
        config: &Config,
        snap: &HealthSnapshot,
        session: &mut SessionRouting,
        sql: &str,
        analysis: &Analysis,
        now: Instant,
        in_use: &dyn Fn(usize) -> usize,
    ) -> Result<RouteDecision, RouteError> {
        let drained = self.shared.drained.load();
        self.route_in(
            config, snap, &drained, session, sql, analysis, now, in_use, None,
        )
    }

    /// [`Self::route`] with the drained nodes the caller loaded, and the
    /// caller's memo of its last decision, if it keeps one.
    #[allow(clippy::too_many_arguments)]
    fn route_in(
        &self,
        config: &Config,
        snap: &HealthSnapshot,
        drained: &[String],
        session: &mut SessionRouting,
        sql: &str,
        analysis: &Analysis,
        now: Instant,
        in_use: &dyn Fn(usize) -> usize,
        memo: Option<(&mut DecisionMemo, MemoInputs<'_>)>,
    ) -> Result<RouteDecision, RouteError> {
        let rc = &config.routing;
        for e in analysis.effects.iter() {
            session.apply_effect(e);
        }
        if let Some(p) = snap.primary_index() {
            let target = &snap.nodes[p];
            session.reconcile_timeline(target.timeline, target.promoted_at);
        }
        let ctx = RouteContext {
            sql,
            analysis,
            session_route: session.route_override(),
            default_read_only: session.default_read_only(),
            required_lsn: session.required_lsn(rc.read_your_writes, analysis.hints.min_lsn),
            config: rc,
            snapshot: snap,
            // round_robin spreads transactions; the other policies break
            // ties by session, so a session keeps its replica while the
            // replicas tie (fewer server connections, warmer caches).
            ticket: match rc.balance {
                Balance::RoundRobin => self.shared.ticket.fetch_add(1, Ordering::Relaxed),
                _ => session.affinity(|| self.shared.ticket.fetch_add(1, Ordering::Relaxed)),
            },
            in_use,
            lag_tie_bytes: config.health.max_lag_bytes / 16,
            drained,
            gate: WriteGate::from_config(config),
        };
        let mut decided = match memo {
            Some((m, inputs)) => m.decide(inputs, &ctx)?,
            None => decide(&ctx)?,
        };
        if let Some(lost) = session.take_lost_write_notice() {
            let d = &mut decided.decision;
            d.notice = Some(match d.notice.take() {
                Some(other) => format!("{lost}\n{other}"),
                None => lost,
            });
        }
        if let (
            BreakerUse::Fallback {
                stale,
                catch_up: Some(replica),
                ..
            },
            Some(lsn),
        ) = (decided.breaker, ctx.required_lsn)
            && !rc.read_your_writes_wait.is_zero()
        {
            // Let the proxy wait for the replica first; the breaker counts
            // this read once the outcome is known (`catch_up_done`).
            let mut decision = decided.decision;
            decision.catch_up = Some(CatchUp {
                replica,
                lsn,
                stale,
            });
            return Ok(decision);
        }
        // A write, or a read the router did not place (nothing for the
        // breaker): no lock of the breaker every session shares.
        if decided.breaker == BreakerUse::None {
            return Ok(decided.decision);
        }
        let settings = BreakerSettings::from_config(rc);
        settle(
            decided,
            &mut self.breaker(),
            &settings,
            rc.on_breaker_open,
            snap,
            now,
        )
    }

    /// Records that a transaction of `session` that wrote committed at
    /// `lsn` (the proxy learns it after the commit). Later reads of the
    /// session go only to nodes that replayed it (when
    /// `routing.read_your_writes` is on), and it becomes the session's
    /// `lagrouter.last_write_lsn`.
    pub fn record_write(&self, session: &mut SessionRouting, lsn: Lsn) {
        record_write_on(&self.health.load(), session, lsn);
    }

    /// Settles a decision that proposed a catch-up wait: `caught_up` when
    /// the replica replayed the LSN in time (a replica read), otherwise the
    /// read falls back to the primary through the breaker as usual.
    pub fn catch_up_done(
        &self,
        decision: &RouteDecision,
        caught_up: bool,
        now: Instant,
    ) -> Result<RouteDecision, RouteError> {
        let config = self.config.load();
        let settings = BreakerSettings::from_config(&config.routing);
        let Some(cu) = decision.catch_up else {
            return Ok(decision.clone());
        };
        let mut primary = decision.clone();
        primary.catch_up = None;
        if caught_up {
            self.breaker().record_read(&settings, now);
            return Ok(RouteDecision {
                node: cu.replica,
                primary: false,
                reason: Reason::ReadYourWrites,
                write: false,
                notice: primary.notice,
                catch_up: None,
            });
        }
        let decided = Decided {
            decision: primary,
            breaker: BreakerUse::Fallback {
                stale: cu.stale,
                catch_up: None,
                counted: false,
            },
        };
        let snap = self.health.load();
        settle(
            decided,
            &mut self.breaker(),
            &settings,
            config.routing.on_breaker_open,
            &snap,
            now,
        )
    }

    /// A read that routing placed on a healthy replica, whose replica then
    /// could not take it (connecting or logging in failed, so nothing was
    /// sent): it falls back to the primary through the breaker, counted as
    /// a fallback of a read already counted. `None` for any other decision
    /// (a write, a read a rule or hint sent to a replica, a stale read): the
    /// caller reports the replica's error.
    pub fn replica_unavailable(
        &self,
        decision: &RouteDecision,
        now: Instant,
    ) -> Option<Result<RouteDecision, RouteError>> {
        if decision.primary || decision.reason != Reason::Healthy {
            return None;
        }
        // One snapshot for the primary and the settling.
        let snap = self.health.load();
        let primary = match crate::decide::primary_index(&snap) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let decided = Decided {
            decision: RouteDecision {
                node: primary,
                primary: true,
                reason: Reason::NoReplica,
                write: false,
                notice: decision.notice.clone(),
                catch_up: None,
            },
            // No stale replica: this read's replica just failed it.
            breaker: BreakerUse::Fallback {
                stale: None,
                catch_up: None,
                counted: true,
            },
        };
        let config = self.config.load();
        Some(settle(
            decided,
            &mut self.breaker(),
            &BreakerSettings::from_config(&config.routing),
            config.routing.on_breaker_open,
            &snap,
            now,
        ))
    }

    /// The node that takes writes now, or why there is none. Not gated by
    /// `[safety]`: for connections that do not write (a client's login).
    pub fn write_target(&self) -> Result<usize, RouteError> {
        crate::decide::primary_index(&self.health.load())
    }

    /// The write gate (`[safety] min_replicas_to_write`) as of the latest
    /// health snapshot.
    pub fn gate_status(&self) -> GateStatus {
        gate_status(&self.config.load(), &self.health.load())
    }

    /// The breaker's state and the primary read share, as of `now`.
    pub fn breaker_status(&self, now: Instant) -> BreakerStatus {
        let settings = BreakerSettings::from_config(&self.config.load().routing);
        let mut b = self.breaker();
        b.poll(&settings, now);
        let (reads, fallbacks) = b.counts(&settings, now);
        BreakerStatus {
            state: b.state(),
            share: b.share(&settings, now),
            reads,
            fallbacks,
        }
    }

    /// A view of what the router shares for one session: see
    /// [`RouterView`].
    pub fn view(&self) -> RouterView {
        RouterView {
            router: self.clone(),
            health: Cache::new(self.health.clone()),
            drained: Cache::new(self.shared.drained.clone()),
            inputs: self.shared.classifier.inputs_cache(),
            memo: DecisionMemo::default(),
        }
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        // The breaker's invariants hold between calls: survive a poisoned lock.
        self.shared
            .breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// [`Router::record_write`] on the snapshot `snap`: the write is of the
/// timeline of its primary.
fn record_write_on(snap: &HealthSnapshot, session: &mut SessionRouting, lsn: Lsn) {
    let timeline = snap.primary_index().and_then(|p| snap.nodes[p].timeline);
    session.record_write(lsn, timeline);
}

/// One session's view of the router's shared state (the health snapshot,
/// the drained nodes, the classifier's inputs): each read is one plain
/// atomic load while what it reads has not changed, where loading the
/// shared `ArcSwap` takes and gives back a debt slot. A view holds what it
/// last read until it is asked again; [`RouterView::refresh`] lets an idle
/// session hold only what is current.
pub struct RouterView {
    router: Router,
    health: Cache<SharedSnapshot, Arc<HealthSnapshot>>,
    drained: Cache<Arc<ArcSwap<Vec<String>>>, Arc<Vec<String>>>,
    inputs: InputsCache,
    memo: DecisionMemo,
}

/// What a decision was made on, for [`DecisionMemo`]: the very config,
/// health snapshot, drained list and analysis (the same allocations; a
/// new snapshot, say, is a new one even if equal), and the session's
/// state as [`decide`] reads it.
#[derive(Clone, Copy)]
struct MemoInputs<'a> {
    config: &'a Arc<Config>,
    snap: &'a Arc<HealthSnapshot>,
    drained: &'a Arc<Vec<String>>,
    analysis: &'a Arc<Analysis>,
}

/// A session's last routing decision, with what it was made on: the same
/// inputs make the same decision, so the next transaction of a session
/// that sends one shape of statement (the common case: a new health
/// snapshot comes once per check, a new analysis with a new shape) takes
/// it back after a few pointer comparisons instead of deciding anew. Only
/// where nothing else goes in: no `[[routing.rules]]` (they match the
/// text, which texts of one shape need not share), `balance =
/// "least_lag"` (round_robin turns with every transaction,
/// least_connections counts connections in use), and a decision with no
/// notice and no fallback to the primary (which the breaker may yet
/// refuse or the session wait on). The breaker still counts every read.
/// The session's required LSN and ticket go into the comparison only for
/// a replica read: nothing else reads them (a write goes to the primary
/// whatever the session's last write was), so a session that writes
/// again and again takes its decision back too.
/// Debug builds (the test suite) decide anew at every memo hit and check
/// that both agree.
#[derive(Default)]
struct DecisionMemo {
    last: Option<Memoized>,
    #[cfg(test)]
    hits: u64,
}

struct Memoized {
    config: Arc<Config>,
    snap: Arc<HealthSnapshot>,
    drained: Arc<Vec<String>>,
    analysis: Arc<Analysis>,
    session: SessionKey,
    decided: Decided,
}

/// The session's state [`decide`] reads (see [`RouteContext`]).
type SessionKey = (RouteOverride, bool, Option<Lsn>, usize);

impl DecisionMemo {
    fn decide(
        &mut self,
        inputs: MemoInputs<'_>,
        ctx: &RouteContext<'_>,
    ) -> Result<Decided, RouteError> {
        let rc = ctx.config;
        if !rc.rules.is_empty() || rc.balance != Balance::LeastLag {
            self.last = None;
            return decide(ctx);
        }
        let session = (
            ctx.session_route,
            ctx.default_read_only,
            ctx.required_lsn,
            ctx.ticket,
        );
        if let Some(m) = &self.last
            && Arc::ptr_eq(&m.snap, inputs.snap)
            && Arc::ptr_eq(&m.analysis, inputs.analysis)
            && Arc::ptr_eq(&m.config, inputs.config)
            && Arc::ptr_eq(&m.drained, inputs.drained)
            && (m.session.0, m.session.1) == (session.0, session.1)
            && (m.decided.breaker != BreakerUse::ReplicaRead
                || (m.session.2, m.session.3) == (session.2, session.3))
        {
            debug_assert!(
                decide(ctx).is_ok_and(|d| d == m.decided),
                "a memoized routing decision differs from deciding anew"
            );
            #[cfg(test)]
            {
                self.hits += 1;
            }
            return Ok(m.decided.clone());
        }
        let decided = decide(ctx)?;
        let kept = decided.decision.notice.is_none()
            && decided.decision.catch_up.is_none()
            && matches!(decided.breaker, BreakerUse::None | BreakerUse::ReplicaRead);
        self.last = kept.then(|| Memoized {
            config: inputs.config.clone(),
            snap: inputs.snap.clone(),
            drained: inputs.drained.clone(),
            analysis: inputs.analysis.clone(),
            session,
            decided: decided.clone(),
        });
        Ok(decided)
    }
}

impl std::fmt::Debug for RouterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterView").finish_non_exhaustive()
    }
}

impl RouterView {
    /// The router this is a view of.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The latest health snapshot.
    pub fn health(&mut self) -> &Arc<HealthSnapshot> {
        self.health.load()
    }

    /// [`Router::analyze`]: the analysis of `sql` with the
    /// `read_only_functions` of `config`.
    pub fn analyze(&mut self, config: &Config, sql: &str, memo: Memo<'_>) -> Arc<Analysis> {
        let names = &config.routing.read_only_functions;
        self.router
            .shared
            .classifier
            .analyze_cached(&mut self.inputs, sql, memo, Some(names))
    }

    /// `f` of the analysis of a statement inside a transaction that
    /// [`Self::analyze`] routed (its `read_only_functions` are in place).
    /// The analysis is lent, not handed out: this is every statement of a
    /// transaction on the primary, and a reference count taken and given
    /// back is two atomic read-modify-writes.
    pub fn analyze_in_transaction<R>(
        &mut self,
        sql: &str,
        memo: Memo<'_>,
        f: impl Fn(&Analysis) -> R,
    ) -> R {
        self.router
            .shared
            .classifier
            .analyze_cached_with(&mut self.inputs, sql, memo, f)
    }

    /// [`Router::route`] on the latest health snapshot, which it returns
    /// with the decision (the pool the decision names is to be found in
    /// it). `in_use(name)` is the number of server connections in use to
    /// the node called `name`.
    #[allow(clippy::too_many_arguments)]
    pub fn route(
        &mut self,
        config: &Arc<Config>,
        session: &mut SessionRouting,
        sql: &str,
        analysis: &Arc<Analysis>,
        now: Instant,
        in_use: &dyn Fn(&str) -> usize,
    ) -> (Result<RouteDecision, RouteError>, &HealthSnapshot) {
        let snap = self.health.load();
        let drained = self.drained.load();
        let by_index = |i: usize| snap.nodes.get(i).map_or(0, |n| in_use(&n.name));
        let inputs = MemoInputs {
            config,
            snap,
            drained,
            analysis,
        };
        let routed = self.router.route_in(
            config,
            snap,
            drained,
            session,
            sql,
            analysis,
            now,
            &by_index,
            Some((&mut self.memo, inputs)),
        );
        (routed, snap)
    }

    /// [`Router::record_write`].
    pub fn record_write(&mut self, session: &mut SessionRouting, lsn: Lsn) {
        record_write_on(self.health.load(), session, lsn);
    }

    /// Brings every part of the view up to date, so that it keeps nothing
    /// old alive (a session going idle).
    pub fn refresh(&mut self) {
        self.health.load();
        self.drained.load();
        self.inputs.refresh();
        self.memo = DecisionMemo::default();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lagrouter_health::{NodeState, PrimaryStatus};

    use super::*;
    use crate::Reason;
    use crate::command::parse_proxy_command;
    use crate::decide::tests::cluster;

    impl Router {
        /// Analyzes and routes `sql`, with no connection counts.
        fn route_sql(
            &self,
            session: &mut SessionRouting,
            sql: &str,
            now: Instant,
        ) -> Result<RouteDecision, RouteError> {
            let (config, snap) = (self.config.load(), self.health());
            let analysis = self.analyze(&config, sql, Memo::None);
            self.route(&config, &snap, session, sql, &analysis, now, &|_| 0)
        }
    }

    fn router(
        replicas: usize,
        edit: impl FnOnce(&mut lagrouter_config::Config, &mut HealthSnapshot),
    ) -> Router {
        let (mut config, mut snap) = cluster(replicas);
        edit(&mut config, &mut snap);
        Router::new(
            ConfigHandle::new(config),
            Arc::new(arc_swap::ArcSwap::from_pointee(snap)),
        )
    }

    #[test]
    fn sessions_keep_their_replica_while_replicas_tie() {
        let r = router(2, |_, s| {
            s.nodes[1].lag_bytes = Some(0);
            s.nodes[2].lag_bytes = Some(0);
        });
        let now = Instant::now();
        let mut sessions: Vec<SessionRouting> = (0..200).map(|_| SessionRouting::new()).collect();
        let mut first = Vec::new();
        for s in sessions.iter_mut() {
            first.push(r.route_sql(s, "SELECT 1", now).unwrap().node);
        }
        let on_1 = first.iter().filter(|&&n| n == 1).count();
        assert!((70..=130).contains(&on_1), "{on_1} of 200 on replica1");
        for _ in 0..10 {
            for (s, want) in sessions.iter_mut().zip(&first) {
                assert_eq!(r.route_sql(s, "SELECT 1", now).unwrap().node, *want);
            }
        }
        // No longer tied (a step is max_lag_bytes / 16 = 64 KiB): every
        // session goes to the fresher replica.
        let mut snap = (**r.health()).clone();
        snap.nodes[1].lag_bytes = Some(200_000);
        r.health.store(Arc::new(snap));
        for s in sessions.iter_mut() {
            assert_eq!(r.route_sql(s, "SELECT 1", now).unwrap().node, 2);
        }
    }

    #[test]
    fn round_robin_spreads_one_sessions_transactions() {
        let r = router(2, |c, _| c.routing.balance = Balance::RoundRobin);
        let now = Instant::now();
        let mut s = SessionRouting::new();
        let picks: Vec<usize> = (0..4)
            .map(|_| r.route_sql(&mut s, "SELECT 1", now).unwrap().node)
            .collect();
        assert_eq!(picks.iter().filter(|&&n| n == 1).count(), 2, "{picks:?}");
    }

    #[test]
    fn read_your_writes_end_to_end() {
        let r = router(1, |_, s| s.nodes[1].replay_lsn = Some(Lsn(100)));
        let mut s = SessionRouting::new();
        let now = Instant::now();
        assert_eq!(r.route_sql(&mut s, "SELECT 1", now).unwrap().node, 1);
        let w = r.route_sql(&mut s, "UPDATE t SET a = 1", now).unwrap();
        assert!(w.write && w.primary);
        r.record_write(&mut s, Lsn(150));
        assert_eq!(s.last_write_lsn(), Some(Lsn(150)));
        let d = r.route_sql(&mut s, "SELECT 1", now).unwrap();
        assert_eq!((d.node, d.reason), (0, Reason::ReadYourWrites));
        let cu = d.catch_up.expect("a healthy replica is worth waiting for");
        assert_eq!((cu.replica, cu.lsn), (1, Lsn(150)));
        // The replica catches up.
        let mut snap = (**r.health()).clone();
        snap.nodes[1].replay_lsn = Some(Lsn(150));
        r.health.store(Arc::new(snap));
        assert_eq!(r.route_sql(&mut s, "SELECT 1", now).unwrap().node, 1);
    }

    #[test]
    fn catch_up_settles_the_breaker_by_outcome() {
        let r = router(1, |c, s| {
            c.routing.breaker_min_reads = 4;
            s.nodes[1].replay_lsn = Some(Lsn(100));
        });
        let mut s = SessionRouting::new();
        let now = Instant::now();
        r.record_write(&mut s, Lsn(150));
        // Caught up in time: a replica read, and the breaker counts it so.
        for _ in 0..8 {
            let d = r.route_sql(&mut s, "SELECT 1", now).unwrap();
            let done = r.catch_up_done(&d, true, now).unwrap();
            assert_eq!(
                (done.node, done.primary, done.reason),
                (1, false, Reason::ReadYourWrites)
            );
            assert!(done.catch_up.is_none());
        }
        assert_eq!(r.breaker_status(now).fallbacks, 0);
        // Not caught up: primary fallbacks until the cap opens the breaker,
        // and then the read-your-writes read is refused, never served stale.
        let mut refused = 0;
        for _ in 0..8 {
            let d = r.route_sql(&mut s, "SELECT 1", now).unwrap();
            match r.catch_up_done(&d, false, now) {
                Ok(done) => assert_eq!((done.node, done.primary), (0, true)),
                Err(RouteError::BreakerOpen { .. }) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused > 0, "the breaker must open on fallbacks");
    }

    #[test]
    fn a_replica_that_cannot_take_a_read_sends_it_to_the_primary_within_the_cap() {
        let r = router(1, |c, _| c.routing.breaker_min_reads = 10);
        let mut s = SessionRouting::new();
        let now = Instant::now();
        let mut taken = Vec::new();
        for _ in 0..10 {
            let d = r.route_sql(&mut s, "SELECT 1", now).unwrap();
            assert_eq!((d.node, d.reason), (1, Reason::Healthy));
            taken.push(d);
        }
        // Two of those ten reads find replica1 refusing connections.
        for d in &taken[..2] {
            let f = r
                .replica_unavailable(d, now)
                .expect("a healthy read may fall back");
            let f = f.unwrap();
            assert_eq!(
                (f.node, f.primary, f.reason, f.write),
                (0, true, Reason::NoReplica, false)
            );
        }
        let b = r.breaker_status(now);
        assert_eq!((b.reads, b.fallbacks), (10, 2), "counted once each");
        // A third is over the 20% cap: refused as the breaker refuses.
        match r.replica_unavailable(&taken[2], now) {
            Some(Err(RouteError::BreakerOpen { .. })) => {}
            other => panic!("{other:?}"),
        }
        // Writes and reads a hint sent to a replica report the error.
        let w = r.route_sql(&mut s, "UPDATE t SET a = 1", now).unwrap();
        assert!(r.replica_unavailable(&w, now).is_none());
        let h = r
            .route_sql(&mut s, "/* lagrouter:route=replica */ SELECT 1", now)
            .unwrap();
        assert_eq!((h.node, h.reason), (1, Reason::Hint));
        assert!(r.replica_unavailable(&h, now).is_none());
    }

    #[test]
    fn no_catch_up_wait_when_disabled() {
        let r = router(1, |c, s| {
            c.routing.read_your_writes_wait = Duration::ZERO;
            s.nodes[1].replay_lsn = Some(Lsn(100));
        });
        let mut s = SessionRouting::new();
        r.record_write(&mut s, Lsn(150));
        let d = r.route_sql(&mut s, "SELECT 1", Instant::now()).unwrap();
        assert_eq!((d.node, d.catch_up), (0, None));
    }

    #[test]
    fn read_your_writes_can_be_turned_off_but_tokens_still_hold() {
        let r = router(1, |c, s| {
            c.routing.read_your_writes = false;
            s.nodes[1].replay_lsn = Some(Lsn(100));
        });
        let mut s = SessionRouting::new();
        let now = Instant::now();
        r.record_write(&mut s, Lsn(150));
        assert_eq!(r.route_sql(&mut s, "SELECT 1", now).unwrap().node, 1);
        // A causal token set inside a multi-statement text takes effect.
        let d = r
            .route_sql(&mut s, "SET lagrouter.min_lsn = '0/96'; SELECT 1", now)
            .unwrap();
        assert_eq!((d.node, d.reason), (0, Reason::ReadYourWrites));
        assert_eq!(s.min_lsn(), Some(Lsn(150)));
        s.apply(&parse_proxy_command("RESET lagrouter.min_lsn").unwrap());
        assert_eq!(r.route_sql(&mut s, "SELECT 1", now).unwrap().node, 1);
    }

    #[test]
    fn default_transaction_read_only_is_tracked() {
        let r = router(1, |_, _| {});
        let mut s = SessionRouting::new();
        let now = Instant::now();
        assert_eq!(r.route_sql(&mut s, "BEGIN", now).unwrap().node, 0);
        r.route_sql(&mut s, "SET default_transaction_read_only = on", now)
            .unwrap();
        assert_eq!(r.route_sql(&mut s, "BEGIN", now).unwrap().node, 1);
        r.route_sql(&mut s, "RESET ALL", now).unwrap();
        assert_eq!(r.route_sql(&mut s, "BEGIN", now).unwrap().node, 0);
    }

    #[test]
    fn breaker_opens_and_is_reported() {
        let r = router(1, |c, s| {
            c.routing.breaker_min_reads = 5;
            c.routing.breaker_window = Duration::from_secs(10);
            s.nodes[1].status.state = NodeState::Lagging;
        });
        let mut s = SessionRouting::new();
        let now = Instant::now();
        for _ in 0..4 {
            assert!(r.route_sql(&mut s, "SELECT 1", now).unwrap().primary);
        }
        let err = r.route_sql(&mut s, "SELECT 1", now).unwrap_err();
        assert_eq!(err.sqlstate(), "53400");
        let st = r.breaker_status(now);
        assert_eq!((st.state.as_str(), st.reads, st.fallbacks), ("open", 4, 4));
        // Writes are unaffected.
        assert!(r.route_sql(&mut s, "DELETE FROM t", now).is_ok());
        // Forced primary reads are not fallbacks, so the breaker lets them by.
        assert!(
            r.route_sql(&mut s, "/* lagrouter:route=primary */ SELECT 1", now)
                .is_ok()
        );
    }

    #[test]
    fn function_catalog_and_config_list_are_used() {
        let r = router(1, |c, _| {
            c.routing.read_only_functions = vec!["random".into()]
        });
        let mut s = SessionRouting::new();
        let now = Instant::now();
        assert_eq!(r.route_sql(&mut s, "SELECT random()", now).unwrap().node, 1);
        assert_eq!(r.route_sql(&mut s, "SELECT calc()", now).unwrap().node, 0);
        r.set_function_catalog(FunctionCatalog::from_rows([("calc", 's')]));
        assert_eq!(r.route_sql(&mut s, "SELECT calc()", now).unwrap().node, 1);
        assert!(r.classifier().classify("SELECT nextval('s')").is_write());
    }

    #[test]
    fn drained_nodes_are_skipped_until_undrained() {
        let r = router(2, |_, _| {});
        let mut s = SessionRouting::new();
        let now = Instant::now();
        r.set_drained(vec!["replica1".into()]);
        assert_eq!(r.drained(), vec!["replica1".to_string()]);
        for _ in 0..6 {
            assert_eq!(r.route_sql(&mut s, "SELECT 1", now).unwrap().node, 2);
        }
        r.set_drained(Vec::new());
        let nodes: Vec<usize> = (0..6)
            .map(|_| r.route_sql(&mut s, "SELECT 1", now).unwrap().node)
            .collect();
        assert!(nodes.contains(&1), "{nodes:?}");
    }

    /// A router whose two replicas tie, a session's view of it, its
    /// config and a new session.
    fn tied_replicas() -> (Router, RouterView, Arc<Config>, SessionRouting) {
        let r = router(2, |_, s| {
            s.nodes[1].lag_bytes = Some(0);
            s.nodes[2].lag_bytes = Some(0);
        });
        let (view, config) = (r.view(), r.config.load_full());
        (r, view, config, SessionRouting::new())
    }

    /// A view takes its last decision back only while everything it was
    /// made on is the same (the debug build checks each such decision
    /// against deciding anew), and decides anew as soon as the snapshot,
    /// the drained list, the session's route or the config changes.
    #[test]
    fn a_decision_is_taken_back_only_while_what_it_was_made_on_holds() {
        let (r, mut view, config, mut s) = tied_replicas();
        let now = Instant::now();
        let route = |view: &mut RouterView, s: &mut SessionRouting, config: &Arc<Config>| {
            let a = view.analyze(config, "SELECT abalance FROM t WHERE aid = 7", Memo::None);
            let (d, _) = view.route(config, s, "SELECT 1", &a, now, &|_| 0);
            d.unwrap().node
        };
        let first = route(&mut view, &mut s, &config);
        assert_ne!(first, 0);
        for _ in 0..5 {
            assert_eq!(route(&mut view, &mut s, &config), first);
        }
        let hits = view.memo.hits;
        assert!(hits >= 3, "{hits} of 5 taken back");

        // The chosen replica lags: a new snapshot, a new decision.
        let mut snap = (**r.health()).clone();
        snap.nodes[first].lag_bytes = Some(200_000);
        r.health.store(Arc::new(snap));
        let other = route(&mut view, &mut s, &config);
        assert!(
            other != first && other != 0,
            "moved off the lagging replica"
        );
        assert_eq!(view.memo.hits, hits);
        assert_eq!(route(&mut view, &mut s, &config), other);
        assert_eq!(view.memo.hits, hits + 1);

        // Drained, then the session's own route.
        r.set_drained(vec![format!("replica{other}")]);
        assert_eq!(
            route(&mut view, &mut s, &config),
            first,
            "the other one is drained"
        );
        r.set_drained(vec![]);
        s.apply(&crate::ProxyCommand::SetRoute(RouteOverride::Primary));
        assert_eq!(
            route(&mut view, &mut s, &config),
            0,
            "SET lagrouter.route = primary"
        );
        assert_eq!(route(&mut view, &mut s, &config), 0);
        s.apply(&crate::ProxyCommand::SetRoute(RouteOverride::Default));
        assert_eq!(route(&mut view, &mut s, &config), other);

        // A config with rules: every decision anew (a rule matches the
        // text, which texts of one shape need not share).
        let mut ruled = (*config).clone();
        ruled.routing.rules = vec![lagrouter_config::RuleConfig {
            pattern: regex::Regex::new("^SELECT 2").expect("pattern"),
            route: lagrouter_config::RuleRoute::Primary,
        }];
        let ruled = Arc::new(ruled);
        let before = view.memo.hits;
        for _ in 0..3 {
            assert_eq!(route(&mut view, &mut s, &ruled), other);
        }
        assert_eq!(view.memo.hits, before, "no decision taken back under rules");
        view.refresh();
        assert!(
            view.memo.last.is_none(),
            "an idle session holds no old decision"
        );
    }

    /// A session that writes in every transaction (pgbench's TPC-B) has a
    /// new last-write LSN each time. Its writes are taken back all the
    /// same: no write depends on it. A replica read does (the replica
    /// must have replayed it), and is decided anew.
    #[test]
    fn a_new_write_position_decides_reads_anew_and_not_writes() {
        let (r, mut view, config, mut s) = tied_replicas();
        let now = Instant::now();
        let mut route = |s: &mut SessionRouting, sql: &str| {
            let a = view.analyze(&config, sql, Memo::None);
            let (d, _) = view.route(&config, s, sql, &a, now, &|_| 0);
            (d.unwrap(), view.memo.hits)
        };
        let update = "UPDATE t SET abalance = abalance + 1 WHERE aid = 7";
        // Twice first: the text's analysis is cached at the first.
        route(&mut s, update);
        let (first, before) = route(&mut s, update);
        assert!(first.primary && first.write);
        for lsn in 1..=4u64 {
            s.record_write(Lsn(lsn * 100), None);
            let (d, h) = route(&mut s, update);
            assert_eq!(d, first);
            assert_eq!(h, before + lsn, "the write after LSN {lsn} taken back");
        }

        // A replica that has replayed up to 1000 only.
        let mut snap = (**r.health()).clone();
        for n in &mut snap.nodes[1..] {
            n.replay_lsn = Some(Lsn(1000));
        }
        r.health.store(Arc::new(snap));
        let select = "SELECT abalance FROM t WHERE aid = 7";
        s.record_write(Lsn(900), None);
        route(&mut s, select);
        let (read, h0) = route(&mut s, select);
        assert!(!read.primary, "both replicas have 900");
        let (again, h1) = route(&mut s, select);
        assert_eq!(
            (again.node, h1),
            (read.node, h0 + 1),
            "the same inputs: taken back"
        );
        s.record_write(Lsn(2000), None);
        let (after, h2) = route(&mut s, select);
        assert!(after.primary, "no replica has 2000: {after:?}");
        assert_eq!(h2, h1, "a new write position: decided anew");
    }

    /// A session's view sees a new snapshot, drained list, catalog and
    /// `read_only_functions` at its next question, and hands back the
    /// snapshot its decision was made on.
    #[test]
    fn a_view_sees_each_change_at_the_next_question() {
        let (r, mut view, config, mut s) = tied_replicas();
        let now = Instant::now();
        let mut route = |view: &mut RouterView, config: &Arc<Config>, sql: &str| {
            let a = view.analyze(config, sql, Memo::None);
            let (d, snap) = view.route(config, &mut s, sql, &a, now, &|_| 0);
            let d = d.unwrap();
            (d.node, snap.nodes[d.node].name.clone())
        };
        let first = route(&mut view, &config, "SELECT 1");
        assert_ne!(first.0, 0, "a read goes to a replica");

        r.set_drained(vec![first.1.clone()]);
        let other = route(&mut view, &config, "SELECT 1");
        assert_ne!(other.1, first.1, "the drained replica is skipped at once");

        let mut snap = (**r.health()).clone();
        snap.nodes.swap(1, 2);
        r.health.store(Arc::new(snap));
        assert_eq!(view.health().nodes[1].name, "replica2", "the new snapshot");
        let (node, name) = route(&mut view, &config, "SELECT 1");
        assert_eq!(name, other.1, "the index is of the snapshot handed back");
        assert_eq!(view.health().nodes[node].name, name);

        assert_eq!(route(&mut view, &config, "SELECT calc()").0, 0);
        r.set_function_catalog(FunctionCatalog::from_rows([("calc", 's')]));
        assert_ne!(
            route(&mut view, &config, "SELECT calc()").0,
            0,
            "new catalog"
        );

        assert_eq!(route(&mut view, &config, "SELECT calc2()").0, 0);
        let mut reloaded = (*config).clone();
        reloaded.routing.read_only_functions = vec!["calc2".into()];
        let reloaded = Arc::new(reloaded);
        assert_ne!(
            route(&mut view, &reloaded, "SELECT calc2()").0,
            0,
            "the transaction's config's read_only_functions"
        );
        let writes = view.analyze_in_transaction("SELECT calc2()", Memo::None, |a| a.writes);
        assert!(!writes, "kept for the transaction's statements");

        view.refresh();
        assert!(Arc::ptr_eq(view.health(), &r.health()));
    }

    #[test]
    fn no_primary_refuses_writes_with_a_clear_error() {
        let r = router(1, |_, s| s.primary = PrimaryStatus::None);
        let err = r.route_sql(
            &mut SessionRouting::new(),
            "INSERT INTO t VALUES (1)",
            Instant::now(),
        );
        assert_eq!(err.unwrap_err().sqlstate(), "57P03");
    }
}
