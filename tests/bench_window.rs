//! The pgbench benches' arithmetic (`benches/common`): TPS and proxy CPU
//! per transaction are taken between progress reports, so pgbench's
//! connection phase (seconds, with 400 SCRAM logins) counts in neither;
//! the results file reads back what was written; per-round ratios pair
//! the runs of one round of one file, and only clean ones.

#[path = "../benches/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use common::{
    Combo, CpuTimes, HostTicks, Mark, Pgbench, Progress, Run, Window, median_interval, parse_tsv,
    progress_line, round_order, round_ratios, spread, tsv_text,
};

#[test]
fn progress_reports_are_parsed_and_other_lines_are_not() {
    let line = "progress: 3.0 s, 9247.4 tps, lat 34.200 ms stddev 10.106, 0 failed";
    assert_eq!(
        progress_line(line),
        Some(Progress {
            at: 3.0,
            tps: 9247.4
        })
    );
    for other in [
        "number of transactions actually processed: 57837",
        "tps = 11266.634927 (without initial connection time)",
        "progress: soon",
        "progress: 3.0 s, many tps",
        "",
    ] {
        assert_eq!(progress_line(other), None, "{other:?}");
    }
}

fn mark(at: f64, tps: f64, user: f64) -> Mark {
    Mark {
        line: Progress { at, tps },
        cpu: Some(CpuTimes {
            user,
            sys: user / 2.0,
            switches: (user * 100.0) as u64,
        }),
        // The host is four times as busy as the proxy's user time.
        host: Some(ticks(0, (user * 400.0) as u64, (at * 200.0) as u64)),
    }
}

fn ticks(steal: u64, busy: u64, all: u64) -> HostTicks {
    HostTicks { steal, busy, all }
}

#[test]
fn the_window_starts_once_transactions_run() {
    // 2.9 s of logins (the proxy spent 0.5 s of CPU on them), then three
    // reports with transactions.
    let marks = [
        mark(1.0, 0.0, 0.2),
        mark(2.9, 0.0, 0.5),
        mark(3.0, 9000.0, 0.52),
        mark(4.0, 10000.0, 0.62),
        mark(5.0, 12000.0, 0.74),
    ];
    let w = Window::of(&marks).expect("a window");
    assert_eq!(w.secs, 2.0);
    assert_eq!(w.xacts, 22000.0);
    let (a, b) = w.cpu.expect("cpu at both ends");
    assert_eq!(
        (a.user, b.user),
        (0.52, 0.74),
        "the logins' CPU is left out"
    );
    let (a, b) = w.host.expect("the host's at both ends");
    assert_eq!((a.busy, b.busy), (208, 296), "so is the host's");
    // 88 ticks of busy host over 22,000 transactions.
    let per_txn = common::host_us_per_txn(a, b, w.xacts).unwrap();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    assert!(
        (per_txn - 88.0 / tck * 1e6 / 22000.0).abs() < 1e-9,
        "{per_txn}"
    );
    assert_eq!(
        common::host_us_per_txn(b, a, w.xacts),
        None,
        "time ran back"
    );
    assert_eq!(common::host_us_per_txn(a, b, 0.0), None, "no transactions");
}

#[test]
fn no_window_without_two_reports_of_transactions() {
    assert!(Window::of(&[]).is_none());
    assert!(Window::of(&[mark(1.0, 0.0, 0.1), mark(2.0, 0.0, 0.2)]).is_none());
    assert!(Window::of(&[mark(1.0, 0.0, 0.1), mark(2.0, 500.0, 0.2)]).is_none());
}

