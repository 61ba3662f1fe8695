//! Real drivers through the proxy: psycopg 3, asyncpg, node-postgres and
//! pgjdbc each run the same scenario (tests/drivers/*) once through
//! lagrouter and once directly against the primary, and the two outputs
//! must be equal.
//!
//! The scenario (4 concurrent connections, each repeated 3 times, against
//! a pool of 2 server connections so clients share them): SCRAM login,
//! simple and parameterised queries, the driver's own prepared statements
//! used repeatedly, a rolled-back and a committed transaction, division by
//! zero (22012) followed by a good query, NULL / bytea / numeric /
//! timestamptz / json round trips, `SET TimeZone` seen by a later
//! transaction, NOTICE capture, LISTEN/NOTIFY and COPY where the driver
//! has them. Nothing may differ except what `DOCUMENTED` lists.
//!
//! The runtimes come from `tests/drivers/install.sh` (PyPI venv in
//! `target/drivers-venv`, `tests/drivers/node/node_modules`, Debian's
//! pgjdbc). A missing runtime fails the test with a message naming the
//! script; it never skips. Driver programs are killed after `RUN_TIMEOUT`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lagrouter::pgcluster::Cluster;
use lagrouter_config::{Config, ConfigHandle};
use tokio::process::Command;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// One driver at a time: they share two cores with the cluster and the
/// proxy, and each starts four connections.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Upper bound for one run of a driver program (or `javac`).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const WORKERS: usize = 4;
const REPS: usize = 3;
const POOL_SIZE: usize = 2;
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";
const INSTALL_HINT: &str =
    "run `bash tests/drivers/install.sh` (as root) to install the driver runtimes";

/// Steps whose output may differ through the proxy, with the reason
/// (what transaction pooling documents). Empty: nothing may differ.
const DOCUMENTED: &[(&str, &str)] = &[];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn drivers_dir() -> PathBuf {
    repo().join("tests").join("drivers")
}

fn venv_python() -> PathBuf {
    std::env::var_os("LAGROUTER_DRIVERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target").join("drivers-venv"))
        .join("bin")
        .join("python")
}

/// Where a driver connects.
struct Endpoint {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
}

impl Endpoint {
    fn new(c: &Cluster, host: String, port: u16) -> Endpoint {
        Endpoint {
            host,
            port,
            user: c.app_user().to_owned(),
            password: c.app_password().to_owned(),
            database: c.database().to_owned(),
        }
    }
}

/// Runs `argv` in `cwd` against `ep`, bounded by `RUN_TIMEOUT`; returns
/// its standard output. Panics (naming `what`) on failure or timeout.
async fn run(what: &str, argv: &[OsString], cwd: &Path, ep: Option<&Endpoint>) -> String {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env("DRIVER_WORKERS", WORKERS.to_string())
        .env("DRIVER_REPS", REPS.to_string())
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .env_remove("PGOPTIONS");
    if let Some(ep) = ep {
        cmd.env("PGHOST", &ep.host)
            .env("PGPORT", ep.port.to_string())
            .env("PGUSER", &ep.user)
            .env("PGPASSWORD", &ep.password)
            .env("PGDATABASE", &ep.database);
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {argv:?}: {e}; {INSTALL_HINT}"));
    let stdout = tokio::spawn(read_all(child.stdout.take()));
    let stderr = tokio::spawn(read_all(child.stderr.take()));
    let status = tokio::time::timeout(RUN_TIMEOUT, child.wait()).await;
    if status.is_err() {
        let _ = child.kill().await;
    }
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    let status = match status {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("{what}: waiting for {argv:?}: {e}"),
        Err(_) => panic!(
            "{what}: {argv:?} did not finish within {RUN_TIMEOUT:?} (killed)\n\
             --- stdout\n{stdout}\n--- stderr (last 3000 bytes)\n{}",
            tail(&stderr, 3000)
        ),
    };
    eprintln!(
        "{what}: {status} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "{what}: {argv:?} failed ({status})\n--- stdout\n{stdout}\n--- stderr (last 3000 bytes)\n{}",
        tail(&stderr, 3000)
    );
    stdout
}

async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_end(&mut buf).await;
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn config(c: &Cluster) -> Config {
    let mut t = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[pool]\nsize = {POOL_SIZE}\n\n\
         [[users]]\nname = \"{}\"\npassword = \"{}\"\n",
        c.app_user(),
        c.app_password()
    );
    t.push_str(&c.nodes_toml());
    t.push_str(&format!("\n[health]\ndatabase = \"{}\"\n", c.database()));
    // The drivers' behaviour, not the breaker, is under test: reads that
    // fall back to the primary while the replicas are not yet Healthy (the
    // first `recover_after_checks` checks) must not trip it.
    t.push_str("\n[routing]\nprimary_read_cap = 1.0\n");
    Config::from_toml_str(&t).expect("test config is valid")
}

