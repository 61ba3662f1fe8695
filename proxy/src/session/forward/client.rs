//! Client messages: each decoded and handled, with what they do to the
//! session (prepared statements, pins, statements the proxy answers).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use lagrouter_routing::{ProxyCommand, ServerEffects, parse_proxy_command};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::ProxyError;
use crate::protocol::backend;
use crate::protocol::expect::{Action, Req};
use crate::protocol::frontend;
use crate::protocol::tag::{be, fe, status, target};
use crate::session::local;
use crate::session::statements::Statement;

use super::*;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn on_client_message(&mut self, tag: u8, frame: &[u8]) -> Result<(), End> {
        if self.on_replica
            && self.expect.unsynced_idle()
            && matches!(tag, fe::QUERY | fe::PARSE | fe::BIND)
        {
            Box::pin(self.leave_replica_for_write(tag, frame)).await?;
        }
        if self.discard_until_sync {
            match tag {
                fe::SYNC => {
                    self.discard_until_sync = false;
                    self.synthetic_ready();
                }
                fe::TERMINATE => return Err(End::Client),
                _ => {}
            }
            return Ok(());
        }
        let body = &frame[5..];
        match tag {
            fe::QUERY => {
                let sql = frontend::decode_query(body)
                    .map_err(|e| ProxyError::ClientProtocol(e.to_string()));
                let sql = match sql {
                    Ok(s) => s,
                    Err(e) => return Err(self.fatal_error(e).await),
                };
                if let Some(cmd) = parse_proxy_command(sql) {
                    let mut m = BytesMut::new();
                    if let local::Executed::Wait(w) =
                        local::execute(&mut m, &mut self.routing, &cmd, true)
                    {
                        match Box::pin(self.wait_replicas(w)).await? {
                            Some(n) => local::wait_answer(&mut m, n, true, false),
                            None => local::wait_cancelled(&mut m),
                        }
                    }
                    self.expect.push_synthetic(m.freeze());
                    self.synthetic_ready();
                    self.drain_synthetic();
                    return Ok(());
                }
                if self.deallocate_locally(sql) {
                    return Ok(());
                }
                let fx = match self.attach(sql, None).await {
                    Ok(fx) => fx,
                    Err(e) => {
                        self.synthetic_error(&e);
                        self.synthetic_ready();
                        return Ok(());
                    }
                };
                self.note_effects(sql, fx);
                self.to_server.extend_from_slice(frame);
                self.expect.push(Req::Query, Action::Forward);
            }
            fe::PARSE => {
                let p = match frontend::decode_parse(body) {
                    Ok(p) => p,
                    Err(e) => return Err(self.malformed(e).await),
                };
                if let Some(cmd) = parse_proxy_command(p.query) {
                    self.statements.remove(p.name);
                    self.local.prepare(p.name, cmd);
                    self.synthetic_empty(be::PARSE_COMPLETE);
                    self.drain_synthetic();
                    return Ok(());
                }
                self.local.forget_statement(p.name);
                if !p.name.is_empty() && self.server.is_none() {
                    // A named Parse outside a transaction needs no server: it
                    // is prepared on whichever server runs its Bind. Waiting
                    // for a pool slot here could deadlock clients that
                    // prepare synchronously (pgbench -M prepared) while
                    // their other connections hold every slot. Cost: a
                    // syntax error is reported at the Bind, not here.
                    let fx = self.effects_of(p.query, None);
                    if self
                        .statements
                        .insert(p.name, p.query, p.param_types, fx.drops())
                        .is_none()
                    {
                        self.fail_extended(&ProxyError::TooManyStatements(
                            crate::session::statements::MAX_STATEMENTS_PER_CLIENT,
                        ));
                        return Ok(());
                    }
                    self.note_pins(fx);
                    self.synthetic_empty(be::PARSE_COMPLETE);
                    self.drain_synthetic();
                    return Ok(());
                }
                let fx = match self.attach(p.query, Some(frame)).await {
                    Ok(fx) => fx,
                    Err(e) => {
                        self.fail_extended(&e);
                        return Ok(());
                    }
                };
                let fx = self.effects_of(p.query, fx);
                self.note_pins(fx);
                if p.name.is_empty() {
                    self.note_drops(p.query, fx);
                    self.to_server.extend_from_slice(frame);
                    self.expect.push(Req::Parse, Action::Forward);
                } else {
                    let inserted =
                        self.statements
                            .insert(p.name, p.query, p.param_types, fx.drops());
                    let Some(stmt) = inserted else {
                        self.fail_extended(&ProxyError::TooManyStatements(
                            crate::session::statements::MAX_STATEMENTS_PER_CLIENT,
                        ));
                        return Ok(());
                    };
                    // The server's ParseComplete answers the client; if the
                    // server already has the statement, the proxy answers.
                    if !self.ensure_prepared(&stmt, Action::Forward) {
                        self.synthetic_empty(be::PARSE_COMPLETE);
                    }
                }
            }
            fe::BIND => {
                let b = match frontend::decode_bind(body) {
                    Ok(b) => b,
                    Err(e) => return Err(self.malformed(e).await),
                };
                if let Some(cmd) = self.local.statement(b.statement).cloned() {
                    let binary = match frontend::bind_first_result_binary(b.rest) {
                        Ok(binary) => binary,
                        Err(e) => return Err(self.malformed(e).await),
                    };
                    self.local.bind(b.portal, cmd, binary);
                    self.synthetic_empty(be::BIND_COMPLETE);
                    self.drain_synthetic();
                    return Ok(());
                }
                self.local.forget_portal(b.portal);
                let stmt = match self.attach_for(b.statement, frame).await {
                    Ok(s) => s,
                    Err(e) => {
                        self.fail_extended(&e);
                        return Ok(());
                    }
                };
                match stmt {
                    Some(stmt) => {
                        frontend::encode_bind(
                            &mut self.to_server,
                            b.portal,
                            &stmt.server_name,
                            b.rest,
                        );
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
            fe::DESCRIBE => {
                let t = match frontend::decode_target(body, "Describe") {
                    Ok(t) => t,
                    Err(e) => return Err(self.malformed(e).await),
                };
                let local_cmd = if t.kind == target::STATEMENT {
                    self.local.statement(t.name)
                } else {
                    self.local.portal(t.name)
                };
                if let Some(cmd) = local_cmd {
                    let mut m = BytesMut::new();
                    if t.kind == target::STATEMENT {
                        local::describe_statement(&mut m, cmd);
                    } else {
                        local::describe_portal(&mut m, cmd);
                    }
                    self.expect.push_synthetic(m.freeze());
                    self.drain_synthetic();
                    return Ok(());
                }
                let name = if t.kind == target::STATEMENT {
                    t.name
                } else {
                    ""
                };
                let stmt = match self.attach_for(name, frame).await {
                    Ok(s) => s,
                    Err(e) => {
                        self.fail_extended(&e);
                        return Ok(());
                    }
                };
                match stmt {
                    Some(stmt) => {
                        frontend::encode_target(
                            &mut self.to_server,
                            fe::DESCRIBE,
                            target::STATEMENT,
                            &stmt.server_name,
                        );
                    }
                    None => self.to_server.extend_from_slice(frame),
                }
                self.expect.push(Req::Describe(t.kind), Action::Forward);
            }
            fe::CLOSE => {
                let t = match frontend::decode_target(body, "Close") {
                    Ok(t) => t,
                    Err(e) => return Err(self.malformed(e).await),
                };
                let was_local = if t.kind == target::STATEMENT {
                    self.local.forget_statement(t.name)
                } else {
                    self.local.forget_portal(t.name)
                };
                if was_local {
                    self.synthetic_empty(be::CLOSE_COMPLETE);
                } else if t.kind == target::STATEMENT && !t.name.is_empty() {
                    // The server keeps it: other clients may share it.
                    self.statements.remove(t.name);
                    self.synthetic_empty(be::CLOSE_COMPLETE);
                } else if self.server.is_some() {
                    self.to_server.extend_from_slice(frame);
                    self.expect.push(Req::Close, Action::Forward);
                } else {
                    self.synthetic_empty(be::CLOSE_COMPLETE);
                }
            }
            fe::EXECUTE if self.local.portal(portal_name(body)).is_some() => {
                let name = portal_name(body);
                let cmd = self.local.portal(name).cloned().expect("checked");
                let binary = self.local.portal_binary(name);
                self.execute_local(&cmd, binary).await?;
            }
            fe::EXECUTE | fe::FUNCTION_CALL => {
                if let Err(e) = self.attach("", Some(frame)).await {
                    if tag == fe::FUNCTION_CALL {
                        self.synthetic_error(&e);
                        self.synthetic_ready();
                    } else {
                        self.fail_extended(&e);
                    }
                    return Ok(());
                }
                self.to_server.extend_from_slice(frame);
                self.expect.push(
                    if tag == fe::EXECUTE {
                        Req::Execute
                    } else {
                        Req::FunctionCall
                    },
                    Action::Forward,
                );
            }
            fe::SYNC => {
                if self.server.is_some() {
                    self.to_server.extend_from_slice(frame);
                    self.expect.push(Req::Sync, Action::Forward);
                } else {
                    self.synthetic_ready();
                }
            }
            fe::FLUSH => {
                if self.server.is_some() {
                    self.to_server.extend_from_slice(frame);
                }
            }
            fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => {
                // Clients may send COPY data right behind the COPY query,
                // before CopyInResponse (asyncpg does): the server takes it
                // or ignores it outside a COPY, as it would directly.
                if self.server.is_some() {
                    self.to_server.extend_from_slice(frame);
                }
            }
            fe::TERMINATE => return Err(End::Client),
            other => {
                let e = ProxyError::ClientProtocol(format!(
                    "unexpected message type '{}'",
                    other as char
                ));
                return Err(self.fatal_error(e).await);
            }
        }
        self.drain_synthetic();
        self.forget_failed_parses();
        Ok(())
    }

    /// A client that ended an extended-protocol read with Flush (no Sync)
    /// is still attached to its replica, outside any transaction. If the
    /// next statement writes, end that episode with a Sync and release the
    /// replica, so the write is routed to the primary instead of failing on
    /// the replica. (Only a describe/read ran there: nothing is lost.)
    pub(super) async fn leave_replica_for_write(
        &mut self,
        tag: u8,
        frame: &[u8],
    ) -> Result<(), End> {
        let body = &frame[5..];
        let sql: Option<String> = match tag {
            fe::QUERY => frontend::decode_query(body).ok().map(str::to_string),
            fe::PARSE => frontend::decode_parse(body)
                .ok()
                .map(|p| p.query.to_string()),
            fe::BIND => frontend::decode_bind(body).ok().and_then(|b| {
                self.statements
                    .get(b.statement)
                    .map(|s| s.query.to_string())
            }),
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
        match tokio::time::timeout(limit, pc.conn().sync()).await {
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

    /// Attaches for an extended-protocol message that names the client's
    /// statement `name` (routing by its text) and makes sure the attached
    /// server has it prepared. `None` for the unnamed statement and for
    /// names the client never prepared (sent on as they are; the server
    /// answers 26000).
    pub(super) async fn attach_for(
        &mut self,
        name: &str,
        frame: &[u8],
    ) -> Result<Option<Arc<Statement>>, ProxyError> {
        let stmt = if name.is_empty() {
            None
        } else {
            self.statements.get(name).cloned()
        };
        let sql = stmt.as_ref().map(|s| s.query.clone());
        self.attach(sql.as_deref().unwrap_or(""), Some(frame))
            .await?;
        if let Some(s) = &stmt {
            self.ensure_prepared(s, Action::Drop);
        }
        Ok(stmt)
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
            &stmt.query,
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
        let mut m = BytesMut::new();
        backend::command_complete(&mut m, "DEALLOCATE");
        self.expect.push_synthetic(m.freeze());
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
        let mut m = BytesMut::new();
        match local::execute(&mut m, &mut self.routing, cmd, false) {
            local::Executed::Answered { failed } => {
                if failed {
                    self.discard_until_sync = true;
                }
            }
            local::Executed::Wait(w) => match Box::pin(self.wait_replicas(w)).await? {
                Some(n) => local::wait_answer(&mut m, n, false, binary),
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
