//! pgbench through lagrouter (with replicas, and primary-only), through
//! PgBouncer (transaction pooling, when installed or given with
//! `--pgbouncer`) and directly, interleaved in one run, on the workloads
//! select-only, TPC-B, a 7-statement read transaction and select-only with
//! 400 clients, in each -M mode; prints median TPS, the ratios, and the
//! proxies' CPU (user and system) and context switches per transaction.
//!
//! Goal: lagrouter >= 1.0x PgBouncer's TPS on every workload, at no more
//! CPU per transaction. Everything runs on loopback in a throwaway cluster.
//!
//! `cargo bench --bench pgbench_compare -- [options]` (see `USAGE`).
//! Results: target/pgbench-compare/<timestamp>.tsv, raw logs (pgbench,
//! proxies, their configs) in target/pgbench-compare/<timestamp>/.

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

mod common;

use anyhow::{Context, Result, anyhow, bail};
use common::*;
use lagrouter::pgcluster::{Cluster, ClusterOptions};

const USAGE: &str = "options: -T SECS (10) -c CLIENTS (16) -j THREADS (2) -r REPEATS (3)
  --workloads LIST (select): select (pgbench -S), tpcb (pgbench's default script),
      txn7 (BEGIN, 5 x SELECT, END), select-c400 (-S with 400 clients, whatever -c says)
  --modes simple,extended,prepared (all three), for every workload
  --scale N (10)   --warmup SECS (2, 0 = none)
  --targets direct,direct-replicas,tokio-relay,pgbouncer,pgbouncer-replicas,
      lagrouter-primary-only,lagrouter,baseline-primary-only, and mio-relay and
      lagrouter-one-replica (only when named)
      (direct-replicas: the clients split over the two replicas directly, read-only
      workloads only: what the replicas give on this machine without a proxy;
      pgbouncer-replicas (select workloads only): one PgBouncer with a pool to each
      replica, the clients split over the two: the same nodes as lagrouter's reads,
      as an application that sends its reads to the replicas itself would use it;
      tokio-relay: a bare TCP relay to the primary on tokio, one server connection
      per client, no pooling, parsing or routing: the CPU floor of a proxy built
      as lagrouter is, one task per client on a current-thread runtime;
      mio-relay: the same relay on an event loop of its own over mio (epoll), with
      no tasks or wakers, as PgBouncer runs on libevent: what the loop costs without tokio;
      baseline-primary-only: lagrouter primary-only from the binary --baseline names,
      for an A/B of two builds in one interleaved run;
      lagrouter-one-replica (select workloads only): lagrouter with the primary and
      the first replica only: against lagrouter, what reading from two node
      instances instead of one costs the host, where every node shares the same cores)
  --pgbouncer PATH (the PgBouncer binary; default: pgbouncer on PATH or /usr/sbin)
  --lagrouter PATH (the lagrouter binary of the two lagrouter targets; default: the
      release build cargo bench made, target/release/lagrouter; scripts/build-pgo
      passes its instrumented build, and its result can be measured with it)
  --baseline PATH (a second lagrouter binary, run as the baseline-primary-only target,
      which is among the default targets only with it and an error without it)
  --replica-pool N (20: lagrouter's pool.size with replicas; 7 makes its server
      connections in all about PgBouncer's 20, which matters when the nodes share cores)
  --install-pgbouncer (apt-get install -y pgbouncer first)
  --retries N (2): a run whose host lost more than 10% of its CPU to other guests
      (steal) is run again at once, up to N times; the lost one stays in the results,
      left out of the medians as before
  --summarize FILE.tsv... (no run: the tables of earlier runs' results, pooled)";
const ALL_TARGETS: [&str; 10] = [
    "direct",
    "direct-replicas",
    "tokio-relay",
    "mio-relay",
    "pgbouncer",
    "pgbouncer-replicas",
    "lagrouter-primary-only",
    "lagrouter",
    "baseline-primary-only",
    "lagrouter-one-replica",
];
/// Targets run only when named.
const NAMED_ONLY: [&str; 2] = ["mio-relay", "lagrouter-one-replica"];
/// The target that runs the `--baseline` binary.
const BASELINE: &str = "baseline-primary-only";
const ALL_WORKLOADS: [&str; 4] = ["select", "tpcb", "txn7", "select-c400"];
/// Extra time a pgbench gets beyond -T before it counts as hung.
const GRACE: Duration = Duration::from_secs(60);
/// How long a freshly started proxy may take to answer `select 1`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Server connections per pool, the same for PgBouncer and lagrouter.
const POOL_SIZE: u32 = 20;
/// Clients of the `select-c400` workload. PostgreSQL's own limit
/// (the cluster's max_connections = 300) keeps `direct` out of it.
const MANY_CLIENTS: u32 = 400;
/// Seconds added to `select-c400`'s -T for its connection phase (400
/// SCRAM logins by pgbench's 2 threads took 3–5 s here).
const MANY_CLIENTS_CONNECT: u64 = 5;
/// The 7-statement read transaction: what an ORM's request often is.
const TXN7: &str = "\\set aid random(1, 100000 * :scale)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 1;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 2;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 3;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 4;
END;
";

struct Opts {
    secs: u64,
    clients: u32,
    threads: u32,
    repeats: u32,
    scale: u32,
    warmup: u64,
    workloads: Vec<String>,
    modes: Vec<String>,
    targets: Vec<String>,
    pgbouncer: Option<PathBuf>,
    /// The lagrouter binary; None: the one cargo bench built.
    lagrouter: Option<PathBuf>,
    /// The `baseline-primary-only` target's lagrouter binary.
    baseline: Option<PathBuf>,
    /// `pool.size` of the `lagrouter` target (with replicas: per node).
    replica_pool: u32,
    install_pgbouncer: bool,
    /// How many times a run over [`MAX_STEAL`] is run again.
    retries: u32,
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        secs: 10,
        clients: 16,
        threads: 2,
        repeats: 3,
        retries: 2,
        scale: 10,
        warmup: 2,
        workloads: list("select"),
        modes: list("simple,extended,prepared"),
        targets: Vec::new(),
        pgbouncer: None,
        lagrouter: None,
        baseline: None,
        replica_pool: POOL_SIZE,
        install_pgbouncer: false,
    };
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
            "--retries" => o.retries = val()?.parse()?,
            "--scale" => o.scale = val()?.parse()?,
            "--warmup" => o.warmup = val()?.parse()?,
            "--workloads" => o.workloads = list(val()?),
            "--modes" => o.modes = list(val()?),
            "--targets" => o.targets = list(val()?),
            "--pgbouncer" => o.pgbouncer = Some(PathBuf::from(val()?)),
            "--lagrouter" => o.lagrouter = Some(PathBuf::from(val()?)),
            "--baseline" => o.baseline = Some(PathBuf::from(val()?)),
            "--replica-pool" => o.replica_pool = val()?.parse()?,
            "--install-pgbouncer" => o.install_pgbouncer = true,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let check = |what: &str, given: &[String], known: &[&str]| match given
        .iter()
        .find(|g| !known.contains(&g.as_str()))
    {
        Some(g) => bail!("unknown {what} {g}\n{USAGE}"),
        None => Ok(()),
    };
    if o.targets.is_empty() {
        // Every target but the gauges asked for by name; the baseline
        // when there is a binary for it.
        let known = ALL_TARGETS.into_iter().filter(|t| !NAMED_ONLY.contains(t));
        let wanted = known.filter(|t| *t != BASELINE || o.baseline.is_some());
        o.targets = wanted.map(String::from).collect();
    }
    check("target", &o.targets, &ALL_TARGETS)?;
    if o.baseline.is_none() && o.targets.iter().any(|t| t == BASELINE) {
        bail!("target {BASELINE} needs --baseline PATH (the lagrouter binary to compare with)");
    }
    check("workload", &o.workloads, &ALL_WORKLOADS)?;
    check("mode", &o.modes, &["simple", "extended", "prepared"])?;
    if let Some(p) = o.pgbouncer.as_ref().filter(|p| !p.is_file()) {
        bail!("--pgbouncer {}: no such file", p.display());
    }
    for (opt, p) in [("--lagrouter", &o.lagrouter), ("--baseline", &o.baseline)] {
        if let Some(p) = p.as_ref().filter(|p| !p.is_file()) {
            bail!("{opt} {}: no such file", p.display());
        }
    }
    if o.secs == 0 || o.clients == 0 || o.threads == 0 || o.repeats == 0 {
        bail!("-T, -c, -j and -r must be > 0");
    }
    Ok(o)
}

/// One endpoint pgbench is pointed at; `proc` is the proxy serving it.
struct Target {
    name: String,
    port: u16,
    /// The database pgbench names on `port`.
    db: String,
    proc: Option<Proc>,
    /// Where the other half of the clients go, port and database
    /// (`direct-replicas`, `pgbouncer-replicas`).
    split: Option<(u16, String)>,
}

/// The config of lagrouter target `name`. `*primary-only` is the pure
/// proxy overhead variant. It needs
/// primary_read_cap = 1: without replicas every read is a primary fallback
/// and the default cap would open the breaker. The full variant keeps the
/// shipped defaults.
fn lagrouter_config(c: &Cluster, port: u16, name: &str, pool: u32) -> String {
    let primary_only = name.ends_with("primary-only");
    let (user, password) = (c.app_user(), c.app_password());
    let mut t = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[pool]\nsize = {pool}\n\n\
         [[users]]\nname = \"{user}\"\npassword = \"{password}\"\n"
    );
    t += &if primary_only {
        c.node_toml(c.primary_index(), "primary")
    } else if name == "lagrouter-one-replica" {
        let replica = (0..c.node_count()).find(|&i| i != c.primary_index());
        c.node_toml(c.primary_index(), "primary")
            + &c.node_toml(replica.expect("a replica"), "replica")
    } else {
        c.nodes_toml()
    };
    t += &format!("\n[health]\ndatabase = \"{}\"\n", c.database());
    if primary_only {
        t += "\n[routing]\nprimary_read_cap = 1.0\n";
    }
    t
}

/// Spawns a proxy listening on `port` and waits until it serves queries.
fn start_proxy(c: &Cluster, name: &str, port: u16, cmd: Command, out: &Path) -> Result<Target> {
    start_proxy_split(c, name, (port, c.database().into()), None, cmd, out)
}

/// [`start_proxy`] for a proxy pgbench reaches as database `at.1`, with
/// half the clients at `split` when given.
fn start_proxy_split(
    c: &Cluster,
    name: &str,
    at: (u16, String),
    split: Option<(u16, String)>,
    cmd: Command,
    out: &Path,
) -> Result<Target> {
    let proc = spawn_logged(cmd, &out.join(format!("{name}.log")))?;
    let mut t = Target {
        name: name.into(),
        port: at.0,
        db: at.1,
        proc: Some(proc),
        split,
    };
    wait_ready(c, &mut t, out)?;
    if let Some(p) = &t.proc {
        warn_other_autogroup(name, p.id());
    }
    Ok(t)
}

/// Says so when a target runs in another scheduler autogroup than the
/// bench (and pgbench, its child). With autogroups on, the kernel shares
/// the cores between groups before tasks: a proxy in a group of its own
/// takes CPU from the nodes' group, which on this 2-core host moved TPS
/// by 8% (a PgBouncer started with `-d`, or anything through `setsid`).
/// Every target the bench starts stays in its session, so they compare
/// alike; this catches a change that breaks that.
fn warn_other_autogroup(name: &str, pid: u32) {
    let on = fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled");
    if on.is_ok_and(|v| v.trim() == "0") {
        return;
    }
    let group = |pid: &str| {
        fs::read_to_string(format!("/proc/{pid}/autogroup"))
            .ok()
            .and_then(|s| s.split_whitespace().next().map(str::to_owned))
    };
    if let (Some(ours), Some(theirs)) = (group("self"), group(&pid.to_string()))
        && ours != theirs
    {
        println!(
            "WARNING: {name} runs in scheduler autogroup {theirs}, the bench in {ours}: \
             its TPS does not compare with the other targets'"
        );
    }
}

fn start_lagrouter(c: &Cluster, o: &Opts, name: &str, pool: u32, out: &Path) -> Result<Target> {
    let port = free_port()?;
    let conf = out.join(format!("{name}.toml"));
    fs::write(&conf, lagrouter_config(c, port, name, pool))?;
    let given = if name == BASELINE {
        &o.baseline
    } else {
        &o.lagrouter
    };
    let bin = match given {
        Some(b) => b.clone(),
        None => lagrouter_bin()?,
    };
    println!("{name}: {}", bin.display());
    let mut cmd = Command::new(bin);
    // The shipped log level (info), whatever the caller's RUST_LOG says.
    cmd.arg("run")
        .arg("-c")
        .arg(&conf)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    start_proxy(c, name, port, cmd, out)
}

fn pgbouncer_bin(o: &Opts) -> Option<PathBuf> {
    if let Some(p) = &o.pgbouncer {
        return Some(p.clone());
    }
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
/// server with SCRAM), pool size 20, `max_prepared_statements = 200` from
/// 1.21 on, in the foreground, logging to stderr. As `pgbouncer-replicas`,
/// the same with a database per replica instead (`APP_r1`, `APP_r2`, each
/// its own pool of 20 to its replica), and half the clients on each: what
/// an application that sends its reads to the replicas itself gets from
/// one PgBouncer, the like-for-like comparison for lagrouter's reads.
fn start_pgbouncer(c: &Cluster, bin: &Path, out: &Path, name: &str) -> Result<Target> {
    // Prepared statements in transaction mode: 1.21 and later.
    let version = Command::new(bin).arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    println!("pgbouncer: {}", version.lines().next().unwrap_or("?"));
    let prepared = match version.split_whitespace().nth(1).map(|v| {
        let mut p = v.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
        (p.next().unwrap_or(0), p.next().unwrap_or(0))
    }) {
        Some(v) if v >= (1, 21) => "max_prepared_statements = 200\n",
        _ => "",
    };
    let (user, db, host) = (c.app_user(), c.database(), c.host());
    let nodes: Vec<(String, u16)> = if name == "pgbouncer-replicas" {
        let replicas = (0..c.node_count()).filter(|&i| i != c.primary_index());
        let replicas: Vec<usize> = replicas.take(2).collect();
        if replicas.len() < 2 {
            bail!("{name} needs two replicas");
        }
        (1..)
            .zip(replicas)
            .map(|(n, i)| (format!("{db}_r{n}"), c.port(i)))
            .collect()
    } else {
        vec![(db.to_string(), c.port(c.primary_index()))]
    };
    let sql = format!("select rolpassword from pg_authid where rolname = '{user}'");
    let secret = c.sql(0, &sql)?;
    if !secret.starts_with("SCRAM-SHA-256$") {
        bail!("role {user} has no SCRAM secret");
    }
    let (port, auth, ini) = (
        free_port()?,
        out.join(format!("{name}-userlist.txt")),
        out.join(format!("{name}.ini")),
    );
    fs::write(&auth, format!("\"{user}\" \"{secret}\"\n"))?;
    let databases: String = nodes
        .iter()
        .map(|(alias, pg_port)| format!("{alias} = host={host} port={pg_port} dbname={db}\n"))
        .collect();
    let text = format!(
        "[databases]\n{databases}\n[pgbouncer]\n\
         listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {}\npool_mode = transaction\n\
         default_pool_size = {POOL_SIZE}\nmax_client_conn = {}\n\
         ignore_startup_parameters = extra_float_digits\nserver_tls_sslmode = disable\n\
         log_connections = 0\nlog_disconnections = 0\n{}",
        auth.display(),
        MANY_CLIENTS + 100,
        prepared,
    );
    fs::write(&ini, text)?;
    let mut cmd = Command::new(bin);
    // PgBouncer refuses to run as root; -u makes it switch to postgres once
    // it has read its files (so they can stay ours).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "postgres"]);
    }
    cmd.arg(&ini);
    let split = nodes.get(1).map(|(alias, _)| (port, alias.clone()));
    start_proxy_split(c, name, (port, nodes[0].0.clone()), split, cmd, out)
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
            cmd.args(["-X", "-At", "-c", "select 1", &t.db]);
            let status = spawn_logged(cmd, &log)?.wait_for(Duration::from_secs(10));
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

/// Which share of the select-only transactions of the lagrouter targets
/// with replicas (`lagrouter`, `lagrouter-one-replica`) the replicas ran,
/// to show that they really read from them. Their count also
/// holds lagrouter's health checks, so a little over 100% is possible. Call
/// it with the proxies stopped: exiting backends flush their statistics.
fn replica_share(
    c: &Cluster,
    runs: &[Run],
    (warmup, warmup_direct): (u64, u64),
    before: Option<u64>,
) -> Option<f64> {
    let lr = runs
        .iter()
        .filter(|r| reads_replicas(&r.target) && r.workload.starts_with("select"));
    let xacts = warmup + lr.map(|r| r.xacts).sum::<u64>();
    if xacts == 0 {
        return None;
    }
    // The replicas also ran the direct-replicas and pgbouncer-replicas runs.
    let others = runs
        .iter()
        .filter(|r| others_on_replicas(&r.target))
        .map(|r| r.xacts)
        .sum::<u64>()
        + warmup_direct;
    let on_replicas = settled_replica_xacts(c)?
        .saturating_sub(before?)
        .saturating_sub(others);
    Some(on_replicas as f64 / xacts as f64)
}

/// Whether `t` is a target other than lagrouter that reads from the
/// replicas.
fn others_on_replicas(t: &str) -> bool {
    matches!(t, "direct-replicas" | "pgbouncer-replicas")
}

/// Whether lagrouter target `t` sends its reads to replicas.
fn reads_replicas(t: &str) -> bool {
    matches!(t, "lagrouter" | "lagrouter-one-replica")
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
    // 400 SCRAM logins take seconds of pgbench's -T clock: give them time
    // of their own, so the steady window (see `Pgbench::run`) is about -T.
    let (clients, secs) = match wm.0 {
        "select-c400" => (MANY_CLIENTS, secs + MANY_CLIENTS_CONNECT),
        _ => (o.clients, secs),
    };
    let pgbench = |port: u16, db: &str, clients: u32, threads: u32| -> Result<Command> {
        let mut cmd = pg_tool(c, "pgbench", port);
        let args = format!("-n -P 1 -M {} -c {clients} -j {threads} -T {secs}", wm.1);
        cmd.args(args.split_whitespace());
        match wm.0 {
            "select" | "select-c400" => {
                cmd.arg("-S");
            }
            "txn7" => {
                // Written once: `direct-replicas` starts a second pgbench
                // while the first reads the file, and rewriting it then
                // left the first an empty script.
                let script = log.with_file_name("txn7.sql");
                if !script.exists() {
                    fs::write(&script, TXN7)?;
                }
                cmd.arg("-f").arg(script);
            }
            _ => {} // tpcb: pgbench's built-in script
        }
        cmd.arg(db);
        Ok(cmd)
    };
    let pid = t.proc.as_ref().map(Proc::id);
    let pg = match &t.split {
        None => {
            let cmd = pgbench(t.port, &t.db, clients, o.threads)?;
            Pgbench::run(cmd, log, secs, GRACE, clients, pid)?
        }
        Some((port, db)) => {
            // Half the clients (and threads) on each side, at once.
            let (half, threads) = (clients / 2, (o.threads / 2).max(1));
            let other_log = log.with_extension("split.log");
            let mut other = spawn_logged(pgbench(*port, db, half, threads)?, &other_log)?;
            let cmd = pgbench(t.port, &t.db, clients - half, threads)?;
            let mut pg = Pgbench::run(cmd, log, secs, GRACE, clients - half, pid)?;
            let status = other.wait_for(Duration::from_secs(secs) + GRACE);
            let text = fs::read_to_string(&other_log).unwrap_or_default();
            pg.combine(&Pgbench::from_log(&text, status, half));
            pg
        }
    };
    Ok(Run {
        source: 0,
        rep: 0,
        workload: wm.0,
        mode: wm.1.clone(),
        target: t.name.clone(),
        pg,
    })
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

/// The header of a live run's tables.
fn run_header(o: &Opts) -> String {
    let (c, j, s, r) = (o.clients, o.threads, o.secs, o.repeats);
    let scale = o.scale;
    format!(
        "pgbench -c {c} (select-c400: {MANY_CLIENTS}, {MANY_CLIENTS_CONNECT} s more to connect) \
         -j {j} -T {s}, scale {scale}, \
         lagrouter pool.size {}: median of {r} run(s)",
        o.replica_pool
    )
}

fn print_tables(header: &str, runs: &[Run], combos: &[Combo], targets: &[&str]) {
    println!("\n{header}");
    println!(
        "(runs with aborted clients or over {:.0}% host CPU steal excluded; * = some runs \
         excluded; TPS and CPU over each run's steady window, after its connections are up)",
        MAX_STEAL * 100.
    );
    let tps = |wm: &Combo, t: &str| median_of(runs, wm, t, |r| r.tps);
    print_grid("median TPS", targets, combos, &|wm, i| {
        let bad = runs_of(runs, wm, targets[i]).filter(|r| !clean(r));
        let bad = bad.last();
        let why = |r: &Run| match r.status.as_str() {
            "ok" => "STEAL".to_string(),
            s => s.to_string(),
        };
        match (tps(wm, targets[i]), bad) {
            (Some(v), b) => format!("{v:.0}{}", if b.is_some() { "*" } else { "" }),
            (None, b) => b.map_or("-".into(), why),
        }
    });
    let (lr, po, pgb, dir) = ("lagrouter", "lagrouter-primary-only", "pgbouncer", "direct");
    let (reps, pgbr) = ("direct-replicas", "pgbouncer-replicas");
    let ratios = [
        (lr, pgb),
        (lr, pgbr),
        (lr, dir),
        (lr, reps),
        (po, pgb),
        (po, dir),
    ];
    let heads = [
        "lagrouter/pgbouncer",
        "lagrouter/pgb-replicas",
        "lagrouter/direct",
        "lagrouter/direct-replicas",
        "primary-only/pgbouncer",
        "primary-only/direct",
    ];
    print_grid("ratio", &heads, combos, &|wm, i| {
        let both = tps(wm, ratios[i].0).zip(tps(wm, ratios[i].1));
        both.map_or("-".into(), |(a, b)| format!("{:.2}", a / b))
    });
    println!(
        "(goal: lagrouter/pgbouncer >= 1.00 on every workload, CPU/txn at or below PgBouncer's; \
         pgb-replicas: PgBouncer on the replicas lagrouter reads from, the clients split over them)"
    );
    let base = BASELINE;
    let mut per_round = vec![(lr, pgb), (po, pgb), ("tokio-relay", pgb)];
    let mut heads = vec![
        "lagrouter/pgbouncer",
        "primary-only/pgbouncer",
        "tokio-relay/pgbouncer",
    ];
    if targets.contains(&base) {
        per_round.extend([(po, base), (base, pgb)]);
        heads.extend(["primary-only/baseline", "baseline/pgbouncer"]);
    }
    if targets.contains(&pgbr) {
        per_round.extend([(lr, pgbr), (pgbr, pgb)]);
        heads.extend(["lagrouter/pgb-replicas", "pgb-replicas/pgbouncer"]);
    }
    let one = "lagrouter-one-replica";
    if targets.contains(&one) {
        per_round.extend([(one, pgb), (lr, one)]);
        heads.extend(["one-replica/pgbouncer", "lagrouter/one-replica"]);
    }
    print_grid("per round", &heads, combos, &|wm, i| {
        let (a, b) = per_round[i];
        spread(&round_ratios(runs, wm, a, b))
    });
    println!(
        "(median of the ratios within each round, where both runs are clean: range and rounds \
         in brackets; the targets of one round run minutes apart, so this is steadier than the \
         ratio of medians. tokio-relay/pgbouncer gauges the noise: the relay does no work)"
    );
    // Each proxy against the nodes it sends the reads to: lagrouter with
    // replicas reads from the replicas, PgBouncer from the primary.
    let same = ["lagrouter/pgbouncer", "per round"];
    print_grid("same nodes", &same, combos, &|wm, i| {
        // lagrouter routes transactions that start with BEGIN, and all
        // writes, to the primary: only select-only reads from the replicas.
        if !wm.0.starts_with("select") {
            return "-".into();
        }
        if i == 1 {
            // Within each round: both ratios from one round's four runs.
            let rounds: Vec<f64> = runs_of(runs, wm, lr)
                .filter(|r| clean(r))
                .filter_map(|r| {
                    let one = |a: &str, b: &str| {
                        let at = |t: &str| {
                            runs_of(runs, wm, t)
                                .find(|x| (x.source, x.rep) == (r.source, r.rep) && clean(x))
                                .and_then(|x| x.tps)
                        };
                        at(a).zip(at(b)).map(|(x, y)| x / y)
                    };
                    Some(one(lr, reps)? / one(pgb, dir)?)
                })
                .collect();
            return spread(&rounds);
        }
        let lr = tps(wm, lr).zip(tps(wm, reps)).map(|(a, b)| a / b);
        let pgb = tps(wm, pgb).zip(tps(wm, dir)).map(|(a, b)| a / b);
        lr.zip(pgb)
            .map_or("-".into(), |(a, b)| format!("{:.2}", a / b))
    });
    println!(
        "(select-only, lagrouter/direct-replicas over pgbouncer/direct: each proxy's TPS as a \
         share of what the nodes it reads from give directly)"
    );
    let proxies: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| *t != dir && *t != reps)
        .collect();
    print_grid("CPU us/txn", &proxies, combos, &|wm, i| {
        let user = median_of(runs, wm, proxies[i], |r| r.user_us);
        let sys = median_of(runs, wm, proxies[i], |r| r.sys_us);
        user.zip(sys)
            .map_or("-".into(), |(u, s)| format!("{:.1} ({u:.1}+{s:.1})", u + s))
    });
    println!("(CPU time of the proxy process per transaction: total (user+system))");
    print_grid("switches/txn", &proxies, combos, &|wm, i| {
        median_of(runs, wm, proxies[i], |r| r.switches).map_or("-".into(), |v| format!("{v:.2}"))
    });
    println!("(context switches of the proxy's threads per transaction)");
    print_grid("host CPU us/txn", targets, combos, &|wm, i| {
        let host = |t: &str| median_of(runs, wm, t, |r| r.host_us);
        match (host(targets[i]), host(dir)) {
            (Some(v), Some(d)) if targets[i] != dir => format!("{v:.1} ({:+.1})", v - d),
            (Some(v), _) => format!("{v:.1}"),
            _ => "-".into(),
        }
    });
    println!(
        "(busy CPU of the whole host per transaction, the nodes and pgbench included, so what a \
         proxy makes the nodes do counts too; in brackets, more than direct)"
    );
    for r in runs.iter().filter(|r| r.status != "ok") {
        let (rep, wl, m, t) = (r.rep, r.workload, &r.mode, &r.target);
        println!("not ok: r{rep} {wl}/{m} {t}: {} {}", r.status, r.error);
    }
    let steals: Vec<f64> = runs.iter().filter_map(|r| r.steal).collect();
    let stolen = runs
        .iter()
        .filter(|r| r.status == "ok" && !clean(r))
        .count();
    // A slot: one target's run of one workload/mode in one round (run
    // again when stolen, see `--retries`).
    let slot = |r: &Run| {
        (
            r.source,
            r.rep,
            r.workload,
            r.mode.clone(),
            r.target.clone(),
        )
    };
    let mut slots: Vec<_> = runs.iter().map(slot).collect();
    slots.sort();
    slots.dedup();
    let unfilled = slots
        .iter()
        .filter(|k| !runs.iter().any(|r| slot(r) == **k && clean(r)))
        .count();
    if let Some(m) = median(steals.clone()) {
        let max = steals.iter().copied().fold(0.0, f64::max);
        println!(
            "host CPU steal during the runs: median {:.1}%, max {:.1}%; {stolen} of {} runs \
             over {:.0}% left out of the medians; {unfilled} of {} slots (a target's run of a \
             row in a round) without a clean run",
            m * 100.,
            max * 100.,
            runs.len(),
            MAX_STEAL * 100.,
            slots.len(),
        );
    }
}

fn write_tsv(path: &Path, runs: &[Run]) -> Result<()> {
    fs::write(path, tsv_text(runs))?;
    Ok(())
}

/// The runs of a results file written by [`write_tsv`]; `source` tells
/// its rounds from other files'.
fn read_tsv(path: &Path, source: usize) -> Result<Vec<Run>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_tsv(&text, source, &ALL_WORKLOADS).map_err(|e| anyhow!("{}:{e}", path.display()))
}

/// `--summarize FILE.tsv...`: the tables of earlier runs, pooled (each
/// file's rounds are rounds of their own).
fn summarize(files: &[String]) -> Result<()> {
    if files.is_empty() {
        bail!("--summarize needs one or more results files (target/pgbench-compare/*.tsv)");
    }
    let mut runs = Vec::new();
    for (i, f) in files.iter().enumerate() {
        runs.extend(read_tsv(Path::new(f), i)?);
    }
    let mut combos: Vec<Combo> = Vec::new();
    for w in ALL_WORKLOADS {
        for r in runs.iter().filter(|r| r.workload == w) {
            if !combos.iter().any(|c| c.0 == w && c.1 == r.mode) {
                combos.push((w, r.mode.clone()));
            }
        }
    }
    let names: Vec<&str> = ALL_TARGETS
        .into_iter()
        .filter(|t| runs.iter().any(|r| r.target == *t))
        .collect();
    let header = format!("results of {}: medians over every round", files.join(", "));
    print_tables(&header, &runs, &combos, &names);
    Ok(())
}

fn direct(c: &Cluster) -> Target {
    Target {
        name: "direct".into(),
        port: c.port(c.primary_index()),
        db: c.database().into(),
        proc: None,
        split: None,
    }
}

/// The two replicas directly, each with half the clients.
fn direct_replicas(c: &Cluster) -> Target {
    let mut replicas = (0..c.node_count()).filter(|&i| i != c.primary_index());
    let (a, b) = (replicas.next(), replicas.next());
    let db = c.database().to_string();
    Target {
        name: "direct-replicas".into(),
        port: c.port(a.expect("a replica")),
        db: db.clone(),
        proc: None,
        split: Some((c.port(b.expect("two replicas")), db)),
    }
}

/// Whether `t` runs workload `wl`: PostgreSQL takes at most
/// max_connections (300 here) clients, and replicas take no writes.
fn runs_workload(t: &Target, wl: &str) -> bool {
    match t.name.as_str() {
        "direct" | "tokio-relay" | "mio-relay" => wl != "select-c400",
        "direct-replicas" => wl != "tpcb",
        // Its point is where reads go: the other workloads start with
        // BEGIN or write, and go to the primary as `lagrouter`'s do.
        "lagrouter-one-replica" | "pgbouncer-replicas" => wl.starts_with("select"),
        _ => true,
    }
}

/// Starts every requested target, in the order of ALL_TARGETS; PgBouncer is
/// skipped with a note when it is not installed.
fn start_targets(c: &Cluster, o: &Opts, out: &Path) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    let wanted = |t: &&str| o.targets.iter().any(|x| x == t);
    for name in ALL_TARGETS.into_iter().filter(wanted) {
        let t = match (name, pgbouncer_bin(o)) {
            ("direct", _) => direct(c),
            ("direct-replicas", _) => direct_replicas(c),
            ("tokio-relay", _) => start_relay(c, out, name, RELAY_ARG)?,
            ("mio-relay", _) => start_relay(c, out, name, MIO_RELAY_ARG)?,
            ("pgbouncer" | "pgbouncer-replicas", Some(bin)) => start_pgbouncer(c, &bin, out, name)?,
            ("pgbouncer" | "pgbouncer-replicas", None) => {
                println!("pgbouncer: not installed (apt-get install pgbouncer)");
                continue;
            }
            ("lagrouter" | "lagrouter-one-replica", _) => {
                start_lagrouter(c, o, name, o.replica_pool, out)?
            }
            _ => start_lagrouter(c, o, name, POOL_SIZE, out)?,
        };
        println!("{}: 127.0.0.1:{}", t.name, t.port);
        targets.push(t);
    }
    Ok(targets)
}

