//! Statements the proxy answers itself (`SET`/`SHOW lagrouter.*`), over
//! the simple and the extended protocol, without a server connection.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};
use lagrouter_routing::{CommandOutcome, ProxyCommand, SessionRouting};

use crate::protocol::backend::{self, Severity};

/// Prepared statements and portals whose text is a proxy command.
#[derive(Default)]
pub struct LocalStatements {
    statements: HashMap<String, ProxyCommand>,
    portals: HashMap<String, ProxyCommand>,
}

impl LocalStatements {
    pub fn prepare(&mut self, name: &str, cmd: ProxyCommand) {
        self.statements.insert(name.to_string(), cmd);
    }

    pub fn statement(&self, name: &str) -> Option<&ProxyCommand> {
        self.statements.get(name)
    }

    pub fn bind(&mut self, portal: &str, cmd: ProxyCommand) {
        self.portals.insert(portal.to_string(), cmd);
    }

    pub fn portal(&self, name: &str) -> Option<&ProxyCommand> {
        self.portals.get(name)
    }

    /// Forgets a statement (a normal Parse reused its name, or Close).
    pub fn forget_statement(&mut self, name: &str) -> bool {
        self.statements.remove(name).is_some()
    }

    pub fn forget_portal(&mut self, name: &str) -> bool {
        self.portals.remove(name).is_some()
    }

    /// Portals end with the transaction.
    pub fn end_transaction(&mut self) {
        self.portals.clear();
    }
}

/// Whether the command returns a row (SHOW) rather than a tag.
pub fn returns_row(cmd: &ProxyCommand) -> bool {
    matches!(cmd, ProxyCommand::Show(_))
}

/// The column name of a SHOW command's one-row answer.
fn column_name(cmd: &ProxyCommand) -> &'static str {
    match cmd {
        ProxyCommand::Show(s) => s.name(),
        _ => "",
    }
}

/// Describe of a local statement: no parameters, then its row shape.
pub fn describe_statement(out: &mut BytesMut, cmd: &ProxyCommand) {
    out.put_u8(b't');
    out.put_i32(6);
    out.put_i16(0);
    describe_portal(out, cmd);
}

/// Describe of a local portal: its row shape or NoData.
pub fn describe_portal(out: &mut BytesMut, cmd: &ProxyCommand) {
    if returns_row(cmd) {
        backend::row_description(out, &[column_name(cmd)]);
    } else {
        backend::empty(out, b'n');
    }
}

/// Runs the command against the session; writes the answer (rows or tag,
/// or an error) and says whether it failed.
pub fn execute(
    out: &mut BytesMut,
    session: &mut SessionRouting,
    cmd: &ProxyCommand,
    with_description: bool,
) -> bool {
    match session.apply(cmd) {
        CommandOutcome::Done { tag } => {
            backend::command_complete(out, tag);
            false
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
    }
}
