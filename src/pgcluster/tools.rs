//! Running the PostgreSQL client tools against a node.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use super::process::{self, ToolError, ToolOutput};
use super::{
    CONNECT_TIMEOUT_SECS, Cluster, ClusterError, ClusterErrorKind, SQL_TIMEOUT, SUPERUSER,
};

/// psql's exit code when a statement failed under ON_ERROR_STOP.
const PSQL_STATEMENT_FAILED: i32 = 3;

impl Cluster {
    /// Superuser psql over the unix socket, statements from stdin.
    pub(super) fn psql(&self, i: usize, database: &str, sql: &str) -> Result<String, ClusterError> {
        self.node(i)?;
        let mut cmd = self.command("psql", false);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.run_dir)
            .args(["-p", &self.port(i).to_string(), "-U", SUPERUSER])
            .args(["-d", database, "-f", "-"]);
        let out = self.run_to_end(i, "psql", cmd, Some(sql), SQL_TIMEOUT)?;
        if out.status.success() {
            return Ok(out.stdout.trim().to_owned());
        }
        if out.status.code() == Some(PSQL_STATEMENT_FAILED) {
            // The server is fine; its log would only be noise.
            return Err(
                ClusterError::new(ClusterErrorKind::Sql, server_messages(&out.stderr))
                    .on_node(&self.nodes[i].name),
            );
        }
        Err(self.tool_failed(i, "psql", &out))
    }

    /// Runs a tool about node `i`; a non-zero exit is an error naming the
    /// node, with the tool's stderr and the node's log.
    pub(super) fn run(
        &self,
        i: usize,
        what: &str,
        cmd: Command,
        input: Option<&str>,
        timeout: Duration,
    ) -> Result<ToolOutput, ClusterError> {
        let out = self.run_to_end(i, what, cmd, input, timeout)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.tool_failed(i, what, &out))
        }
    }

    /// Runs a tool; only a failure to start it or a timeout is an error.
    fn run_to_end(
        &self,
        i: usize,
        what: &str,
        cmd: Command,
        input: Option<&str>,
        timeout: Duration,
    ) -> Result<ToolOutput, ClusterError> {
        process::run_tool(cmd, input, timeout).map_err(|e| match e {
            ToolError::Timeout => self.node_error(
                i,
                ClusterErrorKind::Timeout,
                format!("{what} did not finish within {timeout:?}"),
            ),
            ToolError::Spawn(e) => {
                ClusterError::io(format!("cannot run {what}"), e).on_node(&self.nodes[i].name)
            }
        })
    }

    fn tool_failed(&self, i: usize, what: &str, out: &ToolOutput) -> ClusterError {
        self.node_error(
            i,
            ClusterErrorKind::Command,
            format!("{what} failed ({}): {}", out.status, out.stderr.trim()),
        )
    }

    /// A command for one of the PostgreSQL binaries, with the caller's PG*
    /// variables removed so they cannot redirect it.
    pub(super) fn command(&self, program: &str, as_server_user: bool) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECS)
            .env("LC_ALL", "C")
            .current_dir(&self.dir);
        if let (true, Some(user)) = (as_server_user, self.os_user) {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }
}

/// psql's stderr without its `psql:<stdin>:LINE: ` prefixes, leaving the
/// server's own `ERROR:  ...` lines.
fn server_messages(stderr: &str) -> String {
    stderr
        .trim()
        .lines()
        .map(|line| {
            line.strip_prefix("psql:<stdin>:")
                .and_then(|rest| rest.split_once(": "))
                .map_or(line, |(_, message)| message)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psql_prefix_is_stripped() {
        let stderr =
            "psql:<stdin>:2: ERROR:  relation \"t\" does not exist\nLINE 1: select * from t\n";
        assert_eq!(
            server_messages(stderr),
            "ERROR:  relation \"t\" does not exist\nLINE 1: select * from t"
        );
    }
}
