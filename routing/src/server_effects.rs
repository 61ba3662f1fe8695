//! Statements whose effect reaches past the proxy's view of a transaction,
//! into the server connection: those whose state outlives the transaction
//! (the client must keep its server connection: it is *pinned*) and those
//! that drop prepared statements.
//!
//! Found on the classifier's own tokens (`lexer`), statement by statement:
//! string literals, comments and quoted identifiers never trigger an
//! effect (`SELECT 'please discard all of these notes'` drops nothing,
//! `SELECT listen_count FROM t` pins nothing). Text the lexer cannot cut
//! with certainty errs towards pinning: a false pin only costs pooling for
//! that one client. Effects depend on words only, never on digits, so
//! texts of the same shape (`crate::shape`) have the same effects.

use crate::lexer::{Backslash, Token, TokenKind, lex};
use crate::words::WordSet;

/// What a statement does to the server connection it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ServerEffects {
    /// State that lives beyond the transaction: the session keeps its server.
    pub pins: bool,
    /// `DEALLOCATE name`: that one prepared statement is gone (its name is
    /// in the text: [`deallocated_names`]).
    pub drops_statements: bool,
    /// `DEALLOCATE ALL` or `DISCARD ALL`: every prepared statement is gone.
    pub drops_all: bool,
}

impl ServerEffects {
    /// Running it drops one or all prepared statements.
    pub fn drops(self) -> bool {
        self.drops_statements || self.drops_all
    }

    fn or(self, o: ServerEffects) -> ServerEffects {
        ServerEffects {
            pins: self.pins || o.pins,
            drops_statements: self.drops_statements || o.drops_statements,
            drops_all: self.drops_all || o.drops_all,
        }
    }
}