/// Every workload/mode on every target in turn, `repeats` times: the
/// interleaving makes drift of the host (other load, caches, autovacuum) hit
/// all targets alike. The order changes from round to round
/// ([`round_order`]), so a writing workload's growing tables and the
/// autovacuum it sets off do not always meet the same target.
fn run_matrix(
    c: &Cluster,
    o: &Opts,
    targets: &[Target],
    combos: &[Combo],
    out: &Path,
) -> Result<Vec<Run>> {
    let per_rep = combos
        .iter()
        .flat_map(|wm| targets.iter().filter(|t| runs_workload(t, wm.0)))
        .count();
    let total = per_rep * o.repeats as usize;
    let mut runs = Vec::new();
    // The slot of the matrix, not the runs made: a run done again keeps it.
    let mut n = 0;
    for rep in 1..=o.repeats {
        let order = round_order(targets, rep as usize - 1);
        let matrix = combos
            .iter()
            .flat_map(|wm| order.iter().map(move |t| (wm, *t)));
        let matrix = matrix.filter(|(wm, t)| runs_workload(t, wm.0));
        for (wm, t) in matrix {
            let (wl, mode, name, secs) = (wm.0, &wm.1, &t.name, o.secs);
            n += 1;
            print!("[{n}/{total}] {wl}/{mode} {name} {secs}s ... ");
            std::io::stdout().flush()?;
            for attempt in 0..=o.retries {
                let again = if attempt == 0 {
                    String::new()
                } else {
                    format!(".again{attempt}")
                };
                let log = out.join(format!("r{rep}-{wl}-{mode}-{name}{again}.log"));
                let mut run = run_pgbench(c, o, t, wm, secs, &log)?;
                run.rep = rep;
                let cpu = run.cpu_us.map(|v| format!(", {v:.1} us CPU/txn"));
                let (tps, cpu) = (run.tps.unwrap_or(0.), cpu.unwrap_or_default());
                let steal = stolen(&run);
                runs.push(run);
                match steal {
                    Some(steal) if attempt < o.retries => {
                        // Kept (out of the medians, in the steal count);
                        // the same slot of the round runs again at once.
                        println!(
                            "{tps:.0} tps{cpu}, {:.0}% steal: again ({} of {})",
                            steal * 100.,
                            attempt + 1,
                            o.retries
                        );
                        print!("    {wl}/{mode} {name} {secs}s ... ");
                        std::io::stdout().flush()?;
                    }
                    _ => {
                        let status = &runs.last().expect("pushed").status;
                        println!("{tps:.0} tps{cpu} {status}");
                        break;
                    }
                }
            }
        }
    }
    Ok(runs)
}

