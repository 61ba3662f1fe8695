//! pgbench select-only through lagrouter, through PgBouncer (transaction
//! pooling, when installed) and directly, interleaved in one run; prints
//! median TPS, the ratios and the proxies' CPU per transaction.
//!
//! Goal: lagrouter >= 1.0x PgBouncer's TPS (simple and extended protocol)
//! and >= 0.85x direct. Everything runs on loopback in a throwaway cluster.
//!
//! `cargo bench --bench pgbench_compare -- [options]` (see `USAGE`).
//! Results: target/pgbench-compare/<timestamp>.tsv, raw logs (pgbench,
//! proxies, their configs) in target/pgbench-compare/<timestamp>/.

use std::fs::{self, File};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use lagrouter::pgcluster::{Cluster, ClusterOptions};

const USAGE: &str = "options: -T SECS (10) -c CLIENTS (16) -j THREADS (2) -r REPEATS (3)
  --modes simple,extended,prepared   --scale N (10)   --warmup SECS (2, 0 = none)
  --targets direct,pgbouncer,lagrouter-primary-only,lagrouter
  --rw (add TPC-B-like read-write runs)   --rw-modes LIST (prepared)
  --install-pgbouncer (apt-get install -y pgbouncer first)";
const ALL_TARGETS: [&str; 4] = ["direct", "pgbouncer", "lagrouter-primary-only", "lagrouter"];
/// Extra time a pgbench gets beyond -T before it counts as hung.
const GRACE: Duration = Duration::from_secs(60);
/// How long a freshly started proxy may take to answer `select 1`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Server connections per pool, the same for PgBouncer and lagrouter.
const POOL_SIZE: u32 = 20;

struct Opts {
    secs: u64,
    clients: u32,
    threads: u32,
    repeats: u32,
    scale: u32,
    warmup: u64,
    modes: Vec<String>,
    rw_modes: Vec<String>,
    targets: Vec<String>,
    install_pgbouncer: bool,
}

fn list(s: &str) -> Vec<String> {
    let items = s.split(',').filter(|x| !x.is_empty());
    items.map(String::from).collect()
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let (secs, clients, threads, repeats, scale, warmup) = (10, 16, 2, 3, 10, 2);
    let (modes, targets) = (
        list("simple,extended,prepared"),
        list(&ALL_TARGETS.join(",")),
    );
    let (rw_modes, install_pgbouncer) = (Vec::new(), false);
    let mut o = Opts {
        secs,
        clients,
        threads,
        repeats,
        scale,
        warmup,
        modes,
        rw_modes,
        targets,
        install_pgbouncer,
    };
    let (mut rw, mut rw_modes) = (false, list("prepared"));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| anyhow!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--bench" => {} // cargo bench passes it to harness = false targets
            "-T" => o.secs = val()?.parse()?,
            "-c" => o.clients = val()?.parse()?,
            "-j" => o.threads = val()?.parse()?,
            "-r" => o.repeats = val()?.parse()?,
            "--scale" => o.scale = val()?.parse()?,
            "--warmup" => o.warmup = val()?.parse()?,
            "--modes" => o.modes = list(val()?),
            "--targets" => o.targets = list(val()?),
            "--rw-modes" => rw_modes = list(val()?),
            "--rw" => rw = true,
            "--install-pgbouncer" => o.install_pgbouncer = true,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if rw {
        o.rw_modes = rw_modes;
    }
    let unknown = |t: &&String| !ALL_TARGETS.contains(&t.as_str());
    if let Some(t) = o.targets.iter().find(unknown) {
        bail!("unknown target {t}\n{USAGE}");
    }
    let known = ["simple", "extended", "prepared"];
    let unknown = |m: &&String| !known.contains(&m.as_str());
    if let Some(m) = o.modes.iter().chain(&o.rw_modes).find(unknown) {
        bail!("unknown mode {m}\n{USAGE}");
    }
    if o.secs == 0 || o.clients == 0 || o.threads == 0 || o.repeats == 0 {
        bail!("-T, -c, -j and -r must be > 0");
    }
    Ok(o)
}

/// A child process that is stopped when dropped, so an error return or a
/// panic never leaves a proxy or a pgbench behind.
struct Proc(Child);

