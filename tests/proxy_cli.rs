//! The `lagrouter` binary: `--help`, `check-config` on a good and a bad
//! file, and `run -c FILE` serving a client and exiting on SIGTERM.

mod support;

use std::time::{Duration, Instant};

use support::process::{Output, run};
use support::{ProxyBuilder, TempDir, blocking};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_lagrouter");
const LIMIT: Duration = Duration::from_secs(30);

fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("RUST_LOG");
    c
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

/// `lagrouter run` serves a query through the proxy and exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_clients_and_stops_on_sigterm() {
    let c = blocking(|c| c).await;
    let dir = TempDir::new("cli");
    let path = dir.path().join("run.toml");
    std::fs::write(&path, ProxyBuilder::new().toml(c)).unwrap();
    let mut child = cmd(&["run", "-c", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn lagrouter run");
    // The listen address is only known from the log line.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + LIMIT;
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
    let conn = support::try_connect_str(&format!(
        "host=127.0.0.1 port={port} user=app password=app dbname=app"
    ))
    .await
    .unwrap_or_else(|e| panic!("connect to lagrouter run: {}", support::describe(&e)));
    assert_eq!(
        support::scalar(&conn, "select 40 + 2").await.as_deref(),
        Some("42")
    );
    drop(conn);
    let pid = child.id().expect("child pid") as i32;
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("lagrouter run did not exit within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
