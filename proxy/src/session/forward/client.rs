//! Client messages: each decoded and handled, with what they do to the
//! session (prepared statements, pins, statements the proxy answers).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use lagrouter_routing::{ProxyCommand, ServerEffects, parse_proxy_command};

use crate::error::ProxyError;
use crate::protocol::expect::{Action, Req};
use crate::protocol::frontend::{self, ClientMsg};
use crate::protocol::tag::{be, fe, status, target};
use crate::protocol::text::TextEncoding;
use crate::session::local;
use crate::session::statements::Statement;

use super::attach::{Attach, Later, ToRoute};
use super::*;

/// What [`Session::bind_now`] left to do before the Bind goes on.
enum BindNext {
    /// Nothing: the Bind was handled.
    Done,
    /// A Bind of the proxy's own statement ([`Session::bind_local`]).
    Local(ProxyCommand),
    /// The attach's wait, then the Bind ([`Session::bind_waiting`]).
    Later(Later, Option<Arc<Statement>>),
}

/// How far [`Session::attach_named_now`] got.
enum Named {
    /// Attached (or failed to), with the client's statement prepared on
    /// the server.
    Ready(Result<Option<Arc<Statement>>, ProxyError>),
    /// To finish with [`Session::attach_named_later`].
    Later(Later, Option<Arc<Statement>>),
}

/// The text a client's statement routes by and where its analysis is
/// kept: none for the unnamed statement or a name never prepared.
fn route_input(stmt: &Option<Arc<Statement>>) -> (&str, Option<&lagrouter_routing::AnalysisMemo>) {
    match stmt {
        Some(s) => (&s.query, Some(&s.analysis)),
        None => ("", None),
    }
}

impl<S: ClientStream> Session<S> {
    /// Handles one client message with no future when nothing in it
    /// waits: every message of a transaction that has its server (the hot
    /// path), and what a failed batch drops. `None`: the message needs
    /// [`Self::on_client_message`] (routing a new transaction, the proxy's
    /// own statements, a malformed or unexpected message, leaving a replica
    /// for a write), which decodes it again. What a handler leaves in the
    /// synthetic queue is drained by the caller.
    pub(super) fn on_client_message_now(
        &mut self,
        tag: u8,
        frame: &[u8],
    ) -> Option<Result<(), End>> {
        if self.discard_until_sync {
            match tag {
                fe::SYNC => {
                    self.discard_until_sync = false;
                    self.commit_bound = false;
                    self.synthetic_ready();
                }
                fe::TERMINATE => return Some(Err(End::Client)),
                _ => {}
            }
            return Some(Ok(()));
        }
        if self.server.is_none() || (self.txn == Txn::Replica && self.expect.unsynced_idle()) {
            return None;
        }
        let Ok(Some(msg)) = ClientMsg::decode(tag, &frame[5..]) else {
            return None;
        };
        match msg {
            ClientMsg::Query(sql) => {
                let fx = self.attached_effects(sql)?;
                if !self.deallocate_locally(sql) {
                    self.query_on_server(sql, frame, fx);
                }
            }
            ClientMsg::Parse(p) => {
                let fx = self.attached_effects(p.query)?;
                self.local.forget_statement(p.name);
                self.parse_on_server(&p, frame, self.effects_of(p.query, fx));
            }
            ClientMsg::Bind(b) => {
                if self.local.statement(b.statement).is_some() {
                    return None;
                }
                self.local.forget_portal(b.portal);
                let stmt = self.attached_for(b.statement)?;
                self.bind_on_server(&b, frame, stmt);
            }
            ClientMsg::Describe(t) => {
                if self.local_target(&t).is_some() {
                    return None;
                }
                let stmt = self.attached_for(described_statement(&t))?;
                self.describe_on_server(&t, frame, stmt);
            }
            ClientMsg::Close(t) => self.on_close(t, frame),
            ClientMsg::Execute { portal } => {
                if self.local.portal(portal).is_some() {
                    return None;
                }
                self.forward(frame, Req::Execute);
            }
            ClientMsg::FunctionCall => self.function_call_on_server(frame),
            ClientMsg::Sync => self.on_sync(frame),
            ClientMsg::Flush | ClientMsg::Copy => self.to_server.extend_from_slice(frame),
            ClientMsg::Terminate => return Some(Err(End::Client)),
        }
        Some(Ok(()))
    }