/// Starts this bench binary again as the relay target `name`, which
/// `flag` selects.
fn start_relay(c: &Cluster, out: &Path, name: &str, flag: &str) -> Result<Target> {
    let port = free_port()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg(flag)
        .arg(port.to_string())
        .arg(c.port(c.primary_index()).to_string());
    start_proxy(c, name, port, cmd, out)
}

/// The argument that makes this binary the relay.
const RELAY_ARG: &str = "--tokio-relay";

/// The `tokio-relay` target: relays each client to a connection of its own
/// to 127.0.0.1:`upstream`, as lagrouter's sessions run (one task per
/// client on a current-thread runtime, a biased `select!` on both reads,
/// `write_all` to the other side), with none of lagrouter's work. Runs
/// until killed.
fn relay(listen: u16, upstream: u16) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await?;
        loop {
            let (mut client, _) = listener.accept().await?;
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (mut from_client, mut from_server) =
                    (Vec::with_capacity(16384), Vec::with_capacity(16384));
                loop {
                    let sent = tokio::select! {
                        biased;
                        r = server.read_buf(&mut from_server) => match r {
                            Ok(n) if n > 0 => client.write_all(&from_server).await,
                            _ => return,
                        },
                        r = client.read_buf(&mut from_client) => match r {
                            Ok(n) if n > 0 => server.write_all(&from_client).await,
                            _ => return,
                        },
                    };
                    if sent.is_err() {
                        return;
                    }
                    from_client.clear();
                    from_server.clear();
                }
            });
        }
    })
}

