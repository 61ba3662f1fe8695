//! A transaction the client opened that has no server yet.
//!
//! A plain `BEGIN` with no transaction open (transaction pooling) is
//! answered by the proxy and sent to the server in front of the
//! transaction's first statement, in the same write: the server answers
//! both from one read of its socket, and the `BEGIN` costs neither the
//! proxy nor the server a round trip of its own (see
//! docs/performance.md). The client sees what the server would answer.
//! What differs is when the server starts the transaction: at its first
//! statement, so `now()` is that statement's start, as if the `BEGIN` had
//! been slow to arrive; and a client that sends `BEGIN` and nothing more
//! holds no server connection.
//!
//! When the first statement finds no server (a full pool, no primary),
//! the client is told why and is in a failed transaction block, as it
//! would be on the server: until it ends the block, every statement gets
//! `25P02`, and `COMMIT` or `ROLLBACK` answers `ROLLBACK`.

use bytes::{Bytes, BytesMut};

use crate::error::ProxyError;
use crate::protocol::backend;
use crate::protocol::frontend::{self, ClientMsg};
use crate::protocol::tag::{be, target};

use super::attach::{Routed, Routing};
use super::*;

/// A batch that only runs a plain `BEGIN` ([`Session::plain_begin_batch`]).
pub(super) struct BeginBatch {
    sql: Box<str>,
    /// Its bytes in the client buffer past its first message.
    len: usize,
    /// What the server would answer but the ReadyForQuery.
    answers: BytesMut,
    /// It starts with a Parse (of the unnamed statement).
    parsed: bool,
}

/// See the module documentation.
#[derive(Default)]
pub(super) enum OpenTxn {
    /// The client is not in a transaction the proxy holds.
    #[default]
    None,
    /// The client's `BEGIN`, answered and not sent yet, and where it was
    /// routed (the primary, holding no connection yet).
    Begun {
        sql: Box<str>,
        routed: Box<Routed>,
        /// It came as an extended-protocol batch (and goes as one).
        extended: bool,
    },
    /// The transaction failed before it had a server; `ending` is the
    /// portal (bound in this failed block) of a `COMMIT` or `ROLLBACK`.
    Failed {
        unnamed_ends: bool,
        ending: Option<Box<str>>,
    },
}

impl OpenTxn {
    pub(super) fn failed() -> OpenTxn {
        OpenTxn::Failed {
            unnamed_ends: false,
            ending: None,
        }
    }
}

impl<S: ClientStream> Session<S> {
    /// Answers `sql`, a simple query with no server attached, when it is
    /// a plain `BEGIN` with no transaction open (transaction pooling): it
    /// is routed now, as it would be attached, so a refusal (the write
    /// gate, no primary) is its answer as before; the connection is
    /// checked out at the first statement. `false`: `sql` is handled as
    /// usual.
    pub(super) async fn begin_locally(&mut self, sql: &str) -> bool {
        if !matches!(self.open, OpenTxn::None)
            || self.config.pool.mode != PoolMode::Transaction
            || !lagrouter_routing::is_plain_begin(sql)
        {
            return false;
        }
        self.begin(sql, None, BytesMut::new()).await
    }

    /// The client's batch, of which `first` (a Parse or a Bind) was read
    /// and the rest is in the buffer up to its Sync, when it only runs a
    /// plain `BEGIN` with no transaction open (transaction pooling): a
    /// Parse of the unnamed statement or a Bind of one of the client's
    /// statements, with no parameters, then at most a Describe, an
    /// Execute, and the Sync. [`Self::begin_batch`] answers it. `None`:
    /// anything else, handled as usual. On the path of every
    /// extended-protocol transaction, where the test nearly always fails
    /// at the first message: a plain function (an `async fn` built and
    /// polled a future for each), its rest out of line.
    #[inline]
    pub(super) fn plain_begin_batch(&self, first: &ClientMsg<'_>) -> Option<BeginBatch> {
        let (sql, portal) = match first {
            ClientMsg::Parse(p)
                if p.name.is_empty()
                    && p.param_types.iter().all(|b| *b == 0)
                    && lagrouter_routing::is_plain_begin(p.query) =>
            {
                (p.query, None)
            }
            // Looked up only when the client prepared a plain `BEGIN`.
            ClientMsg::Bind(b) if self.statements.may_begin() => {
                match self.statements.get(b.statement) {
                    Some(s)
                        if s.begin
                            && self.local.statement(b.statement).is_none()
                            && frontend::bind_parameter_count(b.rest) == Ok(0) =>
                    {
                        (&*s.query, Some(b.portal))
                    }
                    _ => return None,
                }
            }
            _ => return None,
        };
        self.plain_begin_batch_rest(sql, portal)
    }