    /// Whether `sql`, a statement of the attached transaction that routing
    /// does not analyze (see [`Self::attached`]), holds none of the words
    /// a proxy command or a server effect needs: then one pass over the
    /// text answers both, where each would make its own.
    fn inert(&self, sql: &str) -> bool {
        self.txn != Txn::Primary && lagrouter_routing::inert_text(sql)
    }

    /// What `sql`, a statement of the attached transaction, does on the
    /// server: nothing when it is [`Self::inert`], else what
    /// [`Self::attached`] finds (`Some(None)` when routing does not
    /// analyze it). `None` when it is a statement the proxy answers
    /// itself (handled by [`Self::on_client_message`]). An analyzed text
    /// is looked for `lagrouter` only when its analysis says the word is
    /// in it: a statement of a transaction not yet writing is analyzed
    /// anyway, and the analysis (most often a kept one, compared) spares
    /// that pass over the text.
    fn attached_effects(&mut self, sql: &str) -> Option<Option<ServerEffects>> {
        if self.inert(sql) {
            return Some(Some(ServerEffects::default()));
        }
        let analysis = self.attached_analysis(sql, None).flatten();
        if analysis.as_ref().is_none_or(|a| a.names_lagrouter) && parse_proxy_command(sql).is_some()
        {
            return None;
        }
        Some(analysis.map(|a| self.runs_in_transaction(a)))
    }

    /// Decodes one client message (a malformed one ends the session) and
    /// hands it to its handler: what [`Self::on_client_message_now`] left.
    /// A statement text that is not UTF-8 is no fault: the server reads it
    /// in the client's encoding (or refuses it, 22021, as it would
    /// directly), and routing reads it as [`ClientMsg::decode_foreign`]
    /// gives it.
    pub(super) async fn on_client_message(&mut self, tag: u8, frame: &[u8]) -> Result<(), End> {
        let mut readable = String::new();
        let msg = match ClientMsg::decode(tag, &frame[5..]) {
            Ok(Some(m)) => m,
            Ok(None) => {
                let e = ProxyError::ClientProtocol(format!(
                    "unexpected message type '{}'",
                    tag as char
                ));
                return Err(self.fatal_error(e).await);
            }
            Err(e) => match self.decode_foreign(tag, &frame[5..], &mut readable) {
                Some(m) => m,
                None => return Err(self.malformed(e).await),
            },
        };
        if self.txn == Txn::Replica && self.expect.unsynced_idle() {
            Box::pin(self.leave_replica_for_write(&msg)).await?;
        }
        if self.server.is_none() {
            if self.answer_failed_txn(&msg) {
                return Ok(());
            }
            if let Some(batch) = self.plain_begin_batch(&msg)
                && self.begin_batch(batch).await
            {
                return Ok(());
            }
        }
        match msg {
            ClientMsg::Query(sql) => self.on_query(sql, frame).await,
            ClientMsg::Parse(p) => {
                // One await for both waits: what lives across two awaits
                // would take room in every state of this future.
                let Some(later) = self.parse_now(&p, frame) else {
                    return Ok(());
                };
                let attached = self.attach_later(later, p.query, frame, None).await;
                self.parse_attached(&p, frame, attached);
                Ok(())
            }
            ClientMsg::Bind(b) => {
                let (later, stmt) = match self.bind_now(&b, frame) {
                    BindNext::Done => return Ok(()),
                    BindNext::Local(cmd) => return Box::pin(self.bind_local(b, cmd)).await,
                    BindNext::Later(later, stmt) => (later, stmt),
                };
                // Boxed with the Bind, and awaited outside the match: held
                // here across the wait, or the match's value with it, they
                // would take room in every state of this future.
                small_box(self.bind_waiting(b, frame, later, stmt)).await;
                Ok(())
            }
            ClientMsg::Describe(t) => {
                self.on_describe(t, frame).await;
                Ok(())
            }
            ClientMsg::Close(t) => {
                self.on_close(t, frame);
                Ok(())
            }
            ClientMsg::Execute { portal } => self.on_execute(portal, frame).await,
            ClientMsg::FunctionCall => {
                match self.attach("", Some(frame), None).await {
                    Ok(_) => self.function_call_on_server(frame),
                    Err(e) => {
                        self.synthetic_error(&e);
                        self.synthetic_ready();
                    }
                }
                Ok(())
            }
            ClientMsg::Sync => {
                self.on_sync(frame);
                Ok(())
            }
            // Clients may send COPY data right behind the COPY query, before
            // CopyInResponse (asyncpg does): the server takes it or ignores it
            // outside a COPY, as it would directly.
            ClientMsg::Flush | ClientMsg::Copy => {
                if self.server.is_some() {
                    self.to_server.extend_from_slice(frame);
                }
                Ok(())
            }
            ClientMsg::Terminate => Err(End::Client),
        }
    }

