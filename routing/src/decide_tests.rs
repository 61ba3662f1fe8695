//! Unit tests of `decide` and `settle`.

use std::time::{Duration, Instant};

use lagrouter_config::{Config, RoutingConfig, RuleConfig};

use super::*;
use crate::classify::analyze;
use crate::functions::{FunctionCatalog, ReadOnlyFunctions};

/// A primary (node 0) and `replicas` healthy, caught-up replicas.
pub(crate) fn cluster(replicas: usize) -> (Config, HealthSnapshot) {
    let mut toml = String::from("[[users]]\nname = \"app\"\npassword = \"x\"\n");
    toml += "[[nodes]]\nname = \"primary\"\nhost = \"127.0.0.1\"\nrole = \"primary\"\n";
    for i in 1..=replicas {
        toml += &format!(
            "[[nodes]]\nname = \"replica{i}\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"replica\"\n",
            5432 + i
        );
    }
    let config = Config::from_toml_str(&toml).expect("test config");
    let mut snap = HealthSnapshot::initial(&config);
    for (i, n) in snap.nodes.iter_mut().enumerate() {
        n.status.state = NodeState::Healthy;
        n.gate.state = NodeState::Healthy;
        n.in_recovery = Some(i != 0);
        n.replay_lsn = Some(Lsn(1000));
        n.lag_bytes = Some(0);
        n.lag_time = Some(Duration::from_millis(10));
    }
    (config, snap)
}

struct Case {
    cfg: RoutingConfig,
    snap: HealthSnapshot,
    required: Option<Lsn>,
    session_route: RouteOverride,
    default_read_only: bool,
    ticket: usize,
    drained: Vec<String>,
    gate: Option<WriteGate>,
}

impl Case {
    fn new(replicas: usize) -> Self {
        let (config, snap) = cluster(replicas);
        Case {
            cfg: config.routing,
            snap,
            required: None,
            session_route: RouteOverride::Default,
            default_read_only: false,
            ticket: 0,
            drained: Vec::new(),
            gate: None,
        }
    }

    fn decide_with(
        &self,
        sql: &str,
        in_use: &dyn Fn(usize) -> usize,
    ) -> Result<Decided, RouteError> {
        let a = analyze(
            sql,
            &FunctionCatalog::builtin(),
            &ReadOnlyFunctions::default(),
        );
        let required = self.required.max(a.hints.min_lsn);
        decide(&RouteContext {
            sql,
            analysis: &a,
            session_route: self.session_route,
            default_read_only: self.default_read_only,
            required_lsn: required,
            config: &self.cfg,
            snapshot: &self.snap,
            ticket: self.ticket,
            in_use,
            lag_tie_bytes: 1024,
            drained: &self.drained,
            gate: self.gate,
        })
    }

    fn decide(&self, sql: &str) -> Result<Decided, RouteError> {
        self.decide_with(sql, &|_| 0)
    }

    fn route(&self, sql: &str) -> (usize, Reason) {
        let d = self.decide(sql).expect(sql).decision;
        (d.node, d.reason)
    }
}

#[test]
fn reads_go_to_a_healthy_replica_writes_to_the_primary() {
    let c = Case::new(2);
    assert_eq!(c.route("SELECT 1").1, Reason::Healthy);
    assert_ne!(c.route("SELECT 1").0, 0);
    let d = c.decide("INSERT INTO t VALUES (1)").unwrap();
    assert_eq!(
        (d.decision.node, d.decision.reason, d.decision.write),
        (0, Reason::Write, true)
    );
    assert_eq!(d.breaker, BreakerUse::None);
    assert_eq!(c.route("SELECT nextval('s')"), (0, Reason::Write));
    assert_eq!(c.route("BEGIN"), (0, Reason::Write));
    assert_eq!(c.route("BEGIN READ ONLY").1, Reason::Healthy);
}

#[test]
fn default_transaction_read_only_makes_begin_a_read() {
    let mut c = Case::new(1);
    c.default_read_only = true;
    assert_eq!(c.route("BEGIN"), (1, Reason::Healthy));
    assert_eq!(c.route("BEGIN READ WRITE"), (0, Reason::Write));
}

