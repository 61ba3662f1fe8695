//! What the benches share: child processes that never outlive them, the
//! lagrouter binary, pgbench runs and their parsed outcome, medians and
//! the output directory. Each bench keeps only its own matrix and tables.

#![allow(dead_code)] // each bench uses its part

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lagrouter::pgcluster::Cluster;

/// A child process that is stopped when dropped, so an error return or a
/// panic never leaves a proxy or a pgbench behind.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `cmd` with stdout and stderr to `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // Drop does not run when this process is killed: then the kernel
        // sends the child SIGTERM (PgBouncer loses this when it switches
        // user; the cluster's servers have their own guard).
        // SAFETY: prctl is async-signal-safe and touches only the child.
        let on_parent_death = || {
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
            Ok(())
        };
        unsafe { cmd.pre_exec(on_parent_death) };
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Proc(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// Waits at most `limit`; on expiry stops it and returns None.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            sleep(Duration::from_millis(50));
        }
        self.stop();
        None
    }

    /// SIGTERM first (proxies then close their server connections), SIGKILL
    /// after 5 s.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child, not yet reaped, so the pid is its.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.exited().is_none() && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nobody listens on right now (the race until the proxy binds it is
/// harmless on a test host).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The release binary cargo bench builds next to the bench.
pub fn lagrouter_bin() -> Result<PathBuf> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_lagrouter"));
    if !bin.exists() {
        bail!(
            "{} missing: run `cargo build --release` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// `tool` (pgbench, psql) from the cluster's binaries, pointed at `port`
/// as the cluster's application user.
pub fn pg_tool(c: &Cluster, tool: &str, port: u16) -> Command {
    let mut cmd = Command::new(c.bindir().join(tool));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        c.app_user(),
    ]);
    cmd.env("PGPASSWORD", c.app_password())
        .env("PGCONNECT_TIMEOUT", "5");
    cmd
}

/// User + system CPU time of a process so far, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count from after
    // it. There utime and stime (fields 14 and 15) are the 12th and 13th.
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Some(ticks as f64 / per_sec as f64)
}

/// The number after `prefix` on the first line starting with it.
pub fn field(text: &str, prefix: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    line[prefix.len()..].split_whitespace().next()?.parse().ok()
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| (v[(n - 1) / 2] + v[n / 2]) / 2.0)
}

/// A comma-separated option value.
pub fn list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// target/<name>/<UTC timestamp>/, in the target directory the bench runs
/// from.
pub fn out_dir(name: &str) -> Result<PathBuf> {
    let bin = lagrouter_bin()?;
    let target = bin.parent().and_then(Path::parent);
    let stamp = Command::new("date")
        .arg("-u")
        .arg("+%Y%m%d-%H%M%SZ")
        .output()?;
    let stamp = String::from_utf8_lossy(&stamp.stdout).trim().to_owned();
    let dir = target
        .context("no target directory")?
        .join(name)
        .join(stamp);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// What one pgbench run did, and what it cost the proxy.
#[derive(Default, Debug)]
pub struct Pgbench {
    pub tps: Option<f64>,
    pub lat_ms: Option<f64>,
    pub xacts: u64,
    pub failed: u64,
    pub aborted: u32,
    pub status: String,
    /// The proxy's user + system CPU per transaction, in µs.
    pub cpu_us: Option<f64>,
    pub error: String,
}

impl Pgbench {
    /// Runs `cmd` (a pgbench of `clients` clients and `secs` seconds),
    /// stopped after `secs` + `grace`, logging to `log`, and measures the
    /// CPU time `proxy` used meanwhile.
    pub fn run(
        cmd: &mut Command,
        log: &Path,
        secs: u64,
        grace: Duration,
        clients: u32,
        proxy: Option<u32>,
    ) -> Result<Pgbench> {
        let cpu_before = proxy.and_then(cpu_secs);
        let status = Proc::spawn(cmd, log)?.wait_for(Duration::from_secs(secs) + grace);
        let cpu_after = proxy.and_then(cpu_secs);
        let text = fs::read_to_string(log).unwrap_or_default();
        let mut run = Pgbench::parse(&text, status, clients);
        let cpu = cpu_before.zip(cpu_after).filter(|_| run.xacts > 0);
        run.cpu_us = cpu.map(|(a, b)| (b - a) * 1e6 / run.xacts as f64);
        Ok(run)
    }

    /// From pgbench's output. Aborted clients are counted from the
    /// "aborted in command" lines; with any, TPS covers the survivors only.
    pub fn parse(text: &str, status: Option<ExitStatus>, clients: u32) -> Pgbench {
        let mut run = Pgbench {
            tps: field(text, "tps = "),
            lat_ms: field(text, "latency average = "),
            xacts: field(text, "number of transactions actually processed: ").unwrap_or(0.) as u64,
            failed: field(text, "number of failed transactions: ").unwrap_or(0.) as u64,
            aborted: text.matches("aborted in command").count() as u32,
            ..Pgbench::default()
        };
        // The error that aborted a client is the root cause; else the first one.
        let abort = text.lines().find(|l| l.contains("aborted in command"));
        let error = text
            .lines()
            .find(|l| l.contains("error") || l.contains("FATAL"));
        let first = abort.or(error).unwrap_or("").replace('\t', " ");
        run.error = first.chars().take(200).collect();
        run.status = match (status, run.tps) {
            (None, _) => "TIMEOUT".into(),
            (_, None) => "FAIL".into(),
            _ if run.aborted >= clients => "ABORT(all)".into(),
            _ if run.aborted > 0 => format!("ABORT({})", run.aborted),
            (Some(s), _) if !s.success() => format!("rc={}", s.code().unwrap_or(-1)),
            _ => "ok".into(),
        };
        run
    }
}
