//! Attaching a server connection to a transaction: routing, read-your-writes
//! catch-up, the pool of the chosen node, and restoring the session's settings.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use lagrouter_config::Config;
use lagrouter_health::{HealthSnapshot, Lsn};
use lagrouter_routing::{Analysis, AnalysisMemo, Memo, RouteDecision, ServerEffects};

use crate::auth::UserAuth;
use crate::error::ProxyError;
use crate::listener::{NodesCache, Shared};
use crate::protocol::MAX_MESSAGE_LEN;
use crate::protocol::backend::{self, Severity};
use crate::protocol::expect::{Action, Req};
use crate::protocol::frontend::{self, ClientMsg};
use crate::protocol::tag::fe;
use crate::server::{PoolKey, PooledConn, ServerPool};

use super::open::OpenTxn;
use super::*;

/// What a statement inside an attached transaction needs of its
/// analysis, copied out of it (the analysis is lent: no reference count).
#[derive(Debug, Clone, Copy)]
pub(super) struct InTransaction {
    pub(super) writes: bool,
    pub(super) server: ServerEffects,
    pub(super) names_lagrouter: bool,
}

impl InTransaction {
    fn of(a: &Analysis) -> InTransaction {
        InTransaction {
            writes: a.writes,
            server: a.server,
            names_lagrouter: a.names_lagrouter,
        }
    }
}

/// A transaction routed and not attached yet ([`Session::route_now`]).
pub(super) struct Routed {
    pub(super) decision: RouteDecision,
    /// The pool of the node routing picked.
    pool: Arc<ServerPool>,
    /// The replica's connection, when the read waited for it to catch up.
    caught_up: Option<PooledConn>,
    /// Whether the analyzed text may write.
    writes: bool,
    /// What the text does to its server connection, when it was analyzed
    /// alone (not as a batch).
    effects: Option<ServerEffects>,
    /// When it was routed.
    pub(super) now: Instant,
}

impl Routed {
    /// Whether it holds nothing yet: a decision and a pool, no connection.
    pub(super) fn holds_nothing(&self) -> bool {
        self.caught_up.is_none()
    }
}

/// A text analyzed for routing and not routed yet
/// ([`Session::analyze_to_route`]).
pub(super) struct ToRoute {
    /// The batch's texts joined, when routing reads more than the
    /// message's own text.
    batch: Option<String>,
    analysis: Arc<Analysis>,
}

impl ToRoute {
    /// Whether the text routing read names `lagrouter`. When it does not,
    /// no statement of it is one the proxy answers
    /// ([`lagrouter_routing::parse_proxy_command`] is `None`): the read
    /// text holds the message's own in full.
    pub(super) fn names_lagrouter(&self) -> bool {
        self.analysis.names_lagrouter
    }
}

/// How far [`Session::attach_to_now`] got.
pub(super) enum Attach {
    /// Attached; what the text does to its connection, when it was
    /// analyzed alone.
    Done(Option<ServerEffects>),
    /// To finish with [`Session::attach_waiting`].
    Wait(AttachWait),
}

/// [`Session::attach_waiting`]'s future.
pub(super) type AttachFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<ServerEffects>, ProxyError>> + Send + 'a>>;

/// What a message that starts a transaction waits for before it goes on,
/// when its routing did not attach at once (see [`Session::attach_later`]).
pub(super) enum Later {
    /// The routed transaction's connection ([`Session::attach_waiting`]).
    Wait(AttachWait),
    /// The whole of [`Session::attach`]: a `BEGIN` the proxy held back
    /// goes first, or a server is attached already.
    Attach,
}

/// What an attach waits for.
pub(super) enum AttachWait {
    /// A connection of the routed node's pool (or the fallback).
    Pool(Routed),
    /// A replica to catch up with the session's writes.
    CatchUp(Box<CatchUpWait>),
}

/// What [`Session::route_now`] did: routed, or a read that is to wait
/// for a replica to catch up first ([`Session::caught_up`]).
pub(super) enum Routing {
    Done(Routed),
    CatchUp(Box<CatchUpWait>),
}

