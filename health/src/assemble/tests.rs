use super::*;
use crate::observation::HeartbeatSeen;
use crate::{Lsn, NodeState};
use lagrouter_config::Config;

fn config(extra: &str) -> Config {
    Config::from_toml_str(&format!(
        "[[users]]\nname = \"app\"\npassword = \"app\"\n\
         [[nodes]]\nname = \"p\"\nhost = \"h\"\nrole = \"primary\"\n\
         [[nodes]]\nname = \"r1\"\nhost = \"h\"\nrole = \"replica\"\n\
         [[nodes]]\nname = \"r2\"\nhost = \"h\"\nrole = \"replica\"\n\
         [health]\nmax_lag_bytes = 1000\n{extra}"
    ))
    .unwrap()
}

fn obs(in_recovery: bool, lsn: u64, at: Instant, hb: HeartbeatSeen) -> Observation {
    Observation {
        in_recovery,
        current_lsn: (!in_recovery).then_some(Lsn(lsn)),
        timeline: (!in_recovery).then_some(1),
        replay_lsn: in_recovery.then_some(Lsn(lsn)),
        receive_lsn: in_recovery.then_some(Lsn(lsn)),
        last_replay_age: None,
        heartbeat: hb,
        primary_side: None,
        sent_at: at,
        answered_at: at,
    }
}

/// One round of `cfg`'s nodes.
fn round_of(
    cfg: &Config,
    prev: &HealthSnapshot,
    results: &[Result<Observation, ProbeError>],
    history: &PrimaryHistory,
    now: Instant,
) -> Assembled {
    assemble(
        prev,
        &cfg.nodes,
        results,
        &cfg.health,
        &cfg.safety,
        history,
        now,
    )
}

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

const HB: HeartbeatSeen = HeartbeatSeen::Age(Duration::from_millis(300));

#[test]
fn replicas_are_measured_against_the_later_primary_sample() {
    let cfg = config("");
    let t0 = Instant::now();
    let prev = HealthSnapshot::initial(&cfg);
    let results = [
        Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
        Ok(obs(true, 4500, ms(t0, 1), HB)),
        Ok(obs(true, 3000, ms(t0, 1), HB)),
    ];
    let a = round_of(&cfg, &prev, &results, &PrimaryHistory::default(), ms(t0, 3));
    let s = &a.snapshot;
    assert_eq!(s.seq, 1);
    assert_eq!(s.primary, PrimaryStatus::One(0));
    assert_eq!(s.primary_problem, None);
    assert_eq!(s.primary_lsn, Some(Lsn(5000)));
    assert_eq!(s.primary_lsn_sampled_at, Some(ms(t0, 2)));
    let lags: Vec<_> = s.nodes.iter().map(|n| n.lag_bytes).collect();
    assert_eq!(lags, [Some(0), Some(500), Some(2000)]);
    let states: Vec<_> = s.nodes.iter().map(|n| n.state()).collect();
    // First checks: a node never demoted is admitted by its first good one.
    let ok = NodeState::Healthy;
    assert_eq!(states, [ok, ok, NodeState::Lagging]);
    assert_eq!(s.nodes[1].lag_time, Some(Duration::from_millis(300)));
    assert_eq!(
        s.nodes[0].replay_lsn,
        Some(Lsn(5000)),
        "the primary's is its current LSN"
    );
    assert_eq!(s.nodes[1].last_check, Some(ms(t0, 3)));
    assert_eq!(a.changes.len(), 3, "first check of every node is a change");
}

