//! One task per node that owns the node's check connection and answers
//! "check now" requests from the round.
//!
//! The task, not the round, holds the connection, the reconnect backoff
//! and what it knows about the heartbeat table on that node, so a slow or
//! dead node never blocks the others: the round sends every request at
//! once and waits for the answers with a deadline. Each request carries
//! that deadline and the task gives up at it, so it never works on a check
//! nobody is waiting for.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout_at};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backoff::Backoff;
use crate::conn::{ConnTarget, connect};
use crate::error::{ProbeError, describe_pg_error};
use crate::observation::{
    BadAnswer, HeartbeatQuery, HeartbeatSeen, Observation, check_sql, parse_answer,
};

/// How long checks leave a heartbeat table they may not read (42501) alone
/// before they try it again: one failed read a minute instead of one every
/// other check.
const HEARTBEAT_DENIED_RETRY: Duration = Duration::from_secs(60);

/// What a check produced.
pub type ProbeResult = Result<Observation, ProbeError>;

/// A request for one check.
#[derive(Debug)]
pub struct ProbeRequest {
    /// Give up (and answer `Timeout`) at this instant.
    pub deadline: Instant,
    /// The heartbeat table to read, `None` when the heartbeat is off.
    pub heartbeat_table: Option<String>,
    /// `health.check_interval`, which paces reconnect backoff.
    pub check_interval: Duration,
    /// `health.check_timeout`, for the error message.
    pub check_timeout: Duration,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ProbeResult>,
}

/// Handle to a node's check task. Dropping it stops the task.
#[derive(Debug)]
pub struct NodeProber {
    tx: mpsc::Sender<ProbeRequest>,
    _stop: Option<DropGuard>,
}

impl NodeProber {
    /// Spawns the check task for one node; it stops when `shutdown` is
    /// cancelled or this handle is dropped.
    pub fn spawn(name: String, target: ConnTarget, shutdown: &CancellationToken) -> NodeProber {
        // Two slots: a request whose deadline just passed may still sit in
        // the queue when the next round's arrives.
        let (tx, rx) = mpsc::channel(2);
        let stop = shutdown.child_token();
        let task = NodeTask {
            name,
            target,
            client: None,
            backoff: Backoff::default(),
            last_connect_error: String::new(),
            heartbeat_table_seen: None,
            heartbeat_denied: None,
        };
        tokio::spawn(task.run(rx, stop.clone()));
        NodeProber {
            tx,
            _stop: Some(stop.drop_guard()),
        }
    }

    /// A prober answered by whoever holds the receiver (tests script nodes).
    #[cfg(test)]
    pub fn from_channel(tx: mpsc::Sender<ProbeRequest>) -> NodeProber {
        NodeProber { tx, _stop: None }
    }

    /// Asks for a check; the answer arrives on the returned receiver.
    pub fn probe(&self, mut req: ProbeRequest) -> oneshot::Receiver<ProbeResult> {
        let (reply, rx) = oneshot::channel();
        req.reply = reply;
        if let Err(e) = self.tx.try_send(req) {
            let (req, why) = match e {
                mpsc::error::TrySendError::Full(r) => (r, "still busy with earlier checks"),
                mpsc::error::TrySendError::Closed(r) => (r, "stopped"),
            };
            let _ = req.reply.send(Err(ProbeError::Task(why)));
        }
        rx
    }
}

struct NodeTask {
    name: String,
    target: ConnTarget,
    // Shared with the check in flight, which must not hold `self` borrowed.
    client: Option<Arc<Client>>,
    backoff: Backoff,
    last_connect_error: String,
    /// The heartbeat table known to exist on this node.
    heartbeat_table_seen: Option<String>,
    /// A heartbeat table this check may not read (42501: it belongs to
    /// another user), and when to try it again (a GRANT may come).
    heartbeat_denied: Option<(String, Instant)>,
}

