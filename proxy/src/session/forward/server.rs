//! The server side: writing requests, reading answers, and the end of a
//! transaction (commit-LSN capture, release to the pool).

use std::sync::atomic::Ordering;

use bytes::{Buf, BytesMut};
use lagrouter_config::PoolMode;
use tokio::io::AsyncReadExt;

use crate::protocol::MAX_MESSAGE_LEN;
use crate::protocol::backend;
use crate::protocol::expect::{Action, Req};
use crate::protocol::frame::peek_header;
use crate::protocol::tag::{be, status};
use crate::server::stream::Progress;

use super::*;

impl<S: ClientStream> Session<S> {
    /// Whether [`Self::write_server`] has anything to do: bytes to send,
    /// or a TLS stream that may hold some back. Checked before the call on
    /// the hot path (after every read), so the common "nothing" costs no
    /// future.
    pub(super) fn server_write_due(&self) -> bool {
        !self.to_server.is_empty()
            || self
                .server
                .as_ref()
                .is_some_and(|pc| !pc.get().stream.is_plain())
    }

    /// The common case of [`Self::write_server`], without a future (the
    /// session loop calls it when [`Self::server_write_due`], and
    /// `write_server` only if it must: an async call costs more than the
    /// send): plain TCP takes the whole request at once. `Ok(true)` when
    /// nothing is left to do; `Ok(false)` when what was sent is gone from
    /// `to_server` and the rest needs `write_server` (a full socket, TLS,
    /// no server); `Err` is the socket's error.
    pub(super) fn write_server_now(&mut self) -> Result<bool, String> {
        let Some(pc) = self.server.as_mut() else {
            return Ok(false);
        };
        let conn = pc.conn();
        if !conn.stream.is_plain() {
            return Ok(false);
        }
        let (done, err) = write_now_all(&mut conn.stream, &self.to_server);
        self.unreported.sent_to_servers(done, &self.shared.stats);
        if let Some(e) = err {
            return Err(e.to_string());
        }
        if done == self.to_server.len() {
            self.to_server.clear();
            return Ok(true);
        }
        self.to_server.advance(done);
        Ok(false)
    }