#[test]
fn writes_refused_without_a_single_primary() {
    let mut c = Case::new(1);
    c.snap.primary = PrimaryStatus::None;
    assert!(matches!(
        c.decide("DELETE FROM t"),
        Err(RouteError::NoPrimary {
            unreachable: false,
            ..
        })
    ));
    assert_eq!(c.route("SELECT 1").0, 1, "reads still flow");
    // A primary that does not answer: 08006, naming the node and why.
    c.snap.nodes[0].status.state = NodeState::Unreachable;
    c.snap.nodes[0].unreachable_reason = Some("connection refused".into());
    let e = c.decide("DELETE FROM t").unwrap_err();
    assert_eq!(e.sqlstate(), "08006");
    let msg = e.to_string();
    assert!(
        msg.contains("\"primary\"") && msg.contains("connection refused"),
        "{msg}"
    );
    c.snap.nodes[0].status.state = NodeState::Healthy;
    c.snap.primary = PrimaryStatus::SplitBrain(vec![0, 1]);
    assert_eq!(
        c.decide("DELETE FROM t"),
        Err(RouteError::SplitBrain("primary, replica1".into()))
    );
    // A node claiming to be primary never serves reads as a replica.
    assert_eq!(
        c.decide("SELECT 1"),
        Err(RouteError::SplitBrain("primary, replica1".into()))
    );
}

#[test]
fn read_your_writes_excludes_replicas_behind_or_unknown() {
    let mut c = Case::new(3);
    c.snap.nodes[1].replay_lsn = Some(Lsn(499));
    c.snap.nodes[2].replay_lsn = None;
    c.snap.nodes[3].replay_lsn = Some(Lsn(500));
    c.required = Some(Lsn(500));
    assert_eq!(c.route("SELECT 1"), (3, Reason::Healthy));
    c.snap.nodes[3].replay_lsn = Some(Lsn(10));
    let d = c.decide("SELECT 1").unwrap();
    assert_eq!(
        (d.decision.node, d.decision.reason),
        (0, Reason::ReadYourWrites)
    );
    assert!(
        matches!(
            d.breaker,
            BreakerUse::Fallback {
                stale: None,
                catch_up: Some(1..=3),
                counted: false
            }
        ),
        "no stale replica has the write, but a healthy one may catch up: {:?}",
        d.breaker
    );
    // A causal token in a comment works the same way.
    c.required = None;
    assert_eq!(
        c.route("/* lagrouter:min_lsn=0/1F4 */ SELECT 1").1,
        Reason::ReadYourWrites
    );
}

/// A write whose position the proxy could not learn: no replica can be
/// shown to have it, however far it has replayed, so the read goes to the
/// primary as a read-your-writes fallback; no replica is waited for and
/// none is served stale.
#[test]
fn an_unresolved_write_reads_from_the_primary_and_waits_for_no_replica() {
    let mut c = Case::new(2);
    c.snap.nodes[1].replay_lsn = Some(Lsn(u64::MAX - 1));
    c.snap.nodes[2].replay_lsn = Some(Lsn(1 << 40));
    c.required = Some(crate::UNRESOLVED_WRITE);
    let d = c.decide("SELECT 1").unwrap();
    assert_eq!(
        (d.decision.node, d.decision.reason, d.decision.primary),
        (0, Reason::ReadYourWrites, true)
    );
    assert_eq!(
        d.breaker,
        BreakerUse::Fallback {
            stale: None,
            catch_up: None,
            counted: false
        }
    );
}

#[test]
fn fallback_reasons() {
    let mut c = Case::new(2);
    c.snap.nodes[1].status.state = NodeState::Lagging;
    c.snap.nodes[2].status.state = NodeState::Recovering { good_checks: 1 };
    c.snap.nodes[1].lag_bytes = Some(5000);
    c.snap.nodes[2].lag_bytes = Some(3000);
    let d = c.decide("SELECT 1").unwrap();
    assert_eq!(
        (d.decision.node, d.decision.reason),
        (0, Reason::LagThresholdExceeded)
    );
    assert_eq!(
        d.breaker,
        BreakerUse::Fallback {
            stale: Some(2),
            catch_up: None,
            counted: false
        },
        "least lagged"
    );
    c.snap.nodes[1].status.state = NodeState::Unreachable;
    c.snap.nodes[2].status.state = NodeState::Unreachable;
    assert_eq!(c.route("SELECT 1"), (0, Reason::NoReplica));
    assert_eq!(Case::new(0).route("SELECT 1"), (0, Reason::NoReplica));
    // No replica configured: reads on the primary are not fallbacks.
    assert_eq!(
        Case::new(0).decide("SELECT 1").unwrap().breaker,
        BreakerUse::None
    );
}