    /// [`Self::plain_begin_batch`] past its first message, a Parse of
    /// `sql` (`portal`: `None`) or a Bind of it to `portal`.
    #[inline(never)]
    fn plain_begin_batch_rest(&self, sql: &str, portal: Option<&str>) -> Option<BeginBatch> {
        if !matches!(self.open, OpenTxn::None) || self.config.pool.mode != PoolMode::Transaction {
            return None;
        }
        let (parsed, mut bound) = (portal.is_none(), portal);
        let mut answers = BytesMut::new();
        let first = if parsed {
            be::PARSE_COMPLETE
        } else {
            be::BIND_COMPLETE
        };
        backend::empty(&mut answers, first);
        // The rest of the batch, as the shape above allows.
        let (mut at, mut executed) = (0, false);
        let buf = &self.cbuf[..];
        loop {
            let Ok(Some((tag, total))) = peek_header(&buf[at..], MAX_MESSAGE_LEN) else {
                return None;
            };
            let frame = buf.get(at + 5..at + total)?;
            at += total;
            let Ok(Some(msg)) = ClientMsg::decode(tag, frame) else {
                return None;
            };
            match (msg, bound) {
                (ClientMsg::Bind(b), None)
                    if b.statement.is_empty()
                        && frontend::bind_parameter_count(b.rest) == Ok(0) =>
                {
                    backend::empty(&mut answers, be::BIND_COMPLETE);
                    bound = Some(b.portal);
                }
                (ClientMsg::Describe(t), Some(portal))
                    if !executed && t.kind == target::PORTAL && t.name == portal =>
                {
                    backend::empty(&mut answers, be::NO_DATA);
                }
                (ClientMsg::Execute { portal: e }, Some(portal)) if !executed && e == portal => {
                    answers.extend_from_slice(backend::BEGIN_COMPLETE);
                    executed = true;
                }
                (ClientMsg::Sync, Some(_)) if executed => break,
                _ => return None,
            }
        }
        Some(BeginBatch {
            sql: sql.into(),
            len: at,
            answers,
            parsed,
        })
    }

    /// Answers `batch`, a plain `BEGIN` in the extended protocol, as
    /// [`Self::begin_locally`] does a simple query, and consumes the rest
    /// of it. `false`: it was attached instead, and its first message is
    /// handled as usual.
    pub(super) async fn begin_batch(&mut self, batch: BeginBatch) -> bool {
        let done = self.begin(&batch.sql, Some(batch.len), batch.answers).await;
        if done && batch.parsed {
            // The unnamed statement is the `BEGIN` now.
            self.unnamed_commit = false;
        }
        done
    }

    /// Opens the transaction of `sql`, a plain `BEGIN`: a simple query,
    /// or (`batch`: the bytes of its batch still in the buffer) an
    /// extended-protocol one whose `answers` but the ReadyForQuery are
    /// written. It is routed now, as it would be attached, so a refusal
    /// (the write gate, no primary) is its answer as before, and the
    /// connection is checked out at the first statement. Routed elsewhere
    /// than the primary (a read-only default can send it to a replica,
    /// which may have waited to catch up), it is attached now and handled
    /// as usual (`false`).
    async fn begin(&mut self, sql: &str, batch: Option<usize>, answers: BytesMut) -> bool {
        // A plain function first: routed to the primary, as nearly every
        // `BEGIN` is, nothing waits and no future is built.
        let routed = match self.route_now(sql, None, None) {
            Ok(Routing::Done(routed)) => Ok(routed),
            Ok(Routing::CatchUp(wait)) => small_box(self.caught_up(*wait)).await,
            Err(e) => Err(e),
        };
        let e = match routed {
            Ok(routed) if routed.decision.primary && routed.holds_nothing() => {
                self.open = OpenTxn::Begun {
                    sql: sql.into(),
                    routed: Box::new(routed),
                    extended: batch.is_some(),
                };
                let answers = match batch {
                    Some(n) => {
                        self.cbuf.advance(n);
                        self.batch.consumed(n);
                        answers.freeze()
                    }
                    None => Bytes::from_static(backend::BEGIN_COMPLETE),
                };
                self.expect.push_synthetic(answers);
                self.synthetic_ready();
                return true;
            }
            Ok(routed) => match self.attach_routed_now(routed) {
                Ok(_) => return false,
                Err(routed) => match small_box(self.attach_routed_waiting(routed)).await {
                    Ok(_) => return false,
                    Err(e) => e,
                },
            },
            Err(e) => e,
        };
        // As an attach that fails.
        if batch.is_some() {
            self.fail_extended(&e);
        } else {
            self.synthetic_error(&e);
            self.synthetic_ready();
        }
        true
    }