impl Proc {
    /// Starts `cmd` with stdout and stderr to `log`.
    fn spawn(cmd: &mut Command, log: &Path) -> Result<Proc> {
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

    fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// Waits at most `limit`; on expiry stops it and returns None.
    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
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
    fn stop(&mut self) {
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

/// One endpoint pgbench is pointed at; `proc` is the proxy serving it.
struct Target {
    name: String,
    port: u16,
    proc: Option<Proc>,
}

/// A port nobody listens on right now (the race until the proxy binds it is
/// harmless on a test host).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The release binary cargo bench builds next to this bench.
fn lagrouter_bin() -> Result<PathBuf> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_lagrouter"));
    if !bin.exists() {
        bail!(
            "{} missing: run `cargo build --release` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// `primary_only` is the pure proxy overhead variant. It needs
/// primary_read_cap = 1: without replicas every read is a primary fallback
/// and the default cap would open the breaker. The full variant keeps the
/// shipped defaults.
fn lagrouter_config(c: &Cluster, port: u16, primary_only: bool) -> String {
    let (user, password) = (c.app_user(), c.app_password());
    let mut t = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[pool]\nsize = {POOL_SIZE}\n\n\
         [[users]]\nname = \"{user}\"\npassword = \"{password}\"\n"
    );
    for i in 0..if primary_only { 1 } else { c.node_count() } {
        let role = if i == c.primary_index() {
            "primary"
        } else {
            "replica"
        };
        let (name, host, port) = (c.node_name(i), c.host(), c.port(i));
        t += &format!(
            "\n[[nodes]]\nname = \"{name}\"\nhost = \"{host}\"\nport = {port}\nrole = \"{role}\"\n"
        );
    }
    t += &format!("\n[health]\ndatabase = \"{}\"\n", c.database());
    if primary_only {
        t += "\n[routing]\nprimary_read_cap = 1.0\n";
    }
    t
}

/// Spawns a proxy listening on `port` and waits until it serves queries.
fn start_proxy(
    c: &Cluster,
    name: &str,
    port: u16,
    cmd: &mut Command,
    out: &Path,
) -> Result<Target> {
    let proc = Proc::spawn(cmd, &out.join(format!("{name}.log")))?;
    let mut t = Target {
        name: name.into(),
        port,
        proc: Some(proc),
    };
    wait_ready(c, &mut t, out)?;
    Ok(t)
}

fn start_lagrouter(c: &Cluster, name: &str, out: &Path) -> Result<Target> {
    let port = free_port()?;
    let conf = out.join(format!("{name}.toml"));
    fs::write(
        &conf,
        lagrouter_config(c, port, name == "lagrouter-primary-only"),
    )?;
    let mut cmd = Command::new(lagrouter_bin()?);
    // The shipped log level (info), whatever the caller's RUST_LOG says.
    cmd.arg("run")
        .arg("-c")
        .arg(&conf)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    start_proxy(c, name, port, &mut cmd, out)
}

fn pgbouncer_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).map(|d| d.join("pgbouncer"));
    on_path
        .chain([PathBuf::from("/usr/sbin/pgbouncer")])
        .find(|p| p.is_file())
}

fn install_pgbouncer() -> Result<()> {
    println!("apt-get install -y pgbouncer ...");
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "-y", "-q", "pgbouncer"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    let status = cmd.status().context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install pgbouncer failed ({status})");
    }
    Ok(())
}

/// PgBouncer as the comparison runs it: transaction pooling on the primary,
/// SCRAM with app's secret from pg_authid (so it can also log into the
/// server with SCRAM), pool size 20, in the foreground, logging to stderr.
fn start_pgbouncer(c: &Cluster, bin: &Path, out: &Path) -> Result<Target> {
    let (user, db, host, pg_port) = (c.app_user(), c.database(), c.host(), c.port(0));
    let sql = format!("select rolpassword from pg_authid where rolname = '{user}'");
    let secret = c.sql(0, &sql)?;
    if !secret.starts_with("SCRAM-SHA-256$") {
        bail!("role {user} has no SCRAM secret");
    }
    let (port, auth, ini) = (
        free_port()?,
        out.join("userlist.txt"),
        out.join("pgbouncer.ini"),
    );
    fs::write(&auth, format!("\"{user}\" \"{secret}\"\n"))?;
    let text = format!(
        "[databases]\n{db} = host={host} port={pg_port} dbname={db}\n\n[pgbouncer]\n\
         listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {}\npool_mode = transaction\n\
         default_pool_size = {POOL_SIZE}\nmax_client_conn = 200\n\
         ignore_startup_parameters = extra_float_digits\nserver_tls_sslmode = disable\n\
         log_connections = 0\nlog_disconnections = 0\n",
        auth.display()
    );
    fs::write(&ini, text)?;
    let mut cmd = Command::new(bin);
    // PgBouncer refuses to run as root; -u makes it switch to postgres once
    // it has read its files (so they can stay ours).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "postgres"]);
    }
    start_proxy(c, "pgbouncer", port, cmd.arg(&ini), out)
}