#[test]
fn the_write_gate_has_its_own_limit_and_the_same_hysteresis() {
    // Routing allows 1000 bytes, the gate only 400.
    let cfg = config("[safety]\nmin_replicas_to_write = 1\nmin_replicas_max_lag_bytes = 400\n");
    let t0 = Instant::now();
    let round = |prev: &HealthSnapshot, r1: u64, at: u64| {
        let results = [
            Ok(obs(false, 5000, ms(t0, at + 1), HeartbeatSeen::NotRead)),
            Ok(obs(true, r1, ms(t0, at), HB)),
            Ok(obs(true, 5000, ms(t0, at), HB)),
        ];
        round_of(
            &cfg,
            prev,
            &results,
            &PrimaryHistory::default(),
            ms(t0, at + 2),
        )
        .snapshot
    };
    let s = round(&HealthSnapshot::initial(&cfg), 4500, 0);
    // r1 is 500 behind: fine for reads, out of the gate.
    assert_eq!(s.nodes[1].state(), NodeState::Healthy);
    assert_eq!(s.nodes[1].gate.state, NodeState::Lagging);
    assert_eq!(s.nodes[2].gate.state, NodeState::Healthy);
    assert_eq!(s.gate_replicas(), 1, "the primary never counts");
    // Back within 400: recovering for two checks, counted on the third.
    let s = round(&s, 4900, 10);
    assert_eq!(
        s.nodes[1].gate.state,
        NodeState::Recovering { good_checks: 1 }
    );
    let s = round(&s, 4900, 20);
    assert_eq!(s.gate_replicas(), 1);
    let s = round(&s, 4900, 30);
    assert_eq!(s.nodes[1].gate.state, NodeState::Healthy);
    assert_eq!(s.gate_replicas(), 2);
    // Data at risk: the freshest replica has everything.
    assert_eq!(s.risk.following_replicas, 2);
    assert_eq!(s.risk.unreplayed_bytes, Some(0));
    assert_eq!(s.risk.unreceived_bytes, Some(0));
}

#[test]
fn caught_up_replica_has_zero_time_lag_and_heartbeat_off_is_unknown() {
    let t0 = Instant::now();
    for (extra, want) in [
        ("", Some(Duration::ZERO)),
        ("heartbeat_interval = \"0s\"", None),
    ] {
        let cfg = config(extra);
        let results = [
            Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
            Ok(obs(true, 5000, ms(t0, 1), HB)),
            Ok(obs(true, 5000, ms(t0, 1), HeartbeatSeen::NotRead)),
        ];
        let a = round_of(
            &cfg,
            &HealthSnapshot::initial(&cfg),
            &results,
            &PrimaryHistory::default(),
            t0,
        );
        assert_eq!(a.snapshot.nodes[1].lag_time, want, "{extra}");
        assert_eq!(a.snapshot.nodes[1].lag_bytes, Some(0));
    }
}

#[test]
fn unordered_pairing_is_estimated_from_the_sample_and_the_write_rate() {
    let cfg = config("");
    let t0 = Instant::now();
    let results = [
        Ok(obs(false, 5000, ms(t0, 1), HeartbeatSeen::NotRead)),
        Ok(obs(true, 5000, ms(t0, 2), HB)), // answered after the primary was asked
        Ok(obs(true, 5000, ms(t0, 1), HB)),
    ];
    let run = |history: &PrimaryHistory| {
        round_of(&cfg, &HealthSnapshot::initial(&cfg), &results, history, t0)
    };
    // No earlier samples: no known write rate, the sample is the estimate.
    let a = run(&PrimaryHistory::default());
    let r1 = &a.snapshot.nodes[1];
    assert_eq!((r1.lag_bytes, r1.lag_estimated), (Some(0), true));
    assert_eq!(r1.state(), NodeState::Healthy);
    assert!(!a.snapshot.nodes[2].lag_estimated, "r2 was paired");
    // 4 MB/s lately: 1ms of it may be missing (4000 > 1000 allowed).
    let a = run(&crate::lag::history_at(
        &[(0, 0), (250, 1_000_000)],
        ms(t0, 0) - Duration::from_secs(1),
    ));
    let r1 = &a.snapshot.nodes[1];
    assert_eq!(r1.lag_bytes, Some(4000));
    assert_eq!(r1.state(), NodeState::Lagging);
    assert_eq!(r1.cause, Some(Cause::Lag));
}

