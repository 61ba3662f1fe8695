//! pgbench_compare's results: one row per pgbench run, the results file
//! (tab-separated, one run per line) and the per-round arithmetic the
//! README's tables come from. No IO here, so `tests/bench_window.rs`
//! checks it.

use super::{Pgbench, median};

/// A workload and a pgbench -M mode.
pub type Combo = (&'static str, String);

/// One pgbench run.
#[derive(Default, Debug)]
pub struct Run {
    /// Which results file the run came from (`--summarize`; 0 for a live
    /// run): rounds of different files are different rounds.
    pub source: usize,
    pub rep: u32,
    pub workload: &'static str,
    pub mode: String,
    pub target: String,
    pub pg: Pgbench,
}

impl std::ops::Deref for Run {
    type Target = Pgbench;
    fn deref(&self) -> &Pgbench {
        &self.pg
    }
}

/// The runs of one workload/mode on one target.
pub fn runs_of<'a>(runs: &'a [Run], wm: &'a Combo, t: &'a str) -> impl Iterator<Item = &'a Run> {
    let same = move |r: &&Run| r.workload == wm.0 && r.mode == wm.1 && r.target == t;
    runs.iter().filter(same)
}

/// Runs whose host lost more than this share of its CPU to other guests
/// (steal) are left out of the medians: their numbers measure the host.
pub const MAX_STEAL: f64 = 0.10;

/// Whether `r` enters the medians: pgbench ran clean (with aborted clients
/// the TPS covers the survivors only and is not comparable) and the host
/// was not busy with other guests.
pub fn clean(r: &Run) -> bool {
    r.status == "ok" && stolen(r).is_none()
}

/// The host's steal during `r`, when it was over [`MAX_STEAL`].
pub fn stolen(r: &Run) -> Option<f64> {
    r.steal.filter(|&s| s > MAX_STEAL)
}

/// Median of `value` over the clean runs only.
pub fn median_of(runs: &[Run], wm: &Combo, t: &str, value: fn(&Run) -> Option<f64>) -> Option<f64> {
    median(
        runs_of(runs, wm, t)
            .filter(|r| clean(r))
            .filter_map(value)
            .collect(),
    )
}

/// `a`'s TPS over `b`'s in each round (of each results file) where both
/// ran clean.
pub fn round_ratios(runs: &[Run], wm: &Combo, a: &str, b: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for ra in runs_of(runs, wm, a).filter(|r| clean(r)) {
        let rb = runs_of(runs, wm, b)
            .filter(|r| clean(r))
            .find(|r| (r.source, r.rep) == (ra.source, ra.rep));
        if let (Some(x), Some(y)) = (ra.tps, rb.and_then(|r| r.tps))
            && y > 0.0
        {
            out.push(x / y);
        }
    }
    out
}

/// "median (min-max, count)" of `v`, or "-". From nine values on, where
/// it is narrower than the range, the interval that holds the true median
/// with at least 95% confidence follows ("; 95% lo-hi", see
/// [`median_interval`]): a ratio whose interval lies wholly below 1.0 is
/// below, one that holds 1.0 cannot be told from it.
pub fn spread(v: &[f64]) -> String {
    match (median(v.to_vec()), v.iter().copied().reduce(f64::min)) {
        (Some(m), Some(lo)) => {
            let hi = v.iter().copied().fold(lo, f64::max);
            let n = v.len();
            match median_interval(v) {
                Some((a, b)) if (a, b) != (lo, hi) => {
                    format!("{m:.2} ({lo:.2}-{hi:.2}, {n}; 95% {a:.2}-{b:.2})")
                }
                _ => format!("{m:.2} ({lo:.2}-{hi:.2}, {n})"),
            }
        }
        _ => "-".into(),
    }
}

