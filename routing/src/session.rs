//! Per-client routing state: what the session must be able to read, and
//! the settings it chose.
//!
//! Read-your-writes lives here: after a transaction that wrote commits,
//! the proxy records its commit LSN and every later read of the session
//! must go to a node that has replayed it. Causal tokens
//! (`SET lagrouter.min_lsn`) add a floor handed over from another
//! connection. Both only ever move forward.

use lagrouter_health::Lsn;

use crate::classify::SessionEffect;
use crate::command::{CommandError, ProxyCommand, ProxySetting};
use crate::hints::RouteOverride;

/// Per-client routing state. One per client connection, owned by its
/// session task; no locking.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionRouting {
    last_write_lsn: Option<Lsn>,
    /// The write target's timeline when the last write committed: LSNs of
    /// two timelines compare only up to the point where they forked.
    last_write_timeline: Option<u32>,
    /// Told to the client with its next routed transaction: its last
    /// write may have been lost in a failover.
    lost_write_notice: Option<String>,
    min_lsn: Option<Lsn>,
    route: RouteOverride,
    default_read_only: bool,
    /// This session's tie-break among equally good replicas (taken on its
    /// first routed read), so that it keeps one replica while they tie.
    affinity: Option<usize>,
    /// A write committed whose position the proxy could not learn (its
    /// commit-LSN question failed): until a position asked after it is
    /// recorded, a read needs [`UNRESOLVED_WRITE`], which only the primary
    /// has.
    unresolved_write: bool,
}

/// The position a read needs while the session's last write has none
/// ([`SessionRouting::record_unresolved_write`]): past every real LSN, so
/// no replica has it and the read goes to the primary, counted by the
/// breaker as any read-your-writes fallback. No replica is waited for.
pub const UNRESOLVED_WRITE: Lsn = Lsn(u64::MAX);