#[test]
fn max_lag_hint_needs_a_known_small_time_lag() {
    let mut c = Case::new(2);
    c.snap.nodes[1].lag_time = Some(Duration::from_millis(500));
    c.snap.nodes[2].lag_time = None;
    assert_eq!(
        c.route("/* lagrouter:max_lag=200ms */ SELECT 1"),
        (0, Reason::LagThresholdExceeded)
    );
    c.snap.nodes[2].lag_time = Some(Duration::from_millis(100));
    assert_eq!(
        c.route("/* lagrouter:max_lag=200ms */ SELECT 1"),
        (2, Reason::Healthy)
    );
}

#[test]
fn hints_then_session_then_rules_then_class() {
    let mut c = Case::new(1);
    c.cfg.rules = vec![
        RuleConfig {
            pattern: regex::Regex::new("orders").unwrap(),
            route: lagrouter_config::RuleRoute::Primary,
        },
        RuleConfig {
            pattern: regex::Regex::new("report").unwrap(),
            route: lagrouter_config::RuleRoute::Replica,
        },
    ];
    assert_eq!(c.route("SELECT * FROM orders"), (0, Reason::Rule));
    assert_eq!(c.route("SELECT * FROM report_rows"), (1, Reason::Rule));
    // A function not known to be read-only may write: no rule or hint sends
    // it to a replica (read_only_functions is how an operator vouches).
    assert_eq!(c.route("SELECT report_fn()"), (0, Reason::Write));
    assert_eq!(
        c.route("/* lagrouter:route=replica */ SELECT report_fn()"),
        (0, Reason::Write)
    );
    assert_eq!(
        c.route("/* lagrouter:route=replica */ SELECT * FROM orders"),
        (1, Reason::Hint)
    );
    assert_eq!(
        c.route("/* lagrouter:route=primary */ SELECT 1"),
        (0, Reason::Hint)
    );
    c.session_route = RouteOverride::Primary;
    assert_eq!(c.route("SELECT 1"), (0, Reason::Hint));
    assert_eq!(
        c.route("/* lagrouter:route=default */ SELECT 1"),
        (1, Reason::Healthy)
    );
    // Forced primary reads are not fallbacks and not writes.
    let d = c.decide("SELECT 1").unwrap();
    assert_eq!((d.breaker, d.decision.write), (BreakerUse::None, false));
    // No hint or rule sends a certain write to a replica.
    c.session_route = RouteOverride::Replica;
    assert_eq!(c.route("UPDATE orders SET a = 1"), (0, Reason::Write));
    assert_eq!(c.route("SELECT * FROM t FOR UPDATE"), (0, Reason::Write));
    assert_eq!(c.route("BEGIN READ WRITE"), (0, Reason::Write));
}

#[test]
fn ignored_hints_become_a_notice() {
    let c = Case::new(1);
    let d = c.decide("/* lagrouter:route=nowhere */ SELECT 1").unwrap();
    assert!(d.decision.notice.unwrap().contains("route=nowhere"));
}

