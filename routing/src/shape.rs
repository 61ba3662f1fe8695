//! Statement shapes: a text with its numbers blanked out.
//!
//! Clients that inline literals (`pgbench -S`, ORMs without parameters)
//! send a new text for every statement, and each would be lexed and
//! classified anew. Classification does not look at the digits of a
//! number, so texts that differ only in their numbers can share one
//! cached analysis: they have the same *shape*.
//!
//! A *number run* is a maximal run of ASCII digits whose preceding byte is
//! not an identifier byte (`A-Z a-z 0-9 _ $` or any non-ASCII byte). Those
//! are exactly the runs that start a numeric literal in code (`42`, `1.5`
//! is two runs, `1e5` one), plus digits inside strings and comments. Digits
//! inside identifiers (`t1`), parameters (`$1`) and dollar-quote tags
//! (`$a1$`) are kept. Two texts have the same shape when they are equal
//! after every number run is replaced by one placeholder.
//!
//! Where digits do matter, a text is cached by its exact text (it is
//! still filed under its shape's hash, so that a lookup needs no more than
//! one pass over the text; the entry says which comparison applies):
//! - `lagrouter` anywhere: hints (`/* lagrouter:min_lsn=0/16B3748 */`),
//!   `SET lagrouter.*`, `lagrouter.wait_replicas(1, 500)`;
//! - `read_only` anywhere: `SET [default_]transaction_read_only = 1` is a
//!   setting, `= 2` is not;
//! - a backslash anywhere: escape strings and
//!   `standard_conforming_strings = off` readings, not worth reasoning
//!   about.
//!
//! Replacing one non-empty digit run by another cannot change how the
//! lexer splits a text into tokens, nor what any of the session patterns
//! (which contain no digits) match. A test checks that every text of the
//! classifier's oracle corpus (`tests/corpus`), with its numbers changed,
//! gets the same analysis.

use std::hash::{BuildHasher, Hasher};

