//! Starting a node's postmaster and waiting until it accepts connections.

use std::fs::{self, File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::thread;
use std::time::Instant;

use super::process;
use super::setup::{self, OsUser};
use super::{
    Cluster, ClusterError, ClusterErrorKind, Node, POLL, PORT_ATTEMPTS, READY_TIMEOUT,
    SETTLE_TIMEOUT, lock,
};

impl Cluster {
    /// Starts node `i` and waits until it accepts connections. With
    /// `new_port_on_bind_failure`, a port taken by someone else since we
    /// picked it is replaced by a fresh one (only safe before anyone else
    /// knows the port).
    pub(super) fn launch(
        &self,
        i: usize,
        new_port_on_bind_failure: bool,
    ) -> Result<(), ClusterError> {
        let node = &self.nodes[i];
        let mut slot = lock(&node.child);
        if let Some(child) = slot.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
            *slot = None;
        }
        let mut attempt = 1;
        loop {
            let log_start = fs::metadata(&node.log).map_or(0, |m| m.len());
            let child = slot.insert(self.spawn_server(node)?);
            let ready = self.wait_ready(i, child);
            if ready.is_ok() {
                return Ok(());
            }
            if let Some(mut child) = slot.take() {
                process::stop_all(&mut [&mut child], libc::SIGQUIT, SETTLE_TIMEOUT);
            }
            if !new_port_on_bind_failure
                || attempt >= PORT_ATTEMPTS
                || !log_says_port_taken(&node.log, log_start)
            {
                return ready;
            }
            attempt += 1;
            self.assign_port(i)?;
        }
    }

    fn spawn_server(&self, node: &Node) -> Result<Child, ClusterError> {
        let log = open_log(&node.log, self.os_user)?;
        let log_err = log
            .try_clone()
            .map_err(|e| ClusterError::io("cannot duplicate the log file handle", e))?;
        let mut cmd = self.command("postgres", true);
        cmd.arg("-D")
            .arg(&node.data)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Out of the terminal's process group: Ctrl-C kills the test, and
            // the parent-death signal then stops the server in order.
            .process_group(0);
        process::spawn_bound(cmd, libc::SIGQUIT).map_err(|e| {
            ClusterError::io("cannot start postgres", e)
                .on_node(&node.name)
                .with_log(&node.log)
        })
    }

    /// Polls postmaster.pid until our postmaster reports "ready" (primary)
    /// or "standby" (hot standby accepting connections).
    fn wait_ready(&self, i: usize, child: &mut Child) -> Result<(), ClusterError> {
        let node = &self.nodes[i];
        let pid_file = node.data.join("postmaster.pid");
        let pid = child.id().to_string();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(self.node_error(
                    i,
                    ClusterErrorKind::Command,
                    format!("server exited during start-up ({status})"),
                ));
            }
            if let Ok(text) = fs::read_to_string(&pid_file) {
                let lines: Vec<&str> = text.lines().map(str::trim).collect();
                // A stale file from a killed server has another pid.
                if lines.first() == Some(&pid.as_str())
                    && matches!(lines.get(7), Some(&"ready") | Some(&"standby"))
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(self.node_error(
                    i,
                    ClusterErrorKind::Timeout,
                    format!("server not accepting connections after {READY_TIMEOUT:?}"),
                ));
            }
            thread::sleep(POLL);
        }
    }
}

fn open_log(path: &Path, user: Option<OsUser>) -> Result<File, ClusterError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ClusterError::io(format!("cannot open {}", path.display()), e))?;
    setup::chown(path, user)?;
    Ok(file)
}

/// Whether the server's log, from byte `from`, says its port was taken.
fn log_says_port_taken(log: &Path, from: u64) -> bool {
    let Ok(bytes) = fs::read(log) else {
        return false;
    };
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[from..]);
    text.contains("could not bind") || text.contains("could not create any TCP/IP sockets")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_taken_is_recognised_after_the_offset_only() {
        let dir = std::env::temp_dir().join(format!("pgcluster-log-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("n.log");
        let old = "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n";
        fs::write(&log, old).unwrap();
        let offset = old.len() as u64;
        assert!(log_says_port_taken(&log, 0));
        assert!(!log_says_port_taken(&log, offset));
        fs::write(
            &log,
            format!("{old}FATAL:  could not create any TCP/IP sockets\n"),
        )
        .unwrap();
        assert!(log_says_port_taken(&log, offset));
        fs::remove_dir_all(&dir).unwrap();
    }
}
