//! Statement classification: is this text certainly read-only?
//!
//! Unknown means write. A statement is [`Class::Read`] only when its
//! tokens prove it: it is a `SELECT`/`WITH`/`VALUES`/`TABLE`/`SHOW`, or an
//! `EXPLAIN` that does not run a write, with no locking clause
//! (`FOR UPDATE/SHARE/NO KEY UPDATE/KEY SHARE`), no data-modifying CTE, no
//! `SELECT ... INTO`, and only calls to functions known not to write.
//! Multi-statement text is classified as a whole: every statement must be
//! read-only, and a transaction left open must be `READ ONLY`.
//!
//! The scan is token-based, not a parse, and errs one way only: words such
//! as `insert` or `into` anywhere (outside literals and comments) make the
//! statement a write even where the grammar would read them as a column
//! name. `tests/oracle.rs` checks this against PostgreSQL's own parser.

use crate::command::ProxyCommand;
use crate::functions::{FunctionCatalog, ReadOnlyFunctions};
use crate::hints::{self, Hints};
use crate::keywords::{
    is_builtin_operator, is_col_name_keyword, is_grammar_pair, is_infix_keyword, is_reserved,
};
use crate::lexer::{Backslash, Lexed, Token, TokenKind, lex};
use crate::server_effects::{ServerEffects, server_effects};
use crate::statements::{reset_statement, set_statement, txn_mode};

/// A transaction's declared characteristics (`BEGIN ...`, `SET TRANSACTION ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TxnMode {
    /// `READ ONLY` → `Some(true)`, `READ WRITE` → `Some(false)`, neither →
    /// `None` (the session's `default_transaction_read_only` decides).
    pub read_only: Option<bool>,
    /// `ISOLATION LEVEL SERIALIZABLE`: hot standbys refuse it, so the
    /// transaction needs the primary even when read-only.
    pub serializable: bool,
}

impl TxnMode {
    /// Whether a transaction of this mode may run on a replica, given the
    /// session's `default_transaction_read_only`.
    pub fn is_read_only(&self, default_read_only: bool) -> bool {
        !self.serializable && self.read_only.unwrap_or(default_read_only)
    }
}

/// What a statement (or multi-statement text) is, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Certainly read-only: may go to a replica.
    Read,
    /// Looks like a read but relies on something not known to be read-only
    /// (a volatile or unknown function, a non-built-in operator). Goes to
    /// the primary and counts as a write, but a `route=replica` hint or
    /// rule may send it to a replica.
    Unknown,
    /// Writes, may write, or could not be classified: the primary. Hints
    /// and rules cannot send it to a replica.
    Write,
    /// Opens a transaction and leaves it open (`BEGIN`, with reads only
    /// before it). A replica may take it only if it is read-only.
    Begin(TxnMode),
}

impl Class {
    /// Whether the statement may write (everything but a read, or a
    /// transaction declared `READ ONLY`). The proxy records the commit LSN
    /// of transactions that may write.
    pub fn is_write(&self) -> bool {
        match self {
            Class::Read => false,
            Class::Begin(m) => !m.is_read_only(false),
            Class::Unknown | Class::Write => true,
        }
    }

    /// Rank from least to most conservative, to combine two opinions.
    fn caution(&self) -> u8 {
        match self {
            Class::Read => 0,
            Class::Begin(m) if m.is_read_only(false) => 1,
            Class::Begin(TxnMode {
                read_only: None,
                serializable: false,
            }) => 2,
            Class::Begin(_) => 3,
            Class::Unknown => 4,
            Class::Write => 5,
        }
    }
}

/// A statement's effect on session routing state, applied each time the
/// statement is routed (the analysis is cached, the effect is not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    /// `SET lagrouter.*` / `RESET lagrouter.*` inside a multi-statement text.
    Proxy(ProxyCommand),
    /// `SET default_transaction_read_only`, `SET SESSION CHARACTERISTICS AS
    /// TRANSACTION READ ONLY|WRITE`, `RESET default_transaction_read_only`.
    DefaultReadOnly(bool),
    /// `RESET ALL` / `DISCARD ALL`: route override, causal token and default
    /// read-only go back to their defaults (the session's own last write
    /// stays: read-your-writes is not a setting).
    ResetAll,
}

