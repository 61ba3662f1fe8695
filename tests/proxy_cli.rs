//! The `lagrouter` binary: `--help`, `check-config` on a good and a bad
//! file, and `run -c FILE` serving a client and exiting on SIGTERM.

mod support;

use std::time::Duration;

use support::process::{Output, run, spawn_run, status_bytes, stop};
use support::{ProxyBuilder, TempDir, blocking};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const LIMIT: Duration = Duration::from_secs(30);

fn cmd(args: &[&str]) -> Command {
    support::process::lagrouter_cmd(args)
}

fn good_config() -> String {
    "[server]\nlisten = \"127.0.0.1:0\"\n\
     [[users]]\nname = \"app\"\npassword = \"app\"\n\
     [pool]\nsize = 4\n\
     [[nodes]]\nname = \"primary\"\nhost = \"127.0.0.1\"\nport = 5432\nrole = \"primary\"\n"
        .to_owned()
}

fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout: {}\nstderr: {}",
        out.stdout_text(),
        out.stderr
    );
}

#[tokio::test]
async fn help_exits_zero_and_names_the_commands() {
    let out = run(cmd(&["--help"]), None, LIMIT).await;
    assert_exit(&out, 0, "--help");
    let text = out.stdout_text();
    for sub in ["run", "check-config"] {
        assert!(text.contains(sub), "--help does not mention {sub}: {text}");
    }
}

#[tokio::test]
async fn check_config_accepts_a_good_file() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("good.toml");
    std::fs::write(&path, good_config()).unwrap();
    let out = run(cmd(&["check-config", path.to_str().unwrap()]), None, LIMIT).await;
    assert_exit(&out, 0, "check-config good file");
    assert!(out.stderr.trim().is_empty(), "stderr: {}", out.stderr);
}

#[tokio::test]
async fn check_config_rejects_a_bad_file_with_line_and_key() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("bad.toml");
    // Line 8 has an unknown key, in [pool].
    let text = good_config().replace("size = 4", "size = 4\nchekout_timeout = \"1s\"");
    assert_eq!(
        text.lines().position(|l| l.starts_with("chekout")),
        Some(7),
        "test fixture moved"
    );
    std::fs::write(&path, text).unwrap();
    let out = run(cmd(&["check-config", path.to_str().unwrap()]), None, LIMIT).await;
    assert_exit(&out, 1, "check-config bad file");
    assert!(
        out.stderr.contains("line 8"),
        "no line number: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("chekout_timeout"),
        "key not named: {}",
        out.stderr
    );
}

#[tokio::test]
async fn check_config_rejects_a_bad_value_with_line_and_key() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("bad_value.toml");
    // Line 7: a string where the pool size wants a number.
    let text = good_config().replace("size = 4", "size = \"four\"");
    std::fs::write(&path, text).unwrap();
    let out = run(cmd(&["check-config", path.to_str().unwrap()]), None, LIMIT).await;
    assert_exit(&out, 1, "check-config bad value");
    assert!(out.stderr.contains("line 7"), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("size"), "stderr: {}", out.stderr);
}

#[tokio::test]
async fn check_config_on_a_missing_file_fails() {
    let out = run(
        cmd(&["check-config", "/nonexistent/lagrouter.toml"]),
        None,
        LIMIT,
    )
    .await;
    assert_exit(&out, 1, "check-config missing file");
    assert!(
        out.stderr.contains("/nonexistent/lagrouter.toml"),
        "path not named: {}",
        out.stderr
    );
}

async fn answers(port: u16) {
    let conn = support::try_connect_str(&format!(
        "host=127.0.0.1 port={port} user=app password=app dbname=app"
    ))
    .await
    .unwrap_or_else(|e| panic!("connect to lagrouter run: {}", support::describe(&e)));
    assert_eq!(
        support::scalar(&conn, "select 40 + 2").await.as_deref(),
        Some("42")
    );
}

/// `lagrouter run` serves a query through the proxy and exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_clients_and_stops_on_sigterm() {
    let c = blocking(|c| c).await;
    let dir = TempDir::new("cli");
    let (child, port) = spawn_run(&dir, &ProxyBuilder::new().toml(c)).await;
    answers(port).await;
    stop(child).await;
}

/// 64 logged-in clients each declare a Query of 1 GiB - 1 bytes and send
/// 64 KiB of it, while lagrouter runs under an address-space limit of its
/// size at rest plus 256 MiB (RLIMIT_AS, set on the running process).
/// Memory follows the bytes that arrived, not the declared lengths: it
/// keeps serving, and its size grows by a few MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_lengths_commit_no_memory_under_an_address_space_limit() {
    support::ensure_role("lr_big").await;
    let c = blocking(|c| c).await;
    let dir = TempDir::new("cli-rlimit");
    let toml = ProxyBuilder::new()
        .user("name = \"lr_big\"\npassword = \"lr_big\"\nauth = \"trust\"")
        .toml(c);
    let (child, port) = spawn_run(&dir, &toml).await;
    answers(port).await;
    let pid = child.id().expect("pid") as i32;
    let at_rest = status_bytes(pid, "VmSize");
    let headroom = 256u64 << 20;
    let limit = libc::rlimit {
        rlim_cur: at_rest + headroom,
        rlim_max: at_rest + headroom,
    };
    // SAFETY: prlimit on our own child with a valid struct.
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_AS, &limit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut clients = Vec::new();
    for _ in 0..64 {
        let mut raw = support::raw::RawConn::login_trust(addr, "lr_big").await;
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((1i32 << 30) - 1).to_be_bytes());
        msg.extend_from_slice(&vec![b' '; 64 << 10]);
        raw.send(&msg)
            .await
            .expect("send the start of a huge query");
        clients.push(raw);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    answers(port).await;
    let grown = status_bytes(pid, "VmSize").saturating_sub(at_rest);
    eprintln!(
        "64 clients declaring 1 GiB each: lagrouter's address space grew by {} KiB \
         (limit: {} MiB over its {} MiB at rest)",
        grown >> 10,
        headroom >> 20,
        at_rest >> 20
    );
    let mut child = child;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "lagrouter exited"
    );
    assert!(grown < headroom, "grew by {grown} bytes");
    drop(clients);
    stop(child).await;
}

/// `cmd` with its open-file limit set to `soft`/`hard` before exec.
fn with_nofile(mut c: Command, soft: u64, hard: u64) -> Command {
    // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
    unsafe {
        c.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// Under a hard open-file limit too small for `max_client_connections`
/// and the pools, `lagrouter run` refuses to start and names both numbers;
/// with room under the hard limit it raises its soft limit to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_file_limit_is_raised_or_refused() {
    let dir = TempDir::new("cli-nofile");
    let path = dir.path().join("run.toml");
    std::fs::write(&path, good_config()).unwrap();
    let refused = run(
        with_nofile(cmd(&["run", "-c", path.to_str().unwrap()]), 1000, 1000),
        None,
        LIMIT,
    )
    .await;
    assert_exit(&refused, 1, "run under a 1000-file limit");
    for number in ["10000", "1000", "max_client_connections"] {
        assert!(
            refused.stderr.contains(number),
            "{number} not named: {}",
            refused.stderr
        );
    }
    let hard = 16_384;
    let mut child = with_nofile(cmd(&["run", "-c", path.to_str().unwrap()]), 1000, hard)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = tokio::time::timeout(LIMIT, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("accepting clients") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(started, Ok(true), "lagrouter run started");
    let pid = child.id().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    eprintln!("{line}");
    let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(soft, hard, "soft limit raised to the hard one: {line}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    stop(child).await;
}
