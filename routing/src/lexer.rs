//! A small, allocation-light SQL lexer for PostgreSQL's dialect.
//!
//! It does not parse: it only cuts statement text into tokens precisely
//! enough that classification never mistakes the inside of a string, a
//! quoted identifier or a comment for code (or the reverse). Anything it
//! cannot lex with certainty (an unterminated literal or comment, a NUL
//! byte) is reported as [`TokenKind::Error`], and classification then treats
//! the statement as a write.
//!
//! Tokens borrow nothing: they are byte ranges into the text, so lexing a
//! statement costs one `Vec` and no per-token allocation.

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An unquoted word: a keyword or an identifier (case-insensitive).
    Word,
    /// `"quoted identifier"` or `U&"..."` (case-sensitive, quotes included).
    QuotedIdent,
    /// A string constant of any flavour: `'..'`, `E'..'`, `B'..'`, `X'..'`,
    /// `N'..'`, `U&'..'`, `$tag$..$tag$`.
    String,
    /// A numeric constant.
    Number,
    /// `$1`.
    Param,
    /// An operator (`=`, `<>`, `||`, `->>`, ...), after PostgreSQL's rule of
    /// trimming a trailing `+`/`-`.
    Operator,
    /// `(`.
    LParen,
    /// `)`.
    RParen,
    /// `;`.
    Semicolon,
    /// `,`, `[`, `]`, `.`, `:`, `::`: punctuation that never hides code.
    Punct,
    /// A `/* ... */` comment (nesting honoured). Kept for hints.
    BlockComment,
    /// Text that could not be lexed with certainty. Always the last token.
    Error,
}

/// A token: a kind and a byte range into the lexed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub start: u32,
    pub end: u32,
}

impl Token {
    /// The token's text.
    pub fn text<'a>(&self, sql: &'a str) -> &'a str {
        &sql[self.start as usize..self.end as usize]
    }

    /// Whether this is the unquoted word `kw` (compared ASCII
    /// case-insensitively; `kw` must be lowercase).
    pub fn is_word(&self, sql: &str, kw: &str) -> bool {
        self.kind == TokenKind::Word
            && (self.end - self.start) as usize == kw.len()
            && sql.as_bytes()[self.start as usize..self.end as usize]
                .eq_ignore_ascii_case(kw.as_bytes())
    }
}

/// How plain `'...'` strings treat a backslash. PostgreSQL's
/// `standard_conforming_strings` decides, and the proxy does not know its
/// value for sure, so classification lexes both ways when it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backslash {
    /// `standard_conforming_strings = on` (the default): a backslash is a
    /// plain character in `'...'`.
    Literal,
    /// `standard_conforming_strings = off`: `\'` does not end the string.
    Escape,
}

/// The result of lexing: code tokens, block comments (kept apart, since
/// only hints read them), and whether a plain `'...'` string held a
/// backslash (so the other [`Backslash`] mode could lex differently).
#[derive(Debug, Default)]
pub struct Lexed {
    pub tokens: Vec<Token>,
    pub comments: Vec<Token>,
    pub backslash_in_plain_string: bool,
}

impl Lexed {
    /// Whether lexing stopped at text it could not lex with certainty.
    pub fn failed(&self) -> bool {
        self.tokens
            .last()
            .is_some_and(|t| t.kind == TokenKind::Error)
    }
}