/// The argument that makes this binary the `mio-relay`.
const MIO_RELAY_ARG: &str = "--mio-relay";

/// The `mio-relay` target: the `tokio-relay`'s work (a connection of its
/// own to 127.0.0.1:`upstream` per client, bytes copied both ways) on an
/// event loop of its own over mio (epoll, edge-triggered), on one thread,
/// as PgBouncer runs on libevent: no tasks, wakers or run queue, a
/// readiness event handled where it is read. What a proxy's loop costs
/// without tokio. As tokio's reads do, a read shorter than the buffer is
/// taken to have drained the socket (epoll reports the next bytes anew),
/// so an event costs one `recv`, not a second that says `EAGAIN`. Runs
/// until killed.
fn mio_relay(listen: u16, upstream: u16) -> Result<()> {
    use mio::net::{TcpListener, TcpStream};
    use mio::{Events, Interest, Poll, Token};
    use std::io::{ErrorKind, Read};

    /// A client's socket (side 0) and its server's (side 1), with the
    /// bytes due to each that its socket did not take yet.
    struct Pair {
        sock: [TcpStream; 2],
        due: [Vec<u8>; 2],
    }
    /// Writes what `sock` takes of `due` now; the count written.
    fn write_some(sock: &mut TcpStream, due: &[u8]) -> std::io::Result<usize> {
        let mut at = 0;
        while at < due.len() {
            match sock.write(&due[at..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(at)
    }
    /// Handles an event on `side` of `p`; `Ok(false)` when the pair ends.
    fn on_event(
        p: &mut Pair,
        side: usize,
        readable: bool,
        writable: bool,
        buf: &mut [u8],
    ) -> std::io::Result<bool> {
        if writable && !p.due[side].is_empty() {
            let n = write_some(&mut p.sock[side], &p.due[side])?;
            p.due[side].drain(..n);
        }
        if !readable {
            return Ok(true);
        }
        let other = 1 - side;
        loop {
            let n = match p.sock[side].read(buf) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let sent = if p.due[other].is_empty() {
                write_some(&mut p.sock[other], &buf[..n])?
            } else {
                0
            };
            p.due[other].extend_from_slice(&buf[sent..n]);
            if n < buf.len() {
                return Ok(true);
            }
        }
    }

    const LISTENER: Token = Token(usize::MAX);
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(([127, 0, 0, 1], listen).into())?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    // Pair `i` has tokens 2i (client) and 2i + 1 (server).
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let (mut free, mut closed): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 16384];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    let client = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    };
                    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    server.set_nonblocking(true)?;
                    let mut sock = [client, TcpStream::from_std(server)];
                    let i = free.pop().unwrap_or_else(|| {
                        pairs.push(None);
                        pairs.len() - 1
                    });
                    for (side, s) in sock.iter_mut().enumerate() {
                        s.set_nodelay(true)?;
                        poll.registry().register(
                            s,
                            Token(2 * i + side),
                            Interest::READABLE | Interest::WRITABLE,
                        )?;
                    }
                    pairs[i] = Some(Pair {
                        sock,
                        due: [Vec::new(), Vec::new()],
                    });
                }
                continue;
            }
            let (i, side) = (ev.token().0 / 2, ev.token().0 % 2);
            let Some(p) = pairs.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            if !matches!(
                on_event(p, side, readable, ev.is_writable(), &mut buf),
                Ok(true)
            ) {
                if let Some(mut p) = pairs[i].take() {
                    for s in &mut p.sock {
                        let _ = poll.registry().deregister(s);
                    }
                }
                // Reused after this batch: a later event of it may still
                // name the slot.
                closed.push(i);
            }
        }
        free.append(&mut closed);
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, listen, upstream] = args.as_slice() {
        if flag == RELAY_ARG {
            return relay(listen.parse()?, upstream.parse()?);
        }
        if flag == MIO_RELAY_ARG {
            return mio_relay(listen.parse()?, upstream.parse()?);
        }
    }
    // `cargo test --benches` runs bench targets without --bench; a cluster
    // and minutes of pgbench there would only slow the tests down.
    if !args.iter().any(|a| a == "--bench") {
        println!("pgbench_compare: run it with `cargo bench --bench pgbench_compare`");
        return Ok(());
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("cargo bench --bench pgbench_compare -- [options]\n{USAGE}");
        return Ok(());
    }
    if let Some(at) = args.iter().position(|a| a == "--summarize") {
        // cargo bench adds --bench after the user's arguments.
        let files: Vec<String> = args[at + 1..]
            .iter()
            .filter(|a| *a != "--bench")
            .cloned()
            .collect();
        return summarize(&files);
    }
    let o = parse_args(&args)?;
    if o.install_pgbouncer && pgbouncer_bin(&o).is_none() {
        install_pgbouncer()?;
    }
    let out = out_dir("pgbench-compare")?;
    let scale = o.scale;
    println!("starting a primary and 2 replicas; pgbench -i -s {scale} ...");
    let c = Cluster::start(ClusterOptions::default()).context("starting the cluster")?;
    c.pgbench_init(o.scale)?;
    c.sql(0, "vacuum analyze")?;
    let before = replica_xacts(&c); // no proxy has touched the replicas yet
    let targets = start_targets(&c, &o, &out)?;
    // Warm-up, not reported: caches, pools, lagrouter's replicas turning Healthy.
    // Transactions the replicas ran in the warm-up: lagrouter's, and the
    // direct-replicas and pgbouncer-replicas targets' (taken off the
    // replicas' count).
    let (mut warmup_xacts, mut warmup_direct) = (0, 0);
    for t in targets.iter().filter(|_| o.warmup > 0) {
        let log = out.join(format!("warmup-{}.log", t.name));
        let run = run_pgbench(&c, &o, t, &("select", "simple".into()), o.warmup, &log)?;
        match t.name.as_str() {
            t if reads_replicas(t) => warmup_xacts += run.xacts,
            t if others_on_replicas(t) => warmup_direct += run.xacts,
            _ => {}
        }
    }
    let combos: Vec<Combo> = ALL_WORKLOADS
        .into_iter()
        .filter(|w| o.workloads.iter().any(|x| x == w))
        .flat_map(|w| o.modes.iter().map(move |m| (w, m.clone())))
        .collect();
    let runs = run_matrix(&c, &o, &targets, &combos, &out)?;
    let started = |n: &&str| targets.iter().any(|t| t.name == *n);
    let names: Vec<&str> = ALL_TARGETS.into_iter().filter(started).collect();
    drop(targets);
    print_tables(&run_header(&o), &runs, &combos, &names);
    if let Some(share) = replica_share(&c, &runs, (warmup_xacts, warmup_direct), before) {
        let pct = share * 100.;
        // The replicas' counters also take in lagrouter's health checks
        // (a few a second), hence a share a little over 100% is possible.
        println!(
            "lagrouter (with replicas) ran {pct:.1}% of its select-only transactions on the replicas \
             (by the replicas' counters, which also count its health checks)"
        );
    }
    let tsv = out.with_extension("tsv");
    write_tsv(&tsv, &runs)?;
    println!("\nresults: {} (raw logs: {})", tsv.display(), out.display());
    Ok(())
}
