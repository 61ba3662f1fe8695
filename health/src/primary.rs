//! Who may receive writes, decided from what each node said about itself.
//!
//! A node *claims* to be primary when it reports `pg_is_in_recovery() =
//! false`. Whatever the configured roles, two claimants is split brain and
//! writes are refused (unless `prefer_highest_timeline` picks one). Only a
//! node with `role = "primary"` or `role = "auto"` may become the write
//! target: a `role = "replica"` node that claims is a split-brain witness,
//! never a target, so a promotion the operator did not configure for is
//! never written to.
//!
//! A node that did not answer this round keeps its last known claim
//! ("stale"), so one timed-out check of the primary does not stop writes;
//! but a node that answers this round ("fresh") outranks stale claims, so a
//! dead old primary does not block a failover in `auto` mode.

use lagrouter_config::NodeRole;

use crate::PrimaryStatus;

/// What detection needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryEvidence<'a> {
    /// `[[nodes]] name`, for the explanation.
    pub name: &'a str,
    /// Configured role.
    pub role: NodeRole,
    /// Whether the node answered in this round.
    pub answered: bool,
    /// `pg_is_in_recovery()` from this round, or the last known value if it
    /// did not answer; `None` if it never answered.
    pub in_recovery: Option<bool>,
    /// Timeline the node reported (claimants only).
    pub timeline: Option<u32>,
}

/// The write target and, when there is none, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryDecision {
    /// Who takes writes.
    pub status: PrimaryStatus,
    /// Why there is no single write target, or a note about the choice.
    pub problem: Option<String>,
}

fn may_write(role: NodeRole) -> bool {
    matches!(role, NodeRole::Primary | NodeRole::Auto)
}