/// A read routed to wait for `replica` to replay `lsn`, and what its
/// [`Routed`] will carry.
pub(super) struct CatchUpWait {
    decision: RouteDecision,
    replica: usize,
    lsn: Lsn,
    writes: bool,
    effects: Option<ServerEffects>,
    now: Instant,
}

impl<S: ClientStream> Session<S> {
    /// [`Self::attach`] when a server is attached already: no routing and
    /// nothing to wait for, so the hot path (every message inside a
    /// transaction, [`Self::on_client_message_now`]) calls it without
    /// building `attach`'s future. `None` when nothing is attached.
    ///
    /// Inside the transaction the only question is whether it now writes
    /// (the statement's memo, or the session's last texts, or a cache
    /// lookup; the classifier's inputs were brought up to date at attach).
    /// The analysis also says what `sql` does to the connection, so the
    /// caller need not look for it again.
    #[inline]
    pub(super) fn attached(
        &mut self,
        sql: &str,
        memo: Option<&AnalysisMemo>,
    ) -> Option<Option<ServerEffects>> {
        let analysis = self.attached_analysis(sql, memo)?;
        Some(analysis.map(|a| self.runs_in_transaction(a)))
    }

    /// [`Self::attached`] without acting on the analysis: `Some(None)`
    /// when routing does not analyze `sql`. The caller passes what it
    /// sends on to [`Self::runs_in_transaction`].
    #[inline]
    pub(super) fn attached_analysis(
        &mut self,
        sql: &str,
        memo: Option<&AnalysisMemo>,
    ) -> Option<Option<InTransaction>> {
        self.server.as_ref()?;
        if self.txn != Txn::Primary || sql.is_empty() {
            return Some(None);
        }
        let memo = match memo {
            Some(m) => Memo::Statement(m),
            None => Memo::Last(&mut self.last_in_txn),
        };
        Some(Some(self.view.analyze_in_transaction(
            sql,
            memo,
            InTransaction::of,
        )))
    }

    /// A statement of the attached transaction analyzed as `analysis` goes
    /// to the server: one that may write makes the transaction a write.
    /// What it does to the connection.
    #[inline]
    pub(super) fn runs_in_transaction(&mut self, analysis: InTransaction) -> ServerEffects {
        if analysis.writes {
            self.txn = Txn::Write;
        }
        analysis.server
    }

    /// Attaches a server connection for the transaction that starts with
    /// `sql`, if none is attached. For an extended-protocol message
    /// (`frame`), the rest of its batch is classified with it. `memo` is
    /// where a prepared statement keeps the analysis of its text `sql`.
    /// Returns what `sql` does to its server connection when it analyzed
    /// `sql` alone.
    ///
    /// A transaction whose `BEGIN` the proxy answered ([`OpenTxn::Begun`])
    /// goes where that `BEGIN` was routed, and the `BEGIN` goes in front
    /// of `sql`, which is then a statement inside it. When that fails, the
    /// client's transaction is a failed one ([`OpenTxn::Failed`]).
    pub(super) async fn attach(
        &mut self,
        sql: &str,
        frame: Option<&[u8]>,
        memo: Option<&AnalysisMemo>,
    ) -> Result<Option<ServerEffects>, ProxyError> {
        if let Some(fx) = self.attached(sql, memo) {
            return Ok(fx);
        }
        // Each step is a plain function first, and a future (boxed: the
        // waits are rare and their futures large) only when it must wait:
        // this is every transaction's path.
        let OpenTxn::Begun {
            sql: begin,
            routed,
            extended,
        } = std::mem::take(&mut self.open)
        else {
            let to = self.analyze_to_route(sql, frame, memo);
            return match self.attach_to_now(sql, to)? {
                Attach::Done(fx) => Ok(fx),
                Attach::Wait(wait) => self.attach_waiting(wait).await,
            };
        };
        // Checked out now: the pool judges its idle connections by this
        // clock, not the `BEGIN`'s.
        let mut routed = *routed;
        routed.now = crate::rt::now();
        let attached = match self.attach_routed_now(routed) {
            Ok(_) => Ok(()),
            Err(routed) => small_box(self.attach_routed_waiting(routed))
                .await
                .map(drop),
        };
        if let Err(e) = attached {
            self.open = OpenTxn::failed();
            return Err(e);
        }
        let out = &mut self.to_server;
        if extended {
            // As the client sent it, but for the Sync: the server answers
            // with the client's next Sync, in one write.
            frontend::encode_parse(out, "", begin.as_bytes(), &[0, 0]);
            out.extend_from_slice(frontend::BIND_EXECUTE_UNNAMED);
            for req in [Req::Parse, Req::Bind, Req::Execute] {
                self.expect.push_quiet(req);
            }
        } else {
            frontend::encode_query(out, &begin);
            self.expect.push(Req::Query, Action::Drop);
        }
        Ok(self.attached(sql, memo).flatten())
    }

