//! The end of the demo: a table of what each node did, the record of
//! events, and the verdict — zero read-your-writes violations, and the
//! paused replica demoted then re-admitted — which sets the exit status.

use std::fmt::Write;
use std::time::Duration;

use lagrouter_routing::BreakerStatus;

use super::timeline::{Timeline, bytes};
use super::view::verdict_count;
use super::workload::Stats;

/// Events listed in the summary (the latest ones); a flapping breaker
/// could otherwise fill the screen.
const SUMMARY_EVENTS: usize = 20;

/// What the run amounted to.
pub struct Outcome {
    pub text: String,
    /// Zero violations and the demotion and re-admission were seen.
    pub passed: bool,
    pub violations: u64,
}

/// Inputs of the summary.
pub struct Report<'a> {
    pub ran: Duration,
    pub total: Duration,
    pub interrupted: bool,
    pub sessions: usize,
    pub stats: &'a Stats,
    pub timeline: &'a Timeline,
    pub breaker: &'a BreakerStatus,
    /// The replica the script paused.
    pub paused: &'a str,
}

pub fn summarize(r: &Report<'_>) -> Outcome {
    let mut t = String::new();
    let s = r.stats;
    let _ = writeln!(
        t,
        "\n── summary ──────────────────────────────────────────────"
    );
    let _ = writeln!(
        t,
        "ran {:.1}s of {}s{} · {} sessions · {} writes · {} reads · {} errors",
        r.ran.as_secs_f64(),
        r.total.as_secs(),
        if r.interrupted {
            " (stopped by Ctrl-C)"
        } else {
            ""
        },
        r.sessions,
        s.writes(),
        s.reads(),
        s.error_count()
    );
    let _ = writeln!(
        t,
        "  {:<10} {:>9} {:>7} {:>10} {:>11} {:>12}",
        "node", "reads", "share", "max lag", "max lag ms", "not serving"
    );
    let reads = s.reads().max(1) as f64;
    for (i, n) in r.timeline.nodes().iter().enumerate() {
        let served = s.reads_on(i);
        let (lag, lag_ms, out) = if i == 0 {
            ("-".to_owned(), "-".to_owned(), "-".to_owned())
        } else {
            (
                bytes(n.max_lag_bytes),
                n.max_lag_time.as_millis().to_string(),
                format!("{:.1}s", n.demoted_for.as_secs_f64()),
            )
        };
        let _ = writeln!(
            t,
            "  {:<10} {:>9} {:>6.1}% {:>10} {:>11} {:>12}",
            n.name,
            served,
            served as f64 * 100.0 / reads,
            lag,
            lag_ms,
            out
        );
    }
    let _ = writeln!(
        t,
        "breaker: {} at the end, opened {} time(s)",
        r.breaker.state.as_str(),
        r.timeline.breaker_opened()
    );
    for (code, (n, msg)) in s.errors() {
        let _ = writeln!(t, "errors {code}: {n} × (last: {msg})");
    }
    let events = r.timeline.events();
    let _ = writeln!(t, "events:");
    if events.is_empty() {
        let _ = writeln!(t, "  (none)");
    }
    for e in &events[events.len().saturating_sub(SUMMARY_EVENTS)..] {
        let _ = writeln!(t, "  {:>6.1}s  {}", e.at.as_secs_f64(), e.text);
    }

    let violations = s.violations();
    let _ = writeln!(t, "verdict:");
    let _ = writeln!(
        t,
        "  read-your-writes violations: {}   ({} writes, each read back at once)",
        verdict_count(violations),
        s.writes()
    );
    for v in s.kept_violations() {
        let node = v
            .port
            .and_then(|p| s.node_of(p))
            .and_then(|i| r.timeline.nodes().get(i).map(|n| n.name.clone()))
            .unwrap_or_else(|| "an unknown node".to_owned());
        let _ = writeln!(t, "    row {} was missing on {node}", v.id);
    }
    let demoted = r
        .timeline
        .demotions()
        .into_iter()
        .find(|d| d.node == r.paused);
    let readmitted = demoted.as_ref().and_then(|d| {
        r.timeline
            .readmissions()
            .into_iter()
            .find(|a| a.node == r.paused && a.at > d.at)
    });
    let cycle_seen = match (&demoted, &readmitted) {
        (Some(d), Some(a)) => {
            let _ = writeln!(
                t,
                "  {}: demoted at {:.1}s ({}), re-admitted at {:.1}s after {} good checks ✓",
                r.paused,
                d.at.as_secs_f64(),
                d.detail,
                a.at.as_secs_f64(),
                a.detail
            );
            true
        }
        (Some(d), None) => {
            let _ = writeln!(
                t,
                "  {}: demoted at {:.1}s ({}), not re-admitted before the end ✗",
                r.paused,
                d.at.as_secs_f64(),
                d.detail
            );
            false
        }
        _ if r.interrupted => {
            let _ = writeln!(t, "  {}: stopped before its demotion", r.paused);
            false
        }
        _ => {
            let _ = writeln!(t, "  {}: no demotion observed ✗", r.paused);
            false
        }
    };
    Outcome {
        text: t,
        passed: violations == 0 && cycle_seen,
        violations,
    }
}
