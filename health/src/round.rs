//! One check round: ask every node, replicas strictly before primaries.
//!
//! Phase A asks the nodes expected to be replicas, all at once, and waits
//! for every answer (or `check_timeout`). Only then does phase B ask the
//! nodes expected to be primary. That order is what makes the paired byte
//! lag an upper bound (see `lag`). "Expected" comes from the previous
//! snapshot, or the configured role before the first answer. If the round
//! finds a different write target than expected, sampled in phase A, phase
//! C asks it once more so this round still has a correctly ordered sample.
//!
//! A node that has not answered after the *look* time (`check_interval`,
//! at least a quarter of `check_timeout`) is looked at through the proxy's
//! own traffic (see `traffic`): if that is stuck too, the node is given up
//! on there and then ([`ProbeError::Stalled`]), so a stopped node stops
//! getting reads well before `check_timeout`; otherwise the round waits on
//! until `check_timeout` and a late answer is only a missed check: one
//! that counts toward `Unreachable` more slowly when the proxy's traffic
//! brought bytes from the node meanwhile ([`ProbeError::Serving`]).

use std::time::Duration;

use lagrouter_config::Config;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};

use crate::HealthSnapshot;
use crate::PrimaryStatus;
use crate::assemble::evidence;
use crate::error::ProbeError;
use crate::primary::detect_primary;
use crate::probe::{NodeProber, ProbeRequest, ProbeResult};
use crate::traffic::{NodeTraffic, Traffic};
use lagrouter_config::NodeRole;
use std::sync::Arc;

/// A check result and how long the round waited for it.
#[derive(Debug)]
pub struct Outcome {
    pub result: ProbeResult,
    pub took: Duration,
}

/// Whether node `i` is expected to be out of recovery this round.
fn expect_primary(prev: &HealthSnapshot, config: &Config, i: usize) -> bool {
    let role = config.nodes[i].role;
    let last = prev.nodes.get(i).filter(|n| n.name == config.nodes[i].name);
    match last.and_then(|n| n.in_recovery) {
        Some(in_recovery) => !in_recovery,
        None => role == NodeRole::Primary,
    }
}

/// Runs one round against `probers` (aligned with `config.nodes`).
pub async fn run_round(
    probers: &[NodeProber],
    prev: &HealthSnapshot,
    config: &Config,
    traffic: &Traffic,
) -> Vec<Outcome> {
    let n = probers.len().min(config.nodes.len());
    let paths: Vec<Arc<NodeTraffic>> = config.nodes[..n]
        .iter()
        .map(|node| traffic.node(&node.name))
        .collect();
    let (phase_b, phase_a): (Vec<usize>, Vec<usize>) =
        (0..n).partition(|&i| expect_primary(prev, config, i));
    let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
    for phase in [phase_a, phase_b.clone()] {
        for (i, o) in ask(probers, &phase, config, &paths).await {
            outcomes[i] = Some(o);
        }
    }
    let mut outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or(Outcome {
                result: Err(ProbeError::Task("not asked")),
                took: Duration::ZERO,
            })
        })
        .collect();

    let results: Vec<ProbeResult> = outcomes.iter().map(|o| o.result.clone()).collect();
    let decision = detect_primary(
        &evidence(prev, &config.nodes, &results),
        config.health.prefer_highest_timeline,
    );
    let unexpected = match decision.status {
        PrimaryStatus::One(p) if !phase_b.contains(&p) && outcomes[p].result.is_ok() => Some(p),
        _ => None,
    };
    if let Some(p) = unexpected {
        // Phase C: the write target was sampled among the replicas; ask it
        // again now that they have all answered. Keep the old answer if
        // this one fails: pairing then reports the lag as unknown.
        let again = ask(probers, &[p], config, &paths)
            .await
            .pop()
            .map(|(_, o)| o);
        if let Some(o) = again.filter(|o| o.result.is_ok()) {
            outcomes[p] = o;
        }
    }
    outcomes
}