#[test]
fn two_halves_of_a_split_run_add_up() {
    let log = |tps: &str, aborted: bool| {
        let mut t = format!(
            "progress: 1.0 s, 0.0 tps, lat 0.0 ms stddev 0.0, 0 failed\n\
             progress: 2.0 s, {tps} tps, lat 1.0 ms stddev 0.1, 0 failed\n\
             progress: 3.0 s, {tps} tps, lat 1.0 ms stddev 0.1, 0 failed\n\
             progress: 4.0 s, {tps} tps, lat 1.0 ms stddev 0.1, 0 failed\n\
             number of transactions actually processed: 3000\n\
             tps = 999.0 (without initial connection time)\n"
        );
        if aborted {
            t.push_str("client 3 aborted in command 1 (SQL) of script 0; ERROR\n");
        }
        t
    };
    let ok = Some(std::process::ExitStatus::default());
    let mut a = common::Pgbench::from_log(&log("1000.0", false), ok, 8);
    // The host's CPU, and the proxy's (one proxy serving both halves, as
    // `pgbouncer-replicas` does), were measured beside the first half only.
    a.host_us = Some(300.0);
    (a.cpu_us, a.user_us, a.sys_us, a.switches) = (Some(30.0), Some(6.0), Some(24.0), Some(3.0));
    assert_eq!(
        a.tps,
        Some(1000.0),
        "the steady window's rate, not pgbench's"
    );
    assert_eq!(a.window_secs, Some(2.0));
    let b = common::Pgbench::from_log(&log("500.0", true), ok, 8);
    a.combine(&b);
    assert_eq!(a.tps, Some(1500.0));
    assert_eq!(a.host_us, Some(200.0), "the host's time over both halves'");
    assert_eq!(
        (a.cpu_us, a.user_us, a.sys_us, a.switches),
        (Some(20.0), Some(4.0), Some(16.0), Some(2.0)),
        "the proxy's time and switches over both halves'"
    );
    assert_eq!(a.xacts, 6000);
    assert_eq!((a.aborted, a.status.as_str()), (1, "ABORT(1)"));
}

#[test]
fn steal_is_the_share_of_all_host_time() {
    let steal = common::steal_share(ticks(10, 500, 1000), ticks(35, 560, 1100));
    assert_eq!(steal, Some(0.25));
    assert_eq!(
        common::steal_share(ticks(10, 500, 1000), ticks(10, 500, 1000)),
        None,
        "no time passed"
    );
    // user nice system idle iowait irq softirq steal guest guest_nice
    let line = "cpu  100 2 30 800 4 5 6 7 0 0";
    assert_eq!(common::host_ticks_of(line), Some(ticks(7, 143, 954)));
    assert_eq!(common::host_ticks_of("cpu  1 2 3"), None, "too short");
    let now = common::host_ticks().expect("/proc/stat has a cpu line");
    assert!(now.steal + now.busy <= now.all, "{now:?}");
}

#[test]
fn no_target_always_follows_the_same_one() {
    let t = ["direct", "pgbouncer", "primary-only", "lagrouter"];
    let round = |r: usize| round_order(&t, r).into_iter().copied().collect::<Vec<_>>();
    assert_eq!(round(0), t);
    assert_eq!(
        round(1),
        ["lagrouter", "primary-only", "pgbouncer", "direct"]
    );
    assert_eq!(
        round(2),
        ["pgbouncer", "primary-only", "lagrouter", "direct"]
    );
    assert_eq!(
        round(3),
        ["direct", "lagrouter", "primary-only", "pgbouncer"]
    );
    // What runs right before a target changes from the first round to the
    // second, and in the default three rounds none runs last every time.
    let before = |r: usize, x: &str| {
        let o = round(r);
        let i = o.iter().position(|y| *y == x).unwrap();
        i.checked_sub(1).map(|j| o[j])
    };
    for x in t {
        assert_ne!(before(0, x), before(1, x), "{x}");
        let last = (0..3).filter(|r| round(*r).last() == Some(&x)).count();
        assert!(last < 3, "{x} ran last in every round");
    }
    assert!(round_order::<u8>(&[], 5).is_empty());
    assert_eq!(round_order(&[1], 1), [&1]);
}

const WORKLOADS: [&str; 2] = ["select", "tpcb"];

