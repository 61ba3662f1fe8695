//! A client's named prepared statements, mapped to server-side names.
//!
//! The server-side name is derived from the statement's text and parameter
//! types, so every client preparing the same statement shares it on a
//! server connection, and a connection that has it needs no new `Parse`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use lagrouter_routing::{AnalysisMemo, FxBuild};
use sha2::{Digest, Sha256};

/// Most named statements one client may hold.
pub const MAX_STATEMENTS_PER_CLIENT: usize = 10_000;

/// A statement the client prepared.
#[derive(Debug)]
pub struct Statement {
    /// Name used on server connections (`lr_` + 128 bits of SHA-256).
    pub server_name: Arc<str>,
    /// The text as routing reads it.
    pub query: Arc<str>,
    /// The text as the client sent it, when that is not `query` (not
    /// UTF-8: see [`crate::protocol::text`]).
    wire: Option<Bytes>,
    /// Parameter type tail of the `Parse` message, as sent.
    pub param_types: Bytes,
    /// Running it drops prepared statements (`DEALLOCATE`, `DISCARD ALL`).
    pub drops: bool,
    /// Its text's analysis, once routing asked for it.
    pub analysis: AnalysisMemo,
    /// It is a plain `COMMIT` ([`lagrouter_routing::is_plain_commit`]).
    pub commit: bool,
    /// It is a plain `BEGIN` ([`lagrouter_routing::is_plain_begin`]).
    pub begin: bool,
}

impl Statement {
    /// The text as it is to reach the server.
    pub fn text(&self) -> &[u8] {
        self.wire.as_deref().unwrap_or(self.query.as_bytes())
    }
}

