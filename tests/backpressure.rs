//! Backpressure both ways, with the lagrouter binary in its own process:
//!
//! - a client that pipelines 50 MB of requests whose answers total about
//!   500 MB, reading while it writes, never deadlocks: lagrouter hands the
//!   server's answers on to the client while it is still writing requests;
//! - a client that asks for a 300 MB result and reads nothing for 6 s costs
//!   lagrouter less than 16 MiB of RSS: it stops reading from the server
//!   while the client does not read.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::process::{spawn_run, status_bytes, stop};
use support::raw::{RawConn, query};
use support::{ProxyBuilder, TempDir, blocking, ensure_role, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER: &str = "lr_pressure";

async fn start(tag: &str) -> (TempDir, tokio::process::Child, SocketAddr) {
    ensure_role(USER).await;
    let c = blocking(|c| c).await;
    let dir = TempDir::new(tag);
    let toml = ProxyBuilder::new()
        .user(&format!(
            "name = \"{USER}\"\npassword = \"{USER}\"\nauth = \"trust\""
        ))
        .toml(c);
    let (child, port) = spawn_run(&dir, &toml).await;
    (dir, child, format!("127.0.0.1:{port}").parse().unwrap())
}

/// Counts backend messages in a byte stream cut anywhere.
#[derive(Default)]
struct Counter {
    /// Bytes of the message being read that are still to come.
    skip: usize,
    header: Vec<u8>,
    ready: usize,
    errors: usize,
    bytes: u64,
    /// The body of the error message being read, and the first few read
    /// whole (as text), so a failure says what the errors were.
    error_body: Option<Vec<u8>>,
    error_texts: Vec<String>,
}

impl Counter {
    fn feed(&mut self, mut b: &[u8]) {
        self.bytes += b.len() as u64;
        while !b.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(b.len());
                if let Some(body) = &mut self.error_body {
                    body.extend_from_slice(&b[..n]);
                }
                b = &b[n..];
                self.skip -= n;
                if self.skip == 0 {
                    self.error_done();
                }
                continue;
            }
            let n = (5 - self.header.len()).min(b.len());
            self.header.extend_from_slice(&b[..n]);
            b = &b[n..];
            if self.header.len() == 5 {
                match self.header[0] {
                    b'Z' => self.ready += 1,
                    b'E' => {
                        self.errors += 1;
                        self.error_body = Some(Vec::new());
                    }
                    _ => {}
                }
                let len = i32::from_be_bytes(self.header[1..5].try_into().unwrap());
                assert!(len >= 4, "a backend message of length {len}");
                self.skip = len as usize - 4;
                self.header.clear();
                if self.skip == 0 {
                    self.error_done();
                }
            }
        }
    }

    /// Keeps the text of the error just read whole (its fields, NUL
    /// between them shown as ` | `), up to five of them.
    fn error_done(&mut self) {
        if let Some(body) = self.error_body.take()
            && self.error_texts.len() < 5
        {
            let text = String::from_utf8_lossy(&body);
            self.error_texts
                .push(text.trim_end_matches('\0').replace('\0', " | "));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_large_answers_never_deadlock() {
    const REQUESTS: usize = 50_000;
    const ANSWER: usize = 10_000;
    let (_dir, child, addr) = start("backpressure-pipeline").await;
    let raw = RawConn::login_trust(addr, USER).await;
    let (mut rd, mut wr) = raw.into_stream().into_split();
    // ~1,000 bytes asking for ~10,000: 50 MB of requests, 500 MB of answers.
    let one = query(&format!(
        "select repeat('x', {ANSWER}) /* {} */",
        "p".repeat(980)
    ));
    let sent = one.len() * REQUESTS;
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let batch: Vec<u8> = one.repeat(64);
        let mut left = REQUESTS;
        while left > 0 {
            let n = left.min(64);
            wr.write_all(&batch[..n * one.len()]).await?;
            left -= n;
        }
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut seen = Counter::default();
    let mut buf = vec![0u8; 256 << 10];
    // 15 s here in a debug build; the code before this test deadlocked.
    let read = tokio::time::timeout(Duration::from_secs(120), async {
        while seen.ready < REQUESTS {
            let n = rd.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "lagrouter closed the connection after {} answers",
                seen.ready
            );
            seen.feed(&buf[..n]);
        }
    })
    .await;
    let took = started.elapsed();
    assert!(
        read.is_ok(),
        "deadlock: {} of {REQUESTS} answers ({} MB) after {took:?}",
        seen.ready,
        seen.bytes / 1_000_000
    );
    let _wr = writer.await.unwrap().expect("all requests written");
    eprintln!(
        "pipelined {} MB of requests, read {} MB of answers while writing: \
         {REQUESTS} answers in {:.1} s, {} errors",
        sent / 1_000_000,
        seen.bytes / 1_000_000,
        took.as_secs_f64(),
        seen.errors
    );
    assert_eq!(seen.errors, 0, "errors: {:#?}", seen.error_texts);
    assert!(sent >= 50_000_000, "{sent} bytes of requests");
    assert!(seen.bytes >= 500_000_000, "{} bytes of answers", seen.bytes);
    stop(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_result_costs_no_memory() {
    within(Duration::from_secs(240), "unread result", async {
        const ROWS: usize = 300_000;
        let (_dir, child, addr) = start("backpressure-unread").await;
        let pid = child.id().expect("pid") as i32;
        let mut raw = RawConn::login_trust(addr, USER).await;
        // Warm the path once so first-use allocations are not counted.
        raw.send(&query(
            "select repeat('x', 1000) from generate_series(1, 1000)",
        ))
        .await
        .unwrap();
        let warm = raw.until_ready(Duration::from_secs(30)).await;
        assert!(
            warm.iter().all(|m| m.tag != b'E'),
            "the warming query failed: {warm:?}"
        );
        let at_rest = status_bytes(pid, "VmRSS");
        raw.send(&query(&format!(
            "select repeat('x', 1000) from generate_series(1, {ROWS})"
        )))
        .await
        .unwrap();
        let mut most = 0u64;
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            most = most.max(status_bytes(pid, "VmRSS").saturating_sub(at_rest));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut stream = raw.into_stream();
        let mut seen = Counter::default();
        let mut buf = vec![0u8; 256 << 10];
        while seen.ready == 0 {
            let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf))
                .await
                .expect("the result keeps coming once read")
                .expect("read");
            assert!(n > 0, "closed after {} bytes", seen.bytes);
            seen.feed(&buf[..n]);
        }
        eprintln!(
            "a {} MB result left unread for 6 s: lagrouter's RSS grew by at most {} KiB \
             ({} MiB at rest); then read whole",
            seen.bytes / 1_000_000,
            most >> 10,
            at_rest >> 20
        );
        assert_eq!(seen.errors, 0, "errors: {:#?}", seen.error_texts);
        assert!(seen.bytes >= 300_000_000, "{} bytes", seen.bytes);
        assert!(
            most < 16 << 20,
            "RSS grew by {most} bytes while the client did not read"
        );
        stop(child).await;
    })
    .await
}
