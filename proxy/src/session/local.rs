//! Statements the proxy answers itself (`SET`/`SHOW lagrouter.*`,
//! `SELECT lagrouter.wait_replicas(n, ms)`), over
//! the simple and the extended protocol, without a server connection.

use std::collections::HashMap;

use bytes::BytesMut;
use lagrouter_routing::{CommandOutcome, ProxyCommand, SessionRouting};

use crate::protocol::backend::{self, Severity};

/// Prepared statements and portals whose text is a proxy command.
#[derive(Default)]
pub struct LocalStatements {
    statements: HashMap<String, ProxyCommand>,
    /// The command and whether its result column goes out in binary.
    portals: HashMap<String, (ProxyCommand, bool)>,
}

impl LocalStatements {
    pub fn prepare(&mut self, name: &str, cmd: ProxyCommand) {
        self.statements.insert(name.to_string(), cmd);
    }

    // Every extended-protocol message asks; there is rarely anything: the
    // emptiness checks skip hashing the name.

    pub fn statement(&self, name: &str) -> Option<&ProxyCommand> {
        if self.statements.is_empty() {
            return None;
        }
        self.statements.get(name)
    }

    pub fn bind(&mut self, portal: &str, cmd: ProxyCommand, binary: bool) {
        self.portals.insert(portal.to_string(), (cmd, binary));
    }

    pub fn portal(&self, name: &str) -> Option<&ProxyCommand> {
        if self.portals.is_empty() {
            return None;
        }
        self.portals.get(name).map(|(c, _)| c)
    }

    /// Whether the portal's result column was bound in binary format.
    pub fn portal_binary(&self, name: &str) -> bool {
        self.portals.get(name).is_some_and(|(_, b)| *b)
    }

    pub fn has_statements(&self) -> bool {
        !self.statements.is_empty()
    }

    /// Forgets a statement (a normal Parse reused its name, or Close).
    pub fn forget_statement(&mut self, name: &str) -> bool {
        !self.statements.is_empty() && self.statements.remove(name).is_some()
    }

    pub fn forget_portal(&mut self, name: &str) -> bool {
        !self.portals.is_empty() && self.portals.remove(name).is_some()
    }

    /// Portals end with the transaction.
    pub fn end_transaction(&mut self) {
        if !self.portals.is_empty() {
            self.portals.clear();
        }
    }
}

/// Whether the command returns a row (SHOW, wait_replicas) rather than a tag.
pub fn returns_row(cmd: &ProxyCommand) -> bool {
    matches!(
        cmd,
        ProxyCommand::Show(_) | ProxyCommand::WaitReplicas { .. }
    )
}

/// The column of a row-returning command's answer: name and type OID.
fn column(cmd: &ProxyCommand) -> (&'static str, i32) {
    match cmd {
        ProxyCommand::Show(s) => (s.name(), backend::TEXT_OID),
        ProxyCommand::WaitReplicas { .. } => (WAIT_COLUMN, backend::INT4_OID),
        _ => ("", backend::TEXT_OID),
    }
}

/// The column `lagrouter.wait_replicas` answers in, like a function's.
pub const WAIT_COLUMN: &str = "wait_replicas";

/// A command that needs the proxy to wait before it can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub lsn: Option<lagrouter_health::Lsn>,
    pub replicas: u32,
    pub timeout: std::time::Duration,
}

/// What [`execute`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executed {
    /// Answered (an ErrorResponse when `failed`).
    Answered { failed: bool },
    /// Nothing written yet: wait, then answer with [`wait_answer`].
    Wait(Wait),
}

/// The answer to a finished wait: `count` replicas replayed the LSN.
/// The answer to a wait the client cancelled, as PostgreSQL words it.
pub fn wait_cancelled(out: &mut BytesMut) {
    backend::error_response(
        out,
        Severity::Error,
        "57014", // query_canceled
        "canceling statement due to user request",
        None,
    );
}

/// How the client asked for a command's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// A simple query: the answer carries its RowDescription, in text.
    SimpleQuery,
    /// An Execute of a bound portal (described at Describe); `binary`: the
    /// result column was bound in binary format.
    Portal { binary: bool },
}

pub fn wait_answer(out: &mut BytesMut, count: usize, asked: Asked) {
    let binary = asked == (Asked::Portal { binary: true });
    if asked == Asked::SimpleQuery {
        backend::row_description_typed(out, &[(WAIT_COLUMN, backend::INT4_OID)]);
    }
    let n = i32::try_from(count).unwrap_or(i32::MAX);
    if binary {
        backend::data_row_bytes(out, &[&n.to_be_bytes()]);
    } else {
        backend::data_row(out, &[Some(&n.to_string())]);
    }
    backend::command_complete(out, "SELECT 1");
}

/// Describe of a local statement: no parameters, then its row shape.
pub fn describe_statement(out: &mut BytesMut, cmd: &ProxyCommand) {
    backend::parameter_description(out, &[]);
    describe_portal(out, cmd);
}

/// Describe of a local portal: its row shape or NoData.
pub fn describe_portal(out: &mut BytesMut, cmd: &ProxyCommand) {
    if returns_row(cmd) {
        backend::row_description_typed(out, &[column(cmd)]);
    } else {
        backend::empty(out, b'n');
    }
}

/// Runs the command against the session; writes the answer (rows or tag,
/// or an error), or says what to wait for first.
pub fn execute(
    out: &mut BytesMut,
    session: &mut SessionRouting,
    cmd: &ProxyCommand,
    asked: Asked,
) -> Executed {
    let with_description = asked == Asked::SimpleQuery;
    let failed = match session.apply(cmd) {
        CommandOutcome::Done { tag } => {
            backend::command_complete(out, tag);
            false
        }
        CommandOutcome::Wait {
            lsn,
            replicas,
            timeout,
        } => {
            return Executed::Wait(Wait {
                lsn,
                replicas,
                timeout,
            });
        }
        CommandOutcome::Show { name, value } => {
            if with_description {
                backend::row_description(out, &[name]);
            }
            backend::data_row(out, &[Some(&value)]);
            backend::command_complete(out, "SHOW");
            false
        }
        CommandOutcome::Error(e) => {
            backend::error_response(out, Severity::Error, e.sqlstate, &e.message, Some(e.hint));
            true
        }
    };
    Executed::Answered { failed }
}
