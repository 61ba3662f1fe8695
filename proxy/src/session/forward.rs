//! The forwarding loop of an authenticated session.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use lagrouter_config::{Config, PoolMode};
use lagrouter_health::Lsn;
use lagrouter_routing::{ProxyCommand, ServerEffects, SessionRouting, parse_proxy_command};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::local::{self, LocalStatements};
use super::params::SessionParams;
use super::statements::{Statement, Statements};
use crate::admin::registry::{ClientEntry, IdleEvent};
use crate::auth::UserAuth;
use crate::cancel::CancelKey;
use crate::error::ProxyError;
use crate::listener::Shared;
use crate::protocol::backend::{self, Severity};
use crate::protocol::expect::{Expect, Req};
use crate::protocol::frame::peek_header;
use crate::protocol::frontend;
use crate::protocol::{FrameError, MAX_MESSAGE_LEN, client_message_limit};
use crate::server::{PoolKey, PooledConn, ServerPool};

/// Messages larger than this are streamed through instead of buffered whole.
const STREAM_THRESHOLD: usize = 256 * 1024;
/// While writing to a server, its replies are read ahead up to this much.
const READ_AHEAD_LIMIT: usize = 4 * 1024 * 1024;
/// A server connection holding more prepared statements is closed on release.
const MAX_SERVER_STATEMENTS: usize = 5_000;
const READ_CHUNK: usize = 16 * 1024;
/// Client messages up to this size are copied out of the read buffer to be
/// handled; larger ones are split off it (no copy).
const COPIED_FRAME: usize = 8 * 1024;
/// Before routing, an extended-protocol batch is read up to its Sync or
/// Flush so every statement in it is classified; larger batches are routed
/// on what is buffered (a write among them still goes to the primary if it
/// is in the buffer; see `batch_text`).
const BATCH_LOOKAHEAD_LIMIT: usize = 1024 * 1024;
/// Asks the primary, after a writing transaction, for a position at or past
/// its commit record (the insert position covers commits whose WAL is not
/// flushed yet, as with synchronous_commit = off).
const COMMIT_LSN_QUERY: &str = "SELECT pg_catalog.pg_current_wal_insert_lsn()";
/// A replica's replay position, polled while a read waits for it.
const REPLAY_LSN_QUERY: &str = "SELECT pg_catalog.pg_last_wal_replay_lsn()";

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    /// The client closed its socket or sent Terminate.
    Client,
    /// An IO error on the client socket.
    ClientIo(std::io::Error),
    /// The proxy ended the session after telling the client why.
    Closed(String),
}

/// Bytes of one large message still to pass through.
#[derive(Default, Clone, Copy)]
struct Passthrough {
    remaining: usize,
    forward: bool,
}