fn run(source: usize, rep: u32, target: &str, tps: Option<f64>, status: &str) -> Run {
    Run {
        source,
        rep,
        workload: "select",
        mode: "simple".into(),
        target: target.into(),
        pg: Pgbench {
            tps,
            status: status.into(),
            ..Pgbench::default()
        },
    }
}

#[test]
fn the_results_file_reads_back_what_was_written() {
    let mut full = run(0, 2, "lagrouter", Some(1234.5678), "ok");
    full.workload = "tpcb";
    full.mode = "prepared".into();
    full.pg = Pgbench {
        tps: Some(1234.5678),
        lat_ms: Some(12.0),
        xacts: 6173,
        failed: 1,
        aborted: 2,
        status: "aborted".into(),
        cpu_us: Some(150.25),
        user_us: Some(40.5),
        sys_us: Some(109.75),
        switches: Some(8.5),
        window_secs: Some(4.0),
        steal: Some(0.125),
        host_us: Some(610.5),
        error: "pgbench: error: client 3\tgot\nsome error".into(),
    };
    let sparse = run(0, 0, "pgbouncer", None, "hung");
    let text = tsv_text(&[full, sparse]);
    assert_eq!(
        text.lines().count(),
        3,
        "a header and one line per run:\n{text}"
    );
    let back = parse_tsv(&text, 7, &WORKLOADS).unwrap();
    assert_eq!(back.len(), 2);
    let (a, b) = (&back[0], &back[1]);
    assert_eq!(
        (a.source, a.rep, a.workload, &*a.mode, &*a.target),
        (7, 2, "tpcb", "prepared", "lagrouter")
    );
    assert_eq!(
        (a.tps, a.lat_ms, a.xacts, a.failed, a.aborted),
        (Some(1234.568), Some(12.0), 6173, 1, 2)
    );
    assert_eq!(&*a.status, "aborted");
    assert_eq!(
        (a.cpu_us, a.user_us, a.sys_us),
        (Some(150.25), Some(40.5), Some(109.75))
    );
    assert_eq!(
        (a.switches, a.window_secs, a.steal, a.host_us),
        (Some(8.5), Some(4.0), Some(0.125), Some(610.5))
    );
    assert_eq!(a.error, "pgbench: error: client 3 got some error");
    assert_eq!(
        (b.tps, b.cpu_us, b.steal, b.host_us, &*b.status, &*b.error),
        (None, None, None, None, "hung", "")
    );
    // A file written before the host's CPU was measured: no such column,
    // the error text right after steal.
    let old_head = "rep\tworkload\tmode\ttarget\ttps\tlat_ms\txacts\tfailed\taborted_clients\t\
                    status\tcpu_us_per_txn\tuser_us_per_txn\tsys_us_per_txn\tswitches_per_txn\t\
                    window_s\tsteal\tfirst_error";
    let old_row = "1\tselect\tsimple\tpgbouncer\t43821.500\t0.365\t219107\t0\t0\tok\t\
                   9.100\t1.000\t8.100\t1.220\t4.000\t0.001\tsome error";
    let old = parse_tsv(&format!("{old_head}\n{old_row}\n"), 0, &WORKLOADS).unwrap();
    assert_eq!(
        (old[0].tps, old[0].steal, old[0].host_us, &*old[0].error),
        (Some(43821.5), Some(0.001), None, "some error")
    );
    // Rows that are not results: the line is named.
    let head = text.lines().next().unwrap();
    for (row, what) in [
        ("0\tselect\tsimple", "a short row"),
        (
            &*text.lines().nth(1).unwrap().replace("tpcb", "tpcc"),
            "an unknown workload",
        ),
        (
            &*text.lines().nth(1).unwrap().replace("1234.568", "fast"),
            "a number that is not",
        ),
    ] {
        let e = parse_tsv(&format!("{head}\n{row}\n"), 0, &WORKLOADS).unwrap_err();
        assert!(e.starts_with("2: "), "{what}: {e}");
    }
}

