//! The routing decision, as pure functions of their inputs.
//!
//! [`decide`] picks a target from the statement's analysis, the session's
//! state, the config and the health snapshot. Order: a hint in the
//! statement, then the session's `SET lagrouter.route`, then config rules
//! (first match), then the classification. A read goes to a `Healthy`
//! replica that has replayed the LSN the session must see (and meets a
//! `max_lag` hint); `balance` picks among those. Without one, the read
//! falls back to the primary, and [`settle`] asks the breaker whether it
//! may. Writes go to the primary the snapshot names, or are refused
//! (no primary, split brain, or the write gate of `[safety]` closed).

use std::time::{Duration, Instant};

use lagrouter_config::{Balance, BreakerOpenAction, RoutingConfig, RuleRoute};
use lagrouter_health::{HealthSnapshot, Lsn, NodeHealth, NodeState, PrimaryStatus};

use crate::breaker::{Admission, Breaker, BreakerSettings};
use crate::classify::{Analysis, Class};
use crate::gate::WriteGate;
use crate::hints::RouteOverride;
use crate::session::UNRESOLVED_WRITE;
use crate::{Reason, RouteDecision, RouteError};

/// Everything a decision depends on.
pub struct RouteContext<'a> {
    /// The statement's text (for rules) and its analysis.
    pub sql: &'a str,
    pub analysis: &'a Analysis,
    /// The session's `SET lagrouter.route`.
    pub session_route: RouteOverride,
    /// The session's `default_transaction_read_only`.
    pub default_read_only: bool,
    /// The LSN a read must see (read-your-writes, causal tokens, hint).
    pub required_lsn: Option<Lsn>,
    pub config: &'a RoutingConfig,
    pub snapshot: &'a HealthSnapshot,
    /// A number that changes with each call: round-robin position, and the
    /// tie-break among equally good replicas.
    pub ticket: usize,
    /// Server connections in use per node index, for `least_connections`.
    pub in_use: &'a dyn Fn(usize) -> usize,
    /// Byte lags that differ by less than this tie (`least_lag`,
    /// `least_connections`): `[health] max_lag_bytes / 16`.
    pub lag_tie_bytes: u64,
    /// Nodes an operator drained (admin console `DRAIN`), by name: they get
    /// no new reads, not even stale ones, while transactions already on
    /// them finish undisturbed.
    pub drained: &'a [String],
    /// `[safety] min_replicas_to_write`, when on: writes are refused while
    /// too few replicas are caught up.
    pub gate: Option<WriteGate>,
}

/// A decision before the breaker has had its say.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub decision: RouteDecision,
    pub breaker: BreakerUse,
}

/// How a decision involves the primary-read breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerUse {
    /// Not a read the router placed freely (a write, a forced read).
    None,
    /// A read served by a replica: counts toward the total.
    ReplicaRead,
    /// A read falling back to the primary: needs admission. `stale` is the
    /// replica `serve_stale` may use instead (never one that has not
    /// replayed the session's required LSN). `catch_up` is a healthy
    /// replica that only lacks the session's required LSN: worth a short
    /// wait instead of the fallback. `counted`: the breaker already counted
    /// this read, as a replica read whose replica then could not take it.
    Fallback {
        stale: Option<usize>,
        catch_up: Option<usize>,
        counted: bool,
    },
}

/// Picks the target. Pure.
pub fn decide(ctx: &RouteContext<'_>) -> Result<Decided, RouteError> {
    let a = ctx.analysis;
    let hinted = a.hints.route.unwrap_or(ctx.session_route);
    let (over, over_reason) = if hinted != RouteOverride::Default {
        (hinted, Reason::Hint)
    } else {
        match ctx
            .config
            .rules
            .iter()
            .find(|r| r.pattern.is_match(ctx.sql))
        {
            Some(r) if r.route == RuleRoute::Primary => (RouteOverride::Primary, Reason::Rule),
            Some(_) => (RouteOverride::Replica, Reason::Rule),
            None => (RouteOverride::Default, Reason::Healthy),
        }
    };
    let read_only = match a.class {
        Class::Read => true,
        Class::Begin(m) => m.is_read_only(ctx.default_read_only),
        Class::Unknown | Class::Write => false,
    };
    // What a `replica` override may send to a replica: only what is not a
    // write. An unknown function may write, and only the primary may ever
    // receive a write; `routing.read_only_functions` is how an operator
    // vouches for a function. A transaction opened without READ WRITE or
    // SERIALIZABLE may go (the replica refuses writes inside it).
    let replica_ok = match a.class {
        Class::Read => true,
        Class::Begin(m) => m.read_only != Some(false) && !m.serializable,
        Class::Unknown | Class::Write => false,
    };
    let notice = a
        .hints
        .ignored
        .as_ref()
        .map(|h| format!("lagrouter: ignored invalid hint(s): {h}"));
    let to_primary = |reason, write: bool| {
        let node = primary_index(ctx.snapshot)?;
        if write
            && reason != Reason::Pinned
            && let Some(g) = &ctx.gate
        {
            g.check(ctx.snapshot)?;
        }
        Ok(Decided {
            decision: RouteDecision {
                node,
                primary: true,
                reason,
                write,
                notice: notice.clone(),
                catch_up: None,
            },
            breaker: BreakerUse::None,
        })
    };
    let forced_replica = over == RouteOverride::Replica && replica_ok;
    match over {
        _ if !read_only && !forced_replica => to_primary(Reason::Write, true),
        // Pinning is not writing: the write gate does not apply.
        _ if a.server.pins => to_primary(Reason::Pinned, true),
        RouteOverride::Primary => to_primary(over_reason, !read_only),
        RouteOverride::Replica => read(ctx, over_reason, notice),
        RouteOverride::Default => read(ctx, Reason::Healthy, notice),
    }
}