/// A distribution-free confidence interval of at least 95% for the median
/// of the population `v` was drawn from: the k-th smallest and k-th largest
/// value, for the largest k with P(B < k) <= 2.5%, B ~ Binomial(n, 1/2)
/// (each value is below the median with probability one half, whatever
/// the distribution). `None` under six values, where even the range holds
/// the median with less than 95% (n = 5: 93.75%), and over 1,000 (2^n
/// would leave the floats).
pub fn median_interval(v: &[f64]) -> Option<(f64, f64)> {
    let n = v.len();
    if !(6..=1000).contains(&n) {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    // P(B <= j), accumulated in exact steps: C(n, j) / 2^n.
    let mut below = 0.0;
    let mut c = 1.0_f64;
    let mut k = 0;
    for j in 0..n {
        below += c / 2f64.powi(n as i32);
        if below > 0.025 {
            break;
        }
        k = j + 1;
        c = c * (n - j) as f64 / (j + 1) as f64;
    }
    (k >= 1).then(|| (s[k - 1], s[n - k]))
}

/// The header line of a results file.
pub const TSV_HEAD: &str = "rep workload mode target tps lat_ms xacts failed aborted_clients status \
                            cpu_us_per_txn user_us_per_txn sys_us_per_txn switches_per_txn window_s steal host_us_per_txn \
                            first_error";

/// A results file's text: the header, then one line per run (numbers to
/// three decimals, an unknown one empty; the error text last, the only
/// cell that may hold spaces).
pub fn tsv_text(runs: &[Run]) -> String {
    let mut out = TSV_HEAD.replace(' ', "\t");
    out.push('\n');
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    for r in runs {
        let (rep, wl, mode, t) = (r.rep, r.workload, &r.mode, &r.target);
        let (tps, lat, xacts, failed) = (opt(r.tps), opt(r.lat_ms), r.xacts, r.failed);
        let (aborted, status, cpu) = (r.aborted, &r.status, opt(r.cpu_us));
        let (user, sys, switches) = (opt(r.user_us), opt(r.sys_us), opt(r.switches));
        let (window, steal, host) = (opt(r.window_secs), opt(r.steal), opt(r.host_us));
        let row = format!("{rep} {wl} {mode} {t} {tps} {lat} {xacts} {failed} {aborted}");
        let row = format!("{row} {status} {cpu} {user} {sys} {switches} {window} {steal} {host}");
        out.push_str(&row.replace(' ', "\t"));
        out.push('\t');
        // One line per run, whatever the error said.
        out.push_str(&r.error.replace(['\t', '\n', '\r'], " "));
        out.push('\n');
    }
    out
}

/// The runs of a results file's text (see [`tsv_text`]); `source` tells
/// its rounds from other files', `workloads` are the names a row may
/// have. An error names the line ("3: not a pgbench_compare results row").
pub fn parse_tsv(
    text: &str,
    source: usize,
    workloads: &[&'static str],
) -> Result<Vec<Run>, String> {
    let mut runs = Vec::new();
    // Files written before the host's CPU was measured have no
    // host_us_per_txn column: the error text follows steal.
    let with_host = text
        .lines()
        .next()
        .is_some_and(|h| h.split('\t').any(|c| c == "host_us_per_txn"));
    let error_at = if with_host { 17 } else { 16 };
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let bad = || format!("{}: not a pgbench_compare results row", n + 1);
        if f.len() < error_at {
            return Err(bad());
        }
        let opt = |i: usize| -> Result<Option<f64>, String> {
            match f[i] {
                "" => Ok(None),
                v => v.parse().map(Some).map_err(|_| bad()),
            }
        };
        let workload = workloads
            .iter()
            .copied()
            .find(|w| *w == f[1])
            .ok_or_else(bad)?;
        runs.push(Run {
            source,
            rep: f[0].parse().map_err(|_| bad())?,
            workload,
            mode: f[2].to_string(),
            target: f[3].to_string(),
            pg: Pgbench {
                tps: opt(4)?,
                lat_ms: opt(5)?,
                xacts: f[6].parse().map_err(|_| bad())?,
                failed: f[7].parse().map_err(|_| bad())?,
                aborted: f[8].parse().map_err(|_| bad())?,
                status: f[9].to_string(),
                cpu_us: opt(10)?,
                user_us: opt(11)?,
                sys_us: opt(12)?,
                switches: opt(13)?,
                window_secs: opt(14)?,
                steal: opt(15)?,
                host_us: if with_host { opt(16)? } else { None },
                error: f.get(error_at).unwrap_or(&"").to_string(),
            },
        });
    }
    Ok(runs)
}
