//! Faults on real processes, for the fault-injection tests: a node's
//! processes stopped and continued (a stall), an immediate stop (a crash),
//! and a replica re-pointed at a promoted one (a failover).

use std::fs;

use super::process;
use super::setup::{REPL_PASSWORD, REPL_USER};
use super::{Cluster, ClusterError, ClusterErrorKind, HOST, lock};

impl Cluster {
    /// Node `i`'s server processes at this moment, the postmaster first
    /// (then its children, by PID). A stall must stop the postmaster before
    /// its children so it forks no new backend meanwhile; take the list at
    /// the moment of the fault, since pools open backends all the time.
    pub fn pids(&self, i: usize) -> Result<Vec<i32>, ClusterError> {
        let node = self.node(i)?;
        let postmaster = lock(&node.child)
            .as_ref()
            .map(|c| c.id() as i32)
            .ok_or_else(|| {
                self.node_error(i, ClusterErrorKind::Usage, "the node is not running".into())
            })?;
        let mut children = Vec::new();
        let procs = fs::read_dir("/proc").map_err(|e| {
            self.node_error(i, ClusterErrorKind::Command, format!("reading /proc: {e}"))
        })?;
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // The process may be gone by now: skip it.
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if parent_of(&stat) == Some(postmaster) {
                children.push(pid);
            }
        }
        children.sort_unstable();
        let mut pids = vec![postmaster];
        pids.extend(children);
        Ok(pids)
    }

    /// Stops node `i` as `pg_ctl stop -m immediate` does (SIGQUIT to the
    /// postmaster: no shutdown checkpoint, crash recovery at the next
    /// start) and waits for it to exit.
    pub fn crash_node(&self, i: usize) -> Result<(), ClusterError> {
        let node = self.node(i)?;
        if let Some(mut child) = lock(&node.child).take() {
            process::stop_all(&mut [&mut child], libc::SIGQUIT, super::STOP_GRACE);
        }
        Ok(())
    }

    /// Points replica `i` at node `primary` (after a promotion): rewrites
    /// its `primary_conninfo` and reloads, so it follows the new timeline.
    /// The replication slot is not carried over; the replica streams
    /// without one.
    pub fn follow(&self, i: usize, primary: usize) -> Result<(), ClusterError> {
        let conninfo = format!(
            "host={HOST} port={} user={REPL_USER} password={REPL_PASSWORD} application_name={}",
            self.port(primary),
            self.nodes[i].name
        );
        self.psql(
            i,
            "postgres",
            &format!(
                "ALTER SYSTEM SET primary_conninfo = '{conninfo}';\n\
                 ALTER SYSTEM RESET primary_slot_name;\n\
                 SELECT pg_reload_conf();"
            ),
        )
        .map(drop)
    }
}

/// The parent PID in a `/proc/PID/stat` line (the field after the
/// parenthesised command name, which may itself contain spaces).
fn parent_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_is_read_after_the_command_name() {
        assert_eq!(parent_of("42 (postgres: app (x)) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("garbage"), None);
    }
}