/// The primary's index, or why there is none.
pub(crate) fn primary_index(snap: &HealthSnapshot) -> Result<usize, RouteError> {
    match &snap.primary {
        PrimaryStatus::One(i) => Ok(*i),
        PrimaryStatus::None => Err(no_primary(snap)),
        PrimaryStatus::SplitBrain(ix) => Err(RouteError::SplitBrain(
            ix.iter()
                .map(|i| snap.nodes.get(*i).map_or("?", |n| n.name.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// Why there is no primary, naming the node(s) that should be it.
pub(crate) fn no_primary(snap: &HealthSnapshot) -> RouteError {
    let down: Vec<String> = snap
        .nodes
        .iter()
        .filter(|n| {
            n.role != lagrouter_config::NodeRole::Replica && n.state() == NodeState::Unreachable
        })
        .map(|n| match &n.unreachable_reason {
            Some(r) => format!("node \"{}\" is unreachable ({r})", n.name),
            None => format!("node \"{}\" is unreachable", n.name),
        })
        .collect();
    if !down.is_empty() {
        return RouteError::NoPrimary {
            detail: down.join("; "),
            unreachable: true,
        };
    }
    let detail = snap
        .primary_problem
        .clone()
        .unwrap_or_else(|| "no node is out of recovery".into());
    RouteError::NoPrimary {
        detail,
        unreachable: false,
    }
}

/// A node that may serve reads at all: not a primary (by the snapshot or
/// by its own report) and answering.
fn is_replica(snap: &HealthSnapshot, i: usize, n: &NodeHealth) -> bool {
    let claims_primary = match &snap.primary {
        PrimaryStatus::One(p) => *p == i,
        PrimaryStatus::SplitBrain(ps) => ps.contains(&i),
        PrimaryStatus::None => false,
    };
    !claims_primary && n.in_recovery != Some(false) && n.state() != NodeState::Unreachable
}

/// Whether `n` has replayed `required`. Unknown replay position: no.
fn has_replayed(n: &NodeHealth, required: Option<Lsn>) -> bool {
    required.is_none_or(|req| n.replay_lsn.is_some_and(|r| r >= req))
}

fn within_max_lag(n: &NodeHealth, max_lag: Option<Duration>) -> bool {
    max_lag.is_none_or(|max| n.lag_time.is_some_and(|l| l <= max))
}

fn read(
    ctx: &RouteContext<'_>,
    reason: Reason,
    notice: Option<String>,
) -> Result<Decided, RouteError> {
    let snap = ctx.snapshot;
    let max_lag = ctx.analysis.hints.max_lag;
    let replicas = || {
        snap.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| is_replica(snap, *i, n) && !ctx.drained.contains(&n.name))
    };
    let fresh = |n: &NodeHealth| n.state() == NodeState::Healthy && within_max_lag(n, max_lag);
    let eligible = replicas().filter(|(_, n)| fresh(n) && has_replayed(n, ctx.required_lsn));
    if let Some(node) = pick(ctx, eligible) {
        return Ok(Decided {
            decision: RouteDecision {
                node,
                primary: false,
                reason,
                write: false,
                notice,
                catch_up: None,
            },
            breaker: BreakerUse::ReplicaRead,
        });
    }
    // Why no replica: the most specific explanation wins.
    let reason = if replicas().any(|(_, n)| fresh(n)) {
        Reason::ReadYourWrites
    } else if replicas().next().is_some() {
        Reason::LagThresholdExceeded
    } else {
        Reason::NoReplica
    };
    let stale = replicas()
        .filter(|(_, n)| has_replayed(n, ctx.required_lsn))
        .min_by_key(|(i, n)| {
            (
                n.lag_bytes.unwrap_or(u64::MAX),
                n.lag_time.unwrap_or(Duration::MAX),
                *i,
            )
        })
        .map(|(i, _)| i);
    // No replica is waited for a position none can reach.
    let catch_up = match (reason, ctx.required_lsn) {
        (Reason::ReadYourWrites, Some(l)) if l != UNRESOLVED_WRITE => {
            pick(ctx, replicas().filter(|(_, n)| fresh(n)))
        }
        _ => None,
    };
    let node = primary_index(snap)?;
    // With no replica configured at all, the primary is the only place
    // reads can go: that is no fallback, and the breaker stays out of it.
    let breaker = if snap.nodes.len() <= 1 {
        BreakerUse::None
    } else {
        BreakerUse::Fallback {
            stale,
            catch_up,
            counted: false,
        }
    };
    Ok(Decided {
        decision: RouteDecision {
            node,
            primary: true,
            reason,
            write: false,
            notice,
            catch_up: None,
        },
        breaker,
    })
}

/// `balance` among eligible replicas. `round_robin` takes the
/// `ticket % n`-th of them, so consecutive tickets spread. The other
/// policies compare lag in steps of `lag_tie_bytes` (byte lags a few
/// hundred bytes apart are equally fresh) and break ties by rendezvous
/// hashing of the session's ticket with each replica: a session stays on
/// one replica while the tied set is unchanged, and when a replica joins
/// the set again (recovered, restarted) the sessions that hash to it move
/// back at once, while no other session moves.
fn pick<'n>(
    ctx: &RouteContext<'_>,
    eligible: impl Iterator<Item = (usize, &'n NodeHealth)>,
) -> Option<usize> {
    if ctx.config.balance == Balance::RoundRobin {
        return nth_of(eligible, ctx.ticket);
    }
    let step = ctx.lag_tie_bytes.max(1);
    let lag = |n: &NodeHealth| n.lag_bytes.map_or(u64::MAX, |b| b / step);
    let mut best: Option<((u64, u64), u64, usize)> = None;
    for (i, n) in eligible {
        let key = match ctx.config.balance {
            Balance::LeastConnections => ((ctx.in_use)(i) as u64, lag(n)),
            _ => (lag(n), 0),
        };
        let score = rendezvous(ctx.ticket, i);
        let better = match best {
            None => true,
            Some((k, s, _)) => key < k || (key == k && score > s),
        };
        if better {
            best = Some((key, score, i));
        }
    }
    best.map(|(_, _, i)| i)
}

/// The `ticket % n`-th item, without allocating for the usual few.
fn nth_of<'n>(
    eligible: impl Iterator<Item = (usize, &'n NodeHealth)>,
    ticket: usize,
) -> Option<usize> {
    let mut first = [0usize; 16];
    let mut more: Vec<usize> = Vec::new();
    let mut count = 0;
    for (i, _) in eligible {
        match first.get_mut(count) {
            Some(slot) => *slot = i,
            None => more.push(i),
        }
        count += 1;
    }
    if count == 0 {
        return None;
    }
    let j = ticket % count;
    Some(
        first
            .get(j)
            .copied()
            .unwrap_or_else(|| more[j - first.len()]),
    )
}

/// The weight of replica `node` for the session holding `ticket`
/// (splitmix64 of the pair): highest weight wins.
fn rendezvous(ticket: usize, node: usize) -> u64 {
    let mut z = (ticket as u64)
        ^ (node as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Applies the breaker to a decision: fallbacks need admission; when
/// refused they get [`RouteError::BreakerOpen`] or, with
/// `on_breaker_open = "serve_stale"`, the least-lagged replica that has
/// replayed the session's required LSN, with a NOTICE.
pub fn settle(
    decided: Decided,
    breaker: &mut Breaker,
    settings: &BreakerSettings,
    action: BreakerOpenAction,
    snap: &HealthSnapshot,
    now: Instant,
) -> Result<RouteDecision, RouteError> {
    match decided.breaker {
        BreakerUse::None => Ok(decided.decision),
        BreakerUse::ReplicaRead => {
            breaker.record_read(settings, now);
            Ok(decided.decision)
        }
        BreakerUse::Fallback { stale, counted, .. } => {
            match breaker.admit(settings, now, counted) {
                Admission::Admitted => Ok(decided.decision),
                Admission::Refused { share } => match (action, stale) {
                    (BreakerOpenAction::ServeStale, Some(node)) => {
                        breaker.record_read(settings, now);
                        Ok(RouteDecision {
                            node,
                            primary: false,
                            reason: Reason::StaleServed,
                            write: false,
                            notice: Some(stale_notice(&snap.nodes[node], share, settings.cap)),
                            catch_up: None,
                        })
                    }
                    _ => Err(RouteError::BreakerOpen {
                        share_percent: share * 100.0,
                        cap_percent: settings.cap * 100.0,
                    }),
                },
            }
        }
    }
}

fn stale_notice(n: &NodeHealth, share: f64, cap: f64) -> String {
    let bytes = match n.lag_bytes {
        Some(b) if b >= 1 << 20 => format!("{:.1} MiB of WAL", b as f64 / (1u64 << 20) as f64),
        Some(b) if b >= 1 << 10 => format!("{:.1} KiB of WAL", b as f64 / 1024.0),
        Some(b) => format!("{b} bytes of WAL"),
        None => "an unknown amount of WAL".to_string(),
    };
    let time = n
        .lag_time
        .map(|t| format!(" ({} ms)", t.as_millis()))
        .unwrap_or_default();
    format!(
        "lagrouter: primary-read breaker is open ({:.1}% of recent reads fell back to the primary, cap {:.0}%); \
         this read was served by replica \"{}\", which is {bytes}{time} behind the primary",
        share * 100.0,
        cap * 100.0,
        n.name
    )
}

#[cfg(test)]
#[path = "decide_tests.rs"]
pub(crate) mod tests;