#[test]
fn round_ratios_pair_runs_of_one_round_of_one_file() {
    let wm: Combo = ("select", "simple".into());
    let runs = vec![
        // File 0: rounds 0 and 1.
        run(0, 0, "lagrouter", Some(900.0), "ok"),
        run(0, 0, "pgbouncer", Some(1000.0), "ok"),
        run(0, 1, "lagrouter", Some(1100.0), "ok"),
        run(0, 1, "pgbouncer", Some(1000.0), "ok"),
        // File 1 has a round 0 of its own.
        run(1, 0, "pgbouncer", Some(500.0), "ok"),
        run(1, 0, "lagrouter", Some(600.0), "ok"),
        // Round 2: PgBouncer's run aborted clients; round 3: too much
        // steal; round 4: PgBouncer gave no TPS; round 5: lagrouter alone.
        run(0, 2, "lagrouter", Some(5000.0), "ok"),
        run(0, 2, "pgbouncer", Some(10.0), "aborted"),
        run(0, 3, "lagrouter", Some(5000.0), "ok"),
        run(0, 3, "pgbouncer", Some(10.0), "ok"),
        run(0, 4, "lagrouter", Some(5000.0), "ok"),
        run(0, 4, "pgbouncer", None, "ok"),
        run(0, 5, "lagrouter", Some(5000.0), "ok"),
    ];
    let mut runs = runs;
    runs[9].pg.steal = Some(0.2);
    let r = round_ratios(&runs, &wm, "lagrouter", "pgbouncer");
    assert_eq!(r, [0.9, 1.1, 1.2]);
    assert_eq!(spread(&r), "1.10 (0.90-1.20, 3)");
    assert_eq!(spread(&[]), "-");
    // Another mode's runs are not this one's.
    let other: Combo = ("select", "extended".into());
    assert!(round_ratios(&runs, &other, "lagrouter", "pgbouncer").is_empty());
}

#[test]
fn the_median_interval_is_the_order_statistics_that_hold_95_percent() {
    let v = |n: usize| (1..=n).map(|i| i as f64).collect::<Vec<f64>>();
    // Under six values even the range holds the median with less than 95%.
    assert_eq!(median_interval(&v(5)), None);
    // Six to eight: the range (n = 6: 1 - 2/64 = 96.9%).
    assert_eq!(median_interval(&v(6)), Some((1.0, 6.0)));
    assert_eq!(median_interval(&v(8)), Some((1.0, 8.0)));
    // Nine: P(B <= 1) = 10/512 = 1.95%, P(B <= 2) = 46/512 = 9.0%.
    assert_eq!(median_interval(&v(9)), Some((2.0, 8.0)));
    // Twelve: P(B <= 2) = 79/4096 = 1.9%, P(B <= 3) = 299/4096 = 7.3%.
    assert_eq!(median_interval(&v(12)), Some((3.0, 10.0)));
    // A hundred: the usual table gives the 40th and 61st values.
    assert_eq!(median_interval(&v(100)), Some((40.0, 61.0)));
    // Order does not matter.
    let mut r = v(12);
    r.reverse();
    assert_eq!(median_interval(&r), Some((3.0, 10.0)));
    assert_eq!(median_interval(&v(1001)), None);
    // spread shows the interval only where it is narrower than the range.
    let eight: Vec<f64> = v(8).iter().map(|x| x / 10.0).collect();
    assert_eq!(spread(&eight), "0.45 (0.10-0.80, 8)");
    // Eleven: P(B <= 1) = 12/2048 = 0.6%, P(B <= 2) = 67/2048 = 3.3%.
    let eleven: Vec<f64> = v(11).iter().map(|x| 0.9 + x / 100.0).collect();
    assert_eq!(spread(&eleven), "0.96 (0.91-1.01, 11; 95% 0.92-1.00)");
}
