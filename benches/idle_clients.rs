//! What an idle, logged-in client costs lagrouter: RSS growth divided by
//! the number of connected clients (10,000 by default), measured right
//! after they logged in and again after the idle-buffer sweep, and one
//! other client's `SELECT 1` latency while they are all connected.
//!
//! Goal: at most 8 KiB per idle client (PgBouncer documents about 2 kB).
//! `cargo bench --bench idle_clients -- [-n CLIENTS] [-q QUERIES]`.
//! Everything runs on loopback against a throwaway primary.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lagrouter::pgcluster::{Cluster, ClusterOptions, Guarded};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Logins in flight at once.
const CONCURRENT_LOGINS: usize = 200;
/// Long enough for lagrouter's idle-buffer sweeps (1,000 sessions a
/// second) to have asked every idle session for its buffers.
const SETTLE: Duration = Duration::from_secs(15);

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The startup message of a trust login as `user` to `app`.
fn startup(user: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "app")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// Reads messages until ReadyForQuery; fails on ErrorResponse.
async fn until_ready(s: &mut TcpStream) -> Result<()> {
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        s.read_exact(&mut body).await?;
        match head[0] {
            b'Z' => return Ok(()),
            b'E' => bail!("error from lagrouter: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
}

async fn login(port: u16) -> Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(&startup("app")).await?;
    until_ready(&mut s).await?;
    Ok(s)
}

async fn select_one(s: &mut TcpStream) -> Result<Duration> {
    let q = b"SELECT 1\0";
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((q.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(q);
    let t = Instant::now();
    s.write_all(&msg).await?;
    until_ready(s).await?;
    Ok(t.elapsed())
}

async fn latencies(port: u16, n: usize) -> Result<(Duration, Duration)> {
    let mut s = login(port).await?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(select_one(&mut s).await?);
    }
    v.sort();
    Ok((v[n / 2], v[n * 99 / 100]))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --benches` runs bench targets without --bench.
    if !args.iter().any(|a| a == "--bench") {
        println!("idle_clients: run it with `cargo bench --bench idle_clients`");
        return Ok(());
    }
    let arg = |flag: &str, default: usize| -> Result<usize> {
        match args.iter().position(|a| a == flag) {
            Some(i) => args
                .get(i + 1)
                .context("missing value")?
                .parse()
                .context(flag.to_string()),
            None => Ok(default),
        }
    };
    let clients = arg("-n", 10_000)?;
    let queries = arg("-q", 2_000)?;
    raise_open_files();
    println!("starting a primary ...");
    let c = Cluster::start(ClusterOptions {
        replicas: 0,
        ..ClusterOptions::default()
    })
    .context("starting the cluster")?;
    let dir = std::env::temp_dir().join(format!("lagrouter-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nmax_client_connections = {}\n\
         [[users]]\nname = \"app\"\npassword = \"app\"\nauth = \"trust\"\n\
         [[nodes]]\nname = \"primary\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"primary\"\n\
         [health]\ndatabase = \"app\"\n",
        clients + 100,
        c.port(0)
    );
    let path = dir.join("lagrouter.toml");
    std::fs::write(&path, config)?;
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_lagrouter"));
    let mut cmd = Command::new(&bin);
    cmd.args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("lagrouter.log"))?);
    let lr = Guarded::spawn(cmd, libc::SIGTERM).context("starting lagrouter")?;
    let pid = lr.id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while login(port).await.is_err() {
            if Instant::now() > deadline {
                bail!("lagrouter did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (p50_before, p99_before) = latencies(port, queries).await?;
        let before = rss_kib(pid)?;
        println!("lagrouter RSS with no idle client: {before} KiB; logging in {clients} clients ...");
        let started = Instant::now();
        let mut idle = Vec::with_capacity(clients);
        while idle.len() < clients {
            let batch = CONCURRENT_LOGINS.min(clients - idle.len());
            let logins: Vec<_> = (0..batch).map(|_| tokio::spawn(login(port))).collect();
            for l in logins {
                idle.push(l.await??);
            }
            if idle.len() % 2000 == 0 {
                println!("  {} logged in ({:.1} s)", idle.len(), started.elapsed().as_secs_f64());
            }
        }
        let connected = rss_kib(pid)?;
        tokio::time::sleep(SETTLE).await;
        let settled = rss_kib(pid)?;
        let (p50, p99) = latencies(port, queries).await?;
        let per = |kib: u64| kib.saturating_sub(before) as f64 * 1024.0 / clients as f64;
        println!();
        println!("| measure | value |");
        println!("|---|---|");
        println!("| idle clients | {clients} |");
        println!("| RSS before | {before} KiB |");
        println!(
            "| RSS right after the logins | {connected} KiB ({:.0} bytes per client) |",
            per(connected)
        );
        println!(
            "| RSS {} s later (buffers given back) | {settled} KiB ({:.0} bytes per client) |",
            SETTLE.as_secs(),
            per(settled)
        );
        println!(
            "| SELECT 1, one more client, p50 / p99 | {:.0} / {:.0} µs (without the idle clients: {:.0} / {:.0} µs) |",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            p50_before.as_secs_f64() * 1e6,
            p99_before.as_secs_f64() * 1e6
        );
        drop(idle);
        Ok(())
    })?;
    drop(lr);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
