//! The backend protocol state: which responses a server connection still
//! owes, so the proxy knows when it is idle again and which responses to
//! forward, drop (answers to messages the proxy injected, such as
//! re-prepares and parameter restores) or synthesise (answers the proxy
//! gives itself, such as `ParseComplete` for a statement the server already
//! has).
//!
//! Fed each server message tag in order, [`Expect::on_server`] says what to
//! do with it. Pure: unit-tested flow by flow below.

use std::collections::VecDeque;

use std::sync::Arc;

use bytes::Bytes;

/// A request whose responses are outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Req {
    /// Simple `Query`: everything up to `ReadyForQuery`.
    Query,
    /// `FunctionCall`: `FunctionCallResponse` then `ReadyForQuery`.
    FunctionCall,
    Parse,
    Bind,
    /// `Describe` of a statement ('S') or portal ('P').
    Describe(u8),
    Execute,
    Close,
    Sync,
}

/// What is owed, in order: small and `Copy`, so that taking one off the
/// queue (every answer that ends a request) moves a few bytes and drops
/// nothing. What an entry needs beyond that waits in a queue of its own,
/// in the same order ([`Expect::names`], [`Expect::synthetic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Responses to `req`; forwarded when `forward`, else dropped.
    /// `named`: a named `Parse`, whose server-side statement name is next
    /// in `names`. `quiet`: an extended-protocol error is dropped too (see
    /// [`Expect::push_quiet`]).
    Server {
        req: Req,
        forward: bool,
        named: bool,
        quiet: bool,
    },
    /// A complete message the proxy sends the client at this point: the
    /// next in `synthetic`.
    Synthetic,
}

/// What to do with a server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it to the client.
    Forward,
    /// Swallow it (answer to an injected message).
    Drop,
}

/// Server message tags that pass to the client untouched: see
/// [`Expect::pass_set`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassSet(PassKind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassKind {
    None,
    /// A forwarded simple query's rows, completions, notices and errors.
    Query,
    /// A forwarded Execute's rows.
    Execute,
}

impl PassSet {
    const NONE: PassSet = PassSet(PassKind::None);
    const QUERY: PassSet = PassSet(PassKind::Query);
    const EXECUTE: PassSet = PassSet(PassKind::Execute);

    /// Whether a message tagged `tag` passes.
    #[inline]
    pub fn passes(self, tag: u8) -> bool {
        match self.0 {
            PassKind::None => false,
            PassKind::Query => matches!(tag, b'T' | b'D' | b'C' | b'I' | b'E' | b'N' | b'A'),
            PassKind::Execute => matches!(tag, b'D' | b'N' | b'A'),
        }
    }
}

/// A server message that does not fit the requests outstanding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server sent unexpected message '{}' (expected responses to {expected:?})", *.tag as char)]
pub struct Desync {
    pub tag: u8,
    pub expected: Option<Req>,
}

/// Outstanding responses for one client session, in order.
#[derive(Debug, Default)]
pub struct Expect {
    queue: VecDeque<Entry>,
    /// The names of the named `Parse` entries queued, in order.
    names: VecDeque<Arc<str>>,
    /// The messages of the `Synthetic` entries queued, in order.
    synthetic: VecDeque<Bytes>,
    /// An error in the extended protocol makes the server skip to `Sync`;
    /// requests sent after the error and before the `Sync` get no answer.
    skipping: bool,
    /// Between CopyIn/CopyOut response and the end of the copy.
    in_copy: bool,
    /// Transaction status from the last `ReadyForQuery`.
    status: u8,
    /// Extended-protocol messages were sent since the last `ReadyForQuery`:
    /// the server is not at a sync point even when nothing is owed (after
    /// a Flush), so the connection must not be released.
    unsynced: bool,
    /// Named statements whose `Parse` the server skipped or refused.
    failed_parses: Vec<Arc<str>>,
}

impl Expect {
    /// A new state: idle, not in a transaction.
    pub fn new() -> Self {
        Self {
            status: b'I',
            ..Default::default()
        }
    }

    /// Records a request sent to the server, and what to do with its
    /// answers: `Action::Drop` for requests the proxy injected itself.
    pub fn push(&mut self, req: Req, answers: Action) {
        self.push_named(req, answers, None);
    }

