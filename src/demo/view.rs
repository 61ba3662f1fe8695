//! The live view: a compact block redrawn in place on a terminal (ANSI
//! cursor-up), or one status line every few seconds plus each event as it
//! happens when the output is a pipe or a file, so logs stay readable.

use std::io::Write;
use std::time::{Duration, Instant};

use lagrouter_health::{HealthSnapshot, NodeHealth, NodeState};
use lagrouter_routing::BreakerStatus;

use super::timeline::{Event, bytes};
use super::workload::Stats;

/// Width of the progress bar in characters.
const BAR: usize = 30;
/// Events shown in the block on a terminal.
const EVENT_LINES: usize = 4;
/// Widest event text in the block (the rest of the line is indent and time).
const EVENT_WIDTH: usize = 64;
/// Interval between status lines when not on a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// Everything one frame shows.
pub struct Frame<'a> {
    pub elapsed: Duration,
    pub total: Duration,
    /// A word on what the run is doing ("running", "stopping", …).
    pub phase: &'a str,
    pub snapshot: &'a HealthSnapshot,
    pub breaker: &'a BreakerStatus,
    pub stats: &'a Stats,
    /// Every event so far, oldest first.
    pub events: &'a [Event],
}

/// Draws frames to stdout.
pub struct LiveView {
    tty: bool,
    /// Lines of the block on screen, to move back over.
    drawn: usize,
    last_plain: Option<Instant>,
    /// Events already printed (plain mode).
    events_printed: usize,
}

impl LiveView {
    pub fn new(tty: bool) -> LiveView {
        LiveView {
            tty,
            drawn: 0,
            last_plain: None,
            events_printed: 0,
        }
    }

    /// Shows `f`: redraws the block, or prints new events and (every
    /// `PLAIN_EVERY`, or when `force`) a status line.
    pub fn draw(&mut self, f: &Frame<'_>, force: bool) {
        let mut out = String::new();
        if self.tty {
            if self.drawn > 0 {
                out.push_str(&format!("\x1b[{}A", self.drawn));
            }
            let lines = block(f);
            for l in &lines {
                // Back to column 0 (a `^C` echo may have moved the cursor)
                // and clear: the previous frame's line may be longer.
                out.push_str("\r\x1b[2K");
                out.push_str(l);
                out.push('\n');
            }
            self.drawn = lines.len();
        } else {
            for e in f.events.iter().skip(self.events_printed) {
                out.push_str(&format!("  {:>6.1}s  {}\n", e.at.as_secs_f64(), e.text));
            }
            self.events_printed = f.events.len();
            if force || self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
                out.push_str(&status_line(f));
                out.push('\n');
                self.last_plain = Some(Instant::now());
            }
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
}

/// The terminal block; always the same height for a given node count, so
/// cursor-up lands on its first line.
fn block(f: &Frame<'_>) -> Vec<String> {
    let mut l = Vec::new();
    l.push(format!(
        "{} {:>6.1}s / {}s  {}",
        progress_bar(f.elapsed, f.total),
        f.elapsed.as_secs_f64(),
        f.total.as_secs(),
        f.phase
    ));
    l.push(format!(
        "  {:<10} {:<12} {:>10} {:>8} {:>9}",
        "node", "state", "lag", "lag ms", "reads"
    ));
    for (i, n) in f.snapshot.nodes.iter().enumerate() {
        let state = format!("{:<12}", state_label(n));
        l.push(format!(
            "  {:<10} {} {:>10} {:>8} {:>9}",
            n.name,
            paint(n.state(), &state),
            lag_bytes(n),
            lag_ms(n),
            f.stats.reads_on(i)
        ));
    }
    l.push(format!(
        "  breaker {}, primary-read share {:.0}%",
        f.breaker.state.as_str(),
        f.breaker.share * 100.0,
    ));
    l.push(format!(
        "  writes {} · reads {} · errors {} · read-your-writes violations: {}",
        f.stats.writes(),
        f.stats.reads(),
        f.stats.error_count(),
        verdict_count(f.stats.violations())
    ));
    l.push("  events:".to_owned());
    let recent = &f.events[f.events.len().saturating_sub(EVENT_LINES)..];
    for i in 0..EVENT_LINES {
        l.push(match recent.get(i) {
            Some(e) => format!("    {:>6.1}s  {}", e.at.as_secs_f64(), clip(&e.text)),
            None => String::new(),
        });
    }
    l
}

/// One line for logs and pipes.
fn status_line(f: &Frame<'_>) -> String {
    let nodes: Vec<String> = f
        .snapshot
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| match n.in_recovery {
            Some(false) => format!(
                "{} {} reads {}",
                n.name,
                state_label(n),
                f.stats.reads_on(i)
            ),
            _ => format!(
                "{} {} lag {}/{} ms reads {}",
                n.name,
                state_label(n),
                lag_bytes(n),
                lag_ms(n),
                f.stats.reads_on(i)
            ),
        })
        .collect();
    format!(
        "[{:>6.1}s/{}s] {} | breaker {} {:.0}% | writes {} reads {} errors {} | violations {}",
        f.elapsed.as_secs_f64(),
        f.total.as_secs(),
        nodes.join(" | "),
        f.breaker.state.as_str(),
        f.breaker.share * 100.0,
        f.stats.writes(),
        f.stats.reads(),
        f.stats.error_count(),
        f.stats.violations()
    )
}

/// An event cut to fit an 80-column terminal: a wrapped line would throw
/// off the cursor-up count of the next redraw.
fn clip(text: &str) -> String {
    match text.char_indices().nth(EVENT_WIDTH) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn progress_bar(elapsed: Duration, total: Duration) -> String {
    let frac = if total.is_zero() {
        1.0
    } else {
        (elapsed.as_secs_f64() / total.as_secs_f64()).min(1.0)
    };
    let full = (frac * BAR as f64).round() as usize;
    format!("[{}{}]", "█".repeat(full), "░".repeat(BAR - full))
}

/// The state, with the good checks of a recovering node.
pub fn state_label(n: &NodeHealth) -> String {
    match n.state() {
        NodeState::Recovering { good_checks } => format!("recovering {good_checks}"),
        s => s.as_str().to_owned(),
    }
}

/// Lag in bytes; the primary's own is not lag, so it shows as `-`.
pub fn lag_bytes(n: &NodeHealth) -> String {
    match (n.in_recovery, n.lag_bytes) {
        (Some(false), _) | (_, None) => "-".to_owned(),
        (_, Some(b)) => bytes(b),
    }
}

pub fn lag_ms(n: &NodeHealth) -> String {
    match (n.in_recovery, n.lag_time) {
        (Some(false), _) | (_, None) => "-".to_owned(),
        (_, Some(t)) => t.as_millis().to_string(),
    }
}

/// Green for healthy, yellow for lagging or recovering, red for unreachable.
fn paint(state: NodeState, text: &str) -> String {
    let color = match state {
        NodeState::Healthy => "32",
        NodeState::Lagging | NodeState::Recovering { .. } => "33",
        NodeState::Unreachable => "31",
    };
    format!("\x1b[{color}m{text}\x1b[0m")
}

/// `0 ✓` or the count, for the one number that must stay zero.
pub fn verdict_count(violations: u64) -> String {
    if violations == 0 {
        "0 ✓".to_owned()
    } else {
        format!("{violations} ✗")
    }
}