    /// [`Self::answer_failed_txn`] for a simple query: `COMMIT` or
    /// `ROLLBACK` answers `ROLLBACK` and ends the block, anything else
    /// fails with `25P02`.
    fn answer_failed_query(&mut self, sql: &str) -> bool {
        if lagrouter_routing::is_plain_transaction_end(sql) {
            self.open = OpenTxn::None;
            self.synthetic_complete("ROLLBACK");
        } else if sql.trim_ascii().is_empty() {
            self.synthetic_empty(be::EMPTY_QUERY);
        } else {
            self.synthetic_error(&ProxyError::FailedTransaction);
        }
        self.synthetic_ready();
        true
    }

    /// Answers `msg`, a client message with no server attached, in a
    /// failed transaction the proxy holds, as the server would in a
    /// failed block: a `COMMIT` or `ROLLBACK`, simple or parsed, bound,
    /// described and executed, answers `ROLLBACK` and ends the block;
    /// anything else fails with `25P02` (in the extended protocol, the
    /// rest of the batch is dropped). `false`: not in such a transaction,
    /// or a message the usual handler answers the same (Sync, Close,
    /// Flush, a named Parse of a transaction end: kept, as outside a
    /// transaction, for the server that runs its Bind).
    pub(super) fn answer_failed_txn(&mut self, msg: &ClientMsg<'_>) -> bool {
        if !matches!(self.open, OpenTxn::Failed { .. }) {
            return false;
        }
        if let ClientMsg::Query(sql) = msg {
            return self.answer_failed_query(sql);
        }
        let OpenTxn::Failed {
            unnamed_ends,
            ending,
        } = &mut self.open
        else {
            return false;
        };
        let ends = |statements: &Statements, unnamed_ends: bool, name: &str| {
            if name.is_empty() {
                unnamed_ends
            } else {
                statements
                    .get(name)
                    .is_some_and(|s| lagrouter_routing::is_plain_transaction_end(&s.query))
            }
        };
        let mut m = BytesMut::new();
        let ok = match msg {
            ClientMsg::Parse(p) if lagrouter_routing::is_plain_transaction_end(p.query) => {
                if !p.name.is_empty() {
                    return false;
                }
                *unnamed_ends = true;
                backend::empty(&mut m, be::PARSE_COMPLETE);
                true
            }
            ClientMsg::Bind(b) if ends(&self.statements, *unnamed_ends, b.statement) => {
                *ending = Some(b.portal.into());
                backend::empty(&mut m, be::BIND_COMPLETE);
                true
            }
            ClientMsg::Describe(t)
                if t.kind == target::STATEMENT && ends(&self.statements, *unnamed_ends, t.name) =>
            {
                backend::parameter_description(&mut m, &[]);
                backend::empty(&mut m, be::NO_DATA);
                true
            }
            ClientMsg::Describe(t)
                if t.kind == target::PORTAL && ending.as_deref() == Some(t.name) =>
            {
                backend::empty(&mut m, be::NO_DATA);
                true
            }
            ClientMsg::Execute { portal } if ending.as_deref() == Some(*portal) => {
                self.open = OpenTxn::None;
                backend::command_complete(&mut m, "ROLLBACK");
                true
            }
            ClientMsg::Parse(_)
            | ClientMsg::Bind(_)
            | ClientMsg::Describe(_)
            | ClientMsg::Execute { .. } => false,
            ClientMsg::FunctionCall => {
                self.synthetic_error(&ProxyError::FailedTransaction);
                self.synthetic_ready();
                return true;
            }
            _ => return false,
        };
        if ok {
            self.expect.push_synthetic(m.freeze());
        } else {
            self.fail_extended(&ProxyError::FailedTransaction);
        }
        true
    }
}