    /// [`Self::attach`] of a transaction the proxy did not begin, routed
    /// by `to` (the analysis of `sql`, or of its batch), as far as it goes
    /// without waiting. A caller that made `to` ahead, when
    /// [`Self::routes_next`], attaches with this and no future for the
    /// common case. A failed block the proxy held is over, as in `attach`.
    ///
    /// Out of line: the routing and the checkout then inline into it
    /// (inlined into the message handler, they did not), 175 instructions
    /// less per extended transaction under callgrind.
    #[inline(never)]
    pub(super) fn attach_to_now(&mut self, sql: &str, to: ToRoute) -> Result<Attach, ProxyError> {
        self.open = OpenTxn::None;
        Ok(match self.route_analyzed(sql, to)? {
            Routing::Done(routed) => match self.attach_routed_now(routed) {
                Ok(fx) => Attach::Done(fx),
                Err(routed) => Attach::Wait(AttachWait::Pool(routed)),
            },
            Routing::CatchUp(wait) => Attach::Wait(AttachWait::CatchUp(wait)),
        })
    }

    /// The rest of [`Self::attach_to_now`]: the wait, then the attach;
    /// boxed, as every wait is (see [`Self::attach`]).
    ///
    /// Each wait gets a box of its own size: one future holding both
    /// would be as large as the two together (1,184 bytes, where a pool
    /// wait alone is under 600), past the 1 KiB up to which the allocator
    /// serves a box from its free lists. Above that, each box took about
    /// 240 instructions, and at 400 clients on 20 connections most
    /// transactions wait for the pool.
    pub(super) fn attach_waiting(&mut self, wait: AttachWait) -> AttachFuture<'_> {
        match wait {
            AttachWait::Pool(routed) => small_box(self.attach_routed_waiting(routed)),
            AttachWait::CatchUp(wait) => small_box(async move {
                let routed = self.caught_up(*wait).await?;
                match self.attach_routed_now(routed) {
                    Ok(fx) => Ok(fx),
                    Err(routed) => self.attach_routed_waiting(routed).await,
                }
            }),
        }
    }

    /// The rest of an attach that a message's plain first step (a Parse's
    /// or a Bind's) left as `later`, for the text `sql` of the message
    /// `frame` (`memo` as for [`Self::attach`]): boxed, as every wait is.
    pub(super) fn attach_later<'a>(
        &'a mut self,
        later: Later,
        sql: &'a str,
        frame: &'a [u8],
        memo: Option<&'a AnalysisMemo>,
    ) -> AttachFuture<'a> {
        match later {
            Later::Wait(wait) => self.attach_waiting(wait),
            Later::Attach => small_box(self.attach(sql, Some(frame), memo)),
        }
    }

    /// Routes the transaction that starts with `sql` (see
    /// [`Self::attach`]): where it goes, and the pool there; or, for a
    /// read that is to wait for a replica to catch up first, what
    /// [`Self::caught_up`] needs.
    pub(super) fn route_now(
        &mut self,
        sql: &str,
        frame: Option<&[u8]>,
        memo: Option<&AnalysisMemo>,
    ) -> Result<Routing, ProxyError> {
        let to = self.analyze_to_route(sql, frame, memo);
        self.route_analyzed(sql, to)
    }

    /// Whether the next [`Self::attach`] routes (nothing is attached and
    /// no `BEGIN` is held), so that an analysis made ahead for it is used.
    pub(super) fn routes_next(&self) -> bool {
        self.server.is_none() && !matches!(self.open, OpenTxn::Begun { .. })
    }

    /// The analysis [`Self::route_now`] routes by, on the latest config:
    /// of the batch's texts joined for an extended-protocol message
    /// (`frame`) in a batch of several, else of `sql` alone. Made ahead
    /// by a caller that needs it before it attaches (whether the text can
    /// be a proxy command), and then handed to [`Self::attach`].
    #[inline]
    pub(super) fn analyze_to_route(
        &mut self,
        sql: &str,
        frame: Option<&[u8]>,
        memo: Option<&AnalysisMemo>,
    ) -> ToRoute {
        let current = self.config_cache.load();
        if !Arc::ptr_eq(current, &self.config) {
            self.config = current.clone();
        }
        let batch = frame.and_then(|_| self.batch_text(sql));
        let text = batch.as_deref().unwrap_or(sql);
        // A batch's joined text is analyzed as a whole, with no memo (a
        // statement's is of `sql` alone; a session's last text is of one
        // statement, as is most traffic).
        let memo = match (memo, &batch) {
            (_, Some(_)) => Memo::None,
            (Some(m), None) => Memo::Statement(m),
            (None, None) => Memo::Last(&mut self.last_routed),
        };
        let analysis = self.view.analyze(&self.config, text, memo);
        ToRoute { batch, analysis }
    }

    /// [`Self::route_now`] of the text `to` analyzed.
    fn route_analyzed(&mut self, sql: &str, to: ToRoute) -> Result<Routing, ProxyError> {
        let ToRoute { batch, analysis } = to;
        let text = batch.as_deref().unwrap_or(sql);
        let now = crate::rt::now();
        // One health snapshot for the decision and the pool it names (a
        // catch-up wait finds the pool anew after it).
        let (routed, pool) = {
            // Only `balance = "least_connections"` asks: connections in use
            // to a node by everyone, in this user's and database's pool.
            let (user, database) = (self.user.name.as_str(), &*self.database);
            let pools = &self.shared.pools;
            let in_use = |node: &str| pools.in_use(node, user, database);
            let (routed, snap) = self.view.route(
                &self.config,
                &mut self.routing,
                text,
                &analysis,
                now,
                &in_use,
            );
            let pool = match &routed {
                Ok(d) if d.catch_up.is_none() => Some(self.pools.find(
                    &self.shared,
                    &self.config,
                    &self.user,
                    &self.database,
                    snap,
                    d.node,
                )),
                _ => None,
            };
            (routed, pool)
        };
        let decision = match routed {
            Ok(d) => d,
            Err(e) => {
                self.shared.route_counters.refused(e.label());
                return Err(e.into());
            }
        };
        let writes = analysis.writes;
        let effects = batch.is_none().then_some(analysis.server);
        if let Some(cu) = decision.catch_up {
            return Ok(Routing::CatchUp(Box::new(CatchUpWait {
                decision,
                replica: cu.replica,
                lsn: cu.lsn,
                writes,
                effects,
                now,
            })));
        }
        let pool = match pool {
            Some(found) => found?,
            None => self.pool_for(decision.node)?,
        };
        Ok(Routing::Done(Routed {
            decision,
            pool,
            caught_up: None,
            writes,
            effects,
            now,
        }))
    }

    /// [`Self::route_now`] of a read that waits for a replica to catch up:
    /// the wait, then the decision it leads to and the pool there. A read
    /// that caught up holds that replica's connection.
    pub(super) async fn caught_up(&mut self, wait: CatchUpWait) -> Result<Routed, ProxyError> {
        let caught_up = self.catch_up(wait.replica, wait.lsn).await;
        let decision = match self.shared.router.catch_up_done(
            &wait.decision,
            caught_up.is_some(),
            Instant::now(),
        ) {
            Ok(d) => d,
            Err(e) => {
                self.shared.route_counters.refused(e.label());
                return Err(e.into());
            }
        };
        let pool = self.pool_for(decision.node)?;
        Ok(Routed {
            decision,
            pool,
            caught_up,
            writes: wait.writes,
            effects: wait.effects,
            now: wait.now,
        })
    }

    /// Attaches a server connection where `routed` says, when nothing
    /// needs waiting for: with the connection of a read that caught up,
    /// or an idle one of the pool ([`ServerPool::try_checkout`]).
    /// Otherwise `routed` comes back for [`Self::attach_routed_waiting`],
    /// nothing taken.
    pub(super) fn attach_routed_now(
        &mut self,
        routed: Routed,
    ) -> Result<Option<ServerEffects>, Routed> {
        let Routed {
            decision,
            pool,
            caught_up,
            writes,
            effects,
            now,
        } = routed;
        let got = match caught_up {
            Some(pc) if !decision.primary => Ok(pc),
            // A replica that refused a moment ago: the slow path answers.
            _ if !decision.primary && pool.refused_recently(now).is_some() => Err(pool),
            _ => pool.try_checkout(&self.config.pool, now),
        };
        match got {
            Ok(pc) => Ok(self.attach_conn(decision, pc, writes, effects)),
            Err(pool) => Err(Routed {
                decision,
                pool,
                caught_up: None,
                writes,
                effects,
                now,
            }),
        }
    }

    /// [`Self::attach_routed_now`] when it could not: waits for
    /// a connection of the pool, or falls back to the primary. Only for
    /// `routed` as `attach_routed_now` gave it back, just now: the pool is
    /// not tried again before the wait.
    ///
    /// A plain function around an `async` block: the block holds only
    /// what the wait needs, where an `async fn` keeps its argument
    /// twice (as it came, and taken apart) and pads around both.
    pub(super) fn attach_routed_waiting(
        &mut self,
        routed: Routed,
    ) -> impl Future<Output = Result<Option<ServerEffects>, ProxyError>> + Send + '_ {
        let Routed {
            decision,
            pool,
            writes,
            effects,
            now,
            caught_up,
        } = routed;
        drop(caught_up);
        // A replica that refused a moment ago is not asked again.
        let refused = (!decision.primary)
            .then(|| pool.refused_recently(now))
            .flatten();
        async move {
            let got = match refused {
                Some(e) => Err(e),
                // `attach_routed_now` tried the pool a moment ago.
                None => {
                    pool.checkout_waiting(&self.config.pool, &self.user.server_login, now)
                        .await
                }
            };
            let (decision, pc) = match got {
                Ok(pc) => (decision, pc),
                Err(e) => Box::pin(self.instead_of_replica(&decision, e)).await?,
            };
            Ok(self.attach_conn(decision, pc, writes, effects))
        }
    }

    /// Attaches `pc`, where `decision` placed the transaction.
    fn attach_conn(
        &mut self,
        decision: RouteDecision,
        mut pc: PooledConn,
        writes: bool,
        effects: Option<ServerEffects>,
    ) -> Option<ServerEffects> {
        pc.pool()
            .counts
            .record(decision.primary, decision.write, decision.reason);
        if let Some(notice) = &decision.notice {
            backend::error_response(&mut self.to_client, Severity::Notice, "01000", notice, None);
        }
        self.txn = match (decision.primary, decision.write, writes) {
            (false, _, _) => Txn::Replica,
            (true, true, true) => Txn::Write,
            // The session's last write has no known position: this
            // transaction's end asks the primary for one.
            (true, _, _) if self.routing.write_unresolved() => Txn::Write,
            (true, true, false) => Txn::Primary,
            (true, false, _) => Txn::Other,
        };
        let conn = pc.conn();
        if conn.synced_to != self.params.fingerprint() {
            if let Some(sync) = self.params.sync_sql(&conn.params) {
                frontend::encode_query(&mut self.to_server, &sync.sql);
                self.expect.push(Req::Query, Action::Drop);
                for (k, v) in sync.set {
                    conn.params.insert(k, v);
                }
                for k in sync.reset {
                    conn.params.remove(&k);
                }
            }
            conn.synced_to = self.params.fingerprint();
        }
        self.cancel.attach(conn.cancel_target());
        self.server = Some(pc);
        self.wait.attached();
        if let Some(c) = &self.registered {
            c.attached(decision.node);
        }
        effects
    }

    /// A read placed on a healthy replica whose connection could not be
    /// had there (`failed`: the node refused the connection or the login,
    /// as a replica that crashed, restarts, or has not replayed a new role
    /// yet does; or it did so less than [`crate::server::REFUSED_FOR`]
    /// ago, and is not asked again): nothing was sent, so it goes to the
    /// primary if the breaker admits it
    /// ([`lagrouter_routing::Router::replica_unavailable`]). Otherwise, and
    /// for any other decision or error (a full pool), the client gets the
    /// error.
    async fn instead_of_replica(
        &mut self,
        decision: &RouteDecision,
        failed: ProxyError,
    ) -> Result<(RouteDecision, PooledConn), ProxyError> {
        if !matches!(
            failed,
            ProxyError::NodeConnect { .. }
                | ProxyError::NodeAuth { .. }
                | ProxyError::NodeProtocol { .. }
        ) {
            return Err(failed);
        }
        let shared = self.shared.clone();
        let fallback = match shared.router.replica_unavailable(decision, Instant::now()) {
            None => return Err(failed),
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                shared.route_counters.refused(e.label());
                return Err(e.into());
            }
        };
        tracing::debug!(%failed, "a replica read goes to the primary instead");
        let pc = self
            .pool_for(fallback.node)?
            .checkout(&self.config.pool, &self.user.server_login, Instant::now())
            .await?;
        Ok((fallback, pc))
    }

    /// Waits, up to `routing.read_your_writes_wait`, for `replica` to replay
    /// `lsn` (on the shared [`ReplayWaiter`](lagrouter_health::ReplayWaiter),
    /// which polls each replica once for all sessions waiting on it), then
    /// checks out a connection to it for the read, within what is left of
    /// the wait. `None` when it did not catch up in time or no connection
    /// was free: the read falls back to the primary.
    pub(super) async fn catch_up(&mut self, replica: usize, lsn: Lsn) -> Option<PooledConn> {
        let wait = self.config.routing.read_your_writes_wait;
        let deadline = Instant::now() + wait;
        let pool = self.pool_for(replica).ok()?;
        let replay = self.shared.replay.clone();
        if !replay.wait_node(&pool.key.node, lsn, wait).await {
            return None;
        }
        let mut cfg = self.config.pool.clone();
        cfg.checkout_timeout = deadline.saturating_duration_since(Instant::now());
        pool.checkout(&cfg, &self.user.server_login, Instant::now())
            .await
            .ok()
    }

    /// The pool for the node routing picked, in the latest health
    /// snapshot: see [`SessionPools::find`].
    pub(in crate::session) fn pool_for(
        &mut self,
        node: usize,
    ) -> Result<Arc<ServerPool>, ProxyError> {
        let snap = self.view.health();
        self.pools.find(
            &self.shared,
            &self.config,
            &self.user,
            &self.database,
            snap,
            node,
        )
    }

    /// The statement texts of the rest of the buffered batch (up to Sync
    /// or Flush) joined to `sql`, when there is more than `sql`, so the
    /// batch is routed as the one implicit transaction it is.
    pub(super) fn batch_text(&mut self, sql: &str) -> Option<String> {
        // Catch up with what arrived since the last scan (a batch over the
        // lookahead limit is routed before it is whole).
        self.batch.complete(&self.cbuf, MAX_MESSAGE_LEN);
        let mut texts: Vec<&str> = Vec::new();
        let mut foreign = false;
        self.batch_texts(|t| match t {
            BatchText::Text(t) => texts.push(t),
            BatchText::Foreign(_) => foreign = true,
        });
        if foreign {
            return self.foreign_batch_text(sql);
        }
        joined(sql, texts)
    }

    /// [`Self::batch_text`] for a batch with a `Parse` whose text is not
    /// UTF-8, read as [`ClientMsg::decode_foreign`] reads it. Out of line:
    /// rare, and the common path keeps borrowing every text.
    #[cold]
    #[inline(never)]
    fn foreign_batch_text(&self, sql: &str) -> Option<String> {
        let enc = self.text_encoding();
        let mut texts: Vec<Cow<'_, str>> = Vec::new();
        self.batch_texts(|t| match t {
            BatchText::Text(t) => texts.push(Cow::Borrowed(t)),
            BatchText::Foreign(body) => {
                let mut readable = String::new();
                if ClientMsg::decode_foreign(fe::PARSE, body, enc, &mut readable).is_some() {
                    texts.push(Cow::Owned(readable));
                }
            }
        });
        joined(sql, texts)
    }

    /// Hands `each` the statement texts of the buffered batch, in order:
    /// each `Parse`'s, and the kept text of each `Bind` of a named
    /// statement. A `Parse` that does not decode (its text not UTF-8, or
    /// malformed: then the session ends when the `Parse` is handled, and
    /// nothing is routed) comes as its body.
    fn batch_texts<'s>(&'s self, mut each: impl FnMut(BatchText<'s>)) {
        for (tag, at) in self.batch.statement_frames() {
            let body = &self.cbuf[at.start + 5..at.end];
            match tag {
                fe::PARSE => match frontend::decode_parse(body) {
                    Ok(p) => each(BatchText::Text(p.query)),
                    Err(_) => each(BatchText::Foreign(body)),
                },
                _ => {
                    // Bind. The unnamed statement is never kept: its Parse
                    // is in the batch.
                    if let Ok(b) = frontend::decode_bind(body)
                        && !b.statement.is_empty()
                        && let Some(s) = self.statements.get(b.statement)
                    {
                        each(BatchText::Text(&s.query));
                    }
                }
            }
        }
    }
}