    /// [`ClientMsg::decode_foreign`] in the client's encoding. Out of
    /// line: rare, and kept out of the per-message code.
    #[cold]
    #[inline(never)]
    fn decode_foreign<'a>(
        &self,
        tag: u8,
        body: &'a [u8],
        readable: &'a mut String,
    ) -> Option<ClientMsg<'a>> {
        ClientMsg::decode_foreign(tag, body, self.text_encoding(), readable)
    }

    /// How the client's statement texts are encoded: its
    /// `client_encoding` (a name the server reported, or the client chose).
    pub(super) fn text_encoding(&self) -> TextEncoding {
        TextEncoding::named(self.params.get("client_encoding").unwrap_or_default())
    }

    /// Sends the client's `frame` on; its answers go to the client.
    fn forward(&mut self, frame: &[u8], req: Req) {
        self.to_server.extend_from_slice(frame);
        self.expect.push(req, Action::Forward);
    }

    /// A FunctionCall, on the attached server.
    fn function_call_on_server(&mut self, frame: &[u8]) {
        // A function of any volatility: it may write.
        if self.txn == Txn::Primary {
            self.txn = Txn::Write;
        }
        self.forward(frame, Req::FunctionCall)
    }

    fn on_sync(&mut self, frame: &[u8]) {
        if self.server.is_some() {
            self.forward(frame, Req::Sync);
            if std::mem::take(&mut self.commit_bound) {
                self.start_capture();
            }
        } else {
            self.commit_bound = false;
            self.synthetic_ready();
        }
    }

    async fn on_query(&mut self, sql: &str, frame: &[u8]) -> Result<(), End> {
        if self.server.is_none() && self.begin_locally(sql).await {
            return Ok(());
        }
        // Routing's analysis (most often a kept one, compared) says
        // whether the text names `lagrouter`, sparing that pass over it.
        let ahead = self
            .routes_next()
            .then(|| self.analyze_to_route(sql, None, None));
        if ahead.as_ref().is_none_or(ToRoute::names_lagrouter)
            && let Some(cmd) = parse_proxy_command(sql)
        {
            let mut m = BytesMut::new();
            if let local::Executed::Wait(w) =
                local::execute(&mut m, &mut self.routing, &cmd, local::Asked::SimpleQuery)
            {
                match Box::pin(self.wait_replicas(w)).await? {
                    Some(n) => local::wait_answer(&mut m, n, local::Asked::SimpleQuery),
                    None => local::wait_cancelled(&mut m),
                }
            }
            self.expect.push_synthetic(m.freeze());
            self.synthetic_ready();
            return Ok(());
        }
        if self.deallocate_locally(sql) {
            return Ok(());
        }
        let attached = match ahead {
            Some(to) => match self.attach_to_now(sql, to) {
                Ok(Attach::Done(fx)) => Ok(fx),
                Ok(Attach::Wait(wait)) => self.attach_waiting(wait).await,
                Err(e) => Err(e),
            },
            None => self.attach(sql, None, None).await,
        };
        match attached {
            Ok(fx) => self.query_on_server(sql, frame, fx),
            Err(e) => {
                self.synthetic_error(&e);
                self.synthetic_ready();
            }
        }
        Ok(())
    }

    /// A simple query, on the attached server; `fx` when routing analyzed it.
    fn query_on_server(&mut self, sql: &str, frame: &[u8], fx: Option<ServerEffects>) {
        self.note_effects(sql, fx);
        self.forward(frame, Req::Query);
        if self.txn == Txn::Write && lagrouter_routing::is_plain_commit(sql) {
            self.start_capture();
        }
    }

    /// A Parse, as far as it goes without waiting: most often all the way
    /// (routed and attached at once, or answered by the proxy). A plain
    /// function, so that routing a transaction that starts with a Parse
    /// builds and moves no future of its own (two `memcpy` calls of the
    /// 576 bytes an `async fn` took, on every extended transaction).
    /// `Some`: what is left before the Parse goes on
    /// ([`Self::parse_attached`]).
    fn parse_now(&mut self, p: &frontend::Parse<'_>, frame: &[u8]) -> Option<Later> {
        // As for a simple query; a named Parse outside a transaction is
        // not routed (below).
        let ahead = (p.name.is_empty() && self.routes_next())
            .then(|| self.analyze_to_route(p.query, Some(frame), None));
        if ahead.as_ref().is_none_or(ToRoute::names_lagrouter)
            && let Some(cmd) = parse_proxy_command(p.query)
        {
            self.statements.remove(p.name);
            self.local.prepare(p.name, cmd);
            self.synthetic_empty(be::PARSE_COMPLETE);
            return None;
        }
        self.local.forget_statement(p.name);
        if !p.name.is_empty() && self.server.is_none() {
            // A named Parse outside a transaction needs no server: it is
            // prepared on whichever server runs its Bind. Waiting for a
            // pool slot here could deadlock clients that prepare
            // synchronously (pgbench -M prepared) while their other
            // connections hold every slot. Cost: a syntax error is reported
            // at the Bind, not here.
            let fx = self.effects_of(p.query, None);
            if self.remember(p, fx).is_some() {
                self.note_pins(fx);
                self.synthetic_empty(be::PARSE_COMPLETE);
            }
            return None;
        }
        // No analysis ahead: a `BEGIN` held back, or a server attached.
        let Some(to) = ahead else {
            return Some(Later::Attach);
        };
        match self.attach_to_now(p.query, to) {
            Ok(Attach::Done(fx)) => self.parse_attached(p, frame, Ok(fx)),
            Ok(Attach::Wait(wait)) => return Some(Later::Wait(wait)),
            Err(e) => self.fail_extended(&e),
        }
        None
    }

    /// The rest of a Parse once its attach is over: on the server, or the
    /// batch failed with the attach's error.
    fn parse_attached(
        &mut self,
        p: &frontend::Parse<'_>,
        frame: &[u8],
        attached: Result<Option<ServerEffects>, ProxyError>,
    ) {
        match attached {
            Ok(fx) => {
                let fx = self.effects_of(p.query, fx);
                self.parse_on_server(p, frame, fx);
            }
            Err(e) => self.fail_extended(&e),
        }
    }

    /// A Parse, on the attached server; `fx`: what its text does there.
    fn parse_on_server(&mut self, p: &frontend::Parse<'_>, frame: &[u8], fx: ServerEffects) {
        self.note_pins(fx);
        if p.name.is_empty() {
            self.note_drops(p.query, fx);
            self.unnamed_commit = lagrouter_routing::is_plain_commit(p.query);
            self.forward(frame, Req::Parse);
        } else if let Some(stmt) = self.remember(p, fx) {
            // The server's ParseComplete answers the client; if the server
            // already has the statement, the proxy answers.
            if !self.ensure_prepared(&stmt, Action::Forward) {
                self.synthetic_empty(be::PARSE_COMPLETE);
            }
        }
    }

    /// Records the client's named statement; fails the batch when the
    /// client already holds the most allowed.
    fn remember(&mut self, p: &frontend::Parse<'_>, fx: ServerEffects) -> Option<Arc<Statement>> {
        let stmt = self
            .statements
            .insert(p.name, p.query, p.wire, p.param_types, fx.drops());
        if stmt.is_none() {
            self.fail_extended(&ProxyError::TooManyStatements(
                crate::session::statements::MAX_STATEMENTS_PER_CLIENT,
            ));
        }
        stmt
    }

    /// A Bind of the proxy's own statement: answered here.
    async fn bind_local(&mut self, b: frontend::Bind<'_>, cmd: ProxyCommand) -> Result<(), End> {
        let binary = match frontend::bind_first_result_binary(b.rest) {
            Ok(binary) => binary,
            Err(e) => return Err(self.malformed(e).await),
        };
        self.local.bind(b.portal, cmd, binary);
        self.synthetic_empty(be::BIND_COMPLETE);
        Ok(())
    }

    /// A Bind, as far as it goes without waiting ([`Self::parse_now`]'s
    /// counterpart, for a transaction that starts with a Bind of a
    /// prepared statement): attached and on the server, most often, with
    /// no future built.
    fn bind_now(&mut self, b: &frontend::Bind<'_>, frame: &[u8]) -> BindNext {
        if let Some(cmd) = self.local.statement(b.statement) {
            return BindNext::Local(cmd.clone());
        }
        self.local.forget_portal(b.portal);
        match self.attach_named_now(b.statement, frame) {
            Named::Ready(Ok(stmt)) => self.bind_on_server(b, frame, stmt),
            Named::Ready(Err(e)) => self.fail_extended(&e),
            Named::Later(later, stmt) => return BindNext::Later(later, stmt),
        }
        BindNext::Done
    }

    /// The wait [`Self::bind_now`] left, then the Bind.
    async fn bind_waiting(
        &mut self,
        b: frontend::Bind<'_>,
        frame: &[u8],
        later: Later,
        stmt: Option<Arc<Statement>>,
    ) {
        match self.attach_named_later(later, stmt, frame).await {
            Ok(stmt) => self.bind_on_server(&b, frame, stmt),
            Err(e) => self.fail_extended(&e),
        }
    }

    /// A Bind of the client's statement `stmt` (see
    /// [`Self::attach_named_now`]), on the attached server.
    fn bind_on_server(
        &mut self,
        b: &frontend::Bind<'_>,
        frame: &[u8],
        stmt: Option<Arc<Statement>>,
    ) {
        self.commit_bound |= match &stmt {
            Some(s) => s.commit,
            None => b.statement.is_empty() && self.unnamed_commit,
        };
        match stmt {
            Some(stmt) => {
                frontend::encode_bind(&mut self.to_server, b.portal, &stmt.server_name, b.rest);
                if stmt.drops {
                    let fx = self.effects_of(&stmt.query, None);
                    self.note_drops(&stmt.query, fx);
                }
            }
            // Unknown names go through as sent: the server answers 26000.
            None => self.to_server.extend_from_slice(frame),
        }
        self.expect.push(Req::Bind, Action::Forward);
    }

    /// The proxy's own statement or portal that `t` names.
    fn local_target(&self, t: &frontend::Target<'_>) -> Option<&ProxyCommand> {
        if t.kind == target::STATEMENT {
            self.local.statement(t.name)
        } else {
            self.local.portal(t.name)
        }
    }

    async fn on_describe(&mut self, t: frontend::Target<'_>, frame: &[u8]) {
        if let Some(cmd) = self.local_target(&t) {
            let mut m = BytesMut::new();
            if t.kind == target::STATEMENT {
                local::describe_statement(&mut m, cmd);
            } else {
                local::describe_portal(&mut m, cmd);
            }
            self.expect.push_synthetic(m.freeze());
            return;
        }
        let attached = match self.attach_named_now(described_statement(&t), frame) {
            Named::Ready(r) => r,
            Named::Later(later, stmt) => self.attach_named_later(later, stmt, frame).await,
        };
        match attached {
            Ok(stmt) => self.describe_on_server(&t, frame, stmt),
            Err(e) => self.fail_extended(&e),
        }
    }

    /// A Describe, on the attached server; `stmt` as for a Bind.
    fn describe_on_server(
        &mut self,
        t: &frontend::Target<'_>,
        frame: &[u8],
        stmt: Option<Arc<Statement>>,
    ) {
        match stmt {
            Some(stmt) => frontend::encode_target(
                &mut self.to_server,
                fe::DESCRIBE,
                target::STATEMENT,
                &stmt.server_name,
            ),
            None => self.to_server.extend_from_slice(frame),
        }
        self.expect.push(Req::Describe(t.kind), Action::Forward);
    }

    fn on_close(&mut self, t: frontend::Target<'_>, frame: &[u8]) {
        let statement = t.kind == target::STATEMENT;
        let was_local = if statement {
            self.local.forget_statement(t.name)
        } else {
            self.local.forget_portal(t.name)
        };
        if was_local {
            self.synthetic_empty(be::CLOSE_COMPLETE);
        } else if statement && !t.name.is_empty() {
            // The server keeps it: other clients may share it.
            self.statements.remove(t.name);
            self.synthetic_empty(be::CLOSE_COMPLETE);
        } else if self.server.is_some() {
            self.forward(frame, Req::Close);
        } else {
            self.synthetic_empty(be::CLOSE_COMPLETE);
        }
    }

    async fn on_execute(&mut self, portal: &str, frame: &[u8]) -> Result<(), End> {
        if let Some(cmd) = self.local.portal(portal).cloned() {
            let binary = self.local.portal_binary(portal);
            return self.execute_local(&cmd, binary).await;
        }
        match self.attach("", Some(frame), None).await {
            Ok(_) => self.forward(frame, Req::Execute),
            Err(e) => self.fail_extended(&e),
        }
        Ok(())
    }

    /// A client that ended an extended-protocol read with Flush (no Sync)
    /// is still attached to its replica, outside any transaction. If the
    /// next statement writes, end that episode with a Sync and release the
    /// replica, so the write is routed to the primary instead of failing on
    /// the replica. (Only a describe/read ran there: nothing is lost.)
    pub(super) async fn leave_replica_for_write(&mut self, msg: &ClientMsg<'_>) -> Result<(), End> {
        let sql: Option<String> = match msg {
            ClientMsg::Query(sql) => Some(sql.to_string()),
            ClientMsg::Parse(p) => Some(p.query.to_string()),
            ClientMsg::Bind(b) => self
                .statements
                .get(b.statement)
                .map(|s| s.query.to_string()),
            _ => None,
        };
        let Some(sql) = sql else { return Ok(()) };
        if !self.shared.router.classifier().classify(&sql).is_write() {
            return Ok(());
        }
        let Some(pc) = self.server.as_mut() else {
            return Ok(());
        };
        let limit = self.config.health.check_timeout;
        match self.shared.timers.timeout(limit, pc.conn().sync()).await {
            Ok(Ok(status::IDLE)) => {
                self.expect.synced_by_proxy();
                self.local.end_transaction();
                self.release();
                Ok(())
            }
            Ok(Ok(_)) => Ok(()), // a transaction is open after all: stay
            Ok(Err(e)) => Err(self.server_lost(e.to_string()).await),
            Err(_) => Err(self.server_lost(no_answer("Sync", limit)).await),
        }
    }

    /// Attaches for an extended-protocol message (`frame`) that names the
    /// client's statement `name` (a Bind's, or a Describe's), routing by
    /// its text, and makes sure the attached server has it prepared, as
    /// far as that goes without waiting: most often all the way. The
    /// statement is `None` for the unnamed statement and for names the
    /// client never prepared (sent on as they are; the server answers
    /// 26000).
    fn attach_named_now(&mut self, name: &str, frame: &[u8]) -> Named {
        if let Some(stmt) = self.attached_for(name) {
            return Named::Ready(Ok(stmt));
        }
        let stmt = self.statement_named(name);
        if !self.routes_next() {
            return Named::Later(Later::Attach, stmt);
        }
        let (sql, memo) = route_input(&stmt);
        let to = self.analyze_to_route(sql, Some(frame), memo);
        match self.attach_to_now(sql, to) {
            Ok(Attach::Done(_)) => {
                self.prepare_named(&stmt);
                Named::Ready(Ok(stmt))
            }
            Ok(Attach::Wait(wait)) => Named::Later(Later::Wait(wait), stmt),
            Err(e) => Named::Ready(Err(e)),
        }
    }

    /// The rest of [`Self::attach_named_now`]: its wait, then the
    /// statement prepared.
    async fn attach_named_later(
        &mut self,
        later: Later,
        stmt: Option<Arc<Statement>>,
        frame: &[u8],
    ) -> Result<Option<Arc<Statement>>, ProxyError> {
        let (sql, memo) = route_input(&stmt);
        self.attach_later(later, sql, frame, memo).await?;
        self.prepare_named(&stmt);
        Ok(stmt)
    }

    /// [`Self::attach_named_now`] when a server is attached already (see
    /// [`Self::on_client_message_now`]); `None` when nothing is attached.
    #[inline]
    pub(super) fn attached_for(&mut self, name: &str) -> Option<Option<Arc<Statement>>> {
        self.server.as_ref()?;
        let stmt = self.statement_named(name);
        if let Some(s) = &stmt {
            self.attached(&s.query, Some(&s.analysis));
            self.ensure_prepared(s, Action::Drop);
        }
        Some(stmt)
    }

    /// Prepares the client's statement `stmt` on the attached server if it
    /// lacks it (the Parse's answer dropped).
    #[inline]
    fn prepare_named(&mut self, stmt: &Option<Arc<Statement>>) {
        if let Some(s) = stmt {
            self.ensure_prepared(s, Action::Drop);
        }
    }

    /// The client's statement `name`: `None` for the unnamed statement and
    /// for names the client never prepared.
    fn statement_named(&self, name: &str) -> Option<Arc<Statement>> {
        if name.is_empty() {
            None
        } else {
            self.statements.get(name).cloned()
        }
    }

    /// Prepares `stmt` on the attached server if it lacks it, and says
    /// whether a `Parse` was sent. `Action::Forward`: the client asked for this
    /// Parse, so the server's ParseComplete goes to it; otherwise the Parse
    /// is injected (before a Bind or Describe) and its answer dropped.
    pub(super) fn ensure_prepared(&mut self, stmt: &Statement, answers: Action) -> bool {
        let conn = self.server.as_mut().expect("attached").conn();
        if conn.prepared.contains(&stmt.server_name) {
            return false;
        }
        frontend::encode_parse(
            &mut self.to_server,
            &stmt.server_name,
            stmt.text(),
            &stmt.param_types,
        );
        conn.prepared.insert(stmt.server_name.clone());
        self.expect
            .push_named(Req::Parse, answers, Some(stmt.server_name.clone()));
        true
    }

    /// Answers a simple-query `DEALLOCATE name` itself when `name` is one of
    /// the client's protocol-level statements: the server knows it under
    /// the proxy's name (or not at all), so forwarding it would fail with
    /// 26000. The server keeps its copy for other clients. In a failed
    /// transaction, or behind answers still owed, the text goes on as it is
    /// (the server answers 25P02 as PostgreSQL would).
    pub(super) fn deallocate_locally(&mut self, sql: &str) -> bool {
        if self.statements.is_empty() && !self.local.has_statements() {
            return false;
        }
        if self.server.is_some()
            && (!self.expect.is_empty() || self.expect.status() == status::FAILED)
        {
            return false;
        }
        let Some(name) = lagrouter_routing::sole_deallocated_name(sql) else {
            return false;
        };
        let known = self.statements.remove(&name).is_some();
        if !(self.local.forget_statement(&name) || known) {
            return false;
        }
        self.synthetic_complete("DEALLOCATE");
        self.synthetic_ready();
        self.drain_synthetic();
        true
    }

    /// What `sql` does to the server connection; `known` when routing just
    /// analyzed it.
    pub(super) fn effects_of(&self, sql: &str, known: Option<ServerEffects>) -> ServerEffects {
        known.unwrap_or_else(|| self.shared.router.classifier().server_effects(sql))
    }

    /// A failed transaction runs nothing but its end (25P02): what a
    /// statement sent into it would do does not happen.
    pub(super) fn in_failed_transaction(&self) -> bool {
        self.server.is_some() && self.expect.is_empty() && self.expect.status() == status::FAILED
    }

    /// Applies what `sql`, about to run, does to the server connection.
    pub(super) fn note_effects(&mut self, sql: &str, known: Option<ServerEffects>) {
        let fx = self.effects_of(sql, known);
        self.note_pins(fx);
        self.note_drops(sql, fx);
    }

    /// Statements `sql` drops, when it runs (a simple query, the unnamed
    /// statement, or the Bind of a named statement that drops: a named
    /// `Parse` of `DEALLOCATE ALL` drops nothing until it is executed).
    pub(super) fn note_drops(&mut self, sql: &str, fx: ServerEffects) {
        if self.in_failed_transaction() {
            return;
        }
        if fx.drops_all {
            if let Some(pc) = self.server.as_mut() {
                pc.conn().prepared.clear();
            }
            self.statements.clear();
        } else if fx.drops_statements {
            // The server keeps its own (mapped) names: only the client's
            // statement of that name is gone.
            for name in lagrouter_routing::deallocated_names(sql) {
                self.statements.remove(&name);
            }
        }
    }

    /// Pins the session when `fx` says so. Done as soon as the statement is
    /// seen (even a `Parse`): pinning early only costs pooling.
    pub(super) fn note_pins(&mut self, fx: ServerEffects) {
        if fx.pins && !self.pinned && !self.in_failed_transaction() {
            self.pinned = true;
            self.shared
                .stats
                .pinned_sessions
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("lagrouter_pinned_sessions_total").increment(1);
            tracing::debug!(user = %self.user.name, "session pinned to its server connection");
        }
    }

    pub(super) async fn execute_local(
        &mut self,
        cmd: &ProxyCommand,
        binary: bool,
    ) -> Result<(), End> {
        let asked = local::Asked::Portal { binary };
        let mut m = BytesMut::new();
        match local::execute(&mut m, &mut self.routing, cmd, asked) {
            local::Executed::Answered { failed } => {
                if failed {
                    self.discard_until_sync = true;
                }
            }
            local::Executed::Wait(w) => match Box::pin(self.wait_replicas(w)).await? {
                Some(n) => local::wait_answer(&mut m, n, asked),
                None => {
                    local::wait_cancelled(&mut m);
                    self.discard_until_sync = true;
                }
            },
        }
        self.expect.push_synthetic(m.freeze());
        Ok(())
    }

    pub(super) fn fail_extended(&mut self, e: &ProxyError) {
        self.synthetic_error(e);
        self.discard_until_sync = true;
    }
}

/// The client's statement a Describe routes by: the one it names, or the
/// unnamed statement for a portal (routing knows portals by their Bind).
fn described_statement<'a>(t: &frontend::Target<'a>) -> &'a str {
    if t.kind == target::STATEMENT {
        t.name
    } else {
        ""
    }
}