/// Everything routing needs to know about a statement text; cached by text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub class: Class,
    /// Whether a statement of the text may change data: a write, or a
    /// call not known to be read-only (the `Write` and `Unknown`
    /// statements). Reads, transaction control, `SAVEPOINT` and
    /// `SET lagrouter.*` do not. Unlike [`Class::is_write`], a text of only
    /// `BEGIN` or `COMMIT` is not a write here: inside a transaction on the
    /// primary, the proxy asks for the commit LSN only once a statement
    /// with `writes` ran.
    pub writes: bool,
    pub hints: Hints,
    pub effects: Box<[SessionEffect]>,
    /// What it does to the server connection (pins it, drops prepared
    /// statements).
    pub server: ServerEffects,
    /// The text contains `lagrouter` (any case, anywhere): only then can it
    /// be a statement the proxy answers itself
    /// ([`crate::parse_proxy_command`]). Texts of one shape agree on it
    /// (the word has no digit), so a cached analysis answers for every
    /// text it is shared with, and a caller holding the analysis need not
    /// scan the text again.
    pub names_lagrouter: bool,
}

/// Classifies `sql` with function volatility from `catalog` and the
/// operator's `extra` read-only functions.
pub fn classify(sql: &str, catalog: &FunctionCatalog, extra: &ReadOnlyFunctions) -> Class {
    analyze(sql, catalog, extra).class
}

/// Classifies `sql` and collects its hints and session effects.
pub fn analyze(sql: &str, catalog: &FunctionCatalog, extra: &ReadOnlyFunctions) -> Analysis {
    let lexed = lex(sql, Backslash::Literal);
    let mut a = analyze_lexed(sql, &lexed, catalog, extra);
    if lexed.backslash_in_plain_string {
        // Under standard_conforming_strings = off the same text may hide
        // different code; the more cautious reading wins.
        let other = analyze_lexed(sql, &lex(sql, Backslash::Escape), catalog, extra);
        if other.class.caution() > a.class.caution() {
            a.class = other.class;
        }
        a.writes |= other.writes;
    }
    a.server = server_effects(sql);
    a.names_lagrouter = crate::command::mentions_lagrouter(sql);
    a
}

fn analyze_lexed(
    sql: &str,
    lexed: &Lexed,
    catalog: &FunctionCatalog,
    extra: &ReadOnlyFunctions,
) -> Analysis {
    let mut hints = Hints::default();
    for c in &lexed.comments {
        hints::parse_comment(c.text(sql), &mut hints);
    }
    let mut effects = Vec::new();
    let mut writes = lexed.failed();
    let class = if lexed.failed() {
        Class::Write
    } else {
        let scan = Scan {
            sql,
            catalog,
            extra,
        };
        let stmts = lexed
            .tokens
            .split(|t| t.kind == TokenKind::Semicolon)
            .filter(|s| !s.is_empty())
            .map(|s| scan.statement(s, &mut effects))
            .inspect(|s| writes |= matches!(s, Stmt::Write | Stmt::Unknown));
        combine(stmts)
    };
    Analysis {
        class,
        writes,
        hints,
        effects: effects.into_boxed_slice(),
        server: ServerEffects::default(),
        names_lagrouter: false,
    }
}

/// One statement's class, before combining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stmt {
    Read,
    Unknown,
    Write,
    Begin(TxnMode),
    SetTxn(TxnMode),
    End {
        chain: bool,
    },
    /// Harmless anywhere, but not a read on its own (`SAVEPOINT`,
    /// `SET lagrouter.*`).
    Neutral,
}