    /// Records an extended-protocol request the proxy sends for itself
    /// alone, none of whose answers, an error included, is the client's
    /// business (a deferred `BEGIN` replayed in a client's batch). An
    /// error of any other dropped request in the extended protocol is
    /// forwarded: it explains the client's own failure (an injected
    /// re-prepare of the statement the client binds).
    pub fn push_quiet(&mut self, req: Req) {
        self.push_entry(req, false, None, true);
    }

    /// Records a named `Parse` (server-side name), so a failure can be reported.
    pub fn push_named(&mut self, req: Req, answers: Action, name: Option<Arc<str>>) {
        self.push_entry(req, answers == Action::Forward, name, false);
    }

    /// Queues a server request's entry; while the server skips to a Sync,
    /// only a Sync is owed an answer.
    fn push_entry(&mut self, req: Req, forward: bool, name: Option<Arc<str>>, quiet: bool) {
        if self.skipping {
            if req != Req::Sync {
                if let Some(n) = name {
                    self.failed_parses.push(n);
                }
                return;
            }
            self.skipping = false;
        }
        if !matches!(req, Req::Query | Req::FunctionCall | Req::Sync) {
            self.unsynced = true;
        }
        let named = name.is_some();
        if let Some(n) = name {
            self.names.push_back(n);
        }
        self.queue.push_back(Entry::Server {
            req,
            forward,
            named,
            quiet,
        });
    }

    /// Whether [`Self::take_failed_parses`] has any to give.
    #[inline]
    pub fn has_failed_parses(&self) -> bool {
        !self.failed_parses.is_empty()
    }

