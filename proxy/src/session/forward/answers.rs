//! Answers the proxy gives itself: synthetic messages, `wait_replicas`,
//! and the errors that end a session.

use std::time::Instant;

use bytes::BytesMut;
use lagrouter_health::Lsn;
use tokio::io::AsyncReadExt;

use crate::error::ProxyError;
use crate::protocol::backend::{self, Severity};
use crate::protocol::client_message_limit;
use crate::protocol::tag::status;
use crate::session::local;

use super::open::OpenTxn;
use super::*;

impl<S: ClientStream> Session<S> {
    /// Sends the client the synthetic answers now due. The test is
    /// inlined into every caller (after each client message); the copy
    /// is not.
    #[inline(always)]
    pub(super) fn drain_synthetic(&mut self) {
        if self.expect.synthetic_due() {
            self.drain_synthetic_due();
        }
    }

    #[inline(never)]
    fn drain_synthetic_due(&mut self) {
        while let Some(m) = self.expect.pop_synthetic() {
            self.to_client.extend_from_slice(&m);
        }
    }

    #[inline]
    pub(super) fn forget_failed_parses(&mut self) {
        if !self.expect.has_failed_parses() {
            return;
        }
        let failed = self.expect.take_failed_parses();
        if let Some(pc) = self.server.as_mut() {
            for n in failed {
                pc.conn().prepared.remove(&n);
            }
        }
    }

    pub(super) fn synthetic_empty(&mut self, tag: u8) {
        self.expect.push_synthetic(backend::empty_message(tag));
    }

    pub(super) fn synthetic_complete(&mut self, command: &str) {
        let mut m = BytesMut::new();
        backend::command_complete(&mut m, command);
        self.expect.push_synthetic(m.freeze());
    }

    pub(super) fn synthetic_ready(&mut self) {
        let ready = backend::ready_message(match (&self.server, &self.open) {
            (Some(_), _) => self.expect.status(),
            (None, OpenTxn::None) => status::IDLE,
            (None, OpenTxn::Begun { .. }) => status::IN_TRANSACTION,
            (None, OpenTxn::Failed { .. }) => status::FAILED,
        });
        self.expect.push_synthetic(ready);
    }

    pub(in crate::session) fn synthetic_error(&mut self, e: &ProxyError) {
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

    /// `lagrouter.wait_replicas`: waits on the health monitor's replay
    /// positions, holding no server connection (unless the client's own
    /// transaction holds one), and answers how many replicas replayed the
    /// session's LSN; `None` when the client cancelled it (CancelRequest).
    /// What the client sends meanwhile is read into its buffer (up to the
    /// read-ahead limit) and handled after the answer.
    pub(super) async fn wait_replicas(&mut self, w: local::Wait) -> Result<Option<usize>, End> {
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
            let timers = &self.shared.timers;
            match timers.timeout(limit, pc.conn().query_value(sql)).await {
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

    pub(super) async fn fatal(&mut self, code: &str, msg: &str, hint: Option<&str>) -> End {
        backend::error_response(&mut self.to_client, Severity::Fatal, code, msg, hint);
        let _ = self.flush_client().await;
        End::Closed(msg.to_string())
    }

    pub(super) async fn fatal_error(&mut self, e: ProxyError) -> End {
        self.fatal(e.sqlstate(), &e.to_string(), e.hint()).await
    }

    /// A client message that cannot be framed or decoded: FATAL 08P01 and
    /// the session ends (only this client is affected).
    pub(super) async fn too_large(&mut self, tag: u8, len: usize) -> End {
        let limit = client_message_limit(tag, self.config.server.max_message_size);
        self.fatal_error(ProxyError::MessageTooLarge {
            tag: char::from(tag),
            len,
            limit,
        })
        .await
    }

    pub(super) async fn malformed(&mut self, e: impl std::fmt::Display) -> End {
        self.fatal_error(ProxyError::ClientProtocol(e.to_string()))
            .await
    }

    /// Why the session abandons its transaction on `node`.
    pub(super) fn stopped_answering(&self, node: usize) -> String {
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

    pub(super) async fn server_lost(&mut self, detail: String) -> End {
        let node = self.server.as_ref().map(|pc| {
            pc.report_failure();
            pc.get().node.clone()
        });
        self.server = None; // dropped: never returned to the pool
        self.cancel.detach();
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