/// Folds statement classes, following transaction boundaries.
fn combine(stmts: impl Iterator<Item = Stmt>) -> Class {
    let (mut read, mut unknown) = (false, false);
    let mut open: Option<TxnMode> = None;
    // A block closed within the text still decides where the text runs: a
    // standby refuses serializable and read-write transactions.
    let mut needs_primary = false;
    for s in stmts {
        match s {
            Stmt::Read => read = true,
            Stmt::Unknown => unknown = true,
            Stmt::Write => return Class::Write,
            // A nested BEGIN only draws a warning; the first one counts.
            Stmt::Begin(m) => open = open.or(Some(m)),
            Stmt::SetTxn(m) => {
                if let Some(o) = open.as_mut() {
                    o.read_only = m.read_only.or(o.read_only);
                    o.serializable |= m.serializable;
                }
            }
            Stmt::End { chain } => {
                if let Some(m) = open
                    && (m.serializable || m.read_only == Some(false))
                {
                    needs_primary = true;
                }
                if !chain {
                    open = None;
                }
            }
            Stmt::Neutral => {}
        }
    }
    if needs_primary {
        return Class::Write;
    }
    match (unknown, open, read) {
        (true, _, _) => Class::Unknown,
        (false, Some(m), _) => Class::Begin(m),
        (false, None, true) => Class::Read,
        // Nothing but transaction control or settings: not provably a read.
        (false, None, false) => Class::Write,
    }
}

/// Lowercases an unquoted word into `buf`; `None` if longer than
/// PostgreSQL's 63-byte identifier limit (never a keyword).
fn lower<'b>(sql: &str, t: &Token, buf: &'b mut [u8; 64]) -> Option<&'b str> {
    let s = t.text(sql).as_bytes();
    if s.len() > 63 {
        return None;
    }
    for (d, c) in buf.iter_mut().zip(s) {
        *d = c.to_ascii_lowercase();
    }
    std::str::from_utf8(&buf[..s.len()]).ok()
}

/// A name as PostgreSQL stores it: unquoted words fold to lowercase,
/// quoted identifiers are taken verbatim. `None` for forms not worth
/// decoding (escaped quotes, Unicode escapes): those calls stay unknown.
fn name<'a>(sql: &'a str, t: &Token, buf: &'a mut [u8; 64]) -> Option<&'a str> {
    match t.kind {
        TokenKind::Word => lower(sql, t, buf),
        TokenKind::QuotedIdent => {
            let inner = t.text(sql).strip_prefix('"')?.strip_suffix('"')?;
            (!inner.contains('"')).then_some(inner)
        }
        _ => None,
    }
}

fn is_punct(sql: &str, t: Option<&Token>, p: &str) -> bool {
    t.is_some_and(|t| t.kind == TokenKind::Punct && t.text(sql) == p)
}

pub(crate) fn is_word(sql: &str, t: Option<&Token>, kws: &[&str]) -> bool {
    t.is_some_and(|t| kws.iter().any(|k| t.is_word(sql, k)))
}

struct Scan<'a> {
    sql: &'a str,
    catalog: &'a FunctionCatalog,
    extra: &'a ReadOnlyFunctions,
}

