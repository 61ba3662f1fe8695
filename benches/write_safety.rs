//! What write safety costs: a pgbench write script through lagrouter
//! (a) plain, (b) each write followed by `SELECT lagrouter.wait_replicas(1,
//! 1000)`, (c) with the write gate on (`[safety] min_replicas_to_write = 1`,
//! replicas healthy) and (d) followed by `wait_replicas(2, 1000)`,
//! interleaved over `-r` repeats. Prints median TPS and latency, the ratios
//! to (a), the proxy's CPU per transaction, and how many waits returned
//! fewer replicas than asked (from `lagrouter_wait_replicas_total` on the
//! proxy's /metrics, before and after each run).
//!
//! `cargo bench --bench write_safety -- [options]` (see `USAGE`).
//! Results: target/write-safety/<timestamp>.tsv, raw logs (pgbench, the
//! proxies, their configs, the scripts) in target/write-safety/<timestamp>/.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

mod common;

use anyhow::{Context, Result, anyhow, bail};
use common::*;
use lagrouter::pgcluster::{Cluster, ClusterOptions};

const USAGE: &str = "options: -T SECS (10) -c CLIENTS (8) -j THREADS (2) -r REPEATS (3)
  -M simple|extended|prepared (simple)   --scale N (10)   --warmup SECS (2, 0 = none)
  --variants plain,wait1,gate,wait2 (all four)
  --gate-lag BYTES (67108864: [safety] min_replicas_max_lag_bytes of the gate variant;
                    0 = unset, i.e. [health] max_lag_bytes, 1 MiB by default)";
const ALL_VARIANTS: [&str; 4] = ["plain", "wait1", "gate", "wait2"];
/// Extra time a pgbench gets beyond -T before it counts as hung.
const GRACE: Duration = Duration::from_secs(60);
/// How long a freshly started proxy may take to answer `select 1` and to
/// see its replicas healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POOL_SIZE: u32 = 20;
/// How long each wait_replicas call may wait, in milliseconds.
const WAIT_MS: u32 = 1000;

struct Opts {
    secs: u64,
    clients: u32,
    threads: u32,
    repeats: u32,
    mode: String,
    scale: u32,
    warmup: u64,
    variants: Vec<String>,
    gate_lag: u64,
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        secs: 10,
        clients: 8,
        threads: 2,
        repeats: 3,
        mode: "simple".into(),
        scale: 10,
        warmup: 2,
        variants: list(&ALL_VARIANTS.join(",")),
        gate_lag: 64 << 20,
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
            "-M" => o.mode = val()?.clone(),
            "--scale" => o.scale = val()?.parse()?,
            "--warmup" => o.warmup = val()?.parse()?,
            "--variants" => o.variants = list(val()?),
            "--gate-lag" => o.gate_lag = val()?.parse()?,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if let Some(v) = o
        .variants
        .iter()
        .find(|v| !ALL_VARIANTS.contains(&v.as_str()))
    {
        bail!("unknown variant {v}\n{USAGE}");
    }
    if !["simple", "extended", "prepared"].contains(&o.mode.as_str()) {
        bail!("unknown mode {}\n{USAGE}", o.mode);
    }
    if o.secs == 0 || o.clients == 0 || o.threads == 0 || o.repeats == 0 || o.scale == 0 {
        bail!("-T, -c, -j, -r and --scale must be > 0");
    }
    if o.variants.is_empty() {
        bail!("no variant to run\n{USAGE}");
    }
    Ok(o)
}

/// A running lagrouter.
struct Proxy {
    name: &'static str,
    port: u16,
    metrics_port: u16,
    proc: Proc,
}

/// The shipped defaults plus a metrics endpoint; `gate` adds
/// `[safety] min_replicas_to_write = 1` and, unless `gate_lag` is 0,
/// `min_replicas_max_lag_bytes = gate_lag`.
fn lagrouter_config(c: &Cluster, port: u16, metrics_port: u16, gate: Option<u64>) -> String {
    let (user, password) = (c.app_user(), c.app_password());
    let mut t = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\n\
         [pool]\nsize = {POOL_SIZE}\n\n\
         [[users]]\nname = \"{user}\"\npassword = \"{password}\"\n"
    );
    t += &c.nodes_toml();
    t += &format!("\n[health]\ndatabase = \"{}\"\n", c.database());
    if let Some(lag) = gate {
        t += "\n[safety]\nmin_replicas_to_write = 1\n";
        if lag > 0 {
            t += &format!("min_replicas_max_lag_bytes = {lag}\n");
        }
    }
    t
}