/// Decides the write target. Pure; see the module docs for the rules.
pub fn detect_primary(
    nodes: &[PrimaryEvidence<'_>],
    prefer_highest_timeline: bool,
) -> PrimaryDecision {
    let claims = |fresh: bool| -> Vec<usize> {
        (0..nodes.len())
            .filter(|&i| nodes[i].answered == fresh && nodes[i].in_recovery == Some(false))
            .collect()
    };
    let fresh = claims(true);
    let stale = claims(false);
    let names = |ix: &[usize]| {
        ix.iter()
            .map(|&i| nodes[i].name)
            .collect::<Vec<_>>()
            .join(", ")
    };

    let claimants = if fresh.is_empty() { stale } else { fresh };
    match claimants.len() {
        0 => PrimaryDecision {
            status: PrimaryStatus::None,
            problem: Some(no_claimant_reason(nodes)),
        },
        1 => one(nodes, claimants[0]),
        _ => {
            let chosen = prefer_highest_timeline
                .then(|| unique_highest_timeline(nodes, &claimants))
                .flatten()
                .filter(|&i| may_write(nodes[i].role));
            if let Some(i) = chosen {
                return PrimaryDecision {
                    status: PrimaryStatus::One(i),
                    problem: Some(format!(
                        "split brain: {} are all out of recovery; writing to {} on the \
                         highest timeline because prefer_highest_timeline is set",
                        names(&claimants),
                        nodes[i].name
                    )),
                };
            }
            PrimaryDecision {
                status: PrimaryStatus::SplitBrain(claimants.clone()),
                problem: Some(format!(
                    "split brain: {} all report pg_is_in_recovery() = false; writes are refused \
                     until only one node is primary",
                    names(&claimants)
                )),
            }
        }
    }
}

fn one(nodes: &[PrimaryEvidence<'_>], i: usize) -> PrimaryDecision {
    let n = &nodes[i];
    if may_write(n.role) {
        return PrimaryDecision {
            status: PrimaryStatus::One(i),
            problem: None,
        };
    }
    PrimaryDecision {
        status: PrimaryStatus::None,
        problem: Some(format!(
            "no writable primary: {} is out of recovery but configured as role = \"replica\", \
             and no node with role = \"primary\" or \"auto\" is out of recovery",
            n.name
        )),
    }
}

fn unique_highest_timeline(nodes: &[PrimaryEvidence<'_>], claimants: &[usize]) -> Option<usize> {
    // An unknown timeline cannot be shown to be lower, so it blocks the choice.
    let tls: Vec<u32> = claimants
        .iter()
        .map(|&i| nodes[i].timeline)
        .collect::<Option<_>>()?;
    let max = *tls.iter().max()?;
    let mut at_max = claimants.iter().zip(&tls).filter(|(_, t)| **t == max);
    let (&i, _) = at_max.next()?;
    at_max.next().is_none().then_some(i)
}

fn no_claimant_reason(nodes: &[PrimaryEvidence<'_>]) -> String {
    let writable: Vec<String> = nodes
        .iter()
        .filter(|n| may_write(n.role))
        .map(|n| match (n.answered, n.in_recovery) {
            (true, _) => format!("{} is in recovery", n.name),
            (false, Some(_)) => format!("{} is unreachable", n.name),
            (false, None) => format!("{} has not answered yet", n.name),
        })
        .collect();
    if writable.is_empty() {
        "no writable primary: no node has role = \"primary\" or \"auto\"".into()
    } else {
        format!("no writable primary: {}", writable.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(
        name: &str,
        role: NodeRole,
        answered: bool,
        in_recovery: Option<bool>,
    ) -> PrimaryEvidence<'_> {
        PrimaryEvidence {
            name,
            role,
            answered,
            in_recovery,
            timeline: None,
        }
    }
    fn tl(mut n: PrimaryEvidence<'_>, t: u32) -> PrimaryEvidence<'_> {
        n.timeline = Some(t);
        n
    }
    use NodeRole::{Auto, Primary, Replica};

    #[test]
    fn configured_primary_out_of_recovery_is_the_target() {
        let n = [
            node("p", Primary, true, Some(false)),
            node("r1", Replica, true, Some(true)),
        ];
        let d = detect_primary(&n, false);
        assert_eq!(d.status, PrimaryStatus::One(0));
        assert_eq!(d.problem, None);
    }

    #[test]
    fn configured_primary_in_recovery_stops_being_a_write_target() {
        let n = [
            node("p", Primary, true, Some(true)),
            node("r1", Replica, true, Some(true)),
        ];
        let d = detect_primary(&n, false);
        assert_eq!(d.status, PrimaryStatus::None);
        assert!(d.problem.unwrap().contains("p is in recovery"));
    }

    #[test]
    fn auto_picks_the_one_node_out_of_recovery() {
        let n = [
            node("a", Auto, true, Some(true)),
            node("b", Auto, true, Some(false)),
            node("c", Auto, true, Some(true)),
        ];
        assert_eq!(detect_primary(&n, false).status, PrimaryStatus::One(1));
    }

    #[test]
    fn auto_with_no_claimant_is_none() {
        let n = [
            node("a", Auto, true, Some(true)),
            node("b", Auto, false, None),
        ];
        let d = detect_primary(&n, false);
        assert_eq!(d.status, PrimaryStatus::None);
        let why = d.problem.unwrap();
        assert!(
            why.contains("a is in recovery") && why.contains("b has not answered"),
            "{why}"
        );
    }

    #[test]
    fn promoted_replica_next_to_running_primary_is_split_brain() {
        let n = [
            node("p", Primary, true, Some(false)),
            node("r1", Replica, true, Some(false)),
            node("r2", Replica, true, Some(true)),
        ];
        let d = detect_primary(&n, false);
        assert_eq!(d.status, PrimaryStatus::SplitBrain(vec![0, 1]));
        let why = d.problem.unwrap();
        assert!(
            why.contains("split brain") && why.contains("p, r1"),
            "{why}"
        );
    }

    #[test]
    fn two_auto_claimants_are_split_brain() {
        let n = [
            tl(node("a", Auto, true, Some(false)), 1),
            tl(node("b", Auto, true, Some(false)), 2),
        ];
        assert_eq!(
            detect_primary(&n, false).status,
            PrimaryStatus::SplitBrain(vec![0, 1])
        );
    }

    #[test]
    fn prefer_highest_timeline_picks_the_newer_primary() {
        let n = [
            tl(node("a", Auto, true, Some(false)), 1),
            tl(node("b", Auto, true, Some(false)), 2),
        ];
        let d = detect_primary(&n, true);
        assert_eq!(d.status, PrimaryStatus::One(1));
        assert!(d.problem.unwrap().contains("prefer_highest_timeline"));
    }

    #[test]
    fn prefer_highest_timeline_refuses_ties_and_unknowns() {
        let tie = [
            tl(node("a", Auto, true, Some(false)), 2),
            tl(node("b", Auto, true, Some(false)), 2),
        ];
        assert!(matches!(
            detect_primary(&tie, true).status,
            PrimaryStatus::SplitBrain(_)
        ));
        let unknown = [
            tl(node("a", Auto, true, Some(false)), 1),
            node("b", Auto, true, Some(false)),
        ];
        assert!(matches!(
            detect_primary(&unknown, true).status,
            PrimaryStatus::SplitBrain(_)
        ));
    }

    #[test]
    fn prefer_highest_timeline_never_writes_to_a_configured_replica() {
        let n = [
            tl(node("p", Primary, true, Some(false)), 1),
            tl(node("r1", Replica, true, Some(false)), 2),
        ];
        assert_eq!(
            detect_primary(&n, true).status,
            PrimaryStatus::SplitBrain(vec![0, 1])
        );
    }

    #[test]
    fn promoted_configured_replica_alone_is_not_a_target() {
        let n = [
            node("p", Primary, true, Some(true)),
            node("r1", Replica, true, Some(false)),
        ];
        let d = detect_primary(&n, false);
        assert_eq!(d.status, PrimaryStatus::None);
        assert!(d.problem.unwrap().contains("r1"));
    }

    #[test]
    fn briefly_unreachable_primary_keeps_writes() {
        let n = [
            node("p", Primary, false, Some(false)),
            node("r1", Replica, true, Some(true)),
        ];
        assert_eq!(detect_primary(&n, false).status, PrimaryStatus::One(0));
    }

    #[test]
    fn fresh_claim_outranks_a_dead_old_primary() {
        let n = [
            node("a", Auto, false, Some(false)),
            node("b", Auto, true, Some(false)),
        ];
        assert_eq!(detect_primary(&n, false).status, PrimaryStatus::One(1));
    }

    #[test]
    fn two_stale_claims_stay_split_brain() {
        let n = [
            node("a", Auto, false, Some(false)),
            node("b", Auto, false, Some(false)),
        ];
        assert!(matches!(
            detect_primary(&n, false).status,
            PrimaryStatus::SplitBrain(_)
        ));
    }

    #[test]
    fn never_answered_nodes_claim_nothing() {
        let n = [
            node("p", Primary, false, None),
            node("r", Replica, false, None),
        ];
        let d = detect_primary(&n, false);
        assert_eq!(d.status, PrimaryStatus::None);
        assert!(d.problem.unwrap().contains("p has not answered yet"));
    }

    #[test]
    fn only_replicas_configured() {
        let n = [node("r", Replica, true, Some(true))];
        let d = detect_primary(&n, false);
        assert_eq!(d.status, PrimaryStatus::None);
        assert!(d.problem.unwrap().contains("no node has role"));
    }

    #[test]
    fn empty_node_list() {
        assert_eq!(detect_primary(&[], true).status, PrimaryStatus::None);
    }
}