/// Cuts `sql` into tokens. Line comments are dropped; block comments go to
/// [`Lexed::comments`]. Stops at the first [`TokenKind::Error`].
pub fn lex(sql: &str, backslash: Backslash) -> Lexed {
    let b = sql.as_bytes();
    // Statement texts beyond 4 GiB are not classified (the u32 offsets).
    if b.len() >= u32::MAX as usize {
        return Lexed {
            tokens: vec![Token {
                kind: TokenKind::Error,
                start: 0,
                end: 0,
            }],
            comments: Vec::new(),
            backslash_in_plain_string: false,
        };
    }
    let mut out = Lexed {
        tokens: Vec::with_capacity(b.len() / 4 + 4),
        comments: Vec::new(),
        backslash_in_plain_string: false,
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let kind = match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b' => {
                i += 1;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match block_comment_end(b, i) {
                Some(e) => {
                    i = e;
                    out.comments.push(Token {
                        kind: TokenKind::BlockComment,
                        start: start as u32,
                        end: e as u32,
                    });
                    continue;
                }
                None => TokenKind::Error,
            },
            b'\'' => match quoted_end(b, i + 1, b'\'', backslash == Backslash::Escape) {
                Some((e, saw_backslash)) => {
                    out.backslash_in_plain_string |= saw_backslash;
                    i = e;
                    TokenKind::String
                }
                None => TokenKind::Error,
            },
            b'"' => match quoted_end(b, i + 1, b'"', false) {
                Some((e, _)) => {
                    i = e;
                    TokenKind::QuotedIdent
                }
                None => TokenKind::Error,
            },
            b'$' => {
                if b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    TokenKind::Param
                } else {
                    match dollar_quote_end(b, i) {
                        Some(e) => {
                            i = e;
                            TokenKind::String
                        }
                        // A lone `$` that opens no quote: PostgreSQL rejects it.
                        None => TokenKind::Error,
                    }
                }
            }
            b'0'..=b'9' => {
                i = number_end(b, i);
                TokenKind::Number
            }
            b'.' if b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                i = number_end(b, i);
                TokenKind::Number
            }
            b'(' => {
                i += 1;
                TokenKind::LParen
            }
            b')' => {
                i += 1;
                TokenKind::RParen
            }
            b';' => {
                i += 1;
                TokenKind::Semicolon
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                i += 2;
                TokenKind::Punct
            }
            b',' | b'[' | b']' | b'.' | b':' => {
                i += 1;
                TokenKind::Punct
            }
            b'\0' => TokenKind::Error,
            _ if is_ident_start(c) => {
                // Prefixed literals: the prefix must touch the quote.
                let next = b.get(i + 1).copied();
                match (c | 0x20, next) {
                    (b'e', Some(b'\'')) => match quoted_end(b, i + 2, b'\'', true) {
                        Some((e, _)) => {
                            i = e;
                            TokenKind::String
                        }
                        None => TokenKind::Error,
                    },
                    (b'b' | b'x' | b'n', Some(b'\'')) => {
                        match quoted_end(b, i + 2, b'\'', backslash == Backslash::Escape) {
                            Some((e, saw)) => {
                                out.backslash_in_plain_string |= saw;
                                i = e;
                                TokenKind::String
                            }
                            None => TokenKind::Error,
                        }
                    }
                    (b'u', Some(b'&')) if matches!(b.get(i + 2), Some(b'\'' | b'"')) => {
                        let q = b[i + 2];
                        match quoted_end(b, i + 3, q, false) {
                            Some((e, _)) => {
                                i = e;
                                if q == b'\'' {
                                    TokenKind::String
                                } else {
                                    TokenKind::QuotedIdent
                                }
                            }
                            None => TokenKind::Error,
                        }
                    }
                    _ => {
                        i += 1;
                        // `$` continues an identifier, so `a$$b` is one word
                        // and never opens a dollar quote.
                        while i < b.len()
                            && (is_ident_start(b[i]) || b[i].is_ascii_digit() || b[i] == b'$')
                        {
                            i += 1;
                        }
                        TokenKind::Word
                    }
                }
            }
            _ if is_op_char(c) => {
                i = operator_end(b, i);
                TokenKind::Operator
            }
            // Anything else (a stray `\`, `{`, `}`, control byte) is not SQL
            // we understand.
            _ => TokenKind::Error,
        };
        if kind == TokenKind::Error {
            out.tokens.push(Token {
                kind,
                start: start as u32,
                end: b.len() as u32,
            });
            return out;
        }
        out.tokens.push(Token {
            kind,
            start: start as u32,
            end: i as u32,
        });
    }
    out
}

/// Identifier start: ASCII letters, `_`, and any byte of a multi-byte UTF-8
/// character (PostgreSQL accepts `\200`-`\377`).
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_op_char(c: u8) -> bool {
    matches!(
        c,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}

/// End of a nested `/* */` comment starting at `i`, or `None` if unterminated.
fn block_comment_end(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Some(i);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// End (one past the closing quote) of a quoted token whose body starts at
/// `i`. A doubled quote is an escaped quote; with `backslash`, `\x` is an
/// escape too. Also says whether the body held a backslash.
fn quoted_end(b: &[u8], mut i: usize, q: u8, backslash: bool) -> Option<(usize, bool)> {
    let mut saw_backslash = false;
    while i < b.len() {
        let c = b[i];
        if c == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return Some((i + 1, saw_backslash));
        }
        if c == b'\\' {
            saw_backslash = true;
            if backslash {
                i += 2;
                continue;
            }
        }
        i += 1;
    }
    None
}

/// End of a `$tag$ ... $tag$` literal starting at `i` (which holds `$`), or
/// `None` if `i` does not open one or it is unterminated.
fn dollar_quote_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if j < b.len() && b[j] != b'$' {
        // A tag follows identifier rules but may not contain `$`.
        if !is_ident_start(b[j]) {
            return None;
        }
        while j < b.len() && (is_ident_start(b[j]) || b[j].is_ascii_digit()) {
            j += 1;
        }
    }
    if b.get(j) != Some(&b'$') {
        return None;
    }
    let delim = &b[i..=j];
    let body = j + 1;
    let mut k = body;
    while k + delim.len() <= b.len() {
        if b[k] == b'$' && &b[k..k + delim.len()] == delim {
            return Some(k + delim.len());
        }
        k += 1;
    }
    None
}

