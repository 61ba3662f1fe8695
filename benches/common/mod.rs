//! What the benches share: child processes that never outlive them, the
//! lagrouter binary, pgbench runs and their parsed outcome, medians and
//! the output directory. Each bench keeps only its own matrix and tables.

#![allow(dead_code)] // each bench uses its part

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

mod results;
use lagrouter::pgcluster::{Cluster, Guarded};
#[allow(unused_imports)] // not every bench reads results
pub use results::*;

/// A child process that is stopped when dropped, so an error return or a
/// panic never leaves a proxy or a pgbench behind.
pub type Proc = Guarded;

/// Starts `cmd` with stdout and stderr to `log`, as a [`Proc`]. If the
/// bench dies first, the child gets SIGTERM (PgBouncer loses this when it
/// switches user; the cluster's servers have their own guard).
pub fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Proc> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let program = cmd.get_program().to_owned();
    Guarded::spawn(cmd, libc::SIGTERM).with_context(|| format!("starting {program:?}"))
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

/// A process's CPU time so far and its threads' context switches.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    /// User CPU, seconds.
    pub user: f64,
    /// System CPU, seconds.
    pub sys: f64,
    /// Voluntary and involuntary context switches, summed over the threads
    /// alive now (a proxy's threads live as long as it does).
    pub switches: u64,
}

/// `pid`'s CPU time (`/proc/PID/stat`) and context switches (every
/// `/proc/PID/task/*/status`).
pub fn cpu_times(pid: u32) -> Option<CpuTimes> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count from after
    // it. There utime and stime (fields 14 and 15) are the 12th and 13th.
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = |i: usize| f.get(i)?.parse::<u64>().ok();
    let per_sec = ticks_per_sec();
    let mut switches = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        switches += ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"]
            .iter()
            .filter_map(|k| field(&status, k))
            .sum::<f64>() as u64;
    }
    Some(CpuTimes {
        user: ticks(11)? as f64 / per_sec,
        sys: ticks(12)? as f64 / per_sec,
        switches,
    })
}

/// The host's CPU time so far, in ticks of `CLK_TCK`, from the `cpu` line
/// of `/proc/stat`, summed over its cores.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostTicks {
    /// Given by the hypervisor to other guests.
    pub steal: u64,
    /// Running anything: user, nice, system, irq and softirq (guest time
    /// is already in user).
    pub busy: u64,
    /// Every kind: busy, idle, iowait and steal.
    pub all: u64,
}

/// The host's CPU time now (see [`HostTicks`]).
pub fn host_ticks() -> Option<HostTicks> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    host_ticks_of(stat.lines().find(|l| l.starts_with("cpu "))?)
}

/// [`HostTicks`] from the `cpu` line of `/proc/stat`.
pub fn host_ticks_of(line: &str) -> Option<HostTicks> {
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let steal = *v.get(7)?;
    Some(HostTicks {
        steal,
        busy: v[0] + v[1] + v[2] + v[5] + v[6],
        all: v.iter().take(8).sum(),
    })
}

/// The share of the host's CPU time the hypervisor gave to others between
/// two [`host_ticks`] samples.
pub fn steal_share(a: HostTicks, b: HostTicks) -> Option<f64> {
    let all = b.all.checked_sub(a.all).filter(|&t| t > 0)?;
    Some(b.steal.saturating_sub(a.steal) as f64 / all as f64)
}

/// The host's busy CPU between two samples, per transaction of `xacts`,
/// in µs.
pub fn host_us_per_txn(a: HostTicks, b: HostTicks, xacts: f64) -> Option<f64> {
    let busy = b.busy.checked_sub(a.busy)?;
    (xacts > 0.0).then(|| busy as f64 / ticks_per_sec() * 1e6 / xacts)
}

/// Ticks of the CPU time counters per second (`CLK_TCK`).
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
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

