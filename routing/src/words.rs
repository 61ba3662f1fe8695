//! A quick test for whether a text holds any of a few words, in any letter
//! case and anywhere (inside identifiers, strings and comments too): the
//! filter run before lexing on every statement that may need it, most of
//! which hold none of the words.
//!
//! Pairs of bytes are looked up in two tables, not at every position but at
//! every `stride`-th one: a word of at least `stride + 1` bytes covers
//! `stride` consecutive pair positions, one of which is a multiple of the
//! stride, so the word is seen there by whichever of its first `stride`
//! pairs falls on it. With the effect words (four bytes or more) that is one
//! lookup every three bytes; with `lagrouter` alone, one every eight. A
//! word is compared whole only where a pair says it may start. Data, not
//! branches, decide what is a candidate: the branch predictor sees the same
//! outcome ("no candidate") almost every time, whatever the text.

/// Up to 16 words, each of at least two bytes.
pub(crate) struct WordSet<const N: usize> {
    words: [&'static str; N],
    /// Positions between the pairs looked up: the shortest word's length
    /// less one, at most `32 / N` (a bit per word and offset).
    stride: usize,
    /// Per byte value: bit `k * stride + o` when byte `o` of word `k` is
    /// it, in either letter case (`o < stride`).
    first: [u32; 256],
    /// The same for byte `o + 1` of word `k`.
    second: [u32; 256],
    /// Checked only where a pair matched, so that most pairs common words
    /// share with a word (`ou` in `accounts` and `lagrouter`) cost no
    /// whole comparison: the byte before the pair, byte `o - 1` of word `k`
    /// (every byte for `o = 0`)...
    before: [u32; 256],
    /// ...and the byte after it, byte `o + 2` of word `k` for `o = 0`
    /// (every byte for the other offsets, and for a word of two bytes).
    after: [u32; 256],
}

impl<const N: usize> WordSet<N> {
    pub(crate) const fn new(words: [&'static str; N]) -> Self {
        assert!(N >= 1 && N <= 16, "a WordSet holds one to 16 words");
        let mut shortest = usize::MAX;
        let mut k = 0;
        while k < N {
            let len = words[k].len();
            assert!(len >= 2, "a WordSet word has two bytes or more");
            if len < shortest {
                shortest = len;
            }
            k += 1;
        }
        let mut stride = shortest - 1;
        if stride > 32 / N {
            stride = 32 / N;
        }
        let (mut first, mut second) = ([0u32; 256], [0u32; 256]);
        let (mut before, mut after) = ([0u32; 256], [0u32; 256]);
        let mut k = 0;
        while k < N {
            let w = words[k].as_bytes();
            let mut o = 0;
            while o < stride {
                let bit = 1u32 << (k * stride + o);
                first[w[o].to_ascii_lowercase() as usize] |= bit;
                first[w[o].to_ascii_uppercase() as usize] |= bit;
                second[w[o + 1].to_ascii_lowercase() as usize] |= bit;
                second[w[o + 1].to_ascii_uppercase() as usize] |= bit;
                // The byte the check looks at (`o - 1` before the pair, or
                // `o + 2` after it); none: any byte.
                let (checked, other) = if o > 0 {
                    (&mut before, &mut after)
                } else {
                    (&mut after, &mut before)
                };
                let mut b = 0;
                while b < 256 {
                    other[b] |= bit;
                    b += 1;
                }
                let at = if o > 0 { o - 1 } else { o + 2 };
                if at < w.len() {
                    checked[w[at].to_ascii_lowercase() as usize] |= bit;
                    checked[w[at].to_ascii_uppercase() as usize] |= bit;
                } else {
                    let mut b = 0;
                    while b < 256 {
                        checked[b] |= bit;
                        b += 1;
                    }
                }
                o += 1;
            }
            k += 1;
        }
        WordSet {
            words,
            stride,
            first,
            second,
            before,
            after,
        }
    }

    /// Whether any of the words appears in `text`, in any ASCII letter case.
    pub(crate) fn any_in(&self, text: &str) -> bool {
        let b = text.as_bytes();
        let mut p = 0;
        while let Some(&[x, y]) = b.get(p..p + 2) {
            let m = self.first[x as usize] & self.second[y as usize];
            if m != 0 && self.candidate(b, p, m) {
                return true;
            }
            p += self.stride;
        }
        false
    }

    /// [`Self::word_around`] for the words of `m` whose byte next to the
    /// pair at `p` ([`Self::before`], [`Self::after`]) is also right.
    #[inline]
    fn candidate(&self, b: &[u8], p: usize, m: u32) -> bool {
        let m = self.narrow(b, p, m);
        m != 0 && self.word_around(b, p, m)
    }

    /// The bits of `m` that the bytes around the pair at `p` leave.
    #[inline]
    fn narrow(&self, b: &[u8], p: usize, mut m: u32) -> u32 {
        if let Some(&z) = p.checked_sub(1).and_then(|q| b.get(q)) {
            m &= self.before[z as usize];
        }
        if let Some(&z) = b.get(p + 2) {
            m &= self.after[z as usize];
        }
        m
    }

    /// Whether one of the words that `m` (bits of [`Self::first`]) says may
    /// have its pair at `p` is really there.
    #[cold]
    fn word_around(&self, b: &[u8], p: usize, mut m: u32) -> bool {
        while m != 0 {
            let bit = m.trailing_zeros() as usize;
            let (k, o) = (bit / self.stride, bit % self.stride);
            let w = self.words[k].as_bytes();
            if let Some(start) = p.checked_sub(o)
                && b.get(start..start + w.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(w))
            {
                return true;
            }
            m &= m - 1;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::WordSet;

    /// Stride 1: a two-byte word.
    const SHORT: [&str; 4] = ["listen", "lisp", "temp", "te"];
    /// Stride 3, as with the effect words.
    const MEDIUM: [&str; 4] = ["listen", "lisp", "temp", "tempo"];
    /// Stride 8, as with `lagrouter`.
    const LONG: [&str; 1] = ["lagrouter"];

    fn naive(words: &[&str], text: &str) -> bool {
        words.iter().any(|k| {
            text.as_bytes()
                .windows(k.len())
                .any(|w| w.eq_ignore_ascii_case(k.as_bytes()))
        })
    }

    /// `set` (of `words`) against a naive search: on fixed texts, on random
    /// texts of every length up to 40 from `alphabet` (so words cross the
    /// strides at every offset), and on every byte pair in a word's place.
    fn agrees<const N: usize>(set: &WordSet<N>, words: &[&str], alphabet: &[u8]) {
        let texts = [
            "",
            "l",
            "li",
            "lis",
            "LISTEN",
            "x_Listen_y",
            "lisp",
            "liste",
            "t",
            "T",
            "tE",
            "xte",
            "tempO",
            "select 1",
            "ÄlistenÉ",
            "lis\u{e9}p",
            "/* LaGrOuTeR:min_lsn=0/1 */ SELECT 1",
            "SET lagrouter.route = primary",
            "lagroute",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 2",
        ];
        for t in texts {
            assert_eq!(set.any_in(t), naive(words, t), "{t:?}");
        }
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for len in 0..=40 {
            for _ in 0..200 {
                let t: String = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        alphabet[(seed % alphabet.len() as u64) as usize] as char
                    })
                    .collect();
                assert_eq!(set.any_in(&t), naive(words, &t), "{t:?}");
            }
        }
        for w in words {
            let w = w.as_bytes();
            for i in 0..w.len() - 1 {
                for a in 0..=255u8 {
                    for b in 0..=255u8 {
                        let mut t = vec![b'x'];
                        t.extend_from_slice(&w[..i]);
                        t.extend_from_slice(&[a, b]);
                        t.extend_from_slice(&w[i + 2..]);
                        let t = String::from_utf8_lossy(&t).into_owned();
                        assert_eq!(set.any_in(&t), naive(words, &t), "{t:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn finds_what_a_naive_search_finds() {
        let short = WordSet::new(SHORT);
        assert_eq!(short.stride, 1);
        agrees(&short, &SHORT, b"lIsTeNmpPx _");
        let medium = WordSet::new(MEDIUM);
        assert_eq!(medium.stride, 3);
        agrees(&medium, &MEDIUM, b"lIsTeNmpPoOx _");
        let long = WordSet::new(LONG);
        assert_eq!(long.stride, 8);
        agrees(&long, &LONG, b"lAgRoUtEex _");
        // The effect words with `lagrouter`: the effects' own stride.
        let words = crate::server_effects::INERT_TEST_WORDS;
        let inert = WordSet::new(words);
        assert_eq!(inert.stride, 3);
        agrees(&inert, &words, b"lAgRoUtEeMpPx _");
    }

    /// Positions where [`WordSet::any_in`] would compare a word whole.
    fn comparisons<const N: usize>(set: &WordSet<N>, text: &str) -> usize {
        let b = text.as_bytes();
        (0..b.len().saturating_sub(1))
            .step_by(set.stride)
            .filter(|&p| {
                let m = set.first[b[p] as usize] & set.second[b[p + 1] as usize];
                m != 0 && set.narrow(b, p, m) != 0
            })
            .count()
    }

    #[test]
    fn pairs_that_common_words_share_are_not_compared_whole() {
        let lagrouter = WordSet::new(LONG);
        let effects = WordSet::new(crate::server_effects::KEYWORDS);
        // pgbench's statements, whose `ou`, `nt`, `ce`... once cost a whole
        // comparison per statement or more.
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
            "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 56789;",
            "UPDATE pgbench_tellers SET tbalance = tbalance + -1234 WHERE tid = 12;",
            "UPDATE pgbench_branches SET bbalance = bbalance + -1234 WHERE bid = 3;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
             VALUES (12, 3, 56789, -1234, CURRENT_TIMESTAMP);",
        ] {
            assert_eq!(comparisons(&lagrouter, sql), 0, "{sql}");
            assert_eq!(comparisons(&effects, sql), 0, "{sql}");
        }
    }

    #[test]
    fn the_stride_leaves_a_bit_per_word_and_offset() {
        // Sixteen long words: 32 / 16 = 2, not the shortest length less one.
        let set = WordSet::new([
            "aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd", "eeeeeeee", "ffffffff", "gggggggg",
            "hhhhhhhh", "iiiiiiii", "jjjjjjjj", "kkkkkkkk", "llllllll", "mmmmmmmm", "nnnnnnnn",
            "oooooooo", "pppppppp",
        ]);
        assert_eq!(set.stride, 2);
        assert!(set.any_in("xxPPPPPPPPxx"));
        assert!(set.any_in("xxxpppppppp"));
        assert!(!set.any_in("xxppppppp"));
    }
}