/// End of a number. Deliberately narrow (digits, one fraction, an exponent):
/// whatever follows (`1_000`, `0x1F`, `1e`, `1INTO`) lexes as a separate
/// token, which can only make classification more conservative. Old
/// servers read `SELECT 1INTO t` as `SELECT 1 INTO t`.
fn number_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    // `1..2` is not a number followed by `.`: leave `..` alone.
    if i < b.len() && b[i] == b'.' && b.get(i + 1) != Some(&b'.') {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    if i < b.len() && (b[i] | 0x20) == b'e' {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    i
}

/// End of an operator starting at `i`, following PostgreSQL's scanner: stop
/// before a comment start, and drop trailing `+`/`-` from a multi-character
/// operator unless it contains one of ``~!@#%^&|`?`` (so `a=-1` is `=`, `-`).
fn operator_end(b: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < b.len() && is_op_char(b[j]) {
        if b[j] == b'-' && b.get(j + 1) == Some(&b'-') && j > i {
            break;
        }
        if b[j] == b'/' && b.get(j + 1) == Some(&b'*') && j > i {
            break;
        }
        j += 1;
    }
    let op = &b[i..j];
    if op.len() > 1 && !op.iter().any(|c| b"~!@#%^&|`?".contains(c)) {
        let mut len = op.len();
        while len > 1 && (op[len - 1] == b'+' || op[len - 1] == b'-') {
            len -= 1;
        }
        return i + len;
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(TokenKind, &str)> {
        let l = lex(sql, Backslash::Literal);
        let mut all: Vec<Token> = l.tokens.iter().chain(&l.comments).copied().collect();
        all.sort_by_key(|t| t.start);
        all.iter().map(|t| (t.kind, t.text(sql))).collect()
    }

    use TokenKind::*;

    #[test]
    fn words_strings_and_punctuation() {
        assert_eq!(
            kinds("SELECT a.b, 'x''y' FROM t;"),
            vec![
                (Word, "SELECT"),
                (Word, "a"),
                (Punct, "."),
                (Word, "b"),
                (Punct, ","),
                (String, "'x''y'"),
                (Word, "FROM"),
                (Word, "t"),
                (Semicolon, ";"),
            ]
        );
    }

    #[test]
    fn comments_nest_and_line_comments_vanish() {
        assert_eq!(
            kinds("/* a /* b */ c */ x -- y\n z"),
            vec![
                (BlockComment, "/* a /* b */ c */"),
                (Word, "x"),
                (Word, "z")
            ]
        );
        assert_eq!(kinds("/* a /* b */ c ")[0].0, Error);
    }

    #[test]
    fn dollar_quotes_and_parameters() {
        assert_eq!(
            kinds("$$a'b$$ $f$ $$ $f$ $1 a$$b"),
            vec![
                (String, "$$a'b$$"),
                (String, "$f$ $$ $f$"),
                (Param, "$1"),
                (Word, "a$$b")
            ]
        );
        assert_eq!(kinds("$x$ never closed")[0].0, Error);
    }

    #[test]
    fn escape_strings_honour_backslashes() {
        assert_eq!(kinds(r"E'a\'b' x"), vec![(String, r"E'a\'b'"), (Word, "x")]);
        // In a plain string a backslash is literal by default ...
        assert_eq!(kinds(r"'a\' x"), vec![(String, r"'a\'"), (Word, "x")]);
        // ... and is recorded, so the caller can lex the other way too.
        assert!(lex(r"'a\'", Backslash::Literal).backslash_in_plain_string);
        assert_eq!(lex(r"'a\' x", Backslash::Escape).tokens[0].kind, Error);
    }

    #[test]
    fn quoted_identifiers_and_unicode_forms() {
        assert_eq!(
            kinds(r#""a""b" U&"d\0061" U&'x'"#),
            vec![
                (QuotedIdent, r#""a""b""#),
                (QuotedIdent, r#"U&"d\0061""#),
                (String, "U&'x'")
            ]
        );
    }

    #[test]
    fn numbers_stay_narrow() {
        assert_eq!(kinds("1INTO"), vec![(Number, "1"), (Word, "INTO")]);
        assert_eq!(kinds("1.5e-3 .5"), vec![(Number, "1.5e-3"), (Number, ".5")]);
    }

    #[test]
    fn operators_follow_postgres_trimming() {
        assert_eq!(
            kinds("a=-1"),
            vec![(Word, "a"), (Operator, "="), (Operator, "-"), (Number, "1")]
        );
        assert_eq!(
            kinds("a->>'k'"),
            vec![(Word, "a"), (Operator, "->>"), (String, "'k'")]
        );
        assert_eq!(
            kinds("a+/*c*/b"),
            vec![
                (Word, "a"),
                (Operator, "+"),
                (BlockComment, "/*c*/"),
                (Word, "b")
            ]
        );
        assert_eq!(
            kinds("a<--c\nb"),
            vec![(Word, "a"), (Operator, "<"), (Word, "b")]
        );
    }

    #[test]
    fn keyword_match_is_case_insensitive() {
        let sql = "SeLeCt";
        let t = lex(sql, Backslash::Literal).tokens[0];
        assert!(t.is_word(sql, "select"));
        assert!(!t.is_word(sql, "selec"));
    }

    #[test]
    fn unterminated_literals_are_errors() {
        for s in ["'abc", "\"abc", "E'abc\\'", "x \0 y", "\\"] {
            assert_eq!(kinds(s).last().unwrap().0, Error, "{s}");
        }
    }
}