/// Polls (bounded) until `select 1` works through the target; fails at once
/// with the proxy's log when it died.
fn wait_ready(c: &Cluster, t: &mut Target, out: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let log = out.join(format!("{}-ready.log", t.name));
    loop {
        if let Some(status) = t.proc.as_mut().and_then(Proc::exited) {
            let text = fs::read_to_string(out.join(format!("{}.log", t.name)));
            bail!(
                "{} exited ({status}) at startup:\n{}",
                t.name,
                text.unwrap_or_default()
            );
        }
        if TcpStream::connect(("127.0.0.1", t.port)).is_ok() {
            let mut cmd = pg_tool(c, "psql", t.port);
            cmd.args(["-X", "-At", "-c", "select 1", c.database()]);
            let status = Proc::spawn(&mut cmd, &log)?.wait_for(Duration::from_secs(10));
            if status.is_some_and(|s| s.success()) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let err = fs::read_to_string(&log).unwrap_or_default();
            bail!("{} not ready after {READY_TIMEOUT:?}: {err}", t.name);
        }
        sleep(Duration::from_millis(200));
    }
}

/// A client tool of the cluster's PostgreSQL, to 127.0.0.1:`port` as the
/// app user.
fn pg_tool(c: &Cluster, tool: &str, port: u16) -> Command {
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
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count from after
    // it. There utime and stime (fields 14 and 15) are the 12th and 13th.
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Some(ticks as f64 / per_sec as f64)
}

/// Transactions committed on the replicas so far.
fn replica_xacts(c: &Cluster) -> Option<u64> {
    let sql = "select xact_commit from pg_stat_database where datname = current_database()";
    let on = |i: usize| c.sql(i, sql).ok()?.parse::<u64>().ok();
    (0..c.node_count())
        .filter(|&i| i != c.primary_index())
        .map(on)
        .sum()
}

