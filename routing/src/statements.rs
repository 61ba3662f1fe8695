//! Transaction-control and setting statements that matter to routing:
//! `BEGIN`/`SET TRANSACTION` modes, `SET default_transaction_read_only`,
//! `SET SESSION CHARACTERISTICS`, `SET`/`RESET lagrouter.*`, `RESET ALL`.
//!
//! Their effects on the session (a new default, a causal token) are
//! returned as [`SessionEffect`]s rather than applied, because the
//! analysis of a text is cached and the effect must happen at every
//! execution.

use crate::classify::{SessionEffect, Stmt, TxnMode, is_word};
use crate::command::{self, ProxyCommand};
use crate::lexer::{Token, TokenKind};

/// `READ ONLY` / `READ WRITE` / `ISOLATION LEVEL SERIALIZABLE` in a
/// transaction mode list.
pub(crate) fn txn_mode(sql: &str, t: &[Token]) -> TxnMode {
    let mut m = TxnMode::default();
    for (i, x) in t.iter().enumerate() {
        if x.is_word(sql, "read") {
            if is_word(sql, t.get(i + 1), &["only"]) {
                m.read_only = Some(true);
            } else if is_word(sql, t.get(i + 1), &["write"]) {
                m.read_only = Some(false);
            }
        } else if x.is_word(sql, "serializable") {
            m.serializable = true;
        }
    }
    m
}

/// `on`/`off`/`true`/`false`/`yes`/`no`/`1`/`0`, quoted or not.
fn setting_bool(sql: &str, value: &[Token]) -> Option<bool> {
    let [v] = value else { return None };
    let s = v.text(sql).trim_matches('\'').to_ascii_lowercase();
    match s.as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Some(true),
        // DEFAULT: the server default is off unless a role or database
        // setting says otherwise; assuming off can only be more cautious.
        "off" | "false" | "no" | "0" | "f" | "n" | "default" => Some(false),
        _ => None,
    }
}

pub(crate) fn set_statement(sql: &str, t: &[Token], effects: &mut Vec<SessionEffect>) -> Stmt {
    let mut r = &t[1..];
    let mut local = false;
    if is_word(sql, r.first(), &["session"]) {
        r = &r[1..];
        if is_word(sql, r.first(), &["characteristics"]) {
            if let Some(ro) = txn_mode(sql, r).read_only {
                effects.push(SessionEffect::DefaultReadOnly(ro));
            }
            return Stmt::Write;
        }
    } else if is_word(sql, r.first(), &["local"]) {
        local = true;
        r = &r[1..];
    }
    if is_word(sql, r.first(), &["transaction"]) {
        return if is_word(sql, r.get(1), &["snapshot"]) {
            Stmt::Write
        } else {
            Stmt::SetTxn(txn_mode(sql, &r[1..]))
        };
    }
    match command::parse_tokens(sql, t) {
        Some(ProxyCommand::Error(_)) => return Stmt::Write,
        Some(cmd) => {
            effects.push(SessionEffect::Proxy(cmd));
            return Stmt::Neutral;
        }
        None => {}
    }
    let assigns = r.len() >= 3
        && ((r[1].kind == TokenKind::Operator && r[1].text(sql) == "=") || r[1].is_word(sql, "to"));
    if assigns && r[0].is_word(sql, "default_transaction_read_only") {
        // SET LOCAL of a default affects no transaction: ignore it.
        if let (false, Some(b)) = (local, setting_bool(sql, &r[2..])) {
            effects.push(SessionEffect::DefaultReadOnly(b));
        }
    } else if assigns
        && r[0].is_word(sql, "transaction_read_only")
        && let Some(b) = setting_bool(sql, &r[2..])
    {
        return Stmt::SetTxn(TxnMode {
            read_only: Some(b),
            serializable: false,
        });
    }
    Stmt::Write
}

pub(crate) fn reset_statement(sql: &str, t: &[Token], effects: &mut Vec<SessionEffect>) -> Stmt {
    if is_word(sql, t.get(1), &["all"]) {
        effects.push(SessionEffect::ResetAll);
    } else if is_word(sql, t.get(1), &["default_transaction_read_only"]) {
        effects.push(SessionEffect::DefaultReadOnly(false));
    } else if let Some(cmd) = command::parse_tokens(sql, t) {
        if matches!(cmd, ProxyCommand::Error(_)) {
            return Stmt::Write;
        }
        effects.push(SessionEffect::Proxy(cmd));
        return Stmt::Neutral;
    }
    Stmt::Write
}