/// Asks `nodes` at once and waits for all answers until `check_timeout`.
async fn ask(
    probers: &[NodeProber],
    nodes: &[usize],
    config: &Config,
    paths: &[Arc<NodeTraffic>],
) -> Vec<(usize, Outcome)> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let h = &config.health;
    let start = Instant::now();
    let deadline = start + h.check_timeout;
    let heartbeat_table = (!h.heartbeat_interval.is_zero()).then(|| h.heartbeat_table.clone());
    let pending: Vec<(usize, oneshot::Receiver<ProbeResult>)> = nodes
        .iter()
        .map(|&i| {
            let (reply, _) = oneshot::channel();
            let rx = probers[i].probe(ProbeRequest {
                deadline,
                heartbeat_table: heartbeat_table.clone(),
                check_interval: h.check_interval,
                check_timeout: h.check_timeout,
                reply,
            });
            (i, rx)
        })
        .collect();
    // Each answer is awaited on its own so `took` is that node's time,
    // not the time until the round got round to looking at it.
    let grace = deadline + h.check_timeout / 10;
    let look = start
        + h.check_interval
            .max(h.check_timeout / 4)
            .min(h.check_timeout);
    let mut set = tokio::task::JoinSet::new();
    for (i, rx) in pending {
        let path = paths.get(i).cloned().unwrap_or_default();
        set.spawn(async move {
            let result = answer(rx, &path, start, look, grace).await;
            (
                i,
                Outcome {
                    result,
                    took: start.elapsed(),
                },
            )
        });
    }
    let mut out = Vec::with_capacity(nodes.len());
    while let Some(joined) = set.join_next().await {
        // The spawned futures cannot panic; a JoinError would only come
        // from runtime shutdown, and then the node is simply not reported.
        if let Ok(pair) = joined {
            out.push(pair);
        }
    }
    out
}

