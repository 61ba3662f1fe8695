//! The forwarding loop of an authenticated session.
//!
//! - here: the session's state, the run loop and the client byte pump;
//! - `client`: client messages, one handler each;
//! - `attach`: routing a transaction to a server connection;
//! - `open`: a transaction the client opened that has no server yet;
//! - `server`: the server side and the end of a transaction;
//! - `answers`: what the proxy answers itself, and fatal errors.

mod answers;
mod attach;
mod client;
mod open;
mod server;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use lagrouter_config::{Config, ConfigCache, PoolMode};
use lagrouter_health::Lsn;
use lagrouter_routing::{LastAnalysis, ProxyCommand, RouteOverride, RouterView, SessionRouting};
use tokio::io::AsyncWriteExt;

use super::local::LocalStatements;
use super::params::SessionParams;
use super::statements::Statements;
use crate::admin::registry::{ClientEntry, IdleEvent};
use crate::auth::UserAuth;
use crate::cancel::CancelKey;
use crate::listener::{ProxyStats, Shared};
use crate::protocol::batch::BatchScan;
use crate::protocol::expect::Expect;
use crate::protocol::frame::peek_header;
use crate::protocol::tag::fe;
use crate::protocol::{FrameError, MAX_MESSAGE_LEN, client_message_limit};
use crate::server::PooledConn;
use crate::session::ClientStream;
use crate::wait::{ReadWait, Side};

/// Messages larger than this are streamed through instead of buffered whole.
const STREAM_THRESHOLD: usize = 256 * 1024;
/// While writing to a server, its replies are read ahead up to this much.
const READ_AHEAD_LIMIT: usize = 4 * 1024 * 1024;
/// A server connection holding more prepared statements is closed on release.
const MAX_SERVER_STATEMENTS: usize = 5_000;
const READ_CHUNK: usize = 16 * 1024;
/// Client messages up to this size are handled in the read buffer when
/// the hot path takes them, and copied out of it when they need the
/// slow one (routing); larger ones are split off it (no copy).
const COPIED_FRAME: usize = 8 * 1024;
/// Before routing, an extended-protocol batch is read up to its Sync or
/// Flush so every statement in it is classified; larger batches are routed
/// on what is buffered (a write among them still goes to the primary if it
/// is in the buffer; see `batch_text`).
const BATCH_LOOKAHEAD_LIMIT: usize = 1024 * 1024;

/// Forwarded bytes a session counts before it adds them to the proxy's
/// counters, at the latest (see [`Unreported`]).
const REPORT_BYTES_EVERY: u64 = 64 * 1024;

/// Bytes a session forwarded and has not added to the proxy's counters
/// yet. They are added when a transaction ends, when the session ends,
/// and when either count passes [`REPORT_BYTES_EVERY`]; an atomic add on
/// a counter every session shares, twice per statement, cost more than the
/// rest of the bookkeeping of a statement inside a transaction.
#[derive(Debug, Default)]
pub(super) struct Unreported {
    to_clients: u64,
    to_servers: u64,
}

impl Unreported {
    #[inline]
    pub(super) fn sent_to_clients(&mut self, n: usize, stats: &ProxyStats) {
        self.to_clients += n as u64;
        if self.to_clients >= REPORT_BYTES_EVERY {
            self.report(stats);
        }
    }

    #[inline]
    pub(super) fn sent_to_servers(&mut self, n: usize, stats: &ProxyStats) {
        self.to_servers += n as u64;
        if self.to_servers >= REPORT_BYTES_EVERY {
            self.report(stats);
        }
    }

    /// Adds the counts to `stats`.
    pub(super) fn report(&mut self, stats: &ProxyStats) {
        if self.to_clients != 0 {
            stats
                .bytes_to_clients
                .fetch_add(self.to_clients, Ordering::Relaxed);
        }
        if self.to_servers != 0 {
            stats
                .bytes_to_servers
                .fetch_add(self.to_servers, Ordering::Relaxed);
        }
        *self = Unreported::default();
    }
}