    pub(super) async fn write_server(&mut self) -> Result<(), End> {
        if !self.server_write_due() {
            return Ok(());
        }
        // Plain TCP nearly always takes the request whole: one send, no
        // future, and nothing held back to flush.
        let mut lost = None;
        match self.write_server_now() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(detail) => lost = Some(detail),
        }
        let sent = lost.is_some();
        let mut pos = 0;
        // Read replies while writing, so a server blocked on sending to us
        // cannot block our writes to it; when READ_AHEAD_LIMIT of them wait,
        // hand them on to the client before writing more. A client that
        // pipelines requests must read their answers as it writes, as it
        // must directly: then nobody waits for anybody.
        while let Some(pc) = self.server.as_mut().filter(|_| !sent) {
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
                if let Err(e) = conn.stream.send(&self.to_server[pos..]).await {
                    lost = Some(e.to_string());
                }
                break;
            }
            conn.read_buf.reserve(READ_CHUNK);
            // With nothing left to write, this flushes what TLS holds back
            // (nothing for plain TCP) and ends the loop.
            match conn
                .stream
                .write_or_read(&self.to_server[pos..], &mut conn.read_buf)
                .await
            {
                Ok(Progress::Wrote(0)) => {
                    lost = Some("the node stopped accepting data".into());
                    break;
                }
                Ok(Progress::Wrote(n)) => {
                    pos += n;
                    // Plain TCP holds nothing back: no flush to wait for.
                    if pos == self.to_server.len() && conn.stream.is_plain() {
                        break;
                    }
                }
                Ok(Progress::Flushed) => break,
                Ok(Progress::Read(0)) => {
                    lost = Some("the node closed the connection".into());
                    break;
                }
                Ok(Progress::Read(_)) => {}
                Err(e) => {
                    lost = Some(e.to_string());
                    break;
                }
            }
        }
        self.unreported.sent_to_servers(pos, &self.shared.stats);
        self.to_server.clear();
        match lost {
            Some(detail) => Err(self.server_lost(detail).await),
            None => Ok(()),
        }
    }

    /// Handles the server's buffered messages, flushing to the client
    /// whenever more than [`READ_AHEAD_LIMIT`] of answers wait.
    pub(super) async fn on_server_data(&mut self) -> Result<(), End> {
        loop {
            match self.take_server_messages() {
                Ok(false) => return Ok(()),
                Ok(true) => self.flush_client().await?,
                Err(detail) => return Err(self.server_lost(detail).await),
            }
        }
    }

    /// Handles the server's buffered messages (no IO): what goes to the
    /// client is queued in `to_client`. `Ok(true)` when it stopped with
    /// more buffered because `to_client` holds more than
    /// [`READ_AHEAD_LIMIT`]; `Err` says how the stream is out of step.
    ///
    /// Messages are read in place: a run of forwarded messages is copied to
    /// `to_client` in one piece when something else must come between
    /// (a dropped answer, a synthetic one) or at the end, and the read
    /// buffer is advanced once.
    pub(super) fn take_server_messages(&mut self) -> Result<bool, String> {
        let Session {
            client,
            shared,
            server,
            expect,
            to_client,
            params,
            server_stream,
            txn,
            unreported,
            ..
        } = self;
        let conn = server.as_mut().expect("attached").conn();
        if conn.read_buf.is_empty() && !expect.has_failed_parses() {
            // Woken by the client: nothing to read.
            return Ok(to_client.len() > READ_AHEAD_LIMIT);
        }
        let mut desync = None;
        // `read_buf[span..pos]`: forwarded, not copied yet; `pos`: the next
        // message.
        let (mut span, mut pos) = (0, 0);
        // Rows and completions of the query being answered go to the
        // client by their tag alone (asked again after any other message).
        let mut pass = expect.pass_set();
        let settle = |to_client: &mut BytesMut, buf: &mut BytesMut, span: usize, pos: usize| {
            to_client.extend_from_slice(&buf[span..pos]);
            buf.advance(pos);
        };
        loop {
            if server_stream.remaining > 0 {
                settle(to_client, &mut conn.read_buf, span, pos);
                (span, pos) = (0, 0);
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
            let (tag, total) = match peek_header(&conn.read_buf[pos..], MAX_MESSAGE_LEN) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    desync = Some(e.to_string());
                    break;
                }
            };
            if conn.read_buf.len() - pos < total {
                settle(to_client, &mut conn.read_buf, span, pos);
                (span, pos) = (0, 0);
                if total > STREAM_THRESHOLD
                    && !matches!(tag, be::READY_FOR_QUERY | be::PARAMETER_STATUS | be::ERROR)
                {
                    match expect.on_server(tag, 0) {
                        Ok(a) => {
                            pass = expect.pass_set();
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
            if pass.passes(tag) {
                pos += total;
                if to_client.len() + (pos - span) > READ_AHEAD_LIMIT {
                    break;
                }
                continue;
            }
            let frame = &conn.read_buf[pos..pos + total];
            let status = if tag == be::READY_FOR_QUERY {
                frame.get(5).copied().unwrap_or(status::IDLE)
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
                be::PARAMETER_STATUS => {
                    if let Ok((k, v)) = backend::decode_parameter_status(&frame[5..]) {
                        conn.params.insert(k.to_string(), v.to_string());
                        if forward {
                            params.set(k, v);
                        }
                    }
                }
                be::FUNCTION_CALL_RESPONSE if !forward && txn.capturing() => {
                    // pg_lsn in binary (`pg_lsn_send`): 8 bytes, big-endian.
                    *txn = Txn::Capturing(
                        backend::decode_function_result(&frame[5..])
                            .ok()
                            .flatten()
                            .and_then(|v| Some(Lsn(u64::from_be_bytes(v.try_into().ok()?)))),
                    );
                }
                be::ERROR if !forward => {
                    let f = backend::decode_error_fields(&frame[5..]).unwrap_or_default();
                    tracing::warn!(node = %conn.node.name, code = %f.code, "a statement lagrouter sent on its own (session settings, the commit-LSN question) failed: {}", f.message);
                }
                _ => {}
            }
            if !forward {
                to_client.extend_from_slice(&conn.read_buf[span..pos]);
                span = pos + total;
            }
            pos += total;
            if expect.synthetic_due() {
                to_client.extend_from_slice(&conn.read_buf[span..pos]);
                span = pos;
                while let Some(m) = expect.pop_synthetic() {
                    to_client.extend_from_slice(&m);
                }
            }
            if to_client.len() + (pos - span) > READ_AHEAD_LIMIT {
                break;
            }
            pass = expect.pass_set();
        }
        if to_client.is_empty() && pos > span {
            // Nothing queued before these answers (the common case): they
            // go to the client straight from the read buffer, not copied
            // into `to_client` first. What the socket does not take now,
            // or does not take for an error, is queued as before:
            // `flush_client` writes it, or meets the error again.
            let out = &conn.read_buf[span..pos];
            // A client's error ends the session whatever it says.
            let (done, _) = write_now_all(client, out);
            unreported.sent_to_clients(done, &shared.stats);
            to_client.extend_from_slice(&out[done..]);
            conn.read_buf.advance(pos);
        } else {
            settle(to_client, &mut conn.read_buf, span, pos);
        }
        if expect.has_failed_parses() {
            for name in expect.take_failed_parses() {
                conn.prepared.remove(&name);
            }
        }
        if let Some(detail) = desync {
            return Err(format!("protocol out of step: {detail}"));
        }
        Ok(self.to_client.len() > READ_AHEAD_LIMIT)
    }

    /// Asks the primary where a writing transaction's commit landed
    /// ([`COMMIT_LSN_CALL`]), right behind what ends it: the client's
    /// plain `COMMIT` as a simple query, or the Sync of an
    /// extended-protocol batch that ran one, or else once the transaction
    /// is over (`maybe_release`). Behind the `COMMIT`, the server answers
    /// both from one read of its socket, and the proxy waits no round trip
    /// of its own before it releases the connection. None of the call's
    /// answers, an error included, reaches the client. Client bytes that
    /// come meanwhile wait (`held_client`) and are routed with the new LSN.
    /// When the batch's `COMMIT` did not end the block (bound, never
    /// executed), the call runs inside it and [`Self::maybe_release`] asks
    /// again at the real end; when the `COMMIT` failed, the answer is a
    /// position past anything the transaction could have written.
    /// Never for a pinned session: its connection is not released, so
    /// nothing would end the capture (`maybe_release` returns first) and
    /// the client's next message would wait for good.
    /// Out of line: three callers, one of them the per-message path,
    /// which stays smaller without it.
    #[inline(never)]
    pub(super) fn start_capture(&mut self) {
        if self.txn == Txn::Write && !self.pinned {
            self.txn = Txn::Capturing(None);
            self.to_server.extend_from_slice(&COMMIT_LSN_CALL);
            self.expect.push(Req::FunctionCall, Action::Drop);
        }
    }

    /// The commit-LSN question failed or its answer was no LSN (the
    /// server said why in the log line `take_server_messages` wrote). The
    /// write is committed all the same: the session's reads go to the
    /// primary until a later question, at the end of its next transaction
    /// there, answers. Out of line: rare, and kept out of the
    /// per-transaction code.
    #[cold]
    #[inline(never)]
    fn write_position_unknown(&mut self) {
        tracing::warn!(user = %self.user.name, "the position of a committed write is unknown; the session reads from the primary until it is learned");
        metrics::counter!("lagrouter_commit_lsn_unknown_total").increment(1);
        self.routing.record_unresolved_write();
    }

    pub(super) fn maybe_release(&mut self) {
        if self.txn.capturing() && self.expect.is_empty() && self.expect.status() != status::IDLE {
            // The query ran inside the block: the `COMMIT` did not end it
            // (a Bind that was never executed). Its answer tells nothing;
            // the transaction's real end asks again.
            self.txn = Txn::Write;
        }
        if self.server.is_none()
            || self.pinned
            || !self.expect.is_idle()
            || !self.to_server.is_empty()
            || self.server_stream.remaining > 0
            || self.client_stream.remaining > 0
        {
            return;
        }
        match self.txn {
            Txn::Write => {
                // Learn where the write landed before the connection goes
                // back (the client already has its ReadyForQuery).
                self.start_capture();
                return;
            }
            Txn::Capturing(lsn) => {
                self.txn = Txn::Other;
                match lsn {
                    Some(lsn) => {
                        self.view.record_write(&mut self.routing, lsn);
                        backend::parameter_status(
                            &mut self.to_client,
                            "lagrouter.last_write_lsn",
                            &lsn.text(),
                        );
                    }
                    None => self.write_position_unknown(),
                }
            }
            Txn::Other | Txn::Primary | Txn::Replica => {}
        }
        self.local.end_transaction();
        self.unreported.report(&self.shared.stats);
        if self.config.pool.mode == PoolMode::Session {
            // The connection stays, on the primary: the next transaction
            // may write, so its commit LSN is asked once a statement does.
            if self.txn != Txn::Replica {
                self.txn = Txn::Primary;
            }
            return;
        }
        self.release();
    }

    pub(super) fn release(&mut self) {
        self.txn = Txn::Other;
        if let Some(mut pc) = self.server.take() {
            if let Some(c) = &self.registered {
                c.released();
            }
            self.cancel.detach();
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
    pub(super) fn finish(&mut self) {
        self.unreported.report(&self.shared.stats);
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
            self.cancel.detach();
        }
    }

    /// Runs the server side until nothing sent is still unanswered and a
    /// finished write's commit LSN is recorded.
    pub(super) async fn settle_server(&mut self) -> Result<(), End> {
        loop {
            // A finished write starts its LSN query here.
            self.maybe_release();
            self.write_server().await?;
            let owed = self.expect.awaits_server() || self.txn.capturing();
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
}
