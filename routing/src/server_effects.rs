//! Statements whose effect reaches past the proxy's view of a transaction,
//! into the server connection: those whose state outlives the transaction
//! (the client must keep its server connection: it is *pinned*) and those
//! that drop server-side prepared statements.
//!
//! Matching is lexical and errs towards pinning: a false match only costs
//! pooling for that one client. No pattern contains a digit, so texts of
//! the same shape (`crate::shape`) always match alike.

use std::sync::LazyLock;

use regex::{Regex, RegexSet};

/// What a statement does to the server connection it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ServerEffects {
    /// State that lives beyond the transaction: the session keeps its server.
    pub pins: bool,
    /// `DISCARD`/`DEALLOCATE`: server-side prepared statements are gone.
    pub drops_statements: bool,
}

const PIN: &[&str] = &[
    r"(?i)\blisten\b",
    r"(?i)\bpg_(try_)?advisory_lock(_shared)?\s*\(",
    r"(?i)\b(temp|temporary)\s+(table|view|sequence)\b",
    r"(?i)\binto\s+(temp|temporary)\b",
    r"(?i)\bwith\s+hold\b",
    r"(?i)(^|;)\s*prepare\s",
    r"(?i)\bset\s+(session\s+)?(role|session\s+authorization)\b",
];

const DROP_STATEMENTS: &[&str] = &[r"(?i)\b(discard|deallocate)\b"];

/// A word every pattern above needs: a text without any of them matches
/// none, and this one literal search is much cheaper than the set.
const KEYWORDS: &str =
    r"(?i)listen|advisory|temp|hold|prepare|role|authorization|discard|deallocate";

/// Compiled matchers: immutable, built on first use.
struct Patterns {
    keywords: Regex,
    set: RegexSet,
}

static PATTERNS: LazyLock<Patterns> = LazyLock::new(|| {
    let all: Vec<&str> = PIN.iter().chain(DROP_STATEMENTS).copied().collect();
    Patterns {
        keywords: Regex::new(KEYWORDS).expect("keywords are valid"),
        set: RegexSet::new(all).expect("patterns are valid"),
    }
});

/// What `sql` does to the server connection it runs on. Cached with the
/// rest of a text's analysis: see [`crate::Analysis::server`] and
/// [`crate::Classifier::server_effects`].
pub fn server_effects(sql: &str) -> ServerEffects {
    let p = &*PATTERNS;
    if !p.keywords.is_match(sql) {
        return ServerEffects::default();
    }
    let m = p.set.matches(sql);
    if !m.matched_any() {
        return ServerEffects::default();
    }
    ServerEffects {
        pins: (0..PIN.len()).any(|i| m.matched(i)),
        drops_statements: (PIN.len()..PIN.len() + DROP_STATEMENTS.len()).any(|i| m.matched(i)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_session_state() {
        for sql in [
            "LISTEN chan",
            "select pg_advisory_lock(1)",
            "SELECT pg_try_advisory_lock_shared (1)",
            "CREATE TEMP TABLE t (a int)",
            "create temporary table t as select 1",
            "SELECT 1 INTO TEMP t",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "PREPARE p AS SELECT 1",
            "select 1; prepare p as select 2",
            "SET ROLE other",
            "SET SESSION AUTHORIZATION other",
        ] {
            assert!(server_effects(sql).pins, "{sql}");
        }
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "select pg_advisory_xact_lock(1)",
            "UPDATE t SET listener = 1",
            "SELECT * FROM holdings",
            "SET LOCAL role_x = 1",
        ] {
            assert!(!server_effects(sql).pins, "{sql}");
        }
    }

    #[test]
    fn no_pattern_names_a_digit() {
        // Texts of the same shape share one cached analysis (crate::shape).
        for p in PIN.iter().chain(DROP_STATEMENTS).chain([&KEYWORDS]) {
            assert!(!p.bytes().any(|b| b.is_ascii_digit()), "{p}");
        }
    }

    #[test]
    fn every_pattern_needs_a_keyword() {
        let k = Regex::new(KEYWORDS).unwrap();
        for sql in [
            "LISTEN c",
            "select pg_advisory_lock(1)",
            "CREATE TEMPORARY TABLE t (a int)",
            "SELECT 1 INTO TEMP t",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "PREPARE p AS SELECT 1",
            "SET ROLE x",
            "SET SESSION AUTHORIZATION x",
            "DISCARD ALL",
            "DEALLOCATE p",
        ] {
            assert!(k.is_match(sql), "{sql}");
        }
        assert!(!k.is_match("SELECT abalance FROM pgbench_accounts WHERE aid = 1"));
    }

    #[test]
    fn statement_dropping_commands() {
        assert!(server_effects("DISCARD ALL").drops_statements);
        assert!(server_effects("deallocate all").drops_statements);
        assert!(!server_effects("SELECT 1").drops_statements);
    }
}