/// Whether `b` can continue an identifier, a parameter (`$1`) or a
/// dollar-quote tag: a digit after it is not a number of its own.
#[inline]
fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The first ASCII digit of `s` at or after `from` (`s.len()` if none),
/// eight bytes at a time.
#[inline]
fn next_digit(s: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut i = from;
    while let Some(w) = s.get(i..i + 8) {
        // A byte t = b ^ '0' is a digit iff t < 10: (t | 0x80) - 10 keeps
        // its top bit only when the low seven bits are >= 10 (no borrow
        // crosses bytes, as every byte is >= 0x80 before subtracting).
        let t = u64::from_le_bytes(w.try_into().expect("8 bytes")) ^ (ONES * b'0' as u64);
        let m = !((t | (ONES * 0x80)) - ONES * 10) & !t & (ONES * 0x80);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < s.len() && !s[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// The number of ASCII digits `s` starts with.
#[inline]
fn digits(s: &[u8]) -> usize {
    s.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// If a number run starts at `i`, the index just past it.
#[cfg(test)]
fn run_end(s: &[u8], i: usize) -> Option<usize> {
    if !s.get(i)?.is_ascii_digit() || (i > 0 && ident_byte(s[i - 1])) {
        return None;
    }
    Some(i + digits(&s[i..]))
}

/// The start of the first number run at or after `from` (`s.len()` if
/// none).
#[inline]
fn next_run(s: &[u8], from: usize) -> usize {
    let mut i = from;
    loop {
        let d = next_digit(s, i);
        if d == s.len() || d == 0 || !ident_byte(s[d - 1]) {
            return d;
        }
        // Digits inside a name: skip them all.
        i = d + digits(&s[d..]);
    }
}

/// Whether `s` contains `word` (lowercase ASCII) in any letter case.
fn contains_ci(s: &[u8], word: &[u8]) -> bool {
    s.windows(word.len())
        .any(|w| w[0] | 0x20 == word[0] && w.eq_ignore_ascii_case(word))
}

/// Whether the digits of `sql` may matter to its classification (see the
/// module doc): then it is cached by its exact text. The same for every
/// text of one shape: none of the words it looks for contains a digit.
pub(crate) fn digits_matter(sql: &str) -> bool {
    let s = sql.as_bytes();
    s.contains(&b'\\') || contains_ci(s, b"lagrouter") || contains_ci(s, b"read_only")
}

/// The hash of the shape of `sql`: texts of the same shape hash alike
/// ([`same_shape`] confirms).
pub(crate) fn shape_hash(build: &impl BuildHasher, sql: &str) -> u64 {
    let s = sql.as_bytes();
    let mut h = build.build_hasher();
    let mut start = 0;
    loop {
        let run = next_run(s, start);
        h.write(&s[start..run]);
        if run == s.len() {
            return h.finish();
        }
        // A byte no `str` contains: the placeholder.
        h.write_u8(0xFF);
        start = run + digits(&s[run..]);
    }
}

/// The length of the longest common prefix of `a` and `b`, eight bytes at
/// a time; the last bytes of a text of eight or more are compared as the
/// eight that end it (those before are already known equal).
#[inline]
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let first_diff = |at: usize, x: u64, y: u64| at + ((x ^ y).trailing_zeros() / 8) as usize;
    if n < 8 {
        return a.iter().zip(b).take_while(|(x, y)| x == y).count();
    }
    let mut i = 0;
    while i + 8 <= n {
        let (x, y) = (word(a, i), word(b, i));
        if x != y {
            return first_diff(i, x, y);
        }
        i += 8;
    }
    if i == n {
        return n;
    }
    let (x, y) = (word(a, n - 8), word(b, n - 8));
    if x == y { n } else { first_diff(n - 8, x, y) }
}

/// Whether `a` and `b` are equal once every number run is a placeholder.
///
/// Skips the common prefix at word speed, then looks only at where the
/// texts differ: that must be inside a number run of both, or just past
/// one (a run that starts at the same place, as the bytes before agree),
/// and the texts must again be of the same shape after the two runs.
/// (Past a run's end the next byte is no digit, so a run further on
/// starts where it would in the whole text.)
pub(crate) fn same_shape(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        let p = common_prefix(a, b);
        if p == a.len() && p == b.len() {
            return true;
        }
        // The digits, common to both, that end at `p`; past the start of
        // the texts (or of what follows a run) a number run begins after
        // a byte that is not an identifier's.
        let mut q = p;
        while q > 0 && a[q - 1].is_ascii_digit() {
            q -= 1;
        }
        if q > 0 && ident_byte(a[q - 1]) {
            return false;
        }
        let (ea, eb) = (p + digits(&a[p..]), p + digits(&b[p..]));
        if ea == q || eb == q {
            // A number in one text where the other has none.
            return false;
        }
        (a, b) = (&a[ea..], &b[eb..]);
    }
}

/// The classifier's oracle corpus, to check shapes against.
#[cfg(test)]
#[path = "../tests/corpus/mod.rs"]
#[allow(dead_code)]
mod corpus;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::FxBuild;

    fn key(s: &str) -> u64 {
        shape_hash(&FxBuild::with_seed(7), s)
    }

    #[test]
    fn numbers_are_blanked() {
        let pairs = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
            ),
            ("SELECT 1.5e3, -2", "SELECT 10.0e3, -999"),
            ("SELECT 'a 12' /* 3 */", "SELECT 'a 4' /* 56 */"),
            ("SELECT 1", "SELECT 2"),
            ("7", "8"),
        ];
        for (a, b) in pairs {
            assert!(same_shape(a, b), "{a} / {b}");
            assert_eq!(key(a), key(b), "{a} / {b}");
        }
    }

    #[test]
    fn digits_in_names_parameters_and_tags_are_kept() {
        let pairs = [
            ("SELECT * FROM t1", "SELECT * FROM t2"),
            ("SELECT $1", "SELECT $2"),
            ("SELECT $a1$x$a1$", "SELECT $a2$x$a2$"),
            ("SELECT x1e5", "SELECT x1e6"),
            ("SELECT é1", "SELECT é2"),
            ("SELECT 1e5", "SELECT 1e6"),
            ("SELECT 1", "SELECT 1 "),
            ("SELECT 1", "SELECT a"),
            ("SELECT 1", "SELECT"),
            ("SELECT # 1", "SELECT 1 1"),
        ];
        for (a, b) in pairs {
            assert!(!same_shape(a, b), "{a} / {b}");
        }
    }

    #[test]
    fn texts_whose_digits_matter_have_no_shape() {
        for sql in [
            "SET default_transaction_read_only = 1",
            "set transaction_READ_ONLY = 0",
            "SELECT lagrouter.wait_replicas(1, 500)",
            "/* LAGROUTER:min_lsn=0/16B3748 */ SELECT 1",
            r"SELECT E'\101'",
        ] {
            assert!(digits_matter(sql), "{sql}");
        }
        assert!(!digits_matter("SELECT read_onl, lagroute FROM t"));
    }

    /// `sql` with every number run replaced by `with(run)`.
    fn renumber(sql: &str, with: impl Fn(&str) -> String) -> String {
        let s = sql.as_bytes();
        let (mut out, mut start, mut i) = (String::new(), 0, 0);
        while i < s.len() {
            match run_end(s, i) {
                Some(end) => {
                    out.push_str(&sql[start..i]);
                    out.push_str(&with(&sql[i..end]));
                    (start, i) = (end, end);
                }
                None => i += 1,
            }
        }
        out.push_str(&sql[start..]);
        out
    }

    #[test]
    fn renumbered_texts_get_the_same_analysis() {
        use crate::{FunctionCatalog, ReadOnlyFunctions, analyze};
        let catalog = FunctionCatalog::builtin();
        let extra = ReadOnlyFunctions::new(&["calc2".to_string()]);
        let mut texts = super::corpus::statements();
        texts.extend(
            [
                "SELECT abalance FROM pgbench_accounts WHERE aid = 77;",
                "select pg_advisory_lock(1)",
                "SELECT pg_try_advisory_lock_shared (1), 2",
                "CREATE TEMP TABLE t1 AS SELECT 1",
                "DECLARE c1 CURSOR WITH HOLD FOR SELECT 1 LIMIT 10",
                "PREPARE p1 AS SELECT 1; SELECT 2",
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1; COMMIT",
                "SET statement_timeout = 5000; SELECT 1",
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; SELECT 1",
                "DISCARD ALL; SELECT 1",
                "SELECT calc2(3), 1.5e-3, .5, 0x1F, 1_000, 1abc",
                "SELECT $1::int + 2, $$ 3 $$, $a1$ 4 $a1$",
                "SELECT 'x' || 5 /* 6 */ -- 7\n",
                "VALUES (1), (2) ORDER BY 1 OFFSET 2 FETCH FIRST 3 ROWS ONLY",
                "SELECT * FROM t FOR UPDATE OF t SKIP LOCKED LIMIT 1",
                // Digits matter in these: they must have no shape.
                "SET default_transaction_read_only = 1; SELECT 1",
                "BEGIN; SET transaction_read_only = 1; SELECT 1",
                "SET lagrouter.min_lsn = '0/16B3748'; SELECT 1",
                "/* lagrouter:min_lsn=0/16B3748 max_lag=2s */ SELECT 1",
            ]
            .map(String::from),
        );
        let mut checked = 0;
        for sql in &texts {
            if digits_matter(sql) || run_end_any(sql).is_none() {
                continue;
            }
            let want = analyze(sql, &catalog, &extra);
            for with in [
                |_: &str| "0".to_string(),
                |_: &str| "987654321".to_string(),
                |r: &str| format!("{r}1"),
            ] {
                let other = renumber(sql, with);
                assert!(same_shape(sql, &other), "{sql:?} / {other:?}");
                assert_eq!(key(sql), key(&other), "{sql:?} / {other:?}");
                assert_eq!(
                    analyze(&other, &catalog, &extra),
                    want,
                    "{sql:?} / {other:?}"
                );
            }
            checked += 1;
        }
        assert!(checked > 100, "only {checked} texts with numbers");
    }

    fn run_end_any(sql: &str) -> Option<usize> {
        (0..sql.len()).find_map(|i| run_end(sql.as_bytes(), i))
    }

    #[test]
    fn next_digit_matches_a_byte_loop() {
        let mut buf = [b'a'; 19];
        for pos in 0..buf.len() {
            for b in 0..=255u8 {
                buf[pos] = b;
                for from in [0, 1, 7, 8, 9] {
                    let want = (from..buf.len())
                        .find(|&i| buf[i].is_ascii_digit())
                        .unwrap_or(buf.len());
                    assert_eq!(next_digit(&buf, from), want, "{b} at {pos} from {from}");
                }
            }
            buf[pos] = b'a';
        }
    }

    #[test]
    fn common_prefix_matches_a_byte_loop() {
        for len in 0..26 {
            let a: Vec<u8> = (0..len as u8).collect();
            for at in 0..=len {
                for blen in [at, len, len + 3] {
                    let mut b = a.clone();
                    b.resize(blen, 0xEE);
                    if at < b.len() {
                        b[at] = 0xFF;
                    }
                    let want = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
                    assert_eq!(common_prefix(&a, &b), want, "len {len}, at {at}, b {blen}");
                    assert_eq!(common_prefix(&b, &a), want, "len {len}, at {at}, b {blen}");
                }
            }
        }
    }

    /// The straightforward walk: a's runs in turn, b matched against them.
    fn same_shape_walk(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        let (mut i, mut j) = (0, 0);
        loop {
            let run = next_run(a, i);
            let len = run - i;
            if b.get(j..j + len) != Some(&a[i..run]) {
                return false;
            }
            j += len;
            if run == a.len() {
                return j == b.len();
            }
            match run_end(b, j) {
                Some(end) => j = end,
                None => return false,
            }
            i = run + digits(&a[run..]);
        }
    }

    /// Every pair of short texts over an alphabet that has every kind of
    /// byte the shape rules tell apart, and pairs of corpus texts with one
    /// byte changed, agree with the walk.
    #[test]
    fn same_shape_agrees_with_the_walk() {
        let alphabet = [b'1', b'9', b'a', b' ', b'_', b'$', 0xC3];
        let mut texts = vec![String::new()];
        let mut level = vec![Vec::<u8>::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for t in &level {
                for &c in &alphabet {
                    let mut t = t.clone();
                    t.push(c);
                    if c == 0xC3 {
                        t.push(0xA9); // é: a non-ASCII identifier byte
                    }
                    next.push(t);
                }
            }
            texts.extend(next.iter().map(|t| String::from_utf8(t.clone()).unwrap()));
            level = next;
        }
        let mut same = 0;
        for a in &texts {
            for b in &texts {
                let want = same_shape_walk(a, b);
                assert_eq!(same_shape(a, b), want, "{a:?} / {b:?}");
                same += want as usize;
            }
        }
        assert!(same > texts.len(), "only {same} same-shape pairs");
        // Longer texts, past the eight-byte steps: each corpus text against
        // itself renumbered and with one byte changed anywhere.
        for sql in super::corpus::statements().iter().take(300) {
            let other = renumber(sql, |r| format!("{r}7"));
            assert_eq!(same_shape(sql, &other), same_shape_walk(sql, &other));
            let bytes = sql.as_bytes();
            for i in 0..bytes.len() {
                if !bytes[i].is_ascii() {
                    continue;
                }
                for c in [b'0', b'x', b' '] {
                    let mut t = bytes.to_vec();
                    t[i] = c;
                    let t = String::from_utf8(t).unwrap();
                    assert_eq!(
                        same_shape(sql, &t),
                        same_shape_walk(sql, &t),
                        "{sql:?} / {t:?}"
                    );
                    assert_eq!(
                        same_shape(&t, sql),
                        same_shape_walk(&t, sql),
                        "{t:?} / {sql:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn hash_agrees_with_same_shape() {
        let texts = [
            "SELECT 1",
            "SELECT 22",
            "SELECT a1",
            "SELECT 1.2",
            "SELECT 3.45",
            "",
            "1",
            "x",
        ];
        for a in texts {
            for b in texts {
                if same_shape(a, b) {
                    assert_eq!(key(a), key(b), "{a:?} / {b:?}");
                }
            }
        }
    }
}