/// Which of `verbs` (lowercase ASCII, each with a first letter of its
/// own) is `sql`'s first word, and the rest: the text trimmed, with one
/// trailing `;`, the verb and the whitespace after it taken off. A test of
/// a byte or two for the texts these checks see most (`SELECT`,
/// `UPDATE`...), and one pass for those it accepts.
#[inline(always)]
fn after_verb<'s, const N: usize>(sql: &'s str, verbs: [&str; N]) -> Option<(usize, &'s str)> {
    let s = sql.trim_ascii_start().as_bytes();
    let first = s.first()?.to_ascii_lowercase();
    let at = verbs.iter().position(|v| v.as_bytes()[0] == first)?;
    let verb = verbs[at].as_bytes();
    if !s.get(..verb.len())?.eq_ignore_ascii_case(verb)
        || s.get(verb.len())
            .is_some_and(|&c| c != b';' && !c.is_ascii_whitespace())
    {
        return None;
    }
    // The verb is ASCII: `verb.len()` is a character boundary.
    let rest = sql.trim_ascii_start()[verb.len()..].trim_ascii_end();
    let rest = rest.strip_suffix(';').map_or(rest, str::trim_ascii_end);
    Some((at, rest.trim_ascii_start()))
}

/// Whether `rest` is nothing, `WORK` or `TRANSACTION`.
fn plain_noise(rest: &str) -> bool {
    rest.is_empty() || rest.eq_ignore_ascii_case("work") || rest.eq_ignore_ascii_case("transaction")
}

/// Whether `sql` is exactly a plain `COMMIT` or `END` (any case, `WORK` or
/// `TRANSACTION` after it, whitespace and one trailing `;` allowed): text
/// that, run inside a transaction block, ends it. Not `AND CHAIN`, not
/// `COMMIT PREPARED`, not text with comments or other statements: for
/// those `false`, and the caller handles the end the general way. A fast
/// check on raw text, made on every statement inside a writing
/// transaction, so it does not lex.
pub fn is_plain_commit(sql: &str) -> bool {
    after_verb(sql, ["commit", "end"]).is_some_and(|(_, rest)| plain_noise(rest))
}

/// Whether `sql` is exactly a plain `BEGIN` (`WORK` or `TRANSACTION` after
/// it) or `START TRANSACTION`, as [`is_plain_commit`] reads text: no
/// isolation level, no access mode, no comment, no other statement. Such
/// a `BEGIN`, sent when no transaction is open, can only succeed, and
/// only starts the block.
pub fn is_plain_begin(sql: &str) -> bool {
    match after_verb(sql, ["begin", "start"]) {
        Some((0, rest)) => plain_noise(rest),
        Some((_, rest)) => rest.eq_ignore_ascii_case("transaction"),
        None => false,
    }
}

/// Whether `sql` is a plain `COMMIT`/`END` ([`is_plain_commit`]) or a
/// plain `ROLLBACK`/`ABORT` (`WORK` or `TRANSACTION` after it): what a
/// failed transaction block takes to end (the server answers `ROLLBACK`
/// to each).
pub fn is_plain_transaction_end(sql: &str) -> bool {
    after_verb(sql, ["commit", "end", "rollback", "abort"])
        .is_some_and(|(_, rest)| plain_noise(rest))
}

#[cfg(test)]
mod tests {
    use super::{is_plain_begin, is_plain_commit, is_plain_transaction_end};
    use crate::{FunctionCatalog, ReadOnlyFunctions, analyze};

    /// The checks' reading of a text, written the plain way, as the
    /// reference: `sql` as one statement's words, the first (the verb)
    /// and the rest, with whitespace and one trailing `;` trimmed.
    fn verb_and_rest(sql: &str) -> (&str, &str) {
        let s = sql.trim_ascii();
        let s = s.strip_suffix(';').map_or(s, str::trim_ascii_end);
        let split = s
            .bytes()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(s.len());
        let (verb, rest) = s.split_at(split);
        (verb, rest.trim_ascii_start())
    }

    #[test]
    fn plain_commits_are_recognized() {
        for s in [
            "COMMIT",
            "commit",
            "END;",
            "end ;",
            "  Commit Work ;\n",
            "END TRANSACTION",
            "commit\ttransaction",
        ] {
            assert!(is_plain_commit(s), "{s:?}");
        }
    }