/// Rounds in which the primary does not answer: replicas are judged
/// on their own evidence and the estimated writes, not demoted for
/// missing a sample.
#[test]
fn a_silent_primary_does_not_demote_fresh_replicas() {
    let cfg = config("");
    let t0 = Instant::now();
    let ok = [
        Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
        Ok(obs(true, 5000, ms(t0, 1), HB)),
        Ok(obs(true, 5000, ms(t0, 1), HB)),
    ];
    // 400 B/s of heartbeats lately.
    let h = crate::lag::history_at(&[(0, 4900), (250, 5000)], t0 - Duration::from_millis(250));
    let first = round_of(&cfg, &HealthSnapshot::initial(&cfg), &ok, &h, t0).snapshot;
    let mut h = h;
    h.record(
        Some("p"),
        Some(PrimarySample {
            lsn: Lsn(5000),
            sent_at: ms(t0, 2),
        }),
    );
    let mut prev = first;
    for (round, primary) in [
        ProbeError::Timeout(Duration::from_secs(1)),
        ProbeError::Timeout(Duration::from_secs(1)),
        ProbeError::Connect("connection refused".into()),
    ]
    .into_iter()
    .enumerate()
    {
        let at = 1000 * (round as u64 + 1);
        let silent = [
            Err(primary),
            Ok(obs(true, 5000, ms(t0, at), HB)),
            Ok(obs(true, 5000, ms(t0, at), HB)),
        ];
        let s = round_of(&cfg, &prev, &silent, &h, ms(t0, at)).snapshot;
        for r in &s.nodes[1..] {
            assert_eq!(r.state(), NodeState::Healthy, "round {round}: {r:?}");
            assert!(r.lag_estimated);
            assert!(
                r.lag_bytes.unwrap() <= 400 * (round as u64 + 1) + 1,
                "{r:?}"
            );
        }
        prev = s;
    }
    let p = &prev.nodes[0];
    assert_eq!(p.state(), NodeState::Unreachable);
    assert_eq!(p.cause, Some(Cause::Refused));
    assert_eq!(prev.primary, PrimaryStatus::One(0), "writes still go there");
}

#[test]
fn failed_check_is_unreachable_and_keeps_last_lsns() {
    let cfg = config("");
    let t0 = Instant::now();
    let ok = [
        Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
        Ok(obs(true, 4900, ms(t0, 1), HB)),
        Ok(obs(true, 4900, ms(t0, 1), HB)),
    ];
    let first = round_of(
        &cfg,
        &HealthSnapshot::initial(&cfg),
        &ok,
        &PrimaryHistory::default(),
        t0,
    )
    .snapshot;
    let slow = [
        Ok(obs(false, 6000, ms(t0, 12), HeartbeatSeen::NotRead)),
        Ok(obs(true, 6000, ms(t0, 11), HB)),
        Err(ProbeError::Timeout(Duration::from_secs(1))),
    ];
    let round = |prev: &HealthSnapshot, results: &[Result<Observation, ProbeError>]| {
        round_of(&cfg, prev, results, &PrimaryHistory::default(), ms(t0, 13))
    };
    // One slow check is missing evidence: state kept.
    let a = round(&first, &slow);
    let r2 = &a.snapshot.nodes[2];
    assert_eq!((r2.state(), r2.status.missed), (NodeState::Healthy, 1));
    assert_eq!(r2.lag_bytes, None);
    assert!(a.changes.is_empty());
    // The second in a row (timeouts_before_unreachable = 2) is not.
    let a = round(&a.snapshot, &slow);
    let r2 = &a.snapshot.nodes[2];
    assert_eq!(r2.state(), NodeState::Unreachable);
    assert_eq!(r2.cause, Some(Cause::Timeout));
    assert!(
        r2.unreachable_reason
            .as_deref()
            .unwrap()
            .contains("check_timeout")
    );
    assert_eq!(r2.replay_lsn, Some(Lsn(4900)));
    assert_eq!(r2.in_recovery, Some(true));
    assert_eq!(a.snapshot.nodes[1].state(), NodeState::Healthy);
    assert_eq!(a.snapshot.seq, 3);
    // A refused connection, or a stall seen on the data path, at once.
    for e in [
        ProbeError::Connect("connection refused".into()),
        ProbeError::Stalled(Duration::from_millis(250)),
    ] {
        let cause = e.cause();
        let down = [slow[0].clone(), slow[1].clone(), Err(e)];
        let r2 = round(&first, &down).snapshot.nodes[2].clone();
        assert_eq!(
            (r2.state(), r2.cause),
            (NodeState::Unreachable, Some(cause))
        );
    }
}

#[test]
fn unreachable_primary_keeps_writes_but_replicas_cannot_be_measured() {
    let cfg = config("");
    let t0 = Instant::now();
    let ok = [
        Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
        Ok(obs(true, 5000, ms(t0, 1), HB)),
        Ok(obs(true, 5000, ms(t0, 1), HB)),
    ];
    let first = round_of(
        &cfg,
        &HealthSnapshot::initial(&cfg),
        &ok,
        &PrimaryHistory::default(),
        t0,
    )
    .snapshot;
    let p_down = [
        Err(ProbeError::Connect("refused".into())),
        Ok(obs(true, 5000, ms(t0, 11), HB)),
        Ok(obs(true, 5000, ms(t0, 11), HB)),
    ];
    let s = round_of(&cfg, &first, &p_down, &PrimaryHistory::default(), t0).snapshot;
    assert_eq!(s.primary, PrimaryStatus::One(0));
    assert_eq!(s.primary_lsn, None);
    assert_eq!(s.nodes[0].state(), NodeState::Unreachable);
    assert_eq!(s.nodes[1].state(), NodeState::Lagging);
}

