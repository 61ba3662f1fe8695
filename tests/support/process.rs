//! Child processes (psql, pgbench, the lagrouter binary) bounded in time:
//! a child still running at its deadline is killed and the test fails.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// What a finished child printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `cmd` with `stdin` fed to it; panics (after killing it) if it has
/// not exited within `timeout`.
pub async fn run(mut cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let feeder = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => Some(tokio::spawn(async move {
            let _ = pipe.write_all(&data).await;
            let _ = pipe.shutdown().await;
        })),
        _ => None,
    };
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.unwrap_or_else(|e| panic!("wait for {what}: {e}")),
        // Dropping the child kills it (kill_on_drop).
        Err(_) => panic!("{what} still running after {timeout:?}; killed"),
    };
    if let Some(f) = feeder {
        let _ = f.await;
    }
    Output {
        status: out.status,
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `psql` against the proxy on `port` as app/app with `conninfo` extras,
/// without reading ~/.psqlrc, quiet, unaligned, tuples only.
pub fn psql(port: u16, conninfo: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("psql");
    cmd.arg(format!(
        "host=127.0.0.1 port={port} user=app dbname=app connect_timeout=10 {conninfo}"
    ))
    .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
    .args(args)
    .env("PGPASSWORD", "app")
    .env_remove("PGSSLMODE")
    .env_remove("PGSERVICE");
    cmd
}

/// Checks a pgbench run: exit 0, no failed transaction, no aborted
/// client, transactions processed; returns its TPS.
pub fn pgbench_ok(out: &Output, what: &str) -> f64 {
    let text = out.stdout_text();
    let all = format!("stdout:\n{text}\nstderr:\n{}", out.stderr);
    assert!(
        out.status.success(),
        "{what}: pgbench failed ({}):\n{all}",
        out.status
    );
    assert!(
        text.contains("number of failed transactions: 0"),
        "{what}: failed transactions:\n{all}"
    );
    assert!(
        !text.contains("aborted") && !out.stderr.contains("aborted"),
        "{what}: aborted clients:\n{all}"
    );
    let tps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no tps line:\n{all}"));
    assert!(tps > 0.0, "{what}: tps {tps}:\n{all}");
    let processed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no processed count:\n{all}"));
    assert!(processed > 0, "{what}: nothing processed:\n{all}");
    eprintln!("{what}: tps {tps:.0}, {processed} transactions");
    tps
}