/// An authenticated client session.
pub struct Session<S> {
    pub(super) client: S,
    pub(super) shared: Arc<Shared>,
    pub(super) config: Arc<Config>,
    pub(super) user: Arc<UserAuth>,
    pub(super) database: Arc<str>,
    pub(super) cancel: CancelKey,
    pub(super) params: SessionParams,
    pub(super) statements: Statements,
    pub(super) routing: SessionRouting,
    pub(super) expect: Expect,
    pub(super) server: Option<PooledConn>,
    pub(super) pinned: bool,
    pub(super) cbuf: BytesMut,
    pub(super) to_client: BytesMut,
    pub(super) to_server: BytesMut,
    /// After a proxy error in the extended protocol: drop messages up to Sync.
    pub(super) discard_until_sync: bool,
    /// Pools this session used, by node (looked up by name).
    pub(super) pools: Vec<Arc<ServerPool>>,
    /// Statements and portals the proxy answers itself.
    local: LocalStatements,
    /// The attached transaction was routed as a write.
    txn_write: bool,
    /// The attached server is a replica.
    on_replica: bool,
    /// The commit-LSN query is in flight; its DataRow carries the LSN.
    capturing_lsn: bool,
    /// Client bytes arrived during the capture and wait to be routed.
    held_client: bool,
    captured_lsn: Option<Lsn>,
    client_stream: Passthrough,
    server_stream: Passthrough,
    /// This session in the admin console's client list (while it runs).
    registered: Option<ClientEntry>,
    /// The client message being handled (see [`COPIED_FRAME`]), reused.
    frame_buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        client: S,
        shared: Arc<Shared>,
        user: Arc<UserAuth>,
        database: Arc<str>,
        cancel: CancelKey,
        params: SessionParams,
        cbuf: BytesMut,
    ) -> Self {
        let config = shared.config.load_full();
        Session {
            client,
            shared,
            config,
            user,
            database,
            cancel,
            params,
            statements: Statements::default(),
            routing: SessionRouting::default(),
            expect: Expect::new(),
            server: None,
            pinned: false,
            cbuf,
            // Grown on first use: a client that only connects costs none.
            to_client: BytesMut::new(),
            to_server: BytesMut::new(),
            discard_until_sync: false,
            pools: Vec::new(),
            local: LocalStatements::default(),
            txn_write: false,
            on_replica: false,
            capturing_lsn: false,
            held_client: false,
            captured_lsn: None,
            client_stream: Passthrough::default(),
            server_stream: Passthrough::default(),
            registered: None,
            frame_buf: BytesMut::new(),
        }
    }

    /// Runs until the client leaves or the session must end; `entry` lists
    /// it in `SHOW CLIENTS` meanwhile.
    pub async fn run(&mut self, entry: ClientEntry) -> End {
        self.registered = Some(entry);
        let end = self.run_inner().await;
        match &end {
            End::Closed(msg) => tracing::debug!(user = %self.user.name, "session closed: {msg}"),
            End::ClientIo(e) => {
                tracing::debug!(user = %self.user.name, "client connection failed: {e}")
            }
            End::Client => {}
        }
        self.finish();
        self.registered = None;
        end
    }

    async fn run_inner(&mut self) -> End {
        loop {
            if let Err(e) = self.flush_client().await {
                return e;
            }
            // Grown only while bytes are arriving: an empty buffer (a new
            // session's 1 KiB from startup, or one given back while idle)
            // waits as it is, so an idle client holds no read chunk.
            if !self.cbuf.is_empty() && self.cbuf.capacity() - self.cbuf.len() < 4096 {
                self.cbuf.reserve(READ_CHUNK);
            }
            let Session {
                client,
                server,
                cbuf,
                registered,
                ..
            } = self;
            let got_client = if server.is_none() && self.held_client {
                // Messages held back while the last write's LSN was fetched.
                self.held_client = false;
                true
            } else if let Some(pc) = server.as_mut() {
                let (conn, traffic) = pc.conn_and_traffic();
                if conn.read_buf.capacity() - conn.read_buf.len() < 4096 {
                    conn.read_buf.reserve(READ_CHUNK);
                }
                tokio::select! {
                    r = client.read_buf(cbuf) => match r {
                        Ok(0) => return End::Client,
                        Ok(_) => true,
                        Err(e) => return End::ClientIo(e),
                    },
                    r = conn.stream.read_buf(&mut conn.read_buf) => match r {
                        Ok(0) => return self.server_lost("the node closed the connection".into()).await,
                        Ok(_) => {
                            traffic.progressed();
                            false
                        }
                        Err(e) => return self.server_lost(e.to_string()).await,
                    },
                    node = abandoned(registered.as_ref()) => {
                        return self.server_lost(self.stopped_answering(node)).await;
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    ev = idle_event(registered.as_ref()) => match ev {
                        IdleEvent::Stop => {
                            return self.fatal("57P01", "lagrouter is shutting down", None).await;
                        }
                        IdleEvent::Shrink => {
                            self.give_back_buffers();
                            continue;
                        }
                    },
                    r = client.read_buf(cbuf) => match r {
                        Ok(0) => return End::Client,
                        Ok(_) => true,
                        Err(e) => return End::ClientIo(e),
                    },
                }
            };
            if got_client {
                if let Err(e) = self.on_client_data().await {
                    return e;
                }
                if let Err(e) = self.write_server().await {
                    return e;
                }
            }
            if self.server.is_some()
                && let Err(e) = self.on_server_data().await
            {
                return e;
            }
            self.maybe_release();
            if let Err(e) = self.write_server().await {
                return e;
            }
        }
    }

    // ----- client → server -----

    async fn on_client_data(&mut self) -> Result<(), End> {
        loop {
            if self.capturing_lsn && self.client_stream.remaining == 0 {
                // The transaction is over; what comes next is routed anew
                // once the connection is released.
                self.held_client = !self.cbuf.is_empty();
                return Ok(());
            }
            if self.client_stream.remaining > 0 {
                let n = self.client_stream.remaining.min(self.cbuf.len());
                if n == 0 {
                    return Ok(());
                }
                let chunk = self.cbuf.split_to(n);
                if self.client_stream.forward {
                    self.to_server.extend_from_slice(&chunk);
                }
                self.client_stream.remaining -= n;
                continue;
            }
            let (tag, total) = match peek_header(&self.cbuf, MAX_MESSAGE_LEN) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(FrameError::TooLong { len, .. }) => {
                    return Err(self.too_large(self.cbuf[0], len).await);
                }
                Err(e) => return Err(self.malformed(e).await),
            };
            let limit = client_message_limit(tag, self.config.server.max_message_size);
            if total - 1 > limit {
                return Err(self.too_large(tag, total - 1).await);
            }
            if self.server.is_none()
                && matches!(tag, b'P' | b'B' | b'D' | b'E')
                && self.cbuf.len() < BATCH_LOOKAHEAD_LIMIT
                && !batch_complete(&self.cbuf)
            {
                // Route only once the whole batch is here.
                self.cbuf.reserve(READ_CHUNK);
                return Ok(());
            }
            if self.cbuf.len() < total {
                if tag == b'd' && total > STREAM_THRESHOLD {
                    // Large CopyData: pass it through as it arrives.
                    let forward = self.server.is_some() && self.expect.in_copy();
                    self.client_stream = Passthrough {
                        remaining: total,
                        forward,
                    };
                    continue;
                }
                // No reservation for the declared length: the buffer grows
                // with the bytes that arrive (see `run_inner`), so a
                // length field alone commits no memory.
                return Ok(());
            }
            if total <= COPIED_FRAME {
                // Copied out (cheaper than splitting the buffer, which makes
                // it shared and reference-counts every message), so the
                // client buffer stays free for the batch lookahead.
                let mut frame = std::mem::take(&mut self.frame_buf);
                frame.clear();
                frame.extend_from_slice(&self.cbuf[..total]);
                self.cbuf.advance(total);
                let handled = self.on_client_message(tag, &frame).await;
                self.frame_buf = frame;
                handled?;
            } else {
                let frame = self.cbuf.split_to(total);
                self.on_client_message(tag, &frame).await?;
            }
            self.drain_synthetic();
            self.forget_failed_parses();
            if self.to_server.len() > READ_AHEAD_LIMIT {
                self.write_server().await?;
            }
        }
    }

    async fn on_client_message(&mut self, tag: u8, frame: &[u8]) -> Result<(), End> {
        if self.on_replica && self.expect.unsynced_idle() && matches!(tag, b'Q' | b'P' | b'B') {
            Box::pin(self.leave_replica_for_write(tag, frame)).await?;
        }
        if self.discard_until_sync {
            match tag {
                b'S' => {
                    self.discard_until_sync = false;
                    self.synthetic_ready();
                }
                b'X' => return Err(End::Client),
                _ => {}
            }
            return Ok(());
        }
        let body = &frame[5..];
        match tag {
            b'Q' => {
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
                self.expect.push(Req::Query, true);
            }
            b'P' => {
                let p = match frontend::decode_parse(body) {
                    Ok(p) => p,
                    Err(e) => return Err(self.malformed(e).await),
                };
                if let Some(cmd) = parse_proxy_command(p.query) {
                    self.statements.remove(p.name);
                    self.local.prepare(p.name, cmd);
                    self.synthetic_empty(b'1');
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
                            super::statements::MAX_STATEMENTS_PER_CLIENT,
                        ));
                        return Ok(());
                    }
                    self.note_pins(fx);
                    self.synthetic_empty(b'1');
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
                    self.expect.push(Req::Parse, true);
                } else {
                    let inserted =
                        self.statements
                            .insert(p.name, p.query, p.param_types, fx.drops());
                    let Some(stmt) = inserted else {
                        self.fail_extended(&ProxyError::TooManyStatements(
                            super::statements::MAX_STATEMENTS_PER_CLIENT,
                        ));
                        return Ok(());
                    };
                    // The server's ParseComplete answers the client; if the
                    // server already has the statement, the proxy answers.
                    if !self.ensure_prepared(&stmt, true) {
                        self.synthetic_empty(b'1');
                    }
                }
            }
            b'B' => {
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
                    self.synthetic_empty(b'2');
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
                self.expect.push(Req::Bind, true);
            }
            b'D' => {
                let t = match frontend::decode_target(body, "Describe") {
                    Ok(t) => t,
                    Err(e) => return Err(self.malformed(e).await),
                };
                let local_cmd = if t.kind == b'S' {
                    self.local.statement(t.name)
                } else {
                    self.local.portal(t.name)
                };
                if let Some(cmd) = local_cmd {
                    let mut m = BytesMut::new();
                    if t.kind == b'S' {
                        local::describe_statement(&mut m, cmd);
                    } else {
                        local::describe_portal(&mut m, cmd);
                    }
                    self.expect.push_synthetic(m.freeze());
                    self.drain_synthetic();
                    return Ok(());
                }
                let name = if t.kind == b'S' { t.name } else { "" };
                let stmt = match self.attach_for(name, frame).await {
                    Ok(s) => s,
                    Err(e) => {
                        self.fail_extended(&e);
                        return Ok(());
                    }
                };
                match stmt {
                    Some(stmt) => {
                        frontend::encode_target(&mut self.to_server, b'D', b'S', &stmt.server_name);
                    }
                    None => self.to_server.extend_from_slice(frame),
                }
                self.expect.push(Req::Describe(t.kind), true);
            }
            b'C' => {
                let t = match frontend::decode_target(body, "Close") {
                    Ok(t) => t,
                    Err(e) => return Err(self.malformed(e).await),
                };
                let was_local = if t.kind == b'S' {
                    self.local.forget_statement(t.name)
                } else {
                    self.local.forget_portal(t.name)
                };
                if was_local {
                    self.synthetic_empty(b'3');
                } else if t.kind == b'S' && !t.name.is_empty() {
                    // The server keeps it: other clients may share it.
                    self.statements.remove(t.name);
                    self.synthetic_empty(b'3');
                } else if self.server.is_some() {
                    self.to_server.extend_from_slice(frame);
                    self.expect.push(Req::Close, true);
                } else {
                    self.synthetic_empty(b'3');
                }
            }
            b'E' if self.local.portal(portal_name(body)).is_some() => {
                let name = portal_name(body);
                let cmd = self.local.portal(name).cloned().expect("checked");
                let binary = self.local.portal_binary(name);
                self.execute_local(&cmd, binary).await?;
            }
            b'E' | b'F' => {
                if let Err(e) = self.attach("", Some(frame)).await {
                    if tag == b'F' {
                        self.synthetic_error(&e);
                        self.synthetic_ready();
                    } else {
                        self.fail_extended(&e);
                    }
                    return Ok(());
                }
                self.to_server.extend_from_slice(frame);
                self.expect.push(
                    if tag == b'E' {
                        Req::Execute
                    } else {
                        Req::FunctionCall
                    },
                    true,
                );
            }
            b'S' => {
                if self.server.is_some() {
                    self.to_server.extend_from_slice(frame);
                    self.expect.push(Req::Sync, true);
                } else {
                    self.synthetic_ready();
                }
            }
            b'H' => {
                if self.server.is_some() {
                    self.to_server.extend_from_slice(frame);
                }
            }
            b'd' | b'c' | b'f' => {
                // Clients may send COPY data right behind the COPY query,
                // before CopyInResponse (asyncpg does): the server takes it
                // or ignores it outside a COPY, as it would directly.
                if self.server.is_some() {
                    self.to_server.extend_from_slice(frame);
                }
            }
            b'X' => return Err(End::Client),
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
    async fn leave_replica_for_write(&mut self, tag: u8, frame: &[u8]) -> Result<(), End> {
        let body = &frame[5..];
        let sql: Option<String> = match tag {
            b'Q' => frontend::decode_query(body).ok().map(str::to_string),
            b'P' => frontend::decode_parse(body)
                .ok()
                .map(|p| p.query.to_string()),
            b'B' => frontend::decode_bind(body).ok().and_then(|b| {
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
            Ok(Ok(b'I')) => {
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
    async fn attach_for(
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
            self.ensure_prepared(s, false);
        }
        Ok(stmt)
    }

    /// Prepares `stmt` on the attached server if it lacks it, and says
    /// whether a `Parse` was sent. `forward`: the client asked for this
    /// Parse, so the server's ParseComplete goes to it; otherwise the Parse
    /// is injected (before a Bind or Describe) and its answer dropped.
    fn ensure_prepared(&mut self, stmt: &Statement, forward: bool) -> bool {
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
            .push_named(Req::Parse, forward, Some(stmt.server_name.clone()));
        true
    }

    /// Answers a simple-query `DEALLOCATE name` itself when `name` is one of
    /// the client's protocol-level statements: the server knows it under
    /// the proxy's name (or not at all), so forwarding it would fail with
    /// 26000. The server keeps its copy for other clients. In a failed
    /// transaction, or behind answers still owed, the text goes on as it is
    /// (the server answers 25P02 as PostgreSQL would).
    fn deallocate_locally(&mut self, sql: &str) -> bool {
        if self.statements.is_empty() && !self.local.has_statements() {
            return false;
        }
        if self.server.is_some() && (!self.expect.is_empty() || self.expect.status() == b'E') {
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
    fn effects_of(&self, sql: &str, known: Option<ServerEffects>) -> ServerEffects {
        known.unwrap_or_else(|| self.shared.router.classifier().server_effects(sql))
    }

    /// A failed transaction runs nothing but its end (25P02): what a
    /// statement sent into it would do does not happen.
    fn in_failed_transaction(&self) -> bool {
        self.server.is_some() && self.expect.is_empty() && self.expect.status() == b'E'
    }

    /// Applies what `sql`, about to run, does to the server connection.
    fn note_effects(&mut self, sql: &str, known: Option<ServerEffects>) {
        let fx = self.effects_of(sql, known);
        self.note_pins(fx);
        self.note_drops(sql, fx);
    }

    /// Statements `sql` drops, when it runs (a simple query, the unnamed
    /// statement, or the Bind of a named statement that drops: a named
    /// `Parse` of `DEALLOCATE ALL` drops nothing until it is executed).
    fn note_drops(&mut self, sql: &str, fx: ServerEffects) {
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
    fn note_pins(&mut self, fx: ServerEffects) {
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

    /// Attaches a server connection for the transaction that starts with
    /// `sql`, if none is attached. For an extended-protocol message
    /// (`frame`), the rest of its batch is classified with it. Returns what
    /// `sql` does to its server connection when it analyzed `sql` alone.
    async fn attach(
        &mut self,
        sql: &str,
        frame: Option<&[u8]>,
    ) -> Result<Option<ServerEffects>, ProxyError> {
        if self.server.is_some() {
            return Ok(None);
        }
        self.config = self.shared.config.load_full();
        let batch = frame.and_then(|_| self.batch_text(sql));
        let text = batch.as_deref().unwrap_or(sql);
        let shared = self.shared.clone();
        let analysis = shared.router.analyze(text);
        let now = Instant::now();
        let mut routed = {
            // Only `balance = "least_connections"` asks: connections in use
            // to a node by everyone, in this user's and database's pool.
            let snap = shared.router.health();
            let (user, database) = (self.user.name.as_str(), &*self.database);
            let in_use = |node: usize| {
                snap.nodes
                    .get(node)
                    .map_or(0, |n| shared.pools.in_use(&n.name, user, database))
            };
            shared
                .router
                .route_analyzed(&mut self.routing, text, &analysis, now, &in_use)
        };
        let mut caught_up = None;
        if let Ok(d) = &routed
            && let Some(cu) = d.catch_up
        {
            caught_up = Box::pin(self.catch_up(cu.replica, cu.lsn)).await;
            routed = shared
                .router
                .catch_up_done(d, caught_up.is_some(), Instant::now());
        }
        // A statement that pins the session (session locks, LISTEN, temp
        // tables…) keeps its server for good: that must be the primary, or
        // the session's later writes would follow it to a replica.
        if let Ok(d) = &routed
            && !d.primary
            && analysis.server.pins
        {
            if let Some(pc) = caught_up.take() {
                pc.release();
            }
            routed = match shared.router.health().primary_index() {
                Some(node) => Ok(lagrouter_routing::RouteDecision {
                    node,
                    primary: true,
                    reason: lagrouter_routing::Reason::Write,
                    write: true,
                    notice: None,
                    catch_up: None,
                }),
                None => Err(lagrouter_routing::RouteError::NoPrimary {
                    detail: "a statement that pins the session needs the primary".into(),
                    unreachable: false,
                }),
            };
        }
        let decision = match routed {
            Ok(d) => d,
            Err(e) => {
                shared.route_counters.refused(match &e {
                    lagrouter_routing::RouteError::BreakerOpen { .. } => "breaker_open",
                    lagrouter_routing::RouteError::WritesRefused { .. } => "write_gate",
                    _ => "no_primary",
                });
                return Err(e.into());
            }
        };
        let pool = self.pool_for(decision.node)?;
        pool.counts
            .record(decision.primary, decision.write, decision.reason);
        if let Some(notice) = &decision.notice {
            backend::error_response(&mut self.to_client, Severity::Notice, "01000", notice, None);
        }
        self.txn_write = decision.write && decision.primary;
        self.on_replica = !decision.primary;
        let mut pc = match caught_up {
            Some(pc) if !decision.primary => pc,
            _ => {
                pool.checkout(
                    &self.config.pool,
                    self.user.backend_password.as_deref(),
                    now,
                )
                .await?
            }
        };
        let conn = pc.conn();
        if conn.synced_to != self.params.fingerprint() {
            let current = |k: &str| conn.params.get(k).map(String::as_str);
            if let Some((sql, set)) = self.params.sync_sql(current) {
                frontend::encode_query(&mut self.to_server, &sql);
                self.expect.push(Req::Query, false);
                for (k, v) in set {
                    conn.params.insert(k, v);
                }
            }
            conn.synced_to = self.params.fingerprint();
        }
        self.cancel.slot.set(Some(conn.cancel_target()));
        self.server = Some(pc);
        if let Some(c) = &self.registered {
            c.attached(decision.node);
        }
        Ok(batch.is_none().then_some(analysis.server))
    }

    /// Waits, up to `routing.read_your_writes_wait`, for `replica` to replay
    /// `lsn`, polling its replay position on a pooled connection that is
    /// then used for the read. `None` when it did not catch up in time (or
    /// could not be asked): the read falls back to the primary.
    async fn catch_up(&mut self, replica: usize, lsn: Lsn) -> Option<PooledConn> {
        let deadline = Instant::now() + self.config.routing.read_your_writes_wait;
        let pool = self.pool_for(replica).ok()?;
        let mut cfg = self.config.pool.clone();
        cfg.checkout_timeout = self.config.routing.read_your_writes_wait;
        let mut pc = pool
            .checkout(&cfg, self.user.backend_password.as_deref(), Instant::now())
            .await
            .ok()?;
        loop {
            // Bounded by the wait itself: a replica that does not answer in
            // time is not caught up (its connection, owing an answer, is
            // dropped, not pooled).
            let poll =
                tokio::time::timeout_at(deadline.into(), pc.conn().query_value(REPLAY_LSN_QUERY));
            let replayed = poll.await.ok()?.ok()?;
            if replayed
                .and_then(|v| v.parse::<Lsn>().ok())
                .is_some_and(|r| r >= lsn)
            {
                return Some(pc);
            }
            if Instant::now() >= deadline {
                pc.release();
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_micros(500)).await;
        }
    }

    /// The pool for the node routing picked. Routing names nodes by their
    /// index in its health snapshot; the pool is found by the node's *name*,
    /// so a reload that reorders, adds or removes nodes (snapshots follow a
    /// round later) can never send a transaction to the wrong node.
    pub(super) fn pool_for(&mut self, node: usize) -> Result<Arc<ServerPool>, ProxyError> {
        let gone = |what: String| {
            ProxyError::Route(lagrouter_routing::RouteError::NoPrimary {
                detail: format!("{what} is no longer in the configuration"),
                unreachable: false,
            })
        };
        let snap = self.shared.router.health();
        let name = snap
            .nodes
            .get(node)
            .map(|n| n.name.as_str())
            .ok_or_else(|| gone(format!("node #{node}")))?;
        let addr = self
            .shared
            .node_addr_named(name)
            .ok_or_else(|| gone(format!("node \"{name}\"")))?;
        if let Some(p) = self.pools.iter().find(|p| p.node == addr)
            && p.size() == self.config.pool.size
        {
            return Ok(p.clone());
        }
        let key = PoolKey {
            node: addr.name.clone(),
            user: self.user.name.as_str().into(),
            database: self.database.clone(),
        };
        let pool = self
            .shared
            .pools
            .get(key, addr, self.config.pool.size, |name| {
                self.shared.route_counters.node(name)
            });
        if pool.size() != self.config.pool.size {
            pool.resize(self.config.pool.size);
        }
        self.pools.retain(|p| p.key.node != pool.key.node);
        self.pools.push(pool.clone());
        Ok(pool)
    }

    async fn write_server(&mut self) -> Result<(), End> {
        let mut pos = 0;
        let mut lost = None;
        // Read replies while writing, so a server blocked on sending to us
        // cannot block our writes to it; when READ_AHEAD_LIMIT of them wait,
        // hand them on to the client before writing more. A client that
        // pipelines requests must read their answers as it writes, as it
        // must directly: then nobody waits for anybody.
        while pos < self.to_server.len() {
            let Some(pc) = self.server.as_mut() else {
                break;
            };
            let conn = pc.conn();
            if conn.read_buf.len() >= READ_AHEAD_LIMIT {
                let before = conn.read_buf.len();
                self.on_server_data().await?;
                self.flush_client().await?;
                let conn = self.server.as_mut().expect("attached").conn();
                if conn.read_buf.len() < before {
                    continue;
                }
                // Nothing could be handed on (cannot happen with whole
                // messages or a streamed one): write the rest as before.
                if let Err(e) = conn.stream.write_all(&self.to_server[pos..]).await {
                    lost = Some(e.to_string());
                }
                break;
            }
            conn.read_buf.reserve(READ_CHUNK);
            let (mut rd, mut wr) = conn.stream.split();
            tokio::select! {
                biased;
                r = wr.write(&self.to_server[pos..]) => match r {
                    Ok(0) => { lost = Some("the node stopped accepting data".into()); break; }
                    Ok(n) => pos += n,
                    Err(e) => { lost = Some(e.to_string()); break; }
                },
                r = rd.read_buf(&mut conn.read_buf) => match r {
                    Ok(0) => { lost = Some("the node closed the connection".into()); break; }
                    Ok(_) => {}
                    Err(e) => { lost = Some(e.to_string()); break; }
                },
            }
        }
        self.shared
            .stats
            .bytes_to_servers
            .fetch_add(pos as u64, Ordering::Relaxed);
        self.to_server.clear();
        match lost {
            Some(detail) => Err(self.server_lost(detail).await),
            None => Ok(()),
        }
    }

    // ----- server → client -----

    async fn on_server_data(&mut self) -> Result<(), End> {
        let Session {
            server,
            expect,
            to_client,
            params,
            server_stream,
            capturing_lsn,
            captured_lsn,
            ..
        } = self;
        let conn = server.as_mut().expect("attached").conn();
        let mut desync = None;
        loop {
            if server_stream.remaining > 0 {
                let n = server_stream.remaining.min(conn.read_buf.len());
                if n == 0 {
                    break;
                }
                if server_stream.forward {
                    to_client.extend_from_slice(&conn.read_buf[..n]);
                }
                conn.read_buf.advance(n);
                server_stream.remaining -= n;
                continue;
            }
            let (tag, total) = match peek_header(&conn.read_buf, MAX_MESSAGE_LEN) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    desync = Some(e.to_string());
                    break;
                }
            };
            if conn.read_buf.len() < total {
                if total > STREAM_THRESHOLD && !matches!(tag, b'Z' | b'S' | b'E') {
                    match expect.on_server(tag, 0) {
                        Ok(a) => {
                            *server_stream = Passthrough {
                                remaining: total,
                                forward: a == crate::protocol::expect::Action::Forward,
                            };
                            continue;
                        }
                        Err(e) => {
                            desync = Some(e.to_string());
                            break;
                        }
                    }
                }
                conn.read_buf.reserve(total - conn.read_buf.len());
                break;
            }
            // Read in place, consumed at the end of the iteration.
            let frame = &conn.read_buf[..total];
            let status = if tag == b'Z' {
                frame.get(5).copied().unwrap_or(b'I')
            } else {
                0
            };
            let action = match expect.on_server(tag, status) {
                Ok(a) => a,
                Err(e) => {
                    desync = Some(e.to_string());
                    break;
                }
            };
            let forward = action == crate::protocol::expect::Action::Forward;
            match tag {
                b'S' => {
                    if let Ok((k, v)) = backend::decode_parameter_status(&frame[5..]) {
                        conn.params.insert(k.to_string(), v.to_string());
                        if forward {
                            params.set(k, v);
                        }
                    }
                }
                b'D' if !forward && *capturing_lsn => {
                    *captured_lsn = first_column_text(&frame[5..]).and_then(|t| t.parse().ok());
                }
                b'E' if !forward => {
                    let f = backend::decode_error_fields(&frame[5..]).unwrap_or_default();
                    tracing::warn!(node = %conn.node.name, code = %f.code, "restoring session settings failed: {}", f.message);
                }
                _ => {}
            }
            if forward {
                to_client.extend_from_slice(frame);
            }
            conn.read_buf.advance(total);
            while let Some(m) = expect.pop_synthetic() {
                to_client.extend_from_slice(&m);
            }
            if to_client.len() > READ_AHEAD_LIMIT {
                break;
            }
        }
        for name in expect.take_failed_parses() {
            conn.prepared.remove(&name);
        }
        if let Some(detail) = desync {
            return Err(self
                .server_lost(format!("protocol out of step: {detail}"))
                .await);
        }
        if self.to_client.len() > READ_AHEAD_LIMIT {
            // Flush and come back for the rest of what is buffered.
            self.flush_client().await?;
            return Box::pin(self.on_server_data()).await;
        }
        Ok(())
    }

    fn maybe_release(&mut self) {
        if self.server.is_none()
            || self.pinned
            || !self.expect.is_idle()
            || !self.to_server.is_empty()
            || self.server_stream.remaining > 0
            || self.client_stream.remaining > 0
        {
            return;
        }
        if self.txn_write {
            // Learn where the write landed before the connection goes back
            // (the client already has its ReadyForQuery).
            self.txn_write = false;
            self.capturing_lsn = true;
            frontend::encode_query(&mut self.to_server, COMMIT_LSN_QUERY);
            self.expect.push(Req::Query, false);
            return;
        }
        if self.capturing_lsn {
            self.capturing_lsn = false;
            if let Some(lsn) = self.captured_lsn.take() {
                self.shared.router.record_write(&mut self.routing, lsn);
                backend::parameter_status(
                    &mut self.to_client,
                    "lagrouter.last_write_lsn",
                    &lsn.to_string(),
                );
            }
        }
        self.local.end_transaction();
        if self.config.pool.mode == PoolMode::Session {
            return;
        }
        self.release();
    }

    fn release(&mut self) {
        if let Some(mut pc) = self.server.take() {
            if let Some(c) = &self.registered {
                c.released();
            }
            self.cancel.slot.set(None);
            let conn = pc.conn();
            conn.synced_to = self.params.fingerprint();
            if conn.prepared.len() > MAX_SERVER_STATEMENTS || !conn.read_buf.is_empty() {
                drop(pc);
            } else {
                pc.release();
            }
        }
    }

    /// Ends the session: a clean server connection goes back to the pool, a
    /// dirty one (mid-transaction, or carrying pinned session state) is closed.
    /// An idle session gives back its (empty) buffers; they grow again
    /// with the next bytes.
    fn give_back_buffers(&mut self) {
        if self.cbuf.is_empty() && self.to_client.is_empty() && self.to_server.is_empty() {
            self.cbuf = BytesMut::new();
            self.to_client = BytesMut::new();
            self.to_server = BytesMut::new();
            self.frame_buf = BytesMut::new();
        }
    }

    fn finish(&mut self) {
        if self.pinned {
            self.shared
                .stats
                .pinned_sessions
                .fetch_sub(1, Ordering::Relaxed);
        }
        let clean = self.expect.is_idle() && self.to_server.is_empty();
        if clean && !self.pinned && self.config.pool.mode == PoolMode::Transaction {
            self.release();
        } else {
            self.server = None;
            self.cancel.slot.set(None);
        }
    }

    // ----- answers the proxy gives itself -----

    fn drain_synthetic(&mut self) {
        while let Some(m) = self.expect.pop_synthetic() {
            self.to_client.extend_from_slice(&m);
        }
    }

    fn forget_failed_parses(&mut self) {
        let failed = self.expect.take_failed_parses();
        if failed.is_empty() {
            return;
        }
        if let Some(pc) = self.server.as_mut() {
            for n in failed {
                pc.conn().prepared.remove(&n);
            }
        }
    }

    fn synthetic_empty(&mut self, tag: u8) {
        let mut m = BytesMut::new();
        backend::empty(&mut m, tag);
        self.expect.push_synthetic(m.freeze());
    }

    fn synthetic_ready(&mut self) {
        let mut m = BytesMut::new();
        backend::ready_for_query(
            &mut m,
            if self.server.is_some() {
                self.expect.status()
            } else {
                b'I'
            },
        );
        self.expect.push_synthetic(m.freeze());
    }

    pub(super) fn synthetic_error(&mut self, e: &ProxyError) {
        let mut m = BytesMut::new();
        backend::error_response(
            &mut m,
            Severity::Error,
            e.sqlstate(),
            &e.to_string(),
            e.hint(),
        );
        self.expect.push_synthetic(m.freeze());
        tracing::debug!(user = %self.user.name, code = e.sqlstate(), "{e}");
    }

    async fn execute_local(&mut self, cmd: &ProxyCommand, binary: bool) -> Result<(), End> {
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

    /// `lagrouter.wait_replicas`: waits on the health monitor's replay
    /// positions, holding no server connection (unless the client's own
    /// transaction holds one), and answers how many replicas replayed the
    /// session's LSN; `None` when the client cancelled it (CancelRequest).
    /// What the client sends meanwhile is read into its buffer (up to the
    /// read-ahead limit) and handled after the answer.
    async fn wait_replicas(&mut self, w: local::Wait) -> Result<Option<usize>, End> {
        // A write pipelined right before the wait must be acknowledged and
        // its commit LSN known first.
        self.settle_server().await?;
        let mut lsn = w.lsn;
        if self.pinned
            && let Some(pc) = self.server.as_mut()
            && !self.expect.awaits_server()
        {
            // A pinned session's commits are not captured one by one: wait
            // for everything its server (the primary) has written so far.
            let limit = self.config.health.check_timeout;
            let sql = "SELECT pg_current_wal_lsn()::text";
            match tokio::time::timeout(limit, pc.conn().query_value(sql)).await {
                Ok(Ok(v)) => lsn = lsn.max(v.and_then(|v| v.parse::<Lsn>().ok())),
                Ok(Err(e)) => return Err(self.server_lost(e.to_string()).await),
                Err(_) => return Err(self.server_lost(no_answer(sql, limit)).await),
            }
        }
        // Answers already due (e.g. a write's CommandComplete) go first.
        self.drain_synthetic();
        self.flush_client().await?;
        let started = Instant::now();
        let replay = self.shared.replay.clone();
        let slot = self.cancel.slot.clone();
        let wait = replay.wait(lsn, w.replicas as usize, w.timeout);
        let cancelled = slot.local.notified();
        tokio::pin!(wait, cancelled);
        let n = loop {
            let room = self.cbuf.len() < READ_AHEAD_LIMIT;
            tokio::select! {
                n = &mut wait => break Some(n),
                _ = &mut cancelled => break None,
                // Notice a client that leaves; keep what it sends for later.
                r = self.client.read_buf(&mut self.cbuf), if room => match r {
                    Ok(0) => return Err(End::Client),
                    Ok(_) => {}
                    Err(e) => return Err(End::ClientIo(e)),
                },
            }
        };
        let outcome = match n {
            None => "cancelled",
            Some(n) if n >= w.replicas as usize => "reached",
            Some(_) => "timeout",
        };
        metrics::counter!("lagrouter_wait_replicas_total", "outcome" => outcome).increment(1);
        metrics::histogram!("lagrouter_wait_replicas_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(n)
    }

    /// Runs the server side until nothing sent is still unanswered and a
    /// finished write's commit LSN is recorded.
    async fn settle_server(&mut self) -> Result<(), End> {
        loop {
            // A finished write starts its LSN query here.
            self.maybe_release();
            self.write_server().await?;
            let owed = self.expect.awaits_server() || self.capturing_lsn;
            let Some(pc) = self.server.as_mut().filter(|_| owed) else {
                return Ok(());
            };
            let conn = pc.conn();
            if conn.read_buf.capacity() - conn.read_buf.len() < 4096 {
                conn.read_buf.reserve(READ_CHUNK);
            }
            match conn.stream.read_buf(&mut conn.read_buf).await {
                Ok(0) => {
                    return Err(self
                        .server_lost("the node closed the connection".into())
                        .await);
                }
                Ok(_) => {}
                Err(e) => return Err(self.server_lost(e.to_string()).await),
            }
            self.on_server_data().await?;
        }
    }

    /// The statement texts of the rest of the buffered batch (up to Sync
    /// or Flush) joined to `sql`, when there is more than `sql`, so the
    /// batch is routed as the one implicit transaction it is.
    fn batch_text(&self, sql: &str) -> Option<String> {
        let mut texts: Vec<&str> = Vec::new();
        let mut rest: &[u8] = &self.cbuf;
        while let Ok(Some((tag, total))) = peek_header(rest, MAX_MESSAGE_LEN) {
            if rest.len() < total || matches!(tag, b'S' | b'H') {
                break;
            }
            let body = &rest[5..total];
            match tag {
                b'P' => {
                    if let Ok(p) = frontend::decode_parse(body) {
                        texts.push(p.query);
                    }
                }
                b'B' => {
                    // The unnamed statement is never kept: its Parse is in
                    // the batch.
                    if let Ok(b) = frontend::decode_bind(body)
                        && !b.statement.is_empty()
                        && let Some(s) = self.statements.get(b.statement)
                    {
                        texts.push(&s.query);
                    }
                }
                _ => {}
            }
            rest = &rest[total..];
        }
        texts.retain(|t| !t.is_empty() && *t != sql);
        if texts.is_empty() {
            return None;
        }
        let mut all = String::from(sql);
        for t in texts {
            all.push_str(";\n");
            all.push_str(t);
        }
        Some(all)
    }

    fn fail_extended(&mut self, e: &ProxyError) {
        self.synthetic_error(e);
        self.discard_until_sync = true;
    }

    async fn flush_client(&mut self) -> Result<(), End> {
        if self.to_client.is_empty() {
            return Ok(());
        }
        let r = async {
            self.client.write_all(&self.to_client).await?;
            self.client.flush().await
        }
        .await;
        self.shared
            .stats
            .bytes_to_clients
            .fetch_add(self.to_client.len() as u64, Ordering::Relaxed);
        self.to_client.clear();
        if self.to_client.capacity() > READ_AHEAD_LIMIT * 2 {
            self.to_client = BytesMut::with_capacity(READ_CHUNK);
        }
        r.map_err(End::ClientIo)
    }

    async fn fatal(&mut self, code: &str, msg: &str, hint: Option<&str>) -> End {
        backend::error_response(&mut self.to_client, Severity::Fatal, code, msg, hint);
        let _ = self.flush_client().await;
        End::Closed(msg.to_string())
    }

    async fn fatal_error(&mut self, e: ProxyError) -> End {
        self.fatal(e.sqlstate(), &e.to_string(), e.hint()).await
    }

    /// A client message that cannot be framed or decoded: FATAL 08P01 and
    /// the session ends (only this client is affected).
    async fn too_large(&mut self, tag: u8, len: usize) -> End {
        let limit = client_message_limit(tag, self.config.server.max_message_size);
        self.fatal_error(ProxyError::MessageTooLarge {
            tag: char::from(tag),
            len,
            limit,
        })
        .await
    }

    async fn malformed(&mut self, e: impl std::fmt::Display) -> End {
        self.fatal_error(ProxyError::ClientProtocol(e.to_string()))
            .await
    }

    /// Why the session abandons its transaction on `node`.
    fn stopped_answering(&self, node: usize) -> String {
        let snap = self.shared.router.health();
        let why = snap
            .nodes
            .get(node)
            .and_then(|n| n.unreachable_reason.clone())
            .unwrap_or_else(|| "no answer".into());
        if snap.primary_index() == Some(node) {
            format!(
                "the primary stopped answering ({why}); the transaction was abandoned \
                 and whether it committed is unknown"
            )
        } else {
            format!("the node stopped answering ({why}); the transaction was abandoned")
        }
    }

    async fn server_lost(&mut self, detail: String) -> End {
        let node = self.server.as_ref().map(|pc| {
            pc.report_failure();
            pc.get().node.clone()
        });
        self.server = None; // dropped: never returned to the pool
        self.cancel.slot.set(None);
        let e = match node {
            Some(n) => ProxyError::NodeConnect {
                node: n.name.to_string(),
                addr: n.addr(),
                detail,
            },
            None => ProxyError::ClientProtocol(detail),
        };
        tracing::warn!(user = %self.user.name, "{e}");
        self.fatal_error(e).await
    }
}

/// Whether the buffered client bytes hold a complete batch: a Sync or
/// Flush message, or a message that ends the lookahead.
/// Why a session gave up on lagrouter's own short query (a Sync, an LSN):
/// these wait at most `[health] check_timeout`, as a health check does.
fn no_answer(what: &str, limit: std::time::Duration) -> String {
    format!("no answer to lagrouter's {what} within check_timeout ({limit:?})")
}

/// Resolves when the attached node was declared stopped (never for an
/// unregistered session).
async fn abandoned(entry: Option<&ClientEntry>) -> usize {
    match entry {
        Some(e) => e.abandoned().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the proxy shuts down or asks an idle session for its
/// buffers (never for an unregistered session).
async fn idle_event(entry: Option<&ClientEntry>) -> IdleEvent {
    match entry {
        Some(e) => e.idle_event().await,
        None => std::future::pending().await,
    }
}

fn batch_complete(buf: &[u8]) -> bool {
    let mut rest = buf;
    loop {
        match peek_header(rest, MAX_MESSAGE_LEN) {
            Ok(Some((tag, total))) => {
                if matches!(tag, b'S' | b'H' | b'Q' | b'X' | b'F') {
                    return true;
                }
                if rest.len() < total {
                    return false;
                }
                rest = &rest[total..];
            }
            Ok(None) => return false,
            Err(_) => return true, // let the frame error surface
        }
    }
}

/// The portal name at the front of an Execute body.
fn portal_name(body: &[u8]) -> &str {
    let end = body.iter().position(|&b| b == 0).unwrap_or(0);
    std::str::from_utf8(&body[..end]).unwrap_or("")
}

/// The text of the first column of a DataRow body.
fn first_column_text(body: &[u8]) -> Option<&str> {
    let mut r = crate::protocol::reader::Reader::new(body, "DataRow");
    if r.i16().ok()? < 1 {
        return None;
    }
    let len = r.i32().ok()?;
    if len < 0 {
        return None;
    }
    std::str::from_utf8(r.bytes(len as usize).ok()?).ok()
}