/// The step name of one output line (`"step": "..."`), for `DOCUMENTED`.
fn step_of(line: &str) -> &str {
    line.split("\"step\": \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("")
}

fn comparable(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !DOCUMENTED.iter().any(|(s, _)| *s == step_of(l)))
        .collect()
}

/// Asserts the proxy run printed what the direct run printed.
fn assert_same(driver: &str, via_proxy: &str, direct: &str) {
    let (p, d) = (comparable(via_proxy), comparable(direct));
    assert!(
        d.len() >= WORKERS * REPS * 10,
        "{driver}: the direct run printed only {} records:\n{direct}",
        d.len()
    );
    let diffs: Vec<String> = (0..p.len().max(d.len()))
        .filter(|&i| p.get(i) != d.get(i))
        .take(10)
        .map(|i| {
            format!(
                "  direct: {}\n  proxy:  {}",
                d.get(i).unwrap_or(&"<missing>"),
                p.get(i).unwrap_or(&"<missing>")
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{driver} behaves differently through the proxy (first differences):\n{}\n\
         --- full proxy output\n{via_proxy}",
        diffs.join("\n")
    );
}

/// Runs `argv` through a fresh proxy and directly, and compares.
async fn compare(driver: &str, argv: Vec<OsString>, cwd: PathBuf) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "lagrouter_proxy=warn".into()),
        )
        .with_test_writer()
        .try_init();
    let _serial = SERIAL.lock().await;
    let c = tokio::task::spawn_blocking(Cluster::shared)
        .await
        .expect("cluster start panicked");
    let stop = CancellationToken::new();
    let proxy = lagrouter::app::start(ConfigHandle::new(config(c)), stop.clone())
        .await
        .expect("proxy starts");
    let via = Endpoint::new(c, proxy.addr.ip().to_string(), proxy.addr.port());
    let direct = Endpoint::new(c, c.host().to_owned(), c.port(c.primary_index()));
    // Debugging aid: DRIVERS_PAUSE=SECS keeps the proxy up for manual runs.
    if let Some(secs) = std::env::var("DRIVERS_PAUSE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!(
            "{driver}: proxy at {} (primary {}), pausing {secs}s",
            proxy.addr, direct.port
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let via_proxy = run(&format!("{driver} via proxy"), &argv, &cwd, Some(&via)).await;
    let direct = run(&format!("{driver} direct"), &argv, &cwd, Some(&direct)).await;
    tokio::time::timeout(Duration::from_secs(30), proxy.stop())
        .await
        .expect("proxy stops within 30s");
    if std::env::var_os("DRIVERS_SHOW").is_some() {
        eprintln!("--- {driver} direct output\n{direct}");
    }
    assert_same(driver, &via_proxy, &direct);
}

/// The venv python, failing with the install hint when it is not usable.
async fn python_with(module: &str) -> OsString {
    let py = venv_python();
    assert!(py.exists(), "{} is missing; {INSTALL_HINT}", py.display());
    let argv = [
        py.clone().into_os_string(),
        "-c".into(),
        format!("import {module}").into(),
    ];
    let ok = Command::new(&argv[0])
        .args(&argv[1..])
        .kill_on_drop(true)
        .output()
        .await
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{module} does not import in {}; {INSTALL_HINT}",
        py.display()
    );
    py.into_os_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_matches_direct() {
    let py = python_with("psycopg").await;
    let script = drivers_dir().join("python").join("psycopg_scenario.py");
    compare("psycopg", vec![py, script.into()], drivers_dir()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_matches_direct() {
    let py = python_with("asyncpg").await;
    let script = drivers_dir().join("python").join("asyncpg_scenario.py");
    compare("asyncpg", vec![py, script.into()], drivers_dir()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_matches_direct() {
    let dir = drivers_dir().join("node");
    assert!(
        dir.join("node_modules")
            .join("pg")
            .join("package.json")
            .exists(),
        "node-postgres is not installed in {}; {INSTALL_HINT}",
        dir.display()
    );
    compare(
        "node-postgres",
        vec!["node".into(), dir.join("scenario.js").into()],
        dir,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_matches_direct() {
    assert!(
        Path::new(PGJDBC_JAR).exists(),
        "{PGJDBC_JAR} is missing (Debian libpostgresql-jdbc-java); {INSTALL_HINT}"
    );
    let classes = repo().join("target").join("drivers-java");
    std::fs::create_dir_all(&classes).expect("create target/drivers-java");
    let src = drivers_dir().join("java").join("Scenario.java");
    let javac: Vec<OsString> = vec![
        "javac".into(),
        "-nowarn".into(),
        "-cp".into(),
        PGJDBC_JAR.into(),
        "-d".into(),
        classes.clone().into(),
        src.into(),
    ];
    run("javac", &javac, &repo(), None).await;
    let cp = format!("{}:{PGJDBC_JAR}", classes.display());
    compare(
        "pgjdbc",
        vec!["java".into(), "-cp".into(), cp.into(), "Scenario".into()],
        drivers_dir(),
    )
    .await;
}
