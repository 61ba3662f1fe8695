//! The forwarding loop of an authenticated session.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use lagrouter_config::{Config, PoolMode};
use lagrouter_routing::SessionRouting;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::params::SessionParams;
use super::statements::{Statement, Statements};
use crate::auth::UserAuth;
use crate::cancel::{CancelKey, CancelTarget};
use crate::error::ProxyError;
use crate::listener::Shared;
use crate::protocol::backend::{self, Severity};
use crate::protocol::expect::{Expect, Req};
use crate::protocol::frame::peek_header;
use crate::protocol::frontend;
use crate::protocol::{FrameError, MAX_MESSAGE_LEN};
use crate::server::{PoolKey, PooledConn, ServerPool};

/// Messages larger than this are streamed through instead of buffered whole.
const STREAM_THRESHOLD: usize = 256 * 1024;
/// While writing to a server, its replies are read ahead up to this much.
const READ_AHEAD_LIMIT: usize = 4 * 1024 * 1024;
/// A server connection holding more prepared statements is closed on release.
const MAX_SERVER_STATEMENTS: usize = 5_000;
const READ_CHUNK: usize = 16 * 1024;

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
    pub(super) pools: Vec<Option<Arc<ServerPool>>>,
    client_stream: Passthrough,
    server_stream: Passthrough,
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
            to_client: BytesMut::with_capacity(READ_CHUNK),
            to_server: BytesMut::with_capacity(READ_CHUNK),
            discard_until_sync: false,
            pools: Vec::new(),
            client_stream: Passthrough::default(),
            server_stream: Passthrough::default(),
        }
    }

    /// Runs until the client leaves or the session must end.
    pub async fn run(&mut self) -> End {
        let end = self.run_inner().await;
        match &end {
            End::Closed(msg) => tracing::debug!(user = %self.user.name, "session closed: {msg}"),
            End::ClientIo(e) => {
                tracing::debug!(user = %self.user.name, "client connection failed: {e}")
            }
            End::Client => {}
        }
        self.finish();
        end
    }

    async fn run_inner(&mut self) -> End {
        loop {
            if let Err(e) = self.flush_client().await {
                return e;
            }
            if self.cbuf.capacity() - self.cbuf.len() < 4096 {
                self.cbuf.reserve(READ_CHUNK);
            }
            let Session {
                client,
                server,
                cbuf,
                shared,
                ..
            } = self;
            let got_client = if let Some(pc) = server.as_mut() {
                let conn = pc.conn();
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
                        Ok(_) => false,
                        Err(e) => return self.server_lost(e.to_string()).await,
                    },
                }
            } else {
                tokio::select! {
                    biased;
                    _ = shared.shutdown.cancelled() => {
                        return self.fatal("57P01", "lagrouter is shutting down", None).await;
                    }
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
        }
    }

    // ----- client → server -----

    async fn on_client_data(&mut self) -> Result<(), End> {
        loop {
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
                Err(e) => return Err(self.frame_error(e).await),
            };
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
                self.cbuf.reserve(total - self.cbuf.len());
                return Ok(());
            }
            let frame = self.cbuf.split_to(total).freeze();
            self.on_client_message(tag, frame).await?;
            if self.to_server.len() > READ_AHEAD_LIMIT {
                self.write_server().await?;
            }
        }
    }

    async fn on_client_message(&mut self, tag: u8, frame: Bytes) -> Result<(), End> {
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
                if let Err(e) = self.attach(sql).await {
                    self.synthetic_error(&e);
                    self.synthetic_ready();
                    return Ok(());
                }
                self.note_effects(sql);
                self.to_server.extend_from_slice(&frame);
                self.expect.push(Req::Query, true);
            }
            b'P' => {
                let p = match frontend::decode_parse(body) {
                    Ok(p) => p,
                    Err(e) => {
                        return Err(self
                            .fatal_error(ProxyError::ClientProtocol(e.to_string()))
                            .await);
                    }
                };
                if !p.name.is_empty() && self.server.is_none() {
                    // A named Parse outside a transaction needs no server: it
                    // is prepared on whichever server runs its Bind. Waiting
                    // for a pool slot here could deadlock clients that
                    // prepare synchronously (pgbench -M prepared) while
                    // their other connections hold every slot. Cost: a
                    // syntax error is reported at the Bind, not here.
                    if self
                        .statements
                        .insert(p.name, p.query, p.param_types)
                        .is_none()
                    {
                        self.fail_extended(&ProxyError::TooManyStatements(
                            super::statements::MAX_STATEMENTS_PER_CLIENT,
                        ));
                        return Ok(());
                    }
                    self.note_effects(p.query);
                    self.synthetic_empty(b'1');
                    self.drain_synthetic();
                    return Ok(());
                }
                if let Err(e) = self.attach(p.query).await {
                    self.fail_extended(&e);
                    return Ok(());
                }
                self.note_effects(p.query);
                if p.name.is_empty() {
                    self.to_server.extend_from_slice(&frame);
                    self.expect.push(Req::Parse, true);
                } else {
                    let Some(stmt) = self.statements.insert(p.name, p.query, p.param_types) else {
                        self.fail_extended(&ProxyError::TooManyStatements(
                            super::statements::MAX_STATEMENTS_PER_CLIENT,
                        ));
                        return Ok(());
                    };
                    let conn = self.server.as_mut().expect("attached").conn();
                    if conn.prepared.contains(&stmt.server_name) {
                        let mut m = BytesMut::new();
                        backend::empty(&mut m, b'1');
                        self.expect.push_synthetic(m.freeze());
                    } else {
                        frontend::encode_parse(
                            &mut self.to_server,
                            &stmt.server_name,
                            &stmt.query,
                            &stmt.param_types,
                        );
                        conn.prepared.insert(stmt.server_name.clone());
                        self.expect
                            .push_named(Req::Parse, true, Some(stmt.server_name.clone()));
                    }
                }
            }
            b'B' => {
                let b = match frontend::decode_bind(body) {
                    Ok(b) => b,
                    Err(e) => {
                        return Err(self
                            .fatal_error(ProxyError::ClientProtocol(e.to_string()))
                            .await);
                    }
                };
                let stmt = if b.statement.is_empty() {
                    None
                } else {
                    self.statements.get(b.statement).cloned()
                };
                let sql = stmt.as_ref().map(|s| s.query.clone());
                if let Err(e) = self.attach(sql.as_deref().unwrap_or("")).await {
                    self.fail_extended(&e);
                    return Ok(());
                }
                match stmt {
                    Some(stmt) => {
                        self.ensure_prepared(&stmt);
                        frontend::encode_bind(
                            &mut self.to_server,
                            b.portal,
                            &stmt.server_name,
                            b.rest,
                        );
                    }
                    // Unknown names go through as sent: the server answers 26000.
                    None => self.to_server.extend_from_slice(&frame),
                }
                self.expect.push(Req::Bind, true);
            }
            b'D' => {
                let t = match frontend::decode_target(body, "Describe") {
                    Ok(t) => t,
                    Err(e) => {
                        return Err(self
                            .fatal_error(ProxyError::ClientProtocol(e.to_string()))
                            .await);
                    }
                };
                let stmt = if t.kind == b'S' && !t.name.is_empty() {
                    self.statements.get(t.name).cloned()
                } else {
                    None
                };
                let sql = stmt.as_ref().map(|s| s.query.clone());
                if let Err(e) = self.attach(sql.as_deref().unwrap_or("")).await {
                    self.fail_extended(&e);
                    return Ok(());
                }
                match stmt {
                    Some(stmt) => {
                        self.ensure_prepared(&stmt);
                        frontend::encode_target(&mut self.to_server, b'D', b'S', &stmt.server_name);
                    }
                    None => self.to_server.extend_from_slice(&frame),
                }
                self.expect.push(Req::Describe(t.kind), true);
            }
            b'C' => {
                let t = match frontend::decode_target(body, "Close") {
                    Ok(t) => t,
                    Err(e) => {
                        return Err(self
                            .fatal_error(ProxyError::ClientProtocol(e.to_string()))
                            .await);
                    }
                };
                if t.kind == b'S' && !t.name.is_empty() {
                    // The server keeps it: other clients may share it.
                    self.statements.remove(t.name);
                    self.synthetic_empty(b'3');
                } else if self.server.is_some() {
                    self.to_server.extend_from_slice(&frame);
                    self.expect.push(Req::Close, true);
                } else {
                    self.synthetic_empty(b'3');
                }
            }
            b'E' | b'F' => {
                if let Err(e) = self.attach("").await {
                    if tag == b'F' {
                        self.synthetic_error(&e);
                        self.synthetic_ready();
                    } else {
                        self.fail_extended(&e);
                    }
                    return Ok(());
                }
                self.to_server.extend_from_slice(&frame);
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
                    self.to_server.extend_from_slice(&frame);
                    self.expect.push(Req::Sync, true);
                } else {
                    self.synthetic_ready();
                }
            }
            b'H' => {
                if self.server.is_some() {
                    self.to_server.extend_from_slice(&frame);
                }
            }
            b'd' | b'c' | b'f' => {
                // Copy messages outside a COPY are ignored, as PostgreSQL does.
                if self.server.is_some() && self.expect.in_copy() {
                    self.to_server.extend_from_slice(&frame);
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

    /// Prepares `stmt` on the attached server first if it lacks it; the
    /// answer to that injected `Parse` is dropped.
    fn ensure_prepared(&mut self, stmt: &Statement) {
        let conn = self.server.as_mut().expect("attached").conn();
        if !conn.prepared.contains(&stmt.server_name) {
            frontend::encode_parse(
                &mut self.to_server,
                &stmt.server_name,
                &stmt.query,
                &stmt.param_types,
            );
            conn.prepared.insert(stmt.server_name.clone());
            self.expect
                .push_named(Req::Parse, false, Some(stmt.server_name.clone()));
        }
    }

    fn note_effects(&mut self, sql: &str) {
        let fx = self.shared.patterns.effects(sql);
        if fx.drops_statements {
            if let Some(pc) = self.server.as_mut() {
                pc.conn().prepared.clear();
            }
            if sql.to_ascii_lowercase().contains("all") {
                self.statements.clear();
            }
        }
        if fx.pins && !self.pinned {
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
    /// `sql`, if none is attached.
    async fn attach(&mut self, sql: &str) -> Result<(), ProxyError> {
        if self.server.is_some() {
            return Ok(());
        }
        self.config = self.shared.config.load_full();
        let decision = self
            .shared
            .router
            .route(&mut self.routing, sql, Instant::now())?;
        let pool = self.pool_for(decision.node)?;
        let mut pc = pool
            .checkout(&self.config.pool, self.user.backend_password.as_deref())
            .await?;
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
        self.cancel.slot.set(Some(CancelTarget {
            addr: conn.node.addr(),
            pid: conn.pid,
            secret: conn.secret.clone(),
        }));
        self.server = Some(pc);
        Ok(())
    }

    pub(super) fn pool_for(&mut self, node: usize) -> Result<Arc<ServerPool>, ProxyError> {
        if let Some(Some(p)) = self.pools.get(node)
            && p.size() == self.config.pool.size
        {
            return Ok(p.clone());
        }
        let addr = self
            .shared
            .node_addr(node)
            .ok_or(ProxyError::Route(lagrouter_routing::RouteError::NoPrimary))?;
        let key = PoolKey {
            node: addr.name.clone(),
            user: self.user.name.as_str().into(),
            database: self.database.clone(),
        };
        let pool = self.shared.pools.get(key, addr, self.config.pool.size);
        if pool.size() != self.config.pool.size {
            pool.resize(self.config.pool.size);
        }
        if self.pools.len() <= node {
            self.pools.resize(node + 1, None);
        }
        self.pools[node] = Some(pool.clone());
        Ok(pool)
    }

    async fn write_server(&mut self) -> Result<(), End> {
        if self.to_server.is_empty() {
            return Ok(());
        }
        let Some(pc) = self.server.as_mut() else {
            self.to_server.clear();
            return Ok(());
        };
        let conn = pc.conn();
        let (mut rd, mut wr) = conn.stream.split();
        let mut pos = 0;
        let mut lost = None;
        // Read replies while writing, so a server blocked on sending to us
        // cannot block our writes to it.
        while pos < self.to_server.len() {
            if conn.read_buf.len() >= READ_AHEAD_LIMIT {
                if let Err(e) = wr.write_all(&self.to_server[pos..]).await {
                    lost = Some(e.to_string());
                }
                break;
            }
            conn.read_buf.reserve(READ_CHUNK);
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
                let chunk = conn.read_buf.split_to(n);
                if server_stream.forward {
                    to_client.extend_from_slice(&chunk);
                }
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
            let frame = conn.read_buf.split_to(total);
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
                b'E' if !forward => {
                    let f = backend::decode_error_fields(&frame[5..]).unwrap_or_default();
                    tracing::warn!(node = %conn.node.name, code = %f.code, "restoring session settings failed: {}", f.message);
                }
                _ => {}
            }
            if forward {
                to_client.extend_from_slice(&frame);
            }
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
            || !self.expect.is_empty()
            || self.expect.status() != b'I'
            || !self.to_server.is_empty()
            || self.server_stream.remaining > 0
            || self.client_stream.remaining > 0
            || self.config.pool.mode == PoolMode::Session
        {
            return;
        }
        self.release();
    }

    fn release(&mut self) {
        if let Some(mut pc) = self.server.take() {
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
    fn finish(&mut self) {
        if self.pinned {
            self.shared
                .stats
                .pinned_sessions
                .fetch_sub(1, Ordering::Relaxed);
        }
        let clean =
            self.expect.is_empty() && self.expect.status() == b'I' && self.to_server.is_empty();
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

    async fn frame_error(&mut self, e: FrameError) -> End {
        self.fatal_error(ProxyError::ClientProtocol(e.to_string()))
            .await
    }

    async fn server_lost(&mut self, detail: String) -> End {
        let node = self.server.as_ref().map(|pc| pc.get().node.clone());
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