/// The order of round `round` (from 0) of an interleaved bench: odd rounds
/// run the previous round backwards, and every second round starts one
/// target later. A writing workload leaves its tables bigger, and
/// autovacuum busy, for whichever target runs next: this way no target
/// always follows the same one or always runs last.
pub fn round_order<T>(items: &[T], round: usize) -> Vec<&T> {
    let k = if items.is_empty() {
        0
    } else {
        (round / 2) % items.len()
    };
    let mut v: Vec<&T> = items[k..].iter().chain(&items[..k]).collect();
    if round % 2 == 1 {
        v.reverse();
    }
    v
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
    /// Of which user CPU, in µs per transaction.
    pub user_us: Option<f64>,
    /// Of which system CPU, in µs per transaction.
    pub sys_us: Option<f64>,
    /// The proxy's context switches per transaction.
    pub switches: Option<f64>,
    /// Seconds of the steady window TPS and CPU were taken over (`None`:
    /// the whole run, pgbench's own TPS).
    pub window_secs: Option<f64>,
    /// The host's CPU steal during the run (a virtual machine's cores
    /// given to other guests), 0 to 1.
    pub steal: Option<f64>,
    /// The whole host's busy CPU per transaction, in µs: the nodes,
    /// pgbench and the proxy together, so what a proxy makes the nodes
    /// do (statements of its own, more connections) counts too.
    pub host_us: Option<f64>,
    pub error: String,
}

/// A `-P` progress report: `progress: 3.0 s, 9247.4 tps, …`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Seconds since pgbench started (its connection phase included).
    pub at: f64,
    pub tps: f64,
}

/// Parses a `-P` progress report line.
pub fn progress_line(line: &str) -> Option<Progress> {
    let rest = line.strip_prefix("progress: ")?;
    let mut words = rest.split_whitespace();
    let at = words.next()?.parse().ok()?;
    let _s = words.next().filter(|w| *w == "s,")?;
    let tps = words.next()?.parse().ok()?;
    let _tps = words.next().filter(|w| w.starts_with("tps"))?;
    Some(Progress { at, tps })
}

/// A progress report and the proxy's and the host's CPU times when the
/// bench saw it.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub line: Progress,
    pub cpu: Option<CpuTimes>,
    pub host: Option<HostTicks>,
}

/// The steady part of a run: from the first progress report that counted
/// transactions (connections are up) to the last report.
#[derive(Debug)]
pub struct Window {
    pub secs: f64,
    /// Transactions in the window (each report's rate times its interval).
    pub xacts: f64,
    /// The proxy's CPU times at both ends.
    pub cpu: Option<(CpuTimes, CpuTimes)>,
    /// The host's at both ends.
    pub host: Option<(HostTicks, HostTicks)>,
}

impl Window {
    pub fn of(marks: &[Mark]) -> Option<Window> {
        let first = marks.iter().position(|m| m.line.tps > 0.0)?;
        let steady = &marks[first..];
        if steady.len() < 2 {
            return None;
        }
        let last = steady[steady.len() - 1];
        let xacts = steady
            .windows(2)
            .map(|w| w[1].line.tps * (w[1].line.at - w[0].line.at))
            .sum();
        let secs = last.line.at - steady[0].line.at;
        (secs > 0.0).then(|| Window {
            secs,
            xacts,
            cpu: steady[0].cpu.zip(last.cpu),
            host: steady[0].host.zip(last.host),
        })
    }
}