/// Waits for one node's answer. At `look` and at the end, a slow check
/// whose node's data path was stuck meanwhile becomes `Stalled`.
async fn answer(
    mut rx: oneshot::Receiver<ProbeResult>,
    path: &NodeTraffic,
    start: Instant,
    look: Instant,
    grace: Instant,
) -> ProbeResult {
    let before = path.sample();
    let stalled = |at: Instant| {
        before
            .stuck_until(&path.sample())
            .then(|| ProbeError::Stalled(at.saturating_duration_since(start)))
    };
    let early = match timeout_at(look, &mut rx).await {
        Ok(r) => Some(r),
        Err(_) => match stalled(look) {
            Some(e) => return Err(e),
            None => None,
        },
    };
    // The node task answers `Timeout` itself at the deadline; the grace
    // period only covers a task too busy to do even that.
    let got = match early {
        Some(r) => Ok(r),
        None => timeout_at(grace, &mut rx).await,
    };
    let result = match got {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(ProbeError::Task("stopped")),
        Err(_) => Err(ProbeError::Task("no answer by the deadline")),
    };
    // Slow: a stuck data path gives the node up; one that brought bytes
    // from the node meanwhile says the node serves, and only its check is
    // slow.
    match result {
        Err(e) if e.is_slow() => {
            let now = Instant::now();
            let serving = || {
                let later = path.sample();
                (later.progress > before.progress && later.failed == before.failed)
                    .then(|| ProbeError::Serving(now.saturating_duration_since(start)))
            };
            Err(stalled(now).or_else(serving).unwrap_or(e))
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lsn;
    use crate::observation::{HeartbeatSeen, Observation};
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;

    /// What a scripted node does with a request.
    #[derive(Clone, Copy)]
    enum Script {
        Answer {
            in_recovery: bool,
            lsn: u64,
            delay_ms: u64,
        },
        Hang,
        /// Keeps the request (and so the reply channel) without answering.
        Hold,
    }

    type Log = Arc<Mutex<Vec<(usize, &'static str, Instant)>>>;

    /// A prober for node `i` that answers every check after `delay_ms`.
    fn answering(i: usize, in_recovery: bool, lsn: u64, delay_ms: u64, log: Log) -> NodeProber {
        let script = Script::Answer {
            in_recovery,
            lsn,
            delay_ms,
        };
        fake(i, script, log)
    }

    fn fake(i: usize, script: Script, log: Log) -> NodeProber {
        let (tx, mut rx) = mpsc::channel::<ProbeRequest>(2);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(req) = rx.recv().await {
                log.lock().unwrap().push((i, "asked", Instant::now()));
                if let Script::Hold = script {
                    held.push(req);
                    continue;
                }
                let Script::Answer {
                    in_recovery,
                    lsn,
                    delay_ms,
                } = script
                else {
                    continue; // never answers; the request is dropped
                };
                let sent = Instant::now();
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                log.lock().unwrap().push((i, "answered", Instant::now()));
                let o = Observation {
                    in_recovery,
                    current_lsn: (!in_recovery).then_some(Lsn(lsn)),
                    timeline: None,
                    replay_lsn: in_recovery.then_some(Lsn(lsn)),
                    receive_lsn: None,
                    last_replay_age: None,
                    heartbeat: HeartbeatSeen::NotRead,
                    primary_side: None,
                    sent_at: sent.into_std(),
                    answered_at: Instant::now().into_std(),
                };
                let _ = req.reply.send(Ok(o));
            }
        });
        NodeProber::from_channel(tx)
    }

    fn config(roles: [&str; 3]) -> Config {
        let mut t = String::from(
            "[[users]]\nname = \"app\"\npassword = \"app\"\n[health]\ncheck_timeout = \"1s\"\n",
        );
        for (i, r) in roles.iter().enumerate() {
            t.push_str(&format!(
                "[[nodes]]\nname = \"n{i}\"\nhost = \"h\"\nrole = \"{r}\"\n"
            ));
        }
        Config::from_toml_str(&t).unwrap()
    }

    fn at(log: &Log, node: usize, what: &str) -> Vec<Instant> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|e| e.0 == node && e.1 == what)
            .map(|e| e.2)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn primary_is_asked_only_after_every_replica_answered() {
        let cfg = config(["primary", "replica", "replica"]);
        let log: Log = Arc::default();
        let probers = [
            answering(0, false, 900, 5, log.clone()),
            answering(1, true, 100, 30, log.clone()),
            answering(2, true, 200, 70, log.clone()),
        ];
        let prev = HealthSnapshot::initial(&cfg);
        let out = run_round(&probers, &prev, &cfg, &Traffic::default()).await;
        let primary_asked = at(&log, 0, "asked")[0];
        for r in [1, 2] {
            assert!(at(&log, r, "answered")[0] <= primary_asked);
        }
        assert_eq!(
            at(&log, 1, "asked")[0],
            at(&log, 2, "asked")[0],
            "replicas asked together"
        );
        assert!(out.iter().all(|o| o.result.is_ok()));
        assert_eq!(
            out[1].took,
            Duration::from_millis(30),
            "each node's own time"
        );
        assert_eq!(out[2].took, Duration::from_millis(70));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_replica_times_out_at_check_timeout() {
        let cfg = config(["primary", "replica", "replica"]);
        let log: Log = Arc::default();
        let probers = [
            answering(0, false, 900, 1, log.clone()),
            fake(1, Script::Hang, log.clone()),
            answering(2, true, 200, 1, log.clone()),
        ];
        let t0 = Instant::now();
        let out = run_round(
            &probers,
            &HealthSnapshot::initial(&cfg),
            &cfg,
            &Traffic::default(),
        )
        .await;
        // The fake drops the request, so the round sees the task give up.
        assert!(matches!(out[1].result, Err(ProbeError::Task(_))));
        assert!(out[1].took <= Duration::from_millis(1100));
        assert!(out[0].result.is_ok() && out[2].result.is_ok());
        assert!(
            at(&log, 0, "asked")[0] - t0 <= Duration::from_millis(1100),
            "bounded by the timeout"
        );
    }

    /// A replica that does not answer its check: given up at the look
    /// when the proxy's own traffic to it is stuck; a plain miss at the
    /// timeout when there is none; a miss that says the node serves when
    /// bytes kept arriving from it.
    #[tokio::test(start_paused = true)]
    async fn a_slow_replica_is_given_up_at_once_only_when_its_traffic_is_stuck() {
        let cfg = config(["primary", "replica", "replica"]);
        let answer = |lsn| Script::Answer {
            in_recovery: true,
            lsn,
            delay_ms: 1,
        };
        for (traffic_to_it, stuck) in [(true, false), (true, true), (false, false)] {
            let log: Log = Arc::default();
            let probers = [
                answering(0, false, 900, 1, log.clone()),
                fake(1, Script::Hold, log.clone()),
                fake(2, answer(200), log.clone()),
            ];
            let traffic = Traffic::default();
            let path = traffic.node("n1");
            if traffic_to_it {
                path.started(); // a client's transaction waits on n1
            }
            if traffic_to_it && !stuck {
                // ...and bytes keep arriving from it.
                let path = path.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        path.progressed();
                    }
                });
            }
            let out = run_round(&probers, &HealthSnapshot::initial(&cfg), &cfg, &traffic).await;
            let look = Duration::from_millis(250);
            let r = out[1].result.clone().unwrap_err();
            match (traffic_to_it, stuck) {
                (true, true) => {
                    assert_eq!(r, ProbeError::Stalled(look));
                    assert_eq!(out[1].took, look);
                    assert!(at(&log, 0, "asked")[0] - at(&log, 1, "asked")[0] <= look);
                }
                (true, false) => {
                    assert!(
                        matches!(r, ProbeError::Serving(d) if d >= Duration::from_secs(1)),
                        "a miss of a node that serves: {r:?}"
                    );
                    assert!(r.is_slow());
                }
                (false, _) => {
                    assert!(
                        r.is_slow() && !matches!(r, ProbeError::Serving(_)),
                        "a plain miss: {r:?}"
                    );
                    assert!(out[1].took >= Duration::from_secs(1));
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unexpected_primary_is_asked_again_after_the_replicas() {
        let cfg = config(["auto", "auto", "auto"]);
        let log: Log = Arc::default();
        let probers = [
            answering(0, true, 100, 20, log.clone()),
            answering(1, false, 900, 1, log.clone()),
            answering(2, true, 200, 40, log.clone()),
        ];
        let out = run_round(
            &probers,
            &HealthSnapshot::initial(&cfg),
            &cfg,
            &Traffic::default(),
        )
        .await;
        let asked = at(&log, 1, "asked");
        assert_eq!(asked.len(), 2, "phase A, then phase C");
        assert!(at(&log, 2, "answered")[0] <= asked[1]);
        let p = out[1].result.as_ref().unwrap();
        let r = out[2].result.as_ref().unwrap();
        assert!(
            r.answered_at <= p.sent_at,
            "the kept primary sample is the later one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_previous_snapshot_decides_who_goes_last() {
        let cfg = config(["auto", "auto", "auto"]);
        let mut prev = HealthSnapshot::initial(&cfg);
        for (n, in_recovery) in prev.nodes.iter_mut().zip([true, true, false]) {
            n.in_recovery = Some(in_recovery);
        }
        let log: Log = Arc::default();
        let probers = [
            answering(0, true, 100, 20, log.clone()),
            answering(1, true, 100, 20, log.clone()),
            answering(2, false, 900, 1, log.clone()),
        ];
        run_round(&probers, &prev, &cfg, &Traffic::default()).await;
        assert_eq!(at(&log, 2, "asked").len(), 1, "no phase C needed");
        assert!(at(&log, 0, "answered")[0] <= at(&log, 2, "asked")[0]);
    }
}