/// One statement text of a buffered batch ([`Session::batch_texts`]).
enum BatchText<'s> {
    Text(&'s str),
    /// The body of a `Parse` that did not decode.
    Foreign(&'s [u8]),
}

/// `sql` and the batch's other `texts` (neither empty nor `sql` itself),
/// one statement after another; `None` when there are none.
#[inline]
fn joined<T: AsRef<str>>(sql: &str, mut texts: Vec<T>) -> Option<String> {
    texts.retain(|t| !t.as_ref().is_empty() && t.as_ref() != sql);
    if texts.is_empty() {
        return None;
    }
    let mut all = String::from(sql);
    for t in texts {
        all.push_str(";\n");
        all.push_str(t.as_ref());
    }
    Some(all)
}

/// The pools a session used, by node, and its cache of the configured
/// nodes' addresses.
pub(in crate::session) struct SessionPools {
    list: Vec<Arc<ServerPool>>,
    nodes: NodesCache,
}

impl SessionPools {
    pub(in crate::session) fn new(shared: &Shared) -> Self {
        SessionPools {
            list: Vec::new(),
            nodes: NodesCache::new(shared.nodes.clone()),
        }
    }

    /// Brings the nodes' cache up to date (an idle session).
    pub(in crate::session) fn refresh(&mut self) {
        self.nodes.load();
    }

    /// The pool for node `node` of `snap` (the snapshot routing used).
    /// Routing names nodes by their index in its health snapshot; the pool
    /// is found by the node's *name*, so a reload that reorders, adds or
    /// removes nodes (snapshots follow a round later) can never send a
    /// transaction to the wrong node.
    pub(in crate::session) fn find(
        &mut self,
        shared: &Shared,
        config: &Config,
        user: &UserAuth,
        database: &Arc<str>,
        snap: &HealthSnapshot,
        node: usize,
    ) -> Result<Arc<ServerPool>, ProxyError> {
        let gone = |what: String| {
            ProxyError::Route(lagrouter_routing::RouteError::NoPrimary {
                detail: format!("{what} is no longer in the configuration"),
                unreachable: false,
            })
        };
        let name = snap
            .nodes
            .get(node)
            .map(|n| n.name.as_str())
            .ok_or_else(|| gone(format!("node #{node}")))?;
        let addr = self
            .nodes
            .load()
            .iter()
            .find(|n| &*n.name == name)
            .ok_or_else(|| gone(format!("node \"{name}\"")))?;
        let size = config.pool.size;
        if let Some(p) = self.list.iter().find(|p| p.node == *addr)
            && p.size() == size
        {
            return Ok(p.clone());
        }
        let key = PoolKey {
            node: addr.name.clone(),
            user: user.name.as_str().into(),
            database: database.clone(),
        };
        let pool = shared.pools.get(key, addr.clone(), size, |name| {
            shared.route_counters.node(name)
        });
        if pool.size() != size {
            pool.resize(size);
        }
        self.list.retain(|p| p.key.node != pool.key.node);
        self.list.push(pool.clone());
        Ok(pool)
    }
}