#[test]
fn balance_policies() {
    let mut c = Case::new(3);
    c.snap.nodes[1].lag_bytes = Some(3000);
    c.snap.nodes[2].lag_bytes = Some(100);
    c.snap.nodes[3].lag_bytes = Some(900);
    // least_lag: 100 and 900 bytes are one 1024-byte step: a tie, which
    // sessions (tickets) share; 3000 is a step further.
    let picks: std::collections::BTreeSet<usize> = (0..64)
        .map(|t| {
            c.ticket = t;
            c.route("SELECT 1").0
        })
        .collect();
    assert_eq!(picks, [2, 3].into());
    c.cfg.balance = Balance::RoundRobin;
    let picks: Vec<usize> = (0..3)
        .map(|t| {
            c.ticket = t;
            c.route("SELECT 1").0
        })
        .collect();
    assert_eq!(picks, vec![1, 2, 3]);
    c.cfg.balance = Balance::LeastConnections;
    c.ticket = 0;
    let load = |i: usize| [0, 1, 5, 1][i];
    // 1 and 3 tie on connections; 3 has less lag.
    assert_eq!(c.decide_with("SELECT 1", &load).unwrap().decision.node, 3);
}

/// Rendezvous: a session keeps its replica while the tied set is
/// unchanged; when a replica leaves, only its sessions move, and when it
/// comes back exactly those sessions return to it.
#[test]
fn sessions_follow_a_replica_out_and_back() {
    let mut c = Case::new(3);
    let sessions = 300;
    let place = |c: &mut Case| -> Vec<usize> {
        (0..sessions)
            .map(|t| {
                c.ticket = t;
                c.route("SELECT 1").0
            })
            .collect()
    };
    let before = place(&mut c);
    for r in 1..=3 {
        let n = before.iter().filter(|&&p| p == r).count();
        assert!((60..=140).contains(&n), "replica{r} has {n} of {sessions}");
    }
    assert_eq!(place(&mut c), before, "stable while nothing changes");
    c.snap.nodes[2].status.state = NodeState::Unreachable;
    let during = place(&mut c);
    for (b, d) in before.iter().zip(&during) {
        if *b == 2 {
            assert_ne!(*d, 2);
        } else {
            assert_eq!(b, d, "sessions on other replicas stay");
        }
    }
    c.snap.nodes[2].status.state = NodeState::Healthy;
    assert_eq!(place(&mut c), before, "back to where they were");
}

#[test]
fn settle_applies_the_breaker() {
    let mut c = Case::new(1);
    c.snap.nodes[1].status.state = NodeState::Lagging;
    c.snap.nodes[1].lag_bytes = Some(3 << 20);
    c.snap.nodes[1].lag_time = Some(Duration::from_millis(1500));
    let s = BreakerSettings {
        cap: 0.2,
        window: Duration::from_secs(10),
        min_reads: 1,
        cooldown: Duration::from_secs(5),
        half_open_probes: 1,
    };
    let now = Instant::now();
    let mut b = Breaker::new();
    let d = c.decide("SELECT 1").unwrap();
    let err = settle(
        d.clone(),
        &mut b,
        &s,
        BreakerOpenAction::Reject,
        &c.snap,
        now,
    )
    .unwrap_err();
    assert_eq!(err.sqlstate(), "53400");
    assert!(err.to_string().contains("breaker"));
    let ok = settle(d, &mut b, &s, BreakerOpenAction::ServeStale, &c.snap, now).unwrap();
    assert_eq!(
        (ok.node, ok.reason, ok.primary),
        (1, Reason::StaleServed, false)
    );
    let notice = ok.notice.unwrap();
    assert!(
        notice.contains("replica1") && notice.contains("3.0 MiB") && notice.contains("1500 ms"),
        "{notice}"
    );
    // A read that needs read-your-writes is never served stale.
    c.required = Some(Lsn(2000));
    let d = c.decide("SELECT 1").unwrap();
    let err = settle(d, &mut b, &s, BreakerOpenAction::ServeStale, &c.snap, now).unwrap_err();
    assert!(matches!(err, RouteError::BreakerOpen { .. }));
}

#[test]
fn drained_replicas_get_no_reads() {
    let mut c = Case::new(2);
    c.drained = vec!["replica1".into()];
    for t in 0..8 {
        c.ticket = t;
        assert_eq!(c.route("SELECT 1"), (2, Reason::Healthy));
    }
    // All replicas drained: reads fall back to the primary as if there
    // were none, and a drained node is never offered as a stale read.
    c.drained.push("replica2".into());
    let d = c.decide("SELECT 1").unwrap();
    assert_eq!((d.decision.node, d.decision.reason), (0, Reason::NoReplica));
    assert_eq!(
        d.breaker,
        BreakerUse::Fallback {
            stale: None,
            catch_up: None,
            counted: false
        }
    );
    // Draining never affects writes.
    assert_eq!(c.route("DELETE FROM t"), (0, Reason::Write));
    c.drained.clear();
    assert_eq!(c.route("SELECT 1").1, Reason::Healthy);
}