/// Server-side name for a statement's text (as sent) and parameter types.
pub fn server_name(text: &[u8], param_types: &[u8]) -> Arc<str> {
    let mut h = Sha256::new();
    h.update(text);
    h.update([0]);
    h.update(param_types);
    let d = h.finalize();
    let mut s = String::with_capacity(35);
    s.push_str("lr_");
    for b in &d[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s.into()
}

/// The client's statements by client-side name. Hashed with Fx (randomly
/// seeded), not SipHash: every Bind of a named statement looks its name
/// up, and a client that crafted colliding names would slow only its own
/// map, which holds at most [`MAX_STATEMENTS_PER_CLIENT`].
#[derive(Default)]
pub struct Statements {
    by_name: HashMap<String, Arc<Statement>, FxBuild>,
    /// How many of them are a plain `BEGIN`: with none, a Bind that
    /// starts a transaction is not looked up to see whether it begins one.
    begins: usize,
}

impl Statements {
    /// Records `name`, the statement `query` (as routing reads it; `wire`:
    /// as sent, when that differs); `None` when the client already holds
    /// the most allowed.
    pub fn insert(
        &mut self,
        name: &str,
        query: &str,
        wire: Option<&[u8]>,
        param_types: &[u8],
        drops: bool,
    ) -> Option<Arc<Statement>> {
        let text = wire.unwrap_or(query.as_bytes());
        if let Some(s) = self.by_name.get(name)
            && s.text() == text
            && s.param_types == param_types
        {
            return Some(s.clone());
        }
        if self.by_name.len() >= MAX_STATEMENTS_PER_CLIENT && !self.by_name.contains_key(name) {
            return None;
        }
        let s = Arc::new(Statement {
            server_name: server_name(text, param_types),
            query: query.into(),
            wire: wire.map(Bytes::copy_from_slice),
            param_types: Bytes::copy_from_slice(param_types),
            drops,
            analysis: AnalysisMemo::default(),
            commit: lagrouter_routing::is_plain_commit(query),
            begin: lagrouter_routing::is_plain_begin(query),
        });
        self.begins += usize::from(s.begin);
        if let Some(old) = self.by_name.insert(name.to_string(), s.clone()) {
            self.begins -= usize::from(old.begin);
        }
        Some(s)
    }

    /// Whether any of them is a plain `BEGIN`.
    pub fn may_begin(&self) -> bool {
        self.begins > 0
    }

    /// The statement called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    /// Forgets `name` (Close, `DEALLOCATE name`); whether it was known.
    pub fn remove(&mut self, name: &str) -> Option<Arc<Statement>> {
        let s = self.by_name.remove(name)?;
        self.begins -= usize::from(s.begin);
        Some(s)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Forgets everything (DEALLOCATE ALL, DISCARD ALL).
    pub fn clear(&mut self) {
        self.by_name.clear();
        self.begins = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_and_types_share_a_server_name() {
        let mut a = Statements::default();
        let mut b = Statements::default();
        let x = a.insert("P_1", "SELECT 1", None, &[0, 0], false).unwrap();
        let y = b.insert("other", "SELECT 1", None, &[0, 0], false).unwrap();
        assert_eq!(x.server_name, y.server_name);
        let z = b
            .insert("z", "SELECT 1", None, &[0, 1, 0, 0, 0, 23], false)
            .unwrap();
        assert_ne!(x.server_name, z.server_name);
        assert_eq!(x.server_name.len(), 35);
    }

    #[test]
    fn reprepare_with_new_text_replaces() {
        let mut a = Statements::default();
        a.insert("s", "SELECT 1", None, &[0, 0], false).unwrap();
        let t = a.insert("s", "SELECT 2", None, &[0, 0], false).unwrap();
        assert_eq!(&*a.get("s").unwrap().query, "SELECT 2");
        assert_eq!(a.get("s").unwrap().server_name, t.server_name);
        a.remove("s");
        assert!(a.get("s").is_none());
    }

    #[test]
    fn plain_begins_are_counted_through_replace_remove_and_clear() {
        let mut a = Statements::default();
        assert!(!a.may_begin());
        a.insert("s", "SELECT 1", None, &[], false).unwrap();
        assert!(!a.may_begin());
        assert!(a.insert("b", "begin", None, &[], false).unwrap().begin);
        a.insert("b2", "START TRANSACTION", None, &[], false)
            .unwrap();
        assert_eq!(a.begins, 2);
        // The same again changes nothing; another text in its place does.
        a.insert("b", "begin", None, &[], false).unwrap();
        assert_eq!(a.begins, 2);
        a.insert("b", "SELECT 2", None, &[], false).unwrap();
        assert_eq!(a.begins, 1);
        // Not a plain BEGIN: not counted.
        a.insert("s", "BEGIN ISOLATION LEVEL SERIALIZABLE", None, &[], false);
        assert_eq!(a.begins, 1);
        a.insert("w", "begin work", None, &[], false).unwrap();
        assert_eq!(a.begins, 2);
        assert!(a.remove("b2").is_some());
        assert!(a.remove("b2").is_none());
        assert_eq!(a.begins, 1);
        assert!(a.may_begin());
        a.clear();
        assert!(!a.may_begin());
        a.insert("x", "BEGIN", None, &[], false).unwrap();
        assert!(a.may_begin());
    }

    /// Two LATIN1 texts that routing reads alike ("é" and "è" are both
    /// U+FFFD to it) are two statements, each prepared as sent.
    #[test]
    fn texts_not_utf8_are_kept_and_named_as_sent() {
        let mut a = Statements::default();
        let read = "SELECT '\u{fffd}'";
        let e = a
            .insert("e", read, Some(b"SELECT '\xe9'"), &[0, 0], false)
            .unwrap();
        let grave = a
            .insert("g", read, Some(b"SELECT '\xe8'"), &[0, 0], false)
            .unwrap();
        assert_eq!((e.text(), &*e.query), (&b"SELECT '\xe9'"[..], read));
        assert_eq!(grave.text(), b"SELECT '\xe8'");
        assert_ne!(e.server_name, grave.server_name);
        // Prepared again as "è": a new statement, not the kept "é".
        let again = a
            .insert("e", read, Some(b"SELECT '\xe8'"), &[0, 0], false)
            .unwrap();
        assert_eq!(again.server_name, grave.server_name);
        assert_eq!(a.get("e").unwrap().text(), b"SELECT '\xe8'");
    }
}