/// What the proxy answers to a [`ProxyCommand`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// A setting changed: reply `CommandComplete` with this tag.
    Done { tag: &'static str },
    /// `SHOW`: reply one row, one text column named `name`.
    Show { name: &'static str, value: String },
    /// `lagrouter.wait_replicas`: the proxy waits until `replicas` replicas
    /// replayed `lsn` (every replica has when `None`) or `timeout` passes,
    /// then replies one int4 row named `wait_replicas`: how many did.
    Wait {
        lsn: Option<Lsn>,
        replicas: u32,
        timeout: std::time::Duration,
    },
    /// Reply an ErrorResponse.
    Error(CommandError),
}

impl SessionRouting {
    /// A fresh session: no writes yet, no token, no override.
    pub fn new() -> Self {
        Self::default()
    }

    /// The commit LSN of the session's last write, if it wrote. Reported to
    /// the client as `lagrouter.last_write_lsn` (its causal token).
    pub fn last_write_lsn(&self) -> Option<Lsn> {
        self.last_write_lsn
    }

    /// The session's tie-break ticket, taken from `next` the first time.
    pub(crate) fn affinity(&mut self, next: impl FnOnce() -> usize) -> usize {
        *self.affinity.get_or_insert_with(next)
    }

    /// The causal token set with `SET lagrouter.min_lsn`, if any.
    pub fn min_lsn(&self) -> Option<Lsn> {
        self.min_lsn
    }

    /// The session's `SET lagrouter.route`.
    pub fn route_override(&self) -> RouteOverride {
        self.route
    }

    /// Whether the session's transactions are read-only by default
    /// (`default_transaction_read_only`).
    pub fn default_read_only(&self) -> bool {
        self.default_read_only
    }

    /// Sets `default_transaction_read_only`, e.g. from a startup
    /// parameter (`options=-c default_transaction_read_only=on`). `SET`
    /// statements are noticed by routing itself.
    pub fn set_default_read_only(&mut self, on: bool) {
        self.default_read_only = on;
    }

    /// Records that a transaction of this session wrote and committed at
    /// `lsn`, on a primary on `timeline` (if known). Never moves backwards.
    /// Any position the proxy asked the primary for after a write covers
    /// it, so this also resolves an [unresolved
    /// write](Self::record_unresolved_write).
    pub fn record_write(&mut self, lsn: Lsn, timeline: Option<u32>) {
        self.last_write_lsn = self.last_write_lsn.max(Some(lsn));
        self.last_write_timeline = timeline.or(self.last_write_timeline);
        self.unresolved_write = false;
    }

    /// Records that a transaction of this session wrote and committed but
    /// the proxy could not learn where (the commit-LSN question failed on
    /// a connection that lives on). No replica can be shown to have the
    /// write, so reads go to the primary (with read-your-writes on) until
    /// [`Self::record_write`] records a position asked after it: the proxy
    /// asks again at the end of the session's next transaction on the
    /// primary ([`Self::write_unresolved`]).
    pub fn record_unresolved_write(&mut self) {
        self.unresolved_write = true;
    }

    /// Whether the session's last write has no known position yet.
    pub fn write_unresolved(&self) -> bool {
        self.unresolved_write
    }

    /// After a failover: the session's last write committed on another
    /// timeline than the write target's (`target_timeline`), which was
    /// promoted after replaying up to `promoted_at`. If the write is at or
    /// before that point it is on the new timeline too, and nothing
    /// changes. Otherwise it may have been lost with the old primary: no
    /// node can be proven to have it, so waiting would hang; the session's
    /// read-your-writes position is dropped and
    /// [`SessionRouting::take_lost_write_notice`] has the text that tells
    /// the client.
    pub fn reconcile_timeline(&mut self, target_timeline: Option<u32>, promoted_at: Option<Lsn>) {
        let (Some(written_on), Some(now_on), Some(lsn)) = (
            self.last_write_timeline,
            target_timeline,
            self.last_write_lsn,
        ) else {
            return;
        };
        if written_on == now_on {
            return;
        }
        self.last_write_timeline = Some(now_on);
        if promoted_at.is_some_and(|p| lsn <= p) {
            return;
        }
        self.last_write_lsn = None;
        self.lost_write_notice = Some(format!(
            "lagrouter: your last write (LSN {lsn} on timeline {written_on}) is not known to \
             be on the current primary (timeline {now_on}{}); it may have been lost in a \
             failover, and reads no longer wait for it",
            promoted_at.map_or(String::new(), |p| format!(", promoted at {p}"))
        ));
    }

    /// The notice [`SessionRouting::reconcile_timeline`] left, once.
    pub fn take_lost_write_notice(&mut self) -> Option<String> {
        self.lost_write_notice.take()
    }

    /// The LSN a read must see: the session's last write (when
    /// read-your-writes is on), its causal token, and a statement's
    /// `min_lsn` hint, whichever is furthest. `None`: any fresh node.
    pub fn required_lsn(&self, read_your_writes: bool, hint: Option<Lsn>) -> Option<Lsn> {
        let own = match read_your_writes {
            true if self.unresolved_write => Some(UNRESOLVED_WRITE),
            true => self.last_write_lsn,
            false => None,
        };
        own.max(self.min_lsn).max(hint)
    }

    /// Executes a statement the proxy answers itself.
    pub fn apply(&mut self, cmd: &ProxyCommand) -> CommandOutcome {
        let lsn_text = |l: Option<Lsn>| l.unwrap_or_default().to_string();
        match cmd {
            ProxyCommand::SetMinLsn(l) => {
                self.min_lsn = *l;
                CommandOutcome::Done { tag: "SET" }
            }
            ProxyCommand::SetRoute(r) => {
                self.route = *r;
                CommandOutcome::Done { tag: "SET" }
            }
            ProxyCommand::Show(s) => CommandOutcome::Show {
                name: s.name(),
                value: match s {
                    // "0/0" rather than empty: it parses as a token that
                    // constrains nothing, so clients can always hand it back.
                    ProxySetting::LastWriteLsn => lsn_text(self.last_write_lsn),
                    ProxySetting::MinLsn => lsn_text(self.min_lsn),
                    ProxySetting::Route => self.route.as_str().to_string(),
                },
            },
            ProxyCommand::WaitReplicas { replicas, timeout } => CommandOutcome::Wait {
                // Whatever this session must see: its own last write and
                // any causal token it was handed.
                lsn: self.last_write_lsn.max(self.min_lsn),
                replicas: *replicas,
                timeout: *timeout,
            },
            ProxyCommand::Error(e) => CommandOutcome::Error(e.clone()),
        }
    }

    /// Applies a statement's effect, as the server would at execution.
    pub(crate) fn apply_effect(&mut self, effect: &SessionEffect) {
        match effect {
            SessionEffect::Proxy(cmd) => {
                self.apply(cmd);
            }
            SessionEffect::DefaultReadOnly(on) => self.default_read_only = *on,
            SessionEffect::ResetAll => {
                self.route = RouteOverride::Default;
                self.min_lsn = None;
                self.default_read_only = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::parse_proxy_command;

    fn run(s: &mut SessionRouting, sql: &str) -> CommandOutcome {
        s.apply(&parse_proxy_command(sql).expect(sql))
    }

    #[test]
    fn required_lsn_takes_the_furthest_floor() {
        let mut s = SessionRouting::new();
        assert_eq!(s.required_lsn(true, None), None);
        s.record_write(Lsn(100), None);
        s.record_write(Lsn(50), None); // late report of an older commit: ignored
        assert_eq!(s.last_write_lsn(), Some(Lsn(100)));
        assert_eq!(s.required_lsn(true, None), Some(Lsn(100)));
        assert_eq!(
            s.required_lsn(false, None),
            None,
            "read_your_writes = false"
        );
        assert_eq!(s.required_lsn(true, Some(Lsn(150))), Some(Lsn(150)));
        run(&mut s, "SET lagrouter.min_lsn = '0/C8'");
        assert_eq!(
            s.required_lsn(false, None),
            Some(Lsn(200)),
            "tokens hold without RYW"
        );
    }

    #[test]
    fn an_unresolved_write_needs_the_primary_until_a_position_is_recorded() {
        let mut s = SessionRouting::new();
        s.record_write(Lsn(100), None);
        s.record_unresolved_write();
        assert!(s.write_unresolved());
        assert_eq!(s.required_lsn(true, None), Some(UNRESOLVED_WRITE));
        assert_eq!(
            s.required_lsn(true, Some(Lsn(500))),
            Some(UNRESOLVED_WRITE),
            "a hint does not lower it"
        );
        assert_eq!(
            s.required_lsn(false, None),
            None,
            "read_your_writes = false"
        );
        assert_eq!(s.last_write_lsn(), Some(Lsn(100)), "the token is unchanged");
        // A position asked after the write resolves it.
        s.record_write(Lsn(300), None);
        assert!(!s.write_unresolved());
        assert_eq!(s.required_lsn(true, None), Some(Lsn(300)));
    }

    #[test]
    fn show_and_set_commands() {
        let mut s = SessionRouting::new();
        let show = |s: &mut SessionRouting, sql| match run(s, sql) {
            CommandOutcome::Show { value, .. } => value,
            o => panic!("{o:?}"),
        };
        assert_eq!(show(&mut s, "SHOW lagrouter.last_write_lsn"), "0/0");
        s.record_write(Lsn(0x1_0000_00FF), None);
        assert_eq!(show(&mut s, "SHOW lagrouter.last_write_lsn"), "1/FF");
        assert_eq!(
            run(&mut s, "SET lagrouter.route = primary"),
            CommandOutcome::Done { tag: "SET" }
        );
        assert_eq!(show(&mut s, "SHOW lagrouter.route"), "primary");
        run(&mut s, "SET lagrouter.min_lsn TO '0/10'");
        assert_eq!(show(&mut s, "SHOW lagrouter.min_lsn"), "0/10");
        run(&mut s, "RESET lagrouter.min_lsn");
        assert_eq!(s.min_lsn(), None);
        assert!(matches!(
            run(&mut s, "SET lagrouter.min_lsn = 'x'"),
            CommandOutcome::Error(_)
        ));
    }

    #[test]
    fn reset_all_keeps_read_your_writes() {
        let mut s = SessionRouting::new();
        s.record_write(Lsn(7), None);
        s.apply_effect(&SessionEffect::DefaultReadOnly(true));
        s.apply_effect(&SessionEffect::Proxy(ProxyCommand::SetRoute(
            RouteOverride::Replica,
        )));
        assert!(s.default_read_only());
        s.apply_effect(&SessionEffect::ResetAll);
        assert!(!s.default_read_only());
        assert_eq!(s.route_override(), RouteOverride::Default);
        assert_eq!(s.last_write_lsn(), Some(Lsn(7)));
    }

    #[test]
    fn a_write_from_before_a_failover_counts_only_if_the_new_primary_had_it() {
        let mut s = SessionRouting::new();
        s.record_write(Lsn(500), Some(1));
        s.reconcile_timeline(Some(1), None);
        assert_eq!(s.take_lost_write_notice(), None, "same timeline");
        // Promoted after replaying past the write: it survived.
        s.reconcile_timeline(Some(2), Some(Lsn(600)));
        assert_eq!(s.take_lost_write_notice(), None);
        assert_eq!(s.required_lsn(true, None), Some(Lsn(500)));
        // Promoted before it: the client is told and reads stop waiting.
        let mut s = SessionRouting::new();
        s.record_write(Lsn(500), Some(1));
        s.reconcile_timeline(Some(2), Some(Lsn(400)));
        let told = s.take_lost_write_notice().expect("told");
        assert!(
            told.contains("0/1F4") && told.contains("timeline 2"),
            "{told}"
        );
        assert_eq!(s.required_lsn(true, None), None);
        s.reconcile_timeline(Some(2), Some(Lsn(400)));
        assert_eq!(s.take_lost_write_notice(), None, "told once");
    }
}
