//! lagrouter's Prometheus endpoint, scraped and read the way the tests
//! need: GET /metrics over a plain socket, and the values of series by
//! name and label.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET /metrics on `port` (no HTTP client dependency), within 10 s.
pub async fn scrape(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics endpoint accepts");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut body))
        .await
        .expect("scrape finishes within 10 s")
        .unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// Values of every series of `name` whose labels contain all of `labels`
/// (each written as `key="value"`).
pub fn series(text: &str, name: &str, labels: &[&str]) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}

/// The single series of `name` with `labels`, if there is one.
pub fn one(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let v = series(text, name, labels);
    assert!(v.len() <= 1, "more than one {name} {labels:?}: {v:?}");
    v.first().copied()
}

/// The sum of every series of `name` with `labels`.
pub fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    series(text, name, labels).iter().sum()
}

/// The value of the first series whose line starts with `prefix` (name
/// plus the labels written in the exporter's order).
pub fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The lines of `name`, for assertion messages.
pub fn lines_of(text: &str, name: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with(name))
        .collect::<Vec<_>>()
        .join("\n")
}