/// `pg_catalog.pg_current_wal_insert_lsn()`'s OID. Built-in functions'
/// OIDs are fixed in PostgreSQL's catalog (`pg_proc.dat`); this one has
/// been 2852 since the function was `pg_current_xlog_insert_location`
/// (`tests/routing_ryw.rs` checks it against the server).
const PG_CURRENT_WAL_INSERT_LSN: u32 = 2852;

/// Asks the primary, after a writing transaction, for a position at or past
/// its commit record (the insert position covers commits whose WAL is not
/// flushed yet, as with synchronous_commit = off): a `FunctionCall` of
/// [`PG_CURRENT_WAL_INSERT_LSN`], framed at compile time. The server runs
/// the function without parsing, planning or a portal: 0–8 µs of its CPU
/// per writing transaction, where `SELECT pg_current_wal_insert_lsn()`
/// cost 8–18 µs (docs/performance.md). It calls the function by OID, so
/// no `search_path` and no function of the client's can stand in for it,
/// and it leaves no statement or portal behind.
const COMMIT_LSN_CALL: [u8; 15] =
    crate::protocol::frontend::function_call_message(PG_CURRENT_WAL_INSERT_LSN);

/// mimalloc serves a block from its free lists up to this size
/// (`MI_SMALL_SIZE_MAX`, 128 words); a larger one takes its generic path.
const SMALL_BOX: usize = 1024;

/// Boxes `wait`, a future on the path of every transaction that waits
/// (for the pool, for a replica to catch up, the rest of an attach), and
/// fails the build if it grew past [`SMALL_BOX`]: at 400 clients on 20
/// connections nearly every transaction waits for the pool, and a box
/// past that size cost about 240 instructions where one under it costs
/// a free-list pop (docs/performance.md).
#[inline(always)]
pub(super) fn small_box<F: std::future::Future>(wait: F) -> std::pin::Pin<Box<F>> {
    const {
        assert!(
            std::mem::size_of::<F>() <= SMALL_BOX,
            "a boxed wait on the per-transaction path is over 1 KiB"
        )
    };
    Box::pin(wait)
}

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

/// Where routing placed the attached transaction, and what ending it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Txn {
    /// Nothing attached, or a transaction on the primary that routing did
    /// not class as a write.
    Other,
    /// A read on a replica: a write that comes before the client syncs
    /// leaves it (see `leave_replica_for_write`).
    Replica,
    /// A transaction on the primary that routing classed as a write (it
    /// began with `BEGIN`, say) but that has run no statement that may
    /// change data yet: it commits no WAL of its own, so its end needs no
    /// commit LSN. The first statement that may write makes it `Write`.
    Primary,
    /// A write on the primary: when it ends, ask for its commit LSN, which
    /// read-your-writes needs.
    Write,
    /// The commit-LSN question is in flight; its FunctionCallResponse,
    /// once read, carries the LSN.
    Capturing(Option<Lsn>),
}

impl Txn {
    fn capturing(self) -> bool {
        matches!(self, Txn::Capturing(_))
    }
}

/// An authenticated client session.
pub struct Session<S> {
    pub(super) client: S,
    pub(super) shared: Arc<Shared>,
    /// The config of the attached (or last) transaction.
    pub(super) config: Arc<Config>,
    /// Where `config` is refreshed from at each transaction.
    config_cache: ConfigCache,
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
    /// The batch at the front of `cbuf`, scanned as it arrives.
    pub(super) batch: BatchScan,
    pub(super) to_client: BytesMut,
    pub(super) to_server: BytesMut,
    /// After a proxy error in the extended protocol: drop messages up to Sync.
    pub(super) discard_until_sync: bool,
    /// Pools this session used, by node (looked up by name).
    pub(super) pools: attach::SessionPools,
    /// What routing shares (health, drained nodes, the classifier's
    /// inputs), cached for this session.
    pub(super) view: RouterView,
    /// The wait on the client's and the server's reads.
    wait: ReadWait,
    /// Statements and portals the proxy answers itself.
    local: LocalStatements,
    /// Where the attached transaction runs and what ending it takes.
    txn: Txn,
    /// Client bytes arrived during the capture and wait to be routed.
    held_client: bool,
    /// A transaction the client opened that has no server yet.
    open: open::OpenTxn,
    /// A `Bind` of a plain `COMMIT` went to the server since the last
    /// Sync: the commit-LSN question follows that Sync.
    commit_bound: bool,
    /// The unnamed statement is a plain `COMMIT`.
    unnamed_commit: bool,
    client_stream: Passthrough,
    server_stream: Passthrough,
    /// This session in the admin console's client list (while it runs).
    registered: Option<ClientEntry>,
    /// The client message being routed (see [`COPIED_FRAME`]), reused.
    frame_buf: BytesMut,
    /// The last text routing analyzed (of a simple query or an unnamed
    /// statement), tried first for the next.
    last_routed: LastAnalysis,
    /// The same inside transactions (whether a statement writes): kept
    /// apart, so a transaction's first statement and its body do not
    /// replace each other at every transaction.
    last_in_txn: LastAnalysis,
    /// Bytes forwarded since the counters were last told.
    unreported: Unreported,
}