fn start_lagrouter(
    c: &Cluster,
    name: &'static str,
    gate: Option<u64>,
    out: &Path,
) -> Result<Proxy> {
    let (port, metrics_port) = (free_port()?, free_port()?);
    let conf = out.join(format!("{name}.toml"));
    fs::write(&conf, lagrouter_config(c, port, metrics_port, gate))?;
    let mut cmd = Command::new(lagrouter_bin()?);
    cmd.arg("run")
        .arg("-c")
        .arg(&conf)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    let proc = spawn_logged(cmd, &out.join(format!("{name}.log")))?;
    let mut p = Proxy {
        name,
        port,
        metrics_port,
        proc,
    };
    wait_ready(c, &mut p, out)?;
    Ok(p)
}

/// Polls (bounded) until `select 1` works through the proxy and its
/// /metrics shows both replicas healthy and, for the gate, the gate open.
fn wait_ready(c: &Cluster, p: &mut Proxy, out: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let log = out.join(format!("{}-ready.log", p.name));
    let mut answered = false;
    loop {
        if let Some(status) = p.proc.exited() {
            let text = fs::read_to_string(out.join(format!("{}.log", p.name)));
            bail!(
                "{} exited ({status}) at startup:\n{}",
                p.name,
                text.unwrap_or_default()
            );
        }
        if !answered && TcpStream::connect(("127.0.0.1", p.port)).is_ok() {
            let mut cmd = pg_tool(c, "psql", p.port);
            cmd.args(["-X", "-At", "-c", "select 1", c.database()]);
            let status = spawn_logged(cmd, &log)?.wait_for(Duration::from_secs(10));
            answered = status.is_some_and(|s| s.success());
        }
        if answered && let Ok(m) = scrape(p.metrics_port) {
            let healthy = (1..c.node_count())
                .filter(|&i| {
                    let series = format!(
                        "lagrouter_node_state{{node=\"{}\",state=\"healthy\"}}",
                        c.node_name(i)
                    );
                    value(&m, &series) == Some(1.0)
                })
                .count();
            let gate_open = !m.contains("lagrouter_write_gate_open")
                || value(&m, "lagrouter_write_gate_open") == Some(1.0);
            if healthy == c.node_count() - 1 && gate_open {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let err = fs::read_to_string(&log).unwrap_or_default();
            let m = scrape(p.metrics_port).unwrap_or_default();
            bail!(
                "{} not ready after {READY_TIMEOUT:?} (answered: {answered}): {err}\n{m}",
                p.name
            );
        }
        sleep(Duration::from_millis(200));
    }
}

/// GET /metrics (plain HTTP/1.1, no client library).
fn scrape(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// The value of the series written exactly as `series` (name{labels}), or
/// the sum over every series of that name when `series` is a bare name.
fn value(text: &str, series: &str) -> Option<f64> {
    let bare = !series.contains('{');
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, v)) = l.rsplit_once(' ') else {
            continue;
        };
        let matches = if bare {
            name == series || name.starts_with(&format!("{series}{{"))
        } else {
            name == series
        };
        if matches && let Ok(v) = v.parse::<f64>() {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Writes the gate refused so far, and waits counted by outcome so far:
/// (refused, reached, timeout).
fn counts(port: u16) -> Option<(f64, f64, f64)> {
    let m = scrape(port).ok()?;
    let of = |outcome: &str| {
        m.lines()
            .filter(|l| l.starts_with("lagrouter_wait_replicas_total{"))
            .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let refused = value(&m, "lagrouter_writes_refused_total").unwrap_or(0.0);
    Some((refused, of("reached"), of("timeout")))
}

/// The pgbench script of a variant.
fn script(variant: &str) -> String {
    let mut s = String::from(
        "\\set aid random(1, 100000 * :scale)\n\
         UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n",
    );
    match variant {
        "wait1" => s += &format!("SELECT lagrouter.wait_replicas(1, {WAIT_MS});\n"),
        "wait2" => s += &format!("SELECT lagrouter.wait_replicas(2, {WAIT_MS});\n"),
        _ => {}
    }
    s
}

/// Replicas each wait of a variant asks for (0: no waits).
fn asked(variant: &str) -> u32 {
    match variant {
        "wait1" => 1,
        "wait2" => 2,
        _ => 0,
    }
}

/// One pgbench run.
#[derive(Default)]
struct Run {
    rep: u32,
    variant: String,
    pg: Pgbench,
    waits_reached: Option<u64>,
    waits_short: Option<u64>,
    refused: Option<u64>,
}

impl std::ops::Deref for Run {
    type Target = Pgbench;
    fn deref(&self) -> &Pgbench {
        &self.pg
    }
}

/// Runs the variant's script through `p` for `secs`.
fn run_pgbench(
    c: &Cluster,
    o: &Opts,
    p: &Proxy,
    variant: &str,
    secs: u64,
    out: &Path,
    log: &Path,
) -> Result<Run> {
    let file = out.join(format!("{variant}.sql"));
    fs::write(&file, script(variant))?;
    let mut cmd = pg_tool(c, "pgbench", p.port);
    let args = format!(
        "-n -M {} -c {} -j {} -T {secs} -s {}",
        o.mode, o.clients, o.threads, o.scale
    );
    cmd.args(args.split_whitespace())
        .arg("-f")
        .arg(&file)
        .arg(c.database());
    let counts_before = counts(p.metrics_port);
    let pg = Pgbench::run(cmd, log, secs, GRACE, o.clients, Some(p.proc.id()))?;
    let counts_after = counts(p.metrics_port);
    let mut run = Run {
        variant: variant.into(),
        pg,
        ..Run::default()
    };
    if let Some((before, after)) = counts_before.zip(counts_after) {
        let delta = |a: f64, b: f64| Some((a - b).max(0.0) as u64);
        run.refused = delta(after.0, before.0);
        if asked(variant) > 0 {
            run.waits_reached = delta(after.1, before.1);
            run.waits_short = delta(after.2, before.2);
        }
    }
    Ok(run)
}

/// Median of `value` over the clean runs of `variant`.
fn median_of(runs: &[Run], variant: &str, value: fn(&Run) -> Option<f64>) -> Option<f64> {
    let clean = runs
        .iter()
        .filter(|r| r.variant == variant && r.status == "ok");
    median(clean.filter_map(value).collect())
}

fn describe(variant: &str) -> String {
    match variant {
        "plain" => "UPDATE".into(),
        "wait1" => format!("UPDATE; wait_replicas(1, {WAIT_MS})"),
        "wait2" => format!("UPDATE; wait_replicas(2, {WAIT_MS})"),
        "gate" => "UPDATE, min_replicas_to_write = 1".into(),
        _ => variant.into(),
    }
}

fn print_table(o: &Opts, runs: &[Run]) {
    let (c, j, s, r, m, scale) = (o.clients, o.threads, o.secs, o.repeats, &o.mode, o.scale);
    println!("\npgbench -M {m} -c {c} -j {j} -T {s}, scale {scale}: median of {r} run(s)");
    println!("(runs with aborted clients excluded; * = some runs not ok)");
    if o.variants.iter().any(|v| v == "gate") {
        match o.gate_lag {
            0 => println!("(gate: min_replicas_max_lag_bytes unset, i.e. [health] max_lag_bytes)"),
            b => println!("(gate: min_replicas_max_lag_bytes = {b})"),
        }
    }
    println!(
        "{:<8} {:<40} {:>9} {:>9} {:>8} {:>8} {:>9} {:>16} {:>8}",
        "variant",
        "script",
        "TPS",
        "lat ms",
        "TPS/a",
        "lat/a",
        "CPU us",
        "waits short/all",
        "refused"
    );
    let tps = |v: &str| median_of(runs, v, |r| r.tps);
    let lat = |v: &str| median_of(runs, v, |r| r.lat_ms);
    let fmt = |x: Option<f64>, digits: usize| x.map_or("-".into(), |x| format!("{x:.digits$}"));
    for v in &o.variants {
        let v = v.as_str();
        let bad = runs.iter().any(|r| r.variant == v && r.status != "ok");
        let star = if bad { "*" } else { "" };
        let tps_ratio = tps(v).zip(tps("plain")).map(|(a, b)| a / b);
        let lat_ratio = lat(v).zip(lat("plain")).map(|(a, b)| a / b);
        let cpu = median_of(runs, v, |r| r.cpu_us);
        let waits = if asked(v) == 0 {
            "-".to_owned()
        } else {
            let of = |f: fn(&Run) -> Option<u64>| -> Option<u64> {
                runs.iter().filter(|r| r.variant == v).map(f).sum()
            };
            match (of(|r| r.waits_short), of(|r| r.waits_reached)) {
                (Some(short), Some(reached)) => format!("{short}/{}", short + reached),
                _ => "?".to_owned(),
            }
        };
        let refused: Option<u64> = runs
            .iter()
            .filter(|r| r.variant == v)
            .map(|r| r.refused)
            .sum();
        println!(
            "{:<8} {:<40} {:>9} {:>9} {:>8} {:>8} {:>9} {:>16} {:>8}",
            v,
            describe(v),
            format!("{}{star}", fmt(tps(v), 0)),
            fmt(lat(v), 2),
            fmt(tps_ratio, 2),
            fmt(lat_ratio, 2),
            fmt(cpu, 1),
            waits,
            refused.map_or("?".into(), |n| n.to_string())
        );
    }
    println!("(TPS/a, lat/a: against plain; CPU us: lagrouter's user+sys CPU per transaction;");
    println!(" waits short: wait_replicas calls that returned fewer replicas than asked, i.e.");
    println!(" timed out after {WAIT_MS} ms, summed over all runs; refused: writes the gate");
    println!(" refused (53000), summed over all runs)");
    for r in runs.iter().filter(|r| r.status != "ok") {
        println!("not ok: r{} {}: {} {}", r.rep, r.variant, r.status, r.error);
    }
}

fn write_tsv(path: &Path, runs: &[Run]) -> Result<()> {
    let mut f = File::create(path)?;
    let head = "rep variant tps lat_ms xacts failed aborted_clients status cpu_us_per_txn \
                waits_reached waits_short refused first_error";
    writeln!(f, "{}", head.replace(' ', "\t"))?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    let int = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    for r in runs {
        let cells = [
            r.rep.to_string(),
            r.variant.clone(),
            opt(r.tps),
            opt(r.lat_ms),
            r.xacts.to_string(),
            r.failed.to_string(),
            r.aborted.to_string(),
            r.status.clone(),
            opt(r.cpu_us),
            int(r.waits_reached),
            int(r.waits_short),
            int(r.refused),
            r.error.clone(),
        ];
        writeln!(f, "{}", cells.join("\t"))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --benches` runs bench targets without --bench.
    if !args.iter().any(|a| a == "--bench") {
        println!("write_safety: run it with `cargo bench --bench write_safety`");
        return Ok(());
    }
    let o = parse_args(&args)?;
    let out = out_dir("write-safety")?;
    println!(
        "starting a primary and 2 replicas; pgbench -i -s {} ...",
        o.scale
    );
    let c = Cluster::start(ClusterOptions::default()).context("starting the cluster")?;
    c.pgbench_init(o.scale)?;
    c.sql(0, "vacuum analyze")?;
    c.wait_caught_up(Duration::from_secs(120))?;
    let plain = start_lagrouter(&c, "lagrouter", None, &out)?;
    let gate = if o.variants.iter().any(|v| v == "gate") {
        Some(start_lagrouter(
            &c,
            "lagrouter-gate",
            Some(o.gate_lag),
            &out,
        )?)
    } else {
        None
    };
    println!(
        "lagrouter: 127.0.0.1:{} (metrics :{}){}",
        plain.port,
        plain.metrics_port,
        gate.as_ref().map_or(String::new(), |g| format!(
            "; lagrouter-gate: 127.0.0.1:{} (metrics :{})",
            g.port, g.metrics_port
        ))
    );
    let proxy_of = |v: &str| {
        if v == "gate" {
            gate.as_ref()
        } else {
            Some(&plain)
        }
    };
    // Warm-up, not reported: caches, pools, the function catalog.
    if o.warmup > 0 {
        for p in [Some(&plain), gate.as_ref()].into_iter().flatten() {
            let log = out.join(format!("warmup-{}.log", p.name));
            run_pgbench(&c, &o, p, "plain", o.warmup, &out, &log)?;
        }
    }
    let total = o.variants.len() * o.repeats as usize;
    let mut runs = Vec::new();
    for rep in 1..=o.repeats {
        for v in &o.variants {
            let p = proxy_of(v).context("no proxy for the variant")?;
            print!(
                "[{}/{total}] {v} ({}) {}s ... ",
                runs.len() + 1,
                p.name,
                o.secs
            );
            std::io::stdout().flush()?;
            let log = out.join(format!("r{rep}-{v}.log"));
            let mut run = run_pgbench(&c, &o, p, v, o.secs, &out, &log)?;
            run.rep = rep;
            let mut waits = match (run.waits_short, run.waits_reached) {
                (Some(s), Some(r)) => format!(", {s}/{} waits short", s + r),
                _ => String::new(),
            };
            if let Some(n) = run.refused.filter(|&n| n > 0) {
                waits += &format!(", {n} writes refused");
            }
            println!(
                "{:.0} tps, {:.2} ms{waits} {}",
                run.tps.unwrap_or(0.),
                run.lat_ms.unwrap_or(0.),
                run.status
            );
            runs.push(run);
        }
    }
    drop(gate);
    drop(plain);
    print_table(&o, &runs);
    let tsv = out.with_extension("tsv");
    write_tsv(&tsv, &runs)?;
    println!("\nresults: {} (raw logs: {})", tsv.display(), out.display());
    Ok(())
}