    #[test]
    fn everything_else_is_not_a_plain_commit() {
        for s in [
            "",
            ";",
            "COMMIT AND CHAIN",
            "COMMIT PREPARED 'x'",
            "ROLLBACK",
            "ABORT",
            "COMMIT; BEGIN",
            "COMMIT;;",
            "/* c */ COMMIT",
            "COMMIT -- c",
            "COMMITTED",
            "ENDING",
            "END WORK TRANSACTION",
            "\"commit\"",
            "SELECT 1; COMMIT",
        ] {
            assert!(!is_plain_commit(s), "{s:?}");
        }
    }

    #[test]
    fn plain_begins_are_recognized_and_nothing_with_options() {
        for s in [
            "BEGIN",
            "begin;",
            " Begin Work ; ",
            "BEGIN TRANSACTION",
            "start transaction",
            "START\tTRANSACTION;",
        ] {
            assert!(is_plain_begin(s), "{s:?}");
        }
        for s in [
            "",
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "BEGIN READ ONLY",
            "START TRANSACTION READ WRITE",
            "START",
            "BEGIN; SELECT 1",
            "BEGIN;;",
            "/* c */ BEGIN",
            "BEGIN -- c",
            "BEGINNING",
            "SELECT 1",
            "COMMIT",
        ] {
            assert!(!is_plain_begin(s), "{s:?}");
        }
    }

    #[test]
    fn a_failed_block_ends_with_commit_end_rollback_or_abort() {
        for s in [
            "COMMIT",
            "end work",
            "ROLLBACK;",
            "rollback transaction",
            "ABORT",
        ] {
            assert!(is_plain_transaction_end(s), "{s:?}");
        }
        for s in [
            "ROLLBACK TO SAVEPOINT a",
            "ROLLBACK AND CHAIN",
            "ROLLBACK PREPARED 'x'",
            "ABORT; SELECT 1",
            "SELECT 1",
            "",
        ] {
            assert!(!is_plain_transaction_end(s), "{s:?}");
        }
    }

    /// The checks read a text's first word as [`verb_and_rest`] does
    /// (the reference above): over every text built from these pieces,
    /// they answer as the reference does.
    #[test]
    fn the_checks_read_the_verb_as_verb_and_rest_does() {
        use super::plain_noise;
        let begin = |s: &str| {
            let (verb, rest) = verb_and_rest(s);
            (verb.eq_ignore_ascii_case("begin") && plain_noise(rest))
                || (verb.eq_ignore_ascii_case("start") && rest.eq_ignore_ascii_case("transaction"))
        };
        let commit = |s: &str| {
            let (verb, rest) = verb_and_rest(s);
            (verb.eq_ignore_ascii_case("commit") || verb.eq_ignore_ascii_case("end"))
                && plain_noise(rest)
        };
        let end_of_failed = |s: &str| {
            let (verb, rest) = verb_and_rest(s);
            ["commit", "end", "rollback", "abort"]
                .iter()
                .any(|v| verb.eq_ignore_ascii_case(v))
                && plain_noise(rest)
        };
        let mut texts = 0;
        for lead in ["", " ", "\n\t "] {
            for verb in [
                "begin",
                "BEGIN",
                "Start",
                "start",
                "commit",
                "END",
                "end",
                "beg",
                "en",
                "",
                "begins",
                "ends",
                "select",
                "SELECT",
                "starts",
                "committed",
                "ROLLBACK",
                "abort",
                "rollbacks",
            ] {
                for sep in ["", " ", "\t", ";", " ;", ";;", "\n", "/**/", "x"] {
                    for rest in ["", "work", "TRANSACTION", "transaction ;", "read only"] {
                        for end in ["", ";", " ; ", ";;", "\n", "; x"] {
                            let s = format!("{lead}{verb}{sep}{rest}{end}");
                            assert_eq!(is_plain_begin(&s), begin(&s), "{s:?}");
                            assert_eq!(is_plain_commit(&s), commit(&s), "{s:?}");
                            assert_eq!(is_plain_transaction_end(&s), end_of_failed(&s), "{s:?}");
                            texts += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(texts, 3 * 19 * 9 * 5 * 6);
    }

    /// What the fast check accepts, the classifier reads as a lone end of a
    /// transaction block that writes nothing.
    #[test]
    fn the_classifier_agrees_with_what_is_accepted() {
        let (c, x) = (FunctionCatalog::builtin(), ReadOnlyFunctions::default());
        for s in ["COMMIT", "end;", " commit work ; ", "END TRANSACTION"] {
            assert!(is_plain_commit(s));
            let a = analyze(s, &c, &x);
            assert!(!a.writes, "{s:?}");
            assert!(a.effects.is_empty(), "{s:?}");
        }
    }
}