impl<S: ClientStream> Session<S> {
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
        let mut config_cache = shared.config.cache();
        let config = config_cache.load().clone();
        let mut routing = SessionRouting::default();
        if config.pool.mode == PoolMode::Session {
            // A session-mode session keeps the server connection of its
            // first transaction for good: that must be the primary, which
            // takes writes, not a replica.
            routing.apply(&ProxyCommand::SetRoute(RouteOverride::Primary));
        }
        let (pools, view) = (attach::SessionPools::new(&shared), shared.router.view());
        Session {
            client,
            shared,
            config,
            config_cache,
            user,
            database,
            cancel,
            params,
            statements: Statements::default(),
            routing,
            expect: Expect::new(),
            server: None,
            pinned: false,
            cbuf,
            batch: BatchScan::default(),
            // Grown on first use: a client that only connects costs none.
            to_client: BytesMut::new(),
            to_server: BytesMut::new(),
            discard_until_sync: false,
            pools,
            view,
            wait: ReadWait::default(),
            local: LocalStatements::default(),
            txn: Txn::Other,
            held_client: false,
            open: open::OpenTxn::None,
            commit_bound: false,
            unnamed_commit: false,
            client_stream: Passthrough::default(),
            server_stream: Passthrough::default(),
            registered: None,
            frame_buf: BytesMut::new(),
            last_routed: LastAnalysis::default(),
            last_in_txn: LastAnalysis::default(),
            unreported: Unreported::default(),
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
            if !self.to_client.is_empty()
                && let Err(e) = self.flush_client().await
            {
                return e;
            }
            // Grown only while bytes are arriving: an empty buffer (a new
            // session's 1 KiB from startup, or one given back while idle)
            // waits as it is, so an idle client holds no read chunk.
            if !self.cbuf.is_empty() && self.cbuf.capacity() - self.cbuf.len() < 4096 {
                self.cbuf.reserve(READ_CHUNK);
            }
            // A client inside a transaction the proxy holds is not idle:
            // at shutdown it may still finish it, as one on a server may.
            let in_txn = !matches!(self.open, open::OpenTxn::None);
            let Session {
                client,
                server,
                cbuf,
                registered,
                wait,
                ..
            } = self;
            // Messages held back while the last write's LSN was fetched go
            // on once it is in: on a new connection, or (session pooling)
            // on the same one.
            let got_client = if self.held_client && !self.txn.capturing() {
                self.held_client = false;
                true
            } else if let Some(pc) = server.as_mut() {
                let (conn, traffic) = pc.conn_and_traffic();
                if conn.read_buf.capacity() - conn.read_buf.len() < 4096 {
                    conn.read_buf.reserve(READ_CHUNK);
                }
                // Answers first, with no random start (a draw for every
                // message): they free the server and are what the client
                // waits for. A node streaming without a pause keeps the
                // client's next bytes in its socket until the stream pauses;
                // a client that left meanwhile is seen when its answers fail
                // to write, and a cancel comes on a connection of its own.
                // A side whose read is known not ready and did not wake is
                // not polled again (see `crate::wait`).
                let woke = {
                    let mut gone = std::pin::pin!(abandoned(registered.as_ref()));
                    std::future::poll_fn(|cx| {
                        let sides = wait.begin_poll(cx);
                        let server = (&mut conn.stream, &mut conn.read_buf);
                        if let Poll::Ready(r) =
                            wait.poll_read(cx, Side::Server, sides, server.0, server.1)
                        {
                            wait.keep(sides, Side::Server as u8);
                            return Poll::Ready(Woke::Server(r));
                        }
                        if let Poll::Ready(r) =
                            wait.poll_read(cx, Side::Client, sides, client, cbuf)
                        {
                            return Poll::Ready(Woke::Client(r));
                        }
                        gone.as_mut().poll(cx).map(Woke::Abandoned)
                    })
                    .await
                };
                match woke {
                    Woke::Server(Ok(0)) => {
                        return self
                            .server_lost("the node closed the connection".into())
                            .await;
                    }
                    Woke::Server(Ok(_)) => {
                        traffic.progressed();
                        false
                    }
                    Woke::Server(Err(e)) => return self.server_lost(e.to_string()).await,
                    Woke::Client(Ok(0)) => return End::Client,
                    Woke::Client(Ok(_)) => true,
                    Woke::Client(Err(e)) => return End::ClientIo(e),
                    Woke::Abandoned(node) => {
                        return self.server_lost(self.stopped_answering(node)).await;
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    ev = idle_event(registered.as_ref()), if !in_txn => match ev {
                        IdleEvent::Stop => {
                            return self.fatal("57P01", "lagrouter is shutting down", None).await;
                        }
                        IdleEvent::Shrink => {
                            self.give_back_buffers();
                            continue;
                        }
                    },
                    r = std::future::poll_fn(|cx| crate::wait::poll_read_direct(client, cx, cbuf)) => match r {
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
                // Without a future in the common case (see
                // `write_server_now`), as below.
                if self.server_write_due() {
                    match self.write_server_now() {
                        Ok(true) => {}
                        Ok(false) => {
                            if let Err(e) = self.write_server().await {
                                return e;
                            }
                        }
                        Err(detail) => return self.server_lost(detail).await,
                    }
                }
            }
            // Handled without a future in the common case (no read-ahead
            // limit reached, no desync).
            if self.server.is_some() {
                match self.take_server_messages() {
                    Ok(false) => {}
                    Ok(true) => {
                        if let Err(e) = self.flush_client().await {
                            return e;
                        }
                        if let Err(e) = self.on_server_data().await {
                            return e;
                        }
                    }
                    Err(detail) => return self.server_lost(detail).await,
                }
            }
            self.maybe_release();
            if self.server_write_due() {
                match self.write_server_now() {
                    Ok(true) => {}
                    Ok(false) => {
                        if let Err(e) = self.write_server().await {
                            return e;
                        }
                    }
                    Err(detail) => return self.server_lost(detail).await,
                }
            }
        }
    }

    async fn on_client_data(&mut self) -> Result<(), End> {
        loop {
            if self.txn.capturing() && self.client_stream.remaining == 0 {
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
                // Mid-frame: the scan starts afresh at the next frame.
                self.batch.reset();
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
                && matches!(tag, fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE)
                && self.cbuf.len() < BATCH_LOOKAHEAD_LIMIT
                && !self.batch.complete(&self.cbuf, MAX_MESSAGE_LEN)
            {
                // Route only once the whole batch is here.
                self.cbuf.reserve(READ_CHUNK);
                return Ok(());
            }
            if self.cbuf.len() < total {
                if tag == fe::COPY_DATA && total > STREAM_THRESHOLD {
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
                // A message of an attached transaction (the hot path) is
                // handled where it lies: the buffer is lent out while the
                // handler, which never looks at it, runs.
                let cbuf = std::mem::take(&mut self.cbuf);
                let now = self.on_client_message_now(tag, &cbuf[..total]);
                self.cbuf = cbuf;
                if let Some(r) = now {
                    self.cbuf.advance(total);
                    self.batch.consumed(total);
                    r?;
                } else {
                    // Copied out (cheaper than splitting the buffer, which
                    // makes it shared and reference-counts every message),
                    // so the client buffer stays free for the batch
                    // lookahead routing reads.
                    let mut frame = std::mem::take(&mut self.frame_buf);
                    frame.clear();
                    frame.extend_from_slice(&self.cbuf[..total]);
                    self.cbuf.advance(total);
                    self.batch.consumed(total);
                    let handled = self.on_client_message(tag, &frame).await;
                    self.frame_buf = frame;
                    handled?;
                }
            } else {
                let frame = self.cbuf.split_to(total);
                self.batch.consumed(total);
                match self.on_client_message_now(tag, &frame) {
                    Some(r) => r?,
                    None => self.on_client_message(tag, &frame).await?,
                }
            }
            self.drain_synthetic();
            self.forget_failed_parses();
            if self.to_server.len() > READ_AHEAD_LIMIT {
                self.write_server().await?;
            }
        }
    }

    /// An idle session gives back its (empty) buffers; they grow again
    /// with the next bytes. Its caches of shared state are brought up to
    /// date, so that it keeps no old health snapshot or catalog alive.
    fn give_back_buffers(&mut self) {
        self.view.refresh();
        self.pools.refresh();
        if self.cbuf.is_empty() && self.to_client.is_empty() && self.to_server.is_empty() {
            self.cbuf = BytesMut::new();
            self.to_client = BytesMut::new();
            self.to_server = BytesMut::new();
            self.frame_buf = BytesMut::new();
            self.last_routed.clear();
            self.last_in_txn.clear();
        }
    }

    /// Writes what is due to the client; a write buffer grown past twice
    /// the read-ahead limit is given back.
    async fn flush_client(&mut self) -> Result<(), End> {
        if self.to_client.is_empty() {
            return Ok(());
        }
        let r = match write_now_all(&mut self.client, &self.to_client) {
            (_, Some(e)) => Err(e),
            (done, None) if done == self.to_client.len() => Ok(()),
            (done, None) => {
                async {
                    self.client.write_all(&self.to_client[done..]).await?;
                    self.client.flush().await
                }
                .await
            }
        };
        self.unreported
            .sent_to_clients(self.to_client.len(), &self.shared.stats);
        self.to_client.clear();
        if self.to_client.capacity() > READ_AHEAD_LIMIT * 2 {
            self.to_client = BytesMut::with_capacity(READ_CHUNK);
        }
        r.map_err(End::ClientIo)
    }
}

/// Writes what of `out` the socket takes at once through
/// [`Direct`](crate::wait::Direct): how many bytes (all of them unless
/// the socket filled up, the stream must take the async path, or an
/// error stopped it), and the socket's error if one did.
pub(super) fn write_now_all(
    stream: &mut impl crate::wait::Direct,
    out: &[u8],
) -> (usize, Option<std::io::Error>) {
    let mut done = 0;
    while done < out.len() {
        match stream.write_now(&out[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

/// Why a session gave up on lagrouter's own short query (a Sync, an LSN):
/// these wait at most `[health] check_timeout`, as a health check does.
fn no_answer(what: &str, limit: std::time::Duration) -> String {
    format!("no answer to lagrouter's {what} within check_timeout ({limit:?})")
}

/// What ended a wait on a transaction's server and its client.
enum Woke {
    Server(std::io::Result<usize>),
    Client(std::io::Result<usize>),
    /// The node stopped answering (its index).
    Abandoned(usize),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreported_bytes_reach_the_counters_past_the_limit_and_when_reported() {
        let stats = ProxyStats::default();
        let mut u = Unreported::default();
        let counts = |s: &ProxyStats| {
            (
                s.bytes_to_clients.load(Ordering::Relaxed),
                s.bytes_to_servers.load(Ordering::Relaxed),
            )
        };
        u.sent_to_clients(100, &stats);
        u.sent_to_servers(50, &stats);
        assert_eq!(counts(&stats), (0, 0), "held below the limit");
        u.sent_to_clients(REPORT_BYTES_EVERY as usize, &stats);
        assert_eq!(
            counts(&stats),
            (100 + REPORT_BYTES_EVERY, 50),
            "past the limit: both counts go"
        );
        u.sent_to_servers(7, &stats);
        u.report(&stats);
        u.report(&stats);
        assert_eq!(counts(&stats), (100 + REPORT_BYTES_EVERY, 57), "once each");
    }
}