#[test]
fn split_brain_refuses_writes_and_trusts_no_replica() {
    let cfg = config("");
    let t0 = Instant::now();
    let results = [
        Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
        Ok(obs(false, 4000, ms(t0, 2), HeartbeatSeen::NotRead)),
        Ok(obs(true, 5000, ms(t0, 1), HB)),
    ];
    let s = round_of(
        &cfg,
        &HealthSnapshot::initial(&cfg),
        &results,
        &PrimaryHistory::default(),
        t0,
    )
    .snapshot;
    assert_eq!(s.primary, PrimaryStatus::SplitBrain(vec![0, 1]));
    assert_eq!(s.primary_index(), None);
    assert!(s.primary_problem.unwrap().contains("split brain"));
    assert_eq!(s.primary_lsn, None);
    assert!(s.nodes.iter().all(|n| n.state() == NodeState::Lagging));
    assert_eq!(s.nodes[1].replay_lsn, Some(Lsn(4000)));
}

#[test]
fn replica_on_another_timeline_is_not_following() {
    let cfg = config("");
    let t0 = Instant::now();
    let on = |mut o: Observation, tl| {
        o.timeline = Some(tl);
        o
    };
    let results = [
        Ok(on(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead), 2)),
        Ok(on(obs(true, 5000, ms(t0, 1), HB), 2)),
        Ok(on(obs(true, 6000, ms(t0, 1), HB), 1)), // ahead in bytes, but diverged
    ];
    let a = round_of(
        &cfg,
        &HealthSnapshot::initial(&cfg),
        &results,
        &PrimaryHistory::default(),
        t0,
    );
    assert_eq!(a.snapshot.nodes[1].state(), NodeState::Healthy);
    assert_eq!(a.snapshot.nodes[2].state(), NodeState::Lagging);
    assert_eq!(a.snapshot.nodes[2].lag_bytes, None);
    assert_eq!(a.snapshot.nodes[2].timeline, Some(1));
    assert_eq!(
        a.changes[2].verdict,
        Verdict::OverThreshold(crate::LagExcess::NotFollowing)
    );
}

#[test]
fn max_lag_time_demotes_on_old_heartbeat() {
    let cfg = config("max_lag_time = \"200ms\"");
    let t0 = Instant::now();
    let results = [
        Ok(obs(false, 5000, ms(t0, 2), HeartbeatSeen::NotRead)),
        Ok(obs(true, 4990, ms(t0, 1), HB)),
        Ok(obs(true, 5000, ms(t0, 1), HB)),
    ];
    let s = round_of(
        &cfg,
        &HealthSnapshot::initial(&cfg),
        &results,
        &PrimaryHistory::default(),
        t0,
    )
    .snapshot;
    assert_eq!(
        s.nodes[1].state(),
        NodeState::Lagging,
        "10 bytes behind, heartbeat 300ms old"
    );
    assert_eq!(s.nodes[2].state(), NodeState::Healthy, "caught up");
}

#[test]
fn a_promotion_remembers_where_the_node_left_recovery() {
    let cfg = config("");
    let t0 = Instant::now();
    let round = |prev: &HealthSnapshot, r1_primary: bool, at: u64| {
        let results = [
            Err(ProbeError::Connect("refused".into())),
            Ok(obs(!r1_primary, 4000 + at, ms(t0, at), HB)),
            Ok(obs(true, 4000, ms(t0, at), HB)),
        ];
        round_of(&cfg, prev, &results, &PrimaryHistory::default(), ms(t0, at)).snapshot
    };
    let s = round(&HealthSnapshot::initial(&cfg), false, 0);
    assert_eq!(s.nodes[1].promoted_at, None);
    let s = round(&s, true, 10);
    assert_eq!(
        s.nodes[1].promoted_at,
        Some(Lsn(4000)),
        "its last replay LSN"
    );
    let s = round(&s, true, 20);
    assert_eq!(s.nodes[1].promoted_at, Some(Lsn(4000)), "kept");
}