impl NodeTask {
    async fn run(mut self, mut rx: mpsc::Receiver<ProbeRequest>, stop: CancellationToken) {
        loop {
            let req = tokio::select! {
                _ = stop.cancelled() => return,
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
            };
            if req.reply.is_closed() || Instant::now() >= req.deadline {
                continue;
            }
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = timeout_at(req.deadline, self.check(&req)) => r,
            };
            let result = result.unwrap_or_else(|_| {
                // The connection may be wedged mid-query; start afresh.
                self.client = None;
                Err(ProbeError::Timeout(req.check_timeout))
            });
            if let Err(e) = &result {
                tracing::debug!(node = %self.name, error = %e, "health check failed");
            }
            let _ = req.reply.send(result);
        }
    }

    async fn check(&mut self, req: &ProbeRequest) -> ProbeResult {
        let client = self.connected(req).await?;
        let denied = |t: &String| {
            self.heartbeat_denied
                .as_ref()
                .is_some_and(|(d, until)| d == t && Instant::now() < *until)
        };
        let hb = match &req.heartbeat_table {
            None => HeartbeatQuery::Off,
            Some(t) if denied(t) => HeartbeatQuery::Off,
            Some(t) if self.heartbeat_table_seen.as_ref() == Some(t) => {
                HeartbeatQuery::Read(t.clone())
            }
            Some(t) => HeartbeatQuery::ProbeTable(t.clone()),
        };
        match query(&client, &hb).await {
            Err(QueryError::UndefinedTable) if matches!(hb, HeartbeatQuery::Read(_)) => {
                // The table was dropped (or this is a new node behind the
                // same address): probe for it again, within this check.
                self.heartbeat_table_seen = None;
                let probe =
                    HeartbeatQuery::ProbeTable(req.heartbeat_table.clone().unwrap_or_default());
                self.finish(query(&client, &probe).await, &probe)
            }
            Err(QueryError::NoPrivilege) if matches!(hb, HeartbeatQuery::Read(_)) => {
                // The table is someone else's (another lagrouter, another
                // user): no heartbeat from it, and time lag comes from the
                // replay timestamp, as without the table. Checks leave it
                // alone for a while, then read it again.
                self.heartbeat_table_seen = None;
                self.heartbeat_denied = req
                    .heartbeat_table
                    .clone()
                    .map(|t| (t, Instant::now() + HEARTBEAT_DENIED_RETRY));
                self.finish(
                    query(&client, &HeartbeatQuery::Off).await,
                    &HeartbeatQuery::Off,
                )
            }
            r => self.finish(r, &hb),
        }
    }

    fn finish(&mut self, r: Result<Observation, QueryError>, hb: &HeartbeatQuery) -> ProbeResult {
        match r {
            Ok(o) => {
                if let (HeartbeatQuery::ProbeTable(t), HeartbeatSeen::TableExists) =
                    (hb, o.heartbeat)
                {
                    self.heartbeat_table_seen = Some(t.clone());
                }
                Ok(o)
            }
            Err(QueryError::Bad(b)) => Err(b.into()),
            Err(QueryError::UndefinedTable) => {
                Err(ProbeError::Query("heartbeat table vanished".into()))
            }
            Err(QueryError::NoPrivilege) => Err(ProbeError::Query(
                "permission denied for a table the check reads (SQLSTATE 42501)".into(),
            )),
            Err(QueryError::Gone(e)) => {
                self.client = None;
                Err(ProbeError::Broken(e))
            }
            Err(QueryError::Pg(e)) => {
                // Keep a healthy connection through a server-side error
                // (reconnecting would not fix it); drop a broken one.
                if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                    self.client = None;
                    return Err(ProbeError::Broken(e));
                }
                Err(ProbeError::Query(e))
            }
        }
    }

    /// The check connection, opening it if needed and backoff allows.
    async fn connected(&mut self, req: &ProbeRequest) -> Result<Arc<Client>, ProbeError> {
        if let Some(c) = &self.client {
            if !c.is_closed() {
                return Ok(c.clone());
            }
            self.client = None;
        }
        if let Some(wait) = self.backoff.wait_left(Instant::now()) {
            return Err(ProbeError::Backoff {
                failures: self.backoff.failures(),
                wait,
                last: self.last_connect_error.clone(),
            });
        }
        // The caller's deadline bounds the connect and may abandon it
        // mid-way, so count the attempt as failed up front and undo that
        // on success.
        self.backoff.failed(Instant::now(), req.check_interval);
        self.last_connect_error = "connect did not finish within check_timeout".into();
        match connect(&self.target).await {
            Ok(c) => {
                let c = Arc::new(c);
                self.backoff.succeeded();
                tracing::debug!(node = %self.name, "health check connection opened");
                self.client = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                self.last_connect_error = e.clone();
                Err(ProbeError::Connect(e))
            }
        }
    }
}

enum QueryError {
    UndefinedTable,
    /// The check's user may not read the heartbeat table (42501).
    NoPrivilege,
    Pg(String),
    /// The server is going away (57P01-57P03, class 08) or the connection
    /// already closed.
    Gone(String),
    Bad(BadAnswer),
}

async fn query(client: &Client, hb: &HeartbeatQuery) -> Result<Observation, QueryError> {
    let sql = check_sql(hb);
    let sent_at = Instant::now();
    let msgs = client.simple_query(&sql).await.map_err(|e| {
        let code = e.code().map(|c| c.code()).unwrap_or("");
        if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            return QueryError::NoPrivilege;
        }
        if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
            QueryError::UndefinedTable
        } else if e.is_closed() || code.starts_with("57P") || code.starts_with("08") {
            QueryError::Gone(describe_pg_error(&e))
        } else {
            QueryError::Pg(describe_pg_error(&e))
        }
    })?;
    let answered_at = Instant::now();
    let row = msgs
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .ok_or_else(|| QueryError::Bad(BadAnswer("no row".into())))?;
    let cols: Vec<Option<&str>> = (0..row.len())
        .map(|i| row.try_get(i).ok().flatten())
        .collect();
    parse_answer(&cols, hb, sent_at.into_std(), answered_at.into_std()).map_err(QueryError::Bad)
}