impl Scan<'_> {
    fn statement(&self, t: &[Token], effects: &mut Vec<SessionEffect>) -> Stmt {
        let sql = self.sql;
        let first = t
            .iter()
            .position(|t| t.kind != TokenKind::LParen)
            .map(|i| &t[i]);
        let mut buf = [0u8; 64];
        let Some(w) =
            first.and_then(|f| lower(sql, f, &mut buf).filter(|_| f.kind == TokenKind::Word))
        else {
            return Stmt::Write;
        };
        if t[0].kind == TokenKind::LParen && !matches!(w, "select" | "with" | "values" | "table") {
            return Stmt::Write;
        }
        match w {
            "select" | "with" | "values" | "table" => self.query(t),
            "show" if t.len() >= 2 => Stmt::Read,
            "explain" => self.explain(&t[1..]),
            "begin" => Stmt::Begin(txn_mode(sql, &t[1..])),
            "start" if is_word(sql, t.get(1), &["transaction"]) => {
                Stmt::Begin(txn_mode(sql, &t[2..]))
            }
            "commit" | "end" | "rollback" | "abort" => {
                if t.iter().any(|x| x.is_word(sql, "prepared")) {
                    Stmt::Write
                } else if t.iter().any(|x| x.is_word(sql, "to")) {
                    Stmt::Neutral // ROLLBACK TO SAVEPOINT
                } else {
                    let chain = t
                        .windows(2)
                        .any(|p| p[1].is_word(sql, "chain") && !p[0].is_word(sql, "no"));
                    Stmt::End { chain }
                }
            }
            "savepoint" | "release" => Stmt::Neutral,
            "set" => set_statement(sql, t, effects),
            "reset" => reset_statement(sql, t, effects),
            "discard" => {
                if is_word(sql, t.get(1), &["all"]) {
                    effects.push(SessionEffect::ResetAll);
                }
                Stmt::Write
            }
            _ => Stmt::Write,
        }
    }

    /// `EXPLAIN [ANALYZE] [VERBOSE] stmt` / `EXPLAIN (options) stmt`.
    fn explain(&self, t: &[Token]) -> Stmt {
        let sql = self.sql;
        let mut i = 0;
        let mut analyze = false;
        if t.first().is_some_and(|f| f.kind == TokenKind::LParen) {
            let Some(close) = t.iter().position(|x| x.kind == TokenKind::RParen) else {
                return Stmt::Write;
            };
            // Any mention counts, even `ANALYZE false`: cautious and simple.
            analyze = t[..close]
                .iter()
                .any(|x| x.is_word(sql, "analyze") || x.is_word(sql, "analyse"));
            i = close + 1;
        } else {
            while let Some(x) = t.get(i) {
                if x.is_word(sql, "analyze") || x.is_word(sql, "analyse") {
                    analyze = true;
                } else if !x.is_word(sql, "verbose") {
                    break;
                }
                i += 1;
            }
        }
        let inner = &t[i..];
        let head = inner.iter().find(|x| x.kind != TokenKind::LParen);
        if analyze {
            // The statement runs: it must be a read itself.
            return match head {
                Some(h) if is_word(sql, Some(h), &["select", "with", "values", "table"]) => {
                    self.query(inner)
                }
                _ => Stmt::Write,
            };
        }
        // Planned, not run: a plan of a write writes nothing.
        if is_word(
            sql,
            head,
            &[
                "select", "with", "values", "table", "insert", "update", "delete", "merge",
            ],
        ) {
            Stmt::Read
        } else {
            Stmt::Write
        }
    }

    /// A `SELECT`/`WITH`/`VALUES`/`TABLE` statement: read unless a token
    /// says otherwise.
    fn query(&self, t: &[Token]) -> Stmt {
        let sql = self.sql;
        let mut uncertain = false;
        let mut depth = 0usize;
        // Bit d: a WITH list is open at paren depth d (its names may carry
        // column lists, `WITH x(a, b) AS (...)`, which are not calls).
        let mut cte_depths = 0u64;
        // Bit d: inside a FROM clause at depth d, where `AS t(a, b)` is an
        // alias with column names (elsewhere `AS f(x)` is no alias).
        let mut from_depths = 0u64;
        let mut buf = [0u8; 64];
        for (i, tok) in t.iter().enumerate() {
            let bit = if depth < 64 { 1u64 << depth } else { 0 };
            let at = |mask: u64| mask & bit != 0;
            let next = t.get(i + 1);
            let call = next.is_some_and(|n| n.kind == TokenKind::LParen);
            match tok.kind {
                TokenKind::LParen => depth += 1,
                TokenKind::RParen => {
                    // More `)` than `(`: PostgreSQL rejects it; so do we.
                    let Some(d) = depth.checked_sub(1) else {
                        return Stmt::Write;
                    };
                    depth = d;
                    if depth < 63 {
                        cte_depths &= (2u64 << depth) - 1;
                        from_depths &= (2u64 << depth) - 1;
                    }
                }
                TokenKind::Operator => uncertain |= !is_builtin_operator(tok.text(sql)),
                TokenKind::QuotedIdent => {
                    uncertain |=
                        call && !self.call_is_read_only(t, i, at(cte_depths), at(from_depths))
                }
                TokenKind::Word => {
                    match lower(sql, tok, &mut buf) {
                        // Statements that cannot nest in a query are syntax
                        // errors there; refusing them costs nothing.
                        Some(
                            "insert" | "update" | "delete" | "merge" | "into" | "truncate" | "drop"
                            | "alter" | "create" | "grant" | "revoke" | "vacuum",
                        ) => {
                            return Stmt::Write;
                        }
                        Some("for") if is_word(sql, next, &["update", "share", "no", "key"]) => {
                            return Stmt::Write;
                        }
                        // Certain writers are writes, not "unknown": no hint
                        // or rule may send them to a replica.
                        Some(w) if call && crate::functions::is_known_writer(w) => {
                            return Stmt::Write;
                        }
                        Some("with")
                            if !is_word(sql, next, &["ordinality", "time", "ties"])
                                && depth < 64 =>
                        {
                            cte_depths |= bit;
                        }
                        // The statement a WITH list belongs to ends the list.
                        Some("select" | "values" | "table") => {
                            cte_depths &= !bit;
                            from_depths &= !bit;
                        }
                        Some("from") => from_depths |= bit,
                        Some(
                            "where" | "group" | "having" | "window" | "order" | "limit" | "offset"
                            | "fetch" | "union" | "intersect" | "except",
                        ) => from_depths &= !bit,
                        _ => {}
                    }
                    uncertain |=
                        call && !self.call_is_read_only(t, i, at(cte_depths), at(from_depths));
                }
                _ => {}
            }
        }
        if depth != 0 || t.last().is_some_and(|l| self.dangles(l)) {
            return Stmt::Write;
        }
        if uncertain { Stmt::Unknown } else { Stmt::Read }
    }

    /// Whether a statement cannot end with `last` (an operator, a comma, a
    /// keyword that needs more): a syntax error, unknown, so a write.
    fn dangles(&self, last: &Token) -> bool {
        let mut buf = [0u8; 64];
        match last.kind {
            TokenKind::Operator => last.text(self.sql) != "*",
            TokenKind::Punct => last.text(self.sql) != "]",
            TokenKind::Word => lower(self.sql, last, &mut buf).is_some_and(|w| {
                is_reserved(w)
                    && !matches!(
                        w,
                        "asc"
                            | "desc"
                            | "end"
                            | "null"
                            | "true"
                            | "false"
                            | "current_date"
                            | "current_time"
                            | "current_timestamp"
                            | "current_user"
                            | "current_role"
                            | "current_catalog"
                            | "session_user"
                            | "user"
                            | "system_user"
                            | "localtime"
                            | "localtimestamp"
                    )
            }),
            _ => false,
        }
    }

    /// `t[i]` is followed by `(`. Whether that is grammar rather than a
    /// call, or a call of a function known not to write.
    fn call_is_read_only(&self, t: &[Token], i: usize, in_cte_list: bool, in_from: bool) -> bool {
        let sql = self.sql;
        // Walk back over a qualified name: `schema.func(`, `db.schema.func(`.
        let mut start = i;
        let mut schema = None;
        while start >= 2
            && is_punct(sql, t.get(start - 1), ".")
            && matches!(t[start - 2].kind, TokenKind::Word | TokenKind::QuotedIdent)
        {
            schema.get_or_insert(t[start - 2]);
            start -= 2;
        }
        let prev = start.checked_sub(1).map(|p| &t[p]);
        // A type modifier (`::numeric(10,2)`, `AS varchar(10)`), an alias's
        // column list (`AS t(a, b)`), a sampling method.
        if is_punct(sql, prev, "::")
            || is_word(sql, prev, &["tablesample"])
            || (in_from && is_word(sql, prev, &["as"]))
        {
            return true;
        }
        let tok = &t[i];
        let mut buf = [0u8; 64];
        if schema.is_none() && tok.kind == TokenKind::Word {
            let Some(w) = lower(sql, tok, &mut buf) else {
                return false;
            };
            if is_reserved(w) || is_col_name_keyword(w) {
                return true;
            }
            let after_paren = prev.is_some_and(|p| p.kind == TokenKind::RParen);
            if after_paren && matches!(w, "filter" | "over" | "repeatable") {
                return true;
            }
            if is_infix_keyword(w) && prev.is_some_and(|p| self.ends_operand(p)) {
                return true;
            }
            let mut pbuf = [0u8; 64];
            let prev_word = prev
                .filter(|p| p.kind == TokenKind::Word)
                .and_then(|p| lower(sql, p, &mut pbuf));
            if prev_word.is_some_and(|p| is_grammar_pair(p, w)) {
                return true;
            }
            if in_cte_list
                && (is_word(sql, prev, &["with", "recursive"]) || is_punct(sql, prev, ","))
                && cte_column_list(sql, t, i + 1)
            {
                return true;
            }
        }
        let mut nbuf = [0u8; 64];
        let Some(fname) = name(sql, tok, &mut nbuf) else {
            return false;
        };
        let mut sbuf = [0u8; 64];
        match schema {
            None => self.catalog.is_read_only_call(self.extra, None, fname),
            Some(s) => match name(sql, &s, &mut sbuf) {
                Some(s) => self.catalog.is_read_only_call(self.extra, Some(s), fname),
                None => false,
            },
        }
    }

    /// Whether `p` can end an operand, so that an infix keyword after it
    /// (`a JOIN (`, `x LIKE (`) is grammar rather than a call.
    fn ends_operand(&self, p: &Token) -> bool {
        match p.kind {
            TokenKind::QuotedIdent
            | TokenKind::String
            | TokenKind::Number
            | TokenKind::Param
            | TokenKind::RParen => true,
            TokenKind::Punct => p.text(self.sql) == "]",
            TokenKind::Word => {
                let mut buf = [0u8; 64];
                lower(self.sql, p, &mut buf).is_some_and(|w| {
                    // Reserved words that are values end an operand;
                    // unreserved keywords after which an expression starts
                    // do not.
                    matches!(
                        w,
                        "true"
                            | "false"
                            | "null"
                            | "current_date"
                            | "current_time"
                            | "current_timestamp"
                            | "current_user"
                            | "current_role"
                            | "current_catalog"
                            | "session_user"
                            | "user"
                            | "system_user"
                            | "localtime"
                            | "localtimestamp"
                    ) || !is_reserved(w)
                        && !matches!(
                            w,
                            "by" | "escape"
                                | "zone"
                                | "first"
                                | "next"
                                | "sets"
                                | "rows"
                                | "range"
                                | "groups"
                        )
                })
            }
            _ => false,
        }
    }
}

/// `t[lp]` is `(`: whether `( ... ) AS (` / `AS [NOT] MATERIALIZED` follows,
/// the shape of a CTE's column list.
fn cte_column_list(sql: &str, t: &[Token], lp: usize) -> bool {
    let mut depth = 0usize;
    for (j, x) in t.iter().enumerate().skip(lp) {
        match x.kind {
            TokenKind::LParen => depth += 1,
            TokenKind::RParen => {
                depth -= 1;
                if depth == 0 {
                    return is_word(sql, t.get(j + 1), &["as"])
                        && (t.get(j + 2).is_some_and(|n| n.kind == TokenKind::LParen)
                            || is_word(sql, t.get(j + 2), &["materialized", "not"]));
                }
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