/// `replica_xacts` once it stops moving (by less than 50 in 1.1 s: these
/// queries count too) as the backends flush their statistics.
fn settled_replica_xacts(c: &Cluster) -> Option<u64> {
    let mut last = replica_xacts(c)?;
    for _ in 0..15 {
        sleep(Duration::from_millis(1100));
        let now = replica_xacts(c)?;
        if now < last + 50 {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

/// Which share of lagrouter's select-only transactions the replicas ran,
/// to show that the full variant really reads from them. Their count also
/// holds lagrouter's health checks, so a little over 100% is possible. Call
/// it with the proxies stopped: exiting backends flush their statistics.
fn replica_share(c: &Cluster, runs: &[Run], warmup: u64, before: Option<u64>) -> Option<f64> {
    let lr = runs
        .iter()
        .filter(|r| r.target == "lagrouter" && r.workload == "select");
    let xacts = warmup + lr.map(|r| r.xacts).sum::<u64>();
    if xacts == 0 {
        return None;
    }
    let on_replicas = settled_replica_xacts(c)?.saturating_sub(before?);
    Some(on_replicas as f64 / xacts as f64)
}

/// A workload ("select" or "tpcb") and a pgbench -M mode.
type Combo = (&'static str, String);

/// One pgbench run.
#[derive(Default)]
struct Run {
    rep: u32,
    workload: &'static str,
    mode: String,
    target: String,
    tps: Option<f64>,
    lat_ms: Option<f64>,
    xacts: u64,
    failed: u64,
    aborted: u32,
    status: String,
    cpu_us: Option<f64>,
    error: String,
}

/// The number after `prefix` on the first line starting with it.
fn field(text: &str, prefix: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    line[prefix.len()..].split_whitespace().next()?.parse().ok()
}

/// Fills `run` from pgbench's output. Aborted clients are counted from the
/// "aborted in command" lines; with any, TPS covers the survivors only.
fn parse_pgbench(run: &mut Run, text: &str, status: Option<ExitStatus>, clients: u32) {
    run.tps = field(text, "tps = ");
    run.lat_ms = field(text, "latency average = ");
    run.xacts = field(text, "number of transactions actually processed: ").unwrap_or(0.) as u64;
    run.failed = field(text, "number of failed transactions: ").unwrap_or(0.) as u64;
    run.aborted = text.matches("aborted in command").count() as u32;
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
}

/// Runs pgbench against `t` (stopped after T + GRACE), measuring the
/// proxy's CPU time.
fn run_pgbench(
    c: &Cluster,
    o: &Opts,
    t: &Target,
    wm: &Combo,
    secs: u64,
    log: &Path,
) -> Result<Run> {
    let mut cmd = pg_tool(c, "pgbench", t.port);
    let args = format!("-n -M {} -c {} -j {} -T {secs}", wm.1, o.clients, o.threads);
    let select_only = (wm.0 == "select").then_some("-S");
    cmd.args(args.split_whitespace())
        .args(select_only)
        .arg(c.database());
    let pid = t.proc.as_ref().map(|p| p.0.id());
    let cpu_before = pid.and_then(cpu_secs);
    let status = Proc::spawn(&mut cmd, log)?.wait_for(Duration::from_secs(secs) + GRACE);
    let cpu_after = pid.and_then(cpu_secs);
    let mut run = Run::default();
    (run.workload, run.mode, run.target) = (wm.0, wm.1.clone(), t.name.clone());
    let text = fs::read_to_string(log).unwrap_or_default();
    parse_pgbench(&mut run, &text, status, o.clients);
    let cpu = cpu_before.zip(cpu_after).filter(|_| run.xacts > 0);
    run.cpu_us = cpu.map(|(a, b)| (b - a) * 1e6 / run.xacts as f64);
    Ok(run)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| (v[(n - 1) / 2] + v[n / 2]) / 2.0)
}

/// The runs of one workload/mode on one target.
fn runs_of<'a>(runs: &'a [Run], wm: &'a Combo, t: &'a str) -> impl Iterator<Item = &'a Run> {
    let same = move |r: &&Run| r.workload == wm.0 && r.mode == wm.1 && r.target == t;
    runs.iter().filter(same)
}

/// Median of `value` over the clean runs only: with aborted clients the TPS
/// covers the survivors only and is not comparable.
fn median_of(runs: &[Run], wm: &Combo, t: &str, value: fn(&Run) -> Option<f64>) -> Option<f64> {
    let clean = runs_of(runs, wm, t).filter(|r| r.status == "ok");
    median(clean.filter_map(value).collect())
}

/// One table: a row per workload/mode, a column per header.
fn print_grid(
    title: &str,
    heads: &[&str],
    combos: &[Combo],
    cell: &dyn Fn(&Combo, usize) -> String,
) {
    print!("\n{title:<18}");
    heads.iter().for_each(|h| print!(" {h:>22}"));
    println!();
    for wm in combos {
        print!("{:<18}", format!("{}/{}", wm.0, wm.1));
        (0..heads.len()).for_each(|i| print!(" {:>22}", cell(wm, i)));
        println!();
    }
}

fn print_tables(o: &Opts, runs: &[Run], combos: &[Combo], targets: &[&str]) {
    let (c, j, s, r) = (o.clients, o.threads, o.secs, o.repeats);
    let scale = o.scale;
    println!("\npgbench -c {c} -j {j} -T {s}, scale {scale}: median of {r} run(s)");
    println!("(runs with aborted clients excluded; * = some runs not ok)");
    let tps = |wm: &Combo, t: &str| median_of(runs, wm, t, |r| r.tps);
    print_grid("median TPS", targets, combos, &|wm, i| {
        let bad = runs_of(runs, wm, targets[i]).filter(|r| r.status != "ok");
        let bad = bad.last();
        match (tps(wm, targets[i]), bad) {
            (Some(v), b) => format!("{v:.0}{}", if b.is_some() { "*" } else { "" }),
            (None, b) => b.map_or("-".into(), |r| r.status.clone()),
        }
    });
    let (lr, po, pgb, dir) = ("lagrouter", "lagrouter-primary-only", "pgbouncer", "direct");
    let ratios = [(lr, pgb), (lr, dir), (po, pgb), (po, dir)];
    let heads = ["lagrouter/pgbouncer", "lagrouter/direct"];
    let heads = [
        heads[0],
        heads[1],
        "primary-only/pgbouncer",
        "primary-only/direct",
    ];
    print_grid("ratio", &heads, combos, &|wm, i| {
        let both = tps(wm, ratios[i].0).zip(tps(wm, ratios[i].1));
        both.map_or("-".into(), |(a, b)| format!("{:.2}", a / b))
    });
    println!("(goal: lagrouter/pgbouncer >= 1.00 on simple+extended, lagrouter/direct >= 0.85)");
    let proxies: Vec<&str> = targets.iter().copied().filter(|t| *t != dir).collect();
    print_grid("CPU us/txn", &proxies, combos, &|wm, i| {
        median_of(runs, wm, proxies[i], |r| r.cpu_us).map_or("-".into(), |v| format!("{v:.1}"))
    });
    println!("(user+sys CPU time of the proxy process per transaction)");
    for r in runs.iter().filter(|r| r.status != "ok") {
        let (rep, wl, m, t) = (r.rep, r.workload, &r.mode, &r.target);
        println!("not ok: r{rep} {wl}/{m} {t}: {} {}", r.status, r.error);
    }
}

fn write_tsv(path: &Path, runs: &[Run]) -> Result<()> {
    let mut f = File::create(path)?;
    let head = "rep workload mode target tps lat_ms xacts failed aborted_clients status \
                cpu_us_per_txn first_error";
    writeln!(f, "{}", head.replace(' ', "\t"))?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    for r in runs {
        let (rep, wl, mode, t) = (r.rep, r.workload, &r.mode, &r.target);
        let (tps, lat, xacts, failed) = (opt(r.tps), opt(r.lat_ms), r.xacts, r.failed);
        let (aborted, status, cpu) = (r.aborted, &r.status, opt(r.cpu_us));
        let err = &r.error;
        let row = format!("{rep} {wl} {mode} {t} {tps} {lat} {xacts} {failed} {aborted}");
        // Only the error text may hold spaces; empty cells stay empty.
        let row = format!("{row} {status} {cpu}").replace(' ', "\t");
        writeln!(f, "{row}\t{err}")?;
    }
    Ok(())
}

/// target/pgbench-compare/<UTC timestamp>/, in the target directory the
/// lagrouter binary was built in (honours CARGO_TARGET_DIR).
fn out_dir() -> Result<PathBuf> {
    let bin = lagrouter_bin()?;
    let target = bin.parent().and_then(Path::parent);
    let stamp = Command::new("date")
        .arg("-u")
        .arg("+%Y%m%d-%H%M%SZ")
        .output()?;
    let stamp = String::from_utf8_lossy(&stamp.stdout).trim().to_owned();
    let dir = target
        .context("no target directory")?
        .join("pgbench-compare")
        .join(stamp);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn direct(c: &Cluster) -> Target {
    let (name, port) = ("direct".into(), c.port(0));
    Target {
        name,
        port,
        proc: None,
    }
}

/// Starts every requested target, in the order of ALL_TARGETS; PgBouncer is
/// skipped with a note when it is not installed.
fn start_targets(c: &Cluster, o: &Opts, out: &Path) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    let wanted = |t: &&str| o.targets.iter().any(|x| x == t);
    for name in ALL_TARGETS.into_iter().filter(wanted) {
        let t = match (name, pgbouncer_bin()) {
            ("direct", _) => direct(c),
            ("pgbouncer", Some(bin)) => start_pgbouncer(c, &bin, out)?,
            ("pgbouncer", None) => {
                println!("pgbouncer: not installed (apt-get install pgbouncer)");
                continue;
            }
            _ => start_lagrouter(c, name, out)?,
        };
        println!("{}: 127.0.0.1:{}", t.name, t.port);
        targets.push(t);
    }
    Ok(targets)
}

/// Every workload/mode on every target in turn, `repeats` times: the
/// interleaving makes drift of the host (other load, caches, autovacuum) hit
/// all targets alike.
fn run_matrix(
    c: &Cluster,
    o: &Opts,
    targets: &[Target],
    combos: &[Combo],
    out: &Path,
) -> Result<Vec<Run>> {
    let total = combos.len() * targets.len() * o.repeats as usize;
    let mut runs = Vec::new();
    for rep in 1..=o.repeats {
        let matrix = combos
            .iter()
            .flat_map(|wm| targets.iter().map(move |t| (wm, t)));
        for (wm, t) in matrix {
            let (wl, mode, name, n, secs) = (wm.0, &wm.1, &t.name, runs.len() + 1, o.secs);
            print!("[{n}/{total}] {wl}/{mode} {name} {secs}s ... ");
            std::io::stdout().flush()?;
            let log = out.join(format!("r{rep}-{wl}-{mode}-{name}.log"));
            let mut run = run_pgbench(c, o, t, wm, secs, &log)?;
            run.rep = rep;
            let cpu = run.cpu_us.map(|v| format!(", {v:.1} us CPU/txn"));
            let (tps, cpu) = (run.tps.unwrap_or(0.), cpu.unwrap_or_default());
            println!("{tps:.0} tps{cpu} {}", run.status);
            runs.push(run);
        }
    }
    Ok(runs)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --benches` runs bench targets without --bench; a cluster
    // and minutes of pgbench there would only slow the tests down.
    if !args.iter().any(|a| a == "--bench") {
        println!("pgbench_compare: run it with `cargo bench --bench pgbench_compare`");
        return Ok(());
    }
    let o = parse_args(&args)?;
    if o.install_pgbouncer && pgbouncer_bin().is_none() {
        install_pgbouncer()?;
    }
    let out = out_dir()?;
    let scale = o.scale;
    println!("starting a primary and 2 replicas; pgbench -i -s {scale} ...");
    let c = Cluster::start(ClusterOptions::default()).context("starting the cluster")?;
    c.pgbench_init(o.scale)?;
    c.sql(0, "vacuum analyze")?;
    let before = replica_xacts(&c); // no proxy has touched the replicas yet
    let targets = start_targets(&c, &o, &out)?;
    // Warm-up, not reported: caches, pools, lagrouter's replicas turning Healthy.
    let mut warmup_xacts = 0;
    for t in targets.iter().filter(|_| o.warmup > 0) {
        let log = out.join(format!("warmup-{}.log", t.name));
        let run = run_pgbench(&c, &o, t, &("select", "simple".into()), o.warmup, &log)?;
        warmup_xacts += if t.name == "lagrouter" { run.xacts } else { 0 };
    }
    let mut combos: Vec<Combo> = o.modes.iter().map(|m| ("select", m.clone())).collect();
    combos.extend(o.rw_modes.iter().map(|m| ("tpcb", m.clone())));
    let runs = run_matrix(&c, &o, &targets, &combos, &out)?;
    let started = |n: &&str| targets.iter().any(|t| t.name == *n);
    let names: Vec<&str> = ALL_TARGETS.into_iter().filter(started).collect();
    drop(targets);
    print_tables(&o, &runs, &combos, &names);
    if let Some(share) = replica_share(&c, &runs, warmup_xacts, before) {
        let pct = share * 100.;
        println!("lagrouter ran {pct:.1}% of its select-only transactions on the replicas");
    }
    let tsv = out.with_extension("tsv");
    write_tsv(&tsv, &runs)?;
    println!("\nresults: {} (raw logs: {})", tsv.display(), out.display());
    Ok(())
}