#[test]
fn the_write_gate_refuses_writes_and_lets_reads_through() {
    let mut c = Case::new(2);
    c.gate = Some(WriteGate {
        min_replicas: 1,
        max_lag_bytes: 4096,
        max_lag_time: None,
    });
    assert!(
        c.decide("INSERT INTO t VALUES (1)").is_ok(),
        "both replicas count"
    );
    for n in &mut c.snap.nodes[1..] {
        n.gate.state = NodeState::Lagging;
    }
    for w in [
        "INSERT INTO t VALUES (1)",
        "BEGIN",
        "BEGIN READ WRITE",
        "SELECT f_unknown()",
        "SELECT 1; DELETE FROM t",
        "/* lagrouter:route=primary */ UPDATE t SET a = 1",
    ] {
        let e = c.decide(w).expect_err(w);
        assert_eq!(e.sqlstate(), "53000", "{w}");
    }
    for r in [
        "SELECT 1",
        "BEGIN READ ONLY",
        "/* lagrouter:route=primary */ SELECT 1",
    ] {
        assert!(c.decide(r).is_ok(), "{r}");
    }
    // Routing's own state is separate: lagging for the gate, still healthy
    // for reads.
    assert_ne!(c.route("SELECT 1").0, 0);
}

#[test]
fn ties_beyond_the_inline_array_are_picked_too() {
    let mut c = Case::new(20);
    for n in c.snap.nodes.iter_mut().skip(1) {
        n.lag_bytes = Some(0);
    }
    let picks: std::collections::BTreeSet<usize> = (0..400)
        .map(|t| {
            c.ticket = t;
            c.route("SELECT 1").0
        })
        .collect();
    assert_eq!(picks, (1..=20).collect());
}

#[test]
fn statements_that_pin_go_to_the_primary_ungated() {
    // Every pinning statement classifies as a write on its own; a read
    // that pins is one an operator vouched for (`read_only_functions`).
    let mut c = Case::new(2);
    assert_eq!(c.route("SELECT pg_advisory_lock(1)"), (0, Reason::Write));
    assert_eq!(c.route("LISTEN chan"), (0, Reason::Write));
    let vouched = ReadOnlyFunctions::new(["pg_advisory_lock"]);
    let pinned = |c: &Case, sql: &str| {
        let a = analyze(sql, &FunctionCatalog::builtin(), &vouched);
        assert!(a.server.pins, "{sql} pins");
        decide(&RouteContext {
            sql,
            analysis: &a,
            session_route: c.session_route,
            default_read_only: false,
            required_lsn: None,
            config: &c.cfg,
            snapshot: &c.snap,
            ticket: 0,
            in_use: &|_| 0,
            lag_tie_bytes: 1024,
            drained: &c.drained,
            gate: c.gate,
        })
        .map(|d| (d.decision.node, d.decision.reason, d.decision.write))
    };
    let sql = "SELECT pg_advisory_lock(1)";
    assert_eq!(pinned(&c, sql), Ok((0, Reason::Pinned, true)));
    c.session_route = RouteOverride::Replica;
    assert_eq!(pinned(&c, sql), Ok((0, Reason::Pinned, true)));
    // Pinning is not writing: the write gate lets it through.
    c.gate = Some(WriteGate {
        min_replicas: 1,
        max_lag_bytes: 4096,
        max_lag_time: None,
    });
    for n in &mut c.snap.nodes[1..] {
        n.gate.state = NodeState::Lagging;
    }
    assert_eq!(pinned(&c, sql), Ok((0, Reason::Pinned, true)));
    assert!(
        c.decide("INSERT INTO t VALUES (1)").is_err(),
        "the gate is on"
    );
    // Without a primary there is nowhere to pin.
    c.snap.primary = PrimaryStatus::None;
    assert!(pinned(&c, sql).is_err());
}
