//! The one error type of the cluster harness.
//!
//! Every error names the node it concerns (when there is one) and, when a
//! server misbehaved, carries the last lines of that node's log, so a failing
//! test says why without anyone having to go and find the log file.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// How many lines of a node's log an error quotes.
const LOG_TAIL_LINES: usize = 30;
/// How much of the end of a log file is read to find those lines.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// What kind of failure a [`ClusterError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterErrorKind {
    /// The PostgreSQL binaries (or the `postgres` OS user) are missing.
    Setup,
    /// A file-system or process operation failed.
    Io,
    /// A PostgreSQL tool (initdb, pg_basebackup, pgbench, ...) failed, or a
    /// server exited or would not start.
    Command,
    /// The server rejected a statement run through [`super::Cluster::sql`].
    Sql,
    /// A bounded wait ran out.
    Timeout,
    /// The caller asked for something impossible (bad node index, ...).
    Usage,
}

/// An error from starting, driving or stopping a [`super::Cluster`].
#[derive(Debug)]
pub struct ClusterError {
    kind: ClusterErrorKind,
    node: Option<String>,
    message: String,
    log_tail: Option<String>,
    source: Option<io::Error>,
}

impl ClusterError {
    pub(crate) fn new(kind: ClusterErrorKind, message: impl Into<String>) -> Self {
        ClusterError {
            kind,
            node: None,
            message: message.into(),
            log_tail: None,
            source: None,
        }
    }

    pub(crate) fn io(message: impl Into<String>, source: io::Error) -> Self {
        let mut e = ClusterError::new(ClusterErrorKind::Io, message);
        e.source = Some(source);
        e
    }

    pub(crate) fn on_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }

    /// Attaches the last lines of `log` (if it can be read).
    pub(crate) fn with_log(mut self, log: &Path) -> Self {
        self.log_tail = read_tail(log).map(|tail| format!("{}:\n{tail}", log.display()));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ClusterErrorKind {
        self.kind
    }

    /// The node the error concerns (`"primary"`, `"replica1"`, ...), if any.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The error without the node name or log tail (for SQL errors: psql's
    /// stderr, e.g. `ERROR:  relation "t" does not exist`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The last lines of the node's log, when the error came from a server.
    pub fn log_tail(&self) -> Option<&str> {
        self.log_tail.as_deref()
    }
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pgcluster: ")?;
        if let Some(node) = &self.node {
            write!(f, "{node}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        if let Some(tail) = &self.log_tail {
            write!(f, "\n--- last lines of {tail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The last [`LOG_TAIL_LINES`] lines of a file, or `None` if it is missing
/// or empty.
fn read_tail(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    // A cut-off first line is only noise.
    let skip = usize::from(start > 0);
    let from = lines.len().saturating_sub(LOG_TAIL_LINES).max(skip);
    let tail = lines.get(from..)?.join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_node_and_quotes_log() {
        let dir = std::env::temp_dir().join(format!("pgcluster-err-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("primary.log");
        let body: String = (0..50).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, body).unwrap();
        let e = ClusterError::new(ClusterErrorKind::Command, "server exited")
            .on_node("primary")
            .with_log(&log);
        let text = e.to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text.starts_with("pgcluster: primary: server exited\n--- last lines of "));
        assert!(text.contains("line 49"));
        assert!(!text.contains("line 19\n"));
        assert_eq!(e.node(), Some("primary"));
    }

    #[test]
    fn missing_log_adds_nothing() {
        let e = ClusterError::new(ClusterErrorKind::Timeout, "waited")
            .with_log(Path::new("/nonexistent/pgcluster.log"));
        assert_eq!(e.to_string(), "pgcluster: waited");
    }
}
