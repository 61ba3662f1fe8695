//! The pgbench benches' steady-window arithmetic (`benches/common`): TPS
//! and proxy CPU per transaction are taken between progress reports, so
//! pgbench's connection phase (seconds, with 400 SCRAM logins) counts in
//! neither.

#[path = "../benches/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use common::{CpuTimes, Mark, Progress, Window, progress_line, round_order};

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
    }
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
    assert_eq!(
        a.tps,
        Some(1000.0),
        "the steady window's rate, not pgbench's"
    );
    assert_eq!(a.window_secs, Some(2.0));
    let b = common::Pgbench::from_log(&log("500.0", true), ok, 8);
    a.combine(&b);
    assert_eq!(a.tps, Some(1500.0));
    assert_eq!(a.xacts, 6000);
    assert_eq!((a.aborted, a.status.as_str()), (1, "ABORT(1)"));
}

#[test]
fn steal_is_the_share_of_all_host_time() {
    assert_eq!(common::steal_share((10, 1000), (35, 1100)), Some(0.25));
    assert_eq!(
        common::steal_share((10, 1000), (10, 1000)),
        None,
        "no time passed"
    );
    let (steal, all) = common::host_ticks().expect("/proc/stat has a cpu line");
    assert!(steal <= all);
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