impl Pgbench {
    /// Runs `cmd` (a pgbench of `clients` clients and `secs` seconds, with
    /// `-P 1`), stopped after `secs` + `grace`, logging to `log`, and
    /// measures the CPU time `proxy` used meanwhile.
    ///
    /// pgbench's `-T` clock includes its connection phase, which with 400
    /// SCRAM logins takes seconds of the run, and the proxy's logins cost
    /// CPU that is not per transaction. So TPS and CPU are taken over the
    /// steady window: from the first progress report that saw transactions
    /// to the last one, sampling the proxy's CPU as each report appears
    /// (see [`Window`]). Without two such reports, they cover the whole run.
    pub fn run(
        cmd: Command,
        log: &Path,
        secs: u64,
        grace: Duration,
        clients: u32,
        proxy: Option<u32>,
    ) -> Result<Pgbench> {
        let cpu_before = proxy.and_then(cpu_times);
        let host_before = host_ticks();
        let mut child = spawn_logged(cmd, log)?;
        let deadline = Instant::now() + Duration::from_secs(secs) + grace;
        let mut marks = Vec::new();
        let mut seen = 0;
        let status = loop {
            let exited = child.exited();
            let text = fs::read_to_string(log).unwrap_or_default();
            let (cpu, host) = (proxy.and_then(cpu_times), host_ticks());
            for line in text.lines().filter_map(progress_line).skip(seen) {
                marks.push(Mark { line, cpu, host });
                seen += 1;
            }
            if exited.is_some() {
                break exited;
            }
            if Instant::now() >= deadline {
                child.stop();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let cpu_after = proxy.and_then(cpu_times);
        let host = host_before.zip(host_ticks());
        let text = fs::read_to_string(log).unwrap_or_default();
        let mut run = Pgbench::parse(&text, status, clients);
        run.steal = host.and_then(|(a, b)| steal_share(a, b));
        let whole = cpu_before.zip(cpu_after).filter(|_| run.xacts > 0);
        let (cpu, host, xacts) = match Window::of(&marks) {
            Some(w) => {
                run.tps = Some(w.xacts / w.secs);
                run.window_secs = Some(w.secs);
                (w.cpu, w.host, w.xacts)
            }
            None => (whole, host.filter(|_| run.xacts > 0), run.xacts as f64),
        };
        run.host_us = host.and_then(|(a, b)| host_us_per_txn(a, b, xacts));
        if let Some((a, b)) = cpu {
            let per_txn = |v: f64| Some(v * 1e6 / xacts);
            run.user_us = per_txn(b.user - a.user);
            run.sys_us = per_txn(b.sys - a.sys);
            run.cpu_us = per_txn(b.user - a.user + b.sys - a.sys);
            let switches = b.switches.saturating_sub(a.switches) as f64;
            run.switches = Some(switches / xacts);
        }
        Ok(run)
    }

    /// A run from its log alone (no proxy CPU): TPS over the steady
    /// window of its progress reports when there is one.
    pub fn from_log(text: &str, status: Option<ExitStatus>, clients: u32) -> Pgbench {
        let mut run = Pgbench::parse(text, status, clients);
        let marks: Vec<Mark> = text
            .lines()
            .filter_map(progress_line)
            .map(|line| Mark {
                line,
                cpu: None,
                host: None,
            })
            .collect();
        if let Some(w) = Window::of(&marks) {
            run.tps = Some(w.xacts / w.secs);
            run.window_secs = Some(w.secs);
        }
        run
    }

    /// Adds `other`, a pgbench that ran at the same time against another
    /// server, or the same proxy: TPS and counts add up; the worse status
    /// and the shorter window stand.
    pub fn combine(&mut self, other: &Pgbench) {
        // Both ran in the same window: the host's busy time, and the
        // proxy's CPU when one proxy served both halves, are per
        // transaction of both.
        let share = match (self.tps, other.tps) {
            (Some(a), Some(b)) if a + b > 0.0 => Some(a / (a + b)),
            _ => None,
        };
        let per_both = |v: Option<f64>| v.zip(share).map(|(v, s)| v * s);
        self.host_us = per_both(self.host_us);
        self.cpu_us = per_both(self.cpu_us);
        self.user_us = per_both(self.user_us);
        self.sys_us = per_both(self.sys_us);
        self.switches = per_both(self.switches);
        self.tps = self.tps.zip(other.tps).map(|(a, b)| a + b);
        self.xacts += other.xacts;
        self.failed += other.failed;
        self.aborted += other.aborted;
        if self.status == "ok" {
            self.status = other.status.clone();
        }
        if self.error.is_empty() {
            self.error = other.error.clone();
        }
        self.window_secs = match (self.window_secs, other.window_secs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        };
        self.lat_ms = None;
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