    /// Statements whose `Parse` did not take effect since the last call.
    pub fn take_failed_parses(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.failed_parses)
    }

    /// Records a message the proxy answers itself at this point in order.
    pub fn push_synthetic(&mut self, msg: Bytes) {
        self.synthetic.push_back(msg);
        self.queue.push_back(Entry::Synthetic);
    }

    /// Whether the next thing owed is a synthetic message. Asked after
    /// every client message: with none queued (most of the time) it reads
    /// one length, not the queue's front.
    #[inline]
    pub fn synthetic_due(&self) -> bool {
        !self.synthetic.is_empty() && matches!(self.queue.front(), Some(Entry::Synthetic))
    }

    /// The synthetic message now due, if the next thing owed is one.
    pub fn pop_synthetic(&mut self) -> Option<Bytes> {
        match self.queue.front() {
            Some(Entry::Synthetic) => {
                self.queue.pop_front();
                self.synthetic.pop_front()
            }
            _ => None,
        }
    }

    /// Nothing is owed: no response is outstanding.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Nothing is owed and the server is at a sync point outside a
    /// transaction: the connection may go back to the pool.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.unsynced && self.status == b'I'
    }

    /// Whether any request still waits for a server answer.
    pub fn awaits_server(&self) -> bool {
        self.queue.iter().any(|e| matches!(e, Entry::Server { .. }))
    }

    /// Between a Flush and the next Sync outside a transaction: nothing is
    /// owed, no transaction is open, but the server is not at a sync point.
    pub fn unsynced_idle(&self) -> bool {
        self.queue.is_empty() && self.unsynced && self.status == b'I'
    }

    /// Records that the proxy brought the server to a sync point itself.
    pub fn synced_by_proxy(&mut self) {
        self.unsynced = false;
    }

    /// Transaction status of the last `ReadyForQuery` ('I', 'T' or 'E').
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Whether a COPY is in progress (client CopyData is expected).
    pub fn in_copy(&self) -> bool {
        self.in_copy
    }

    /// Whether requests after an error are being skipped by the server.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    fn head(&self) -> Option<(Req, bool)> {
        match self.queue.front() {
            Some(Entry::Server { req, forward, .. }) => Some((*req, *forward)),
            _ => None,
        }
    }

    fn act(forward: bool) -> Action {
        if forward {
            Action::Forward
        } else {
            Action::Drop
        }
    }

    /// The server messages that, while nothing else is fed in, go to the
    /// client and change nothing here: [`Self::on_server`] would answer
    /// `Action::Forward` to each and leave the state as it is. Lets the
    /// reader of a query's answers pass its rows by the tag alone; it asks
    /// again after any message outside the set.
    #[inline]
    pub fn pass_set(&self) -> PassSet {
        if self.in_copy {
            return PassSet::NONE;
        }
        match self.queue.front() {
            Some(Entry::Server {
                req: Req::Query,
                forward: true,
                ..
            }) => PassSet::QUERY,
            Some(Entry::Server {
                req: Req::Execute,
                forward: true,
                ..
            }) => PassSet::EXECUTE,
            _ => PassSet::NONE,
        }
    }

    /// Classifies one server message by its tag (and the status byte of
    /// `ReadyForQuery`, passed as `rfq_status`).
    pub fn on_server(&mut self, tag: u8, rfq_status: u8) -> Result<Action, Desync> {
        // Asynchronous messages may come at any time.
        if matches!(tag, b'N' | b'A' | b'S') {
            return Ok(match self.head() {
                Some((_, false)) if tag == b'S' => Action::Drop,
                _ => Action::Forward,
            });
        }
        let Some((req, forward)) = self.head() else {
            return Err(Desync {
                tag,
                expected: None,
            });
        };
        let desync = Err(Desync {
            tag,
            expected: Some(req),
        });
        let simple = matches!(req, Req::Query | Req::FunctionCall);
        match tag {
            b'1' if req == Req::Parse => self.pop(forward),
            b'2' if req == Req::Bind => self.pop(forward),
            b'3' if req == Req::Close => self.pop(forward),
            b't' if req == Req::Describe(b'S') => Ok(Self::act(forward)),
            b'T' | b'n' if matches!(req, Req::Describe(_)) => self.pop(forward),
            b'T' | b'D' | b'C' | b'I' if req == Req::Query => {
                if tag == b'C' {
                    self.in_copy = false;
                }
                Ok(Self::act(forward))
            }
            b'D' if req == Req::Execute => Ok(Self::act(forward)),
            b'C' | b'I' | b's' if req == Req::Execute => {
                self.in_copy = false;
                self.pop(forward)
            }
            b'G' | b'H' | b'W' if req == Req::Execute || req == Req::Query => {
                self.in_copy = true;
                Ok(Self::act(forward))
            }
            b'd' | b'c' if self.in_copy => Ok(Self::act(forward)),
            b'V' if req == Req::FunctionCall => Ok(Self::act(forward)),
            b'E' => {
                self.in_copy = false;
                if simple {
                    return Ok(Self::act(forward));
                }
                let quiet = matches!(self.queue.front(), Some(Entry::Server { quiet: true, .. }));
                // The server now skips to the next Sync: drop what it will
                // never answer, including synthetic answers queued after it.
                while let Some(e) = self.queue.front() {
                    if matches!(e, Entry::Server { req: Req::Sync, .. }) {
                        break;
                    }
                    match self.queue.pop_front() {
                        Some(Entry::Server { named: true, .. }) => {
                            self.failed_parses.extend(self.names.pop_front());
                        }
                        Some(Entry::Synthetic) => {
                            self.synthetic.pop_front();
                        }
                        _ => {}
                    }
                }
                if self.queue.is_empty() {
                    self.skipping = true;
                }
                // See `push_quiet`.
                Ok(if quiet { Action::Drop } else { Action::Forward })
            }
            b'Z' if req == Req::Sync || simple => {
                self.status = rfq_status;
                self.unsynced = false;
                self.in_copy = false;
                self.pop(forward)
            }
            _ => desync,
        }
    }

    /// Takes the answered request (a `Server` entry) off the queue.
    fn pop(&mut self, forward: bool) -> Result<Action, Desync> {
        if let Some(Entry::Server { named: true, .. }) = self.queue.pop_front() {
            self.names.pop_front();
        }
        Ok(Self::act(forward))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::{Drop, Forward};

    fn feed(e: &mut Expect, tags: &[u8]) -> Vec<Action> {
        tags.iter()
            .map(|&t| {
                let a = e.on_server(t, b'I').unwrap();
                in_step(e);
                a
            })
            .collect()
    }

    /// The names of the failed and skipped parses, taken.
    fn failed_names(e: &mut Expect) -> Vec<String> {
        e.take_failed_parses()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// The side queues hold what the entries queued call for, no more.
    fn in_step(e: &Expect) {
        let named = e
            .queue
            .iter()
            .filter(|x| matches!(x, Entry::Server { named: true, .. }))
            .count();
        let synthetic = e
            .queue
            .iter()
            .filter(|x| matches!(x, Entry::Synthetic))
            .count();
        assert_eq!(
            (e.names.len(), e.synthetic.len()),
            (named, synthetic),
            "{e:?}"
        );
    }

    #[test]
    fn flush_without_sync_is_not_idle() {
        // asyncpg: Parse + Describe + Flush, answers, and no Sync yet.
        let mut e = Expect::new();
        e.push(Req::Parse, Action::Forward);
        e.push(Req::Describe(b'S'), Action::Forward);
        assert_eq!(feed(&mut e, b"1tT"), vec![Forward; 3]);
        assert!(e.is_empty() && !e.is_idle());
        // A simple query then ends the extended-protocol episode.
        e.push(Req::Query, Action::Forward);
        assert_eq!(feed(&mut e, b"CZ"), vec![Forward; 2]);
        assert!(e.is_idle());
    }

    #[test]
    fn simple_query() {
        let mut e = Expect::new();
        e.push(Req::Query, Action::Forward);
        assert_eq!(feed(&mut e, b"TDDC"), vec![Forward; 4]);
        assert!(!e.is_empty());
        assert_eq!(feed(&mut e, b"Z"), vec![Forward]);
        assert!(e.is_empty());
    }

    #[test]
    fn simple_query_error_then_ready() {
        let mut e = Expect::new();
        e.push(Req::Query, Action::Forward);
        assert_eq!(e.on_server(b'E', 0).unwrap(), Forward);
        assert_eq!(e.on_server(b'Z', b'E').unwrap(), Forward);
        assert_eq!(e.status(), b'E');
        assert!(e.is_empty());
    }

    #[test]
    fn pipelined_extended_protocol() {
        let mut e = Expect::new();
        for _ in 0..2 {
            for r in [Req::Parse, Req::Bind, Req::Describe(b'P'), Req::Execute] {
                e.push(r, Action::Forward);
            }
        }
        e.push(Req::Sync, Action::Forward);
        assert_eq!(feed(&mut e, b"12TDC12TDCZ"), vec![Forward; 11]);
        assert!(e.is_empty());
    }

    #[test]
    fn describe_statement_has_parameter_description() {
        let mut e = Expect::new();
        e.push(Req::Parse, Action::Forward);
        e.push(Req::Describe(b'S'), Action::Forward);
        e.push(Req::Sync, Action::Forward);
        assert_eq!(feed(&mut e, b"1tnZ"), vec![Forward; 4]);
        assert!(e.is_empty());
    }

    #[test]
    fn injected_parse_is_dropped_and_synthetic_answers_keep_order() {
        let mut e = Expect::new();
        e.push_synthetic(Bytes::from_static(b"1\0\0\0\x04"));
        e.push(Req::Parse, Action::Drop); // re-prepare before Bind
        e.push(Req::Bind, Action::Forward);
        e.push(Req::Execute, Action::Forward);
        e.push(Req::Sync, Action::Forward);
        assert!(e.pop_synthetic().is_some());
        assert_eq!(e.pop_synthetic(), None);
        assert_eq!(
            feed(&mut e, b"12DCZ"),
            vec![Drop, Forward, Forward, Forward, Forward]
        );
        assert!(e.is_empty());
    }

    #[test]
    fn error_mid_pipeline_skips_to_sync() {
        let mut e = Expect::new();
        for r in [Req::Parse, Req::Bind, Req::Execute] {
            e.push(r, Action::Forward);
        }
        e.push_synthetic(Bytes::from_static(b"3\0\0\0\x04"));
        e.push(Req::Sync, Action::Forward);
        e.push(Req::Bind, Action::Forward);
        e.push(Req::Sync, Action::Forward);
        assert_eq!(feed(&mut e, b"1"), vec![Forward]);
        assert_eq!(e.on_server(b'E', 0).unwrap(), Forward);
        assert_eq!(e.on_server(b'Z', b'I').unwrap(), Forward);
        assert_eq!(feed(&mut e, b"2Z"), vec![Forward, Forward]);
        assert!(e.is_empty());
    }

    #[test]
    fn error_before_sync_is_sent_skips_later_requests() {
        let mut e = Expect::new();
        e.push(Req::Parse, Action::Forward);
        assert_eq!(e.on_server(b'E', 0).unwrap(), Forward);
        assert!(e.skipping());
        e.push(Req::Bind, Action::Forward);
        e.push(Req::Execute, Action::Forward);
        e.push(Req::Sync, Action::Forward);
        assert_eq!(feed(&mut e, b"Z"), vec![Forward]);
        assert!(e.is_empty());
    }

    #[test]
    fn failed_and_skipped_parses_are_reported() {
        let mut e = Expect::new();
        e.push_named(Req::Parse, Action::Forward, Some("a".into()));
        e.push_named(Req::Parse, Action::Drop, Some("b".into()));
        e.push(Req::Bind, Action::Forward);
        assert_eq!(feed(&mut e, b"1"), vec![Forward]);
        assert_eq!(e.on_server(b'E', 0).unwrap(), Forward);
        e.push_named(Req::Parse, Action::Forward, Some("c".into()));
        e.push(Req::Sync, Action::Forward);
        let failed = failed_names(&mut e);
        assert_eq!(failed, vec!["b", "c"]);
        assert_eq!(feed(&mut e, b"Z"), vec![Forward]);
    }

    /// Names and synthetic messages leave with their entries: answered,
    /// sent, or skipped by an error, and only those.
    #[test]
    fn names_and_synthetic_messages_leave_with_their_entries() {
        let mut e = Expect::new();
        e.push_named(Req::Parse, Action::Forward, Some("a".into()));
        e.push_synthetic(Bytes::from_static(b"x"));
        e.push_named(Req::Parse, Action::Forward, Some("b".into()));
        e.push(Req::Bind, Action::Forward);
        e.push_synthetic(Bytes::from_static(b"y"));
        e.push_named(Req::Parse, Action::Forward, Some("c".into()));
        e.push(Req::Sync, Action::Forward);
        in_step(&e);
        assert_eq!(feed(&mut e, b"1"), vec![Forward]);
        assert!(e.take_failed_parses().is_empty(), "a was parsed");
        assert_eq!(e.pop_synthetic().as_deref(), Some(&b"x"[..]));
        assert_eq!(e.pop_synthetic(), None);
        assert_eq!(feed(&mut e, b"E"), vec![Forward]);
        let failed = failed_names(&mut e);
        assert_eq!(failed, vec!["b", "c"]);
        assert_eq!(e.pop_synthetic(), None, "y was skipped with its batch");
        assert_eq!(feed(&mut e, b"Z"), vec![Forward]);
        assert!(e.is_empty() && e.names.is_empty() && e.synthetic.is_empty());
    }

    /// An error of a quiet request is dropped with the rest of its batch;
    /// of any other dropped extended-protocol request it is forwarded (it
    /// is, or explains, the client's own).
    #[test]
    fn quiet_requests_drop_their_errors() {
        let mut e = Expect::new();
        e.push(Req::Parse, Forward);
        e.push(Req::Bind, Forward);
        for req in [Req::Parse, Req::Bind, Req::Execute, Req::Close] {
            e.push_quiet(req);
        }
        e.push(Req::Sync, Forward);
        assert_eq!(feed(&mut e, b"12"), vec![Forward, Forward]);
        // The quiet Parse fails: nothing of it reaches the client, and the
        // rest of the batch is skipped up to the client's Sync.
        assert_eq!(feed(&mut e, b"EZ"), vec![Drop, Forward]);
        assert!(e.is_empty());

        let mut e = Expect::new();
        e.push(Req::Parse, Drop);
        e.push(Req::Bind, Drop);
        e.push(Req::Execute, Forward);
        e.push_quiet(Req::Parse);
        e.push(Req::Sync, Forward);
        assert_eq!(feed(&mut e, b"12"), vec![Drop, Drop]);
        // The client's own statement fails: its error goes to it.
        assert_eq!(feed(&mut e, b"EZ"), vec![Forward, Forward]);
        assert!(e.is_empty());

        // Pushed while the server skips to a Sync: not owed at all.
        let mut e = Expect::new();
        e.push(Req::Parse, Drop);
        assert_eq!(feed(&mut e, b"E"), vec![Forward]);
        e.push_quiet(Req::Bind);
        e.push(Req::Sync, Forward);
        assert_eq!(feed(&mut e, b"Z"), vec![Forward]);
        assert!(e.is_empty());
    }

    #[test]
    fn portal_suspension() {
        let mut e = Expect::new();
        e.push(Req::Bind, Action::Forward);
        e.push(Req::Execute, Action::Forward);
        e.push(Req::Execute, Action::Forward);
        e.push(Req::Sync, Action::Forward);
        assert_eq!(feed(&mut e, b"2DDsDCZ"), vec![Forward; 7]);
        assert!(e.is_empty());
    }

    #[test]
    fn copy_in_and_out() {
        let mut e = Expect::new();
        e.push(Req::Query, Action::Forward);
        assert_eq!(feed(&mut e, b"G"), vec![Forward]);
        assert!(e.in_copy());
        assert_eq!(feed(&mut e, b"CZ"), vec![Forward, Forward]);
        assert!(!e.in_copy() && e.is_empty());
        e.push(Req::Query, Action::Forward);
        assert_eq!(feed(&mut e, b"HdddcCZ"), vec![Forward; 7]);
        assert!(e.is_empty());
    }

    #[test]
    fn injected_query_is_dropped_whole_including_parameter_status() {
        let mut e = Expect::new();
        e.push(Req::Query, Action::Drop);
        e.push(Req::Query, Action::Forward);
        assert_eq!(feed(&mut e, b"CSZ"), vec![Drop, Drop, Drop]);
        assert_eq!(feed(&mut e, b"NTDCSZ"), vec![Forward; 6]);
    }

    #[test]
    fn async_messages_and_notifications_pass() {
        let mut e = Expect::new();
        e.push(Req::Sync, Action::Forward);
        assert_eq!(feed(&mut e, b"ANZ"), vec![Forward; 3]);
    }

    #[test]
    fn function_call() {
        let mut e = Expect::new();
        e.push(Req::FunctionCall, Action::Forward);
        assert_eq!(feed(&mut e, b"VZ"), vec![Forward, Forward]);
        assert!(e.is_empty());
    }

    /// Whatever the state, a tag its pass set names gets `Forward` from
    /// `on_server` and leaves the state as it was; so a reader may skip
    /// `on_server` for it.
    #[test]
    fn the_pass_set_is_what_on_server_forwards_without_a_change() {
        type Setup = fn(&mut Expect);
        let states: [(&str, Setup); 11] = [
            ("idle", |_| {}),
            ("query", |e| e.push(Req::Query, Forward)),
            ("query, rows begun", |e| {
                e.push(Req::Query, Forward);
                feed(e, b"TD");
            }),
            ("injected query first", |e| {
                e.push(Req::Query, Drop);
                e.push(Req::Query, Forward);
            }),
            ("query in copy", |e| {
                e.push(Req::Query, Forward);
                feed(e, b"H");
            }),
            ("execute", |e| {
                e.push(Req::Bind, Forward);
                e.push(Req::Execute, Forward);
                e.push(Req::Sync, Forward);
                feed(e, b"2");
            }),
            ("injected execute", |e| {
                e.push(Req::Execute, Drop);
                e.push(Req::Sync, Forward);
            }),
            ("quiet execute", |e| {
                e.push_quiet(Req::Execute);
                e.push(Req::Sync, Forward);
            }),
            ("bind", |e| e.push(Req::Bind, Forward)),
            ("function call", |e| e.push(Req::FunctionCall, Forward)),
            ("synthetic first", |e| {
                e.push_synthetic(Bytes::from_static(b"1\0\0\0\x04"));
                e.push(Req::Sync, Forward);
            }),
        ];
        let mut passed = Vec::new();
        for (name, setup) in states {
            let mut e = Expect::new();
            setup(&mut e);
            let set = e.pass_set();
            for tag in 0..=u8::MAX {
                if !set.passes(tag) {
                    continue;
                }
                let mut e = Expect::new();
                setup(&mut e);
                let before = format!("{e:?}");
                assert_eq!(
                    e.on_server(tag, b'I'),
                    Ok(Forward),
                    "{name}: {}",
                    tag as char
                );
                assert_eq!(format!("{e:?}"), before, "{name}: {}", tag as char);
                passed.push((name, tag));
            }
        }
        // Rows pass wherever they are the answer, and only there.
        for name in ["query", "query, rows begun", "execute"] {
            assert!(passed.contains(&(name, b'D')), "{name}");
        }
        assert!(passed.contains(&("query", b'C')) && !passed.contains(&("execute", b'C')));
        assert!(
            !passed
                .iter()
                .any(|&(_, t)| matches!(t, b'Z' | b'S' | b'G' | b'H'))
        );
        for name in [
            "idle",
            "injected query first",
            "query in copy",
            "injected execute",
        ] {
            assert!(!passed.iter().any(|&(n, _)| n == name), "{name}");
        }
    }

    #[test]
    fn unexpected_messages_are_desync() {
        let mut e = Expect::new();
        assert!(e.on_server(b'D', 0).is_err());
        e.push(Req::Parse, Action::Forward);
        assert!(e.on_server(b'2', 0).is_err());
        assert!(e.on_server(b'Z', 0).is_err());
    }
}