/// Functions that take a session-level advisory lock.
const SESSION_LOCKS: [&str; 4] = [
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Every word an effect needs, for a quick test before lexing.
pub(crate) const KEYWORDS: [&str; 9] = [
    "listen",
    "advisory",
    "temp",
    "hold",
    "prepare",
    "role",
    "authorization",
    "discard",
    "deallocate",
];

static EFFECT_WORDS: WordSet<9> = WordSet::new(KEYWORDS);

/// [`KEYWORDS`] and `lagrouter`, the word every proxy command names.
pub(crate) const INERT_TEST_WORDS: [&str; 10] = {
    let mut w = [""; 10];
    let mut i = 0;
    while i < KEYWORDS.len() {
        w[i] = KEYWORDS[i];
        i += 1;
    }
    w[9] = "lagrouter";
    w
};

/// The same stride as [`KEYWORDS`] alone (one lookup every three bytes):
/// one pass answers both questions for the price of the effects' one.
static INERT_TEST: WordSet<10> = WordSet::new(INERT_TEST_WORDS);

/// Whether `sql` surely is neither a proxy command
/// ([`crate::parse_proxy_command`] is `None`) nor has server effects
/// ([`server_effects`] is empty): it holds none of the words either needs.
/// For a statement inside a transaction that is not analyzed, which would
/// otherwise pass over the text twice (`lagrouter`, then the effect
/// words): about 100 instructions a statement less.
pub fn inert_text(sql: &str) -> bool {
    !INERT_TEST.any_in(sql)
}

/// Whether any of [`KEYWORDS`] appears in `sql`, in any letter case and
/// anywhere (`pg_advisory_lock`, `TEMPORARY`): every statement inside a
/// transaction comes through here, and most hold none of the words.
pub(crate) fn may_have_effects(sql: &str) -> bool {
    EFFECT_WORDS.any_in(sql)
}

/// What `sql` does to the server connection it runs on. Cached with the
/// rest of a text's analysis: see [`crate::Analysis::server`] and
/// [`crate::Classifier::server_effects`].
pub fn server_effects(sql: &str) -> ServerEffects {
    if !may_have_effects(sql) {
        return ServerEffects::default();
    }
    lexed_effects(sql)
}

/// [`server_effects`] without the quick word test (for callers that made it).
pub(crate) fn lexed_effects(sql: &str) -> ServerEffects {
    let lexed = lex(sql, Backslash::Literal);
    let mut fx = effects_of(sql, &lexed.tokens);
    if lexed.backslash_in_plain_string {
        // standard_conforming_strings may be off: where the two readings
        // differ, take both.
        fx = fx.or(effects_of(sql, &lex(sql, Backslash::Escape).tokens));
    }
    fx
}

fn effects_of(sql: &str, tokens: &[Token]) -> ServerEffects {
    let mut fx = ServerEffects::default();
    if tokens.last().is_some_and(|t| t.kind == TokenKind::Error) {
        // Part of the text could not be cut with certainty.
        fx.pins = true;
    }
    for stmt in tokens.split(|t| matches!(t.kind, TokenKind::Semicolon | TokenKind::Error)) {
        fx = fx.or(statement_effects(sql, stmt));
    }
    fx
}

fn statement_effects(sql: &str, t: &[Token]) -> ServerEffects {
    let word = |i: usize, kw: &str| t.get(i).is_some_and(|tok| tok.is_word(sql, kw));
    let mut fx = ServerEffects::default();
    let first = |kw: &str| word(0, kw);
    // CREATE [GLOBAL | LOCAL] TEMP | TEMPORARY ... (table, view, sequence).
    let temp_at = if word(1, "global") || word(1, "local") {
        2
    } else {
        1
    };
    let set_at = if word(1, "session") { 2 } else { 1 };
    fx.pins = first("listen")
        || first("prepare")
        || (first("create") && (word(temp_at, "temp") || word(temp_at, "temporary")))
        || (first("set")
            && (word(set_at, "role")
                || (word(1, "session") && word(2, "authorization"))
                || (word(set_at, "session") && word(set_at + 1, "authorization"))))
        || (0..t.len()).any(|i| {
            // SELECT ... INTO TEMP t; DECLARE c CURSOR WITH HOLD; a
            // session-level advisory lock called anywhere.
            (word(i, "into") && (word(i + 1, "temp") || word(i + 1, "temporary")))
                || (word(i, "with") && word(i + 1, "hold"))
                || (SESSION_LOCKS.iter().any(|f| word(i, f))
                    && t.get(i + 1).is_some_and(|p| p.kind == TokenKind::LParen))
        });
    if first("discard") && word(1, "all") {
        fx.drops_all = true;
    }
    if first("deallocate") {
        let at = if word(1, "prepare") { 2 } else { 1 };
        if word(at, "all") {
            fx.drops_all = true;
        } else {
            fx.drops_statements = true;
        }
    }
    fx
}

/// The statement names `DEALLOCATE [PREPARE] name` statements in `sql`
/// drop (not `ALL`), as PostgreSQL folds them: unquoted names lowercased,
/// quoted ones as written.
pub fn deallocated_names(sql: &str) -> Vec<String> {
    let lexed = lex(sql, Backslash::Literal);
    lexed
        .tokens
        .split(|t| t.kind == TokenKind::Semicolon)
        .filter_map(|t| deallocated_name(sql, t).map(|(name, _)| name))
        .collect()
}

/// The name when `sql` is a single `DEALLOCATE [PREPARE] name` and nothing
/// else (comments and semicolons aside): a statement the proxy can answer
/// itself when `name` is one of the client's protocol-level statements.
pub fn sole_deallocated_name(sql: &str) -> Option<String> {
    // Every simple query asks: most start with another word.
    let starts = sql.trim_start().as_bytes().first().copied();
    if !matches!(starts, Some(b'd' | b'D' | b'/' | b'-')) || !may_have_effects(sql) {
        return None;
    }
    let lexed = lex(sql, Backslash::Literal);
    let mut statements = lexed
        .tokens
        .split(|t| t.kind == TokenKind::Semicolon)
        .filter(|t| !t.is_empty());
    let only = statements.next()?;
    if statements.next().is_some() {
        return None;
    }
    match deallocated_name(sql, only) {
        Some((name, used)) if used == only.len() => Some(name),
        _ => None,
    }
}

/// The name one statement's `DEALLOCATE [PREPARE] name` drops, and how many
/// tokens that took.
fn deallocated_name(sql: &str, t: &[Token]) -> Option<(String, usize)> {
    if !t.first().is_some_and(|w| w.is_word(sql, "deallocate")) {
        return None;
    }
    let at = if t.get(1).is_some_and(|w| w.is_word(sql, "prepare")) {
        2
    } else {
        1
    };
    let n = t.get(at)?;
    let name = match n.kind {
        TokenKind::Word if !n.is_word(sql, "all") => n.text(sql).to_ascii_lowercase(),
        TokenKind::QuotedIdent if n.text(sql).starts_with('"') => {
            let q = n.text(sql);
            q[1..q.len() - 1].replace("\"\"", "\"")
        }
        _ => return None,
    };
    Some((name, at + 1))
}

#[cfg(test)]
mod tests;
