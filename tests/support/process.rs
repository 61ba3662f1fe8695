//! Child processes (psql, pgbench, the lagrouter binary) bounded in time:
//! a child still running at its deadline is killed and the test fails.

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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

/// Bound on the lagrouter binary's start and stop.
const BINARY_LIMIT: Duration = Duration::from_secs(30);

/// The lagrouter binary with `args`, without the caller's `RUST_LOG`.
pub fn lagrouter_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lagrouter"));
    c.args(args).env_remove("RUST_LOG");
    c
}

/// A field of `/proc/PID/status` given in kB (`VmSize`, `VmRSS`), in bytes.
pub fn status_bytes(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kb * 1024
}

/// Starts `lagrouter run -c` on `toml` and returns the child and the port
/// it listens on (from its log, which is drained from then on).
pub async fn spawn_run(dir: &super::TempDir, toml: &str) -> (tokio::process::Child, u16) {
    let path = dir.path().join("run.toml");
    std::fs::write(&path, toml).unwrap();
    let mut child = lagrouter_cmd(&["run", "-c", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn lagrouter run");
    // The listen address is only known from the log line.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + BINARY_LIMIT;
    let mut seen = Vec::new();
    let port = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match tokio::time::timeout(left, lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            other => panic!("no 'accepting clients' log line ({other:?}); log: {seen:#?}"),
        };
        if line.contains("accepting clients") {
            // Colours may wrap the field; the address is "127.0.0.1:PORT".
            let at = line
                .find("127.0.0.1:")
                .unwrap_or_else(|| panic!("no listen address in {line}"));
            let digits: String = line[at + 10..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            break digits.parse::<u16>().unwrap();
        }
        seen.push(line);
    };
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

pub async fn stop(mut child: tokio::process::Child) {
    let pid = child.id().expect("child pid") as i32;
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(BINARY_LIMIT, child.wait())
        .await
        .expect("lagrouter run did not exit within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
