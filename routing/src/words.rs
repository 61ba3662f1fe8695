//! A quick test for whether a text holds any of a few words, in any letter
//! case and anywhere (inside identifiers, strings and comments too): the
//! filter run before lexing on every statement that may need it, most of
//! which hold none of the words.
//!
//! One pass over the text's byte pairs, with two table lookups per pair: a
//! word is compared whole only where its first two letters are. Data, not
//! branches, decide what is a candidate: the branch predictor sees the same
//! outcome ("no candidate") almost every time, whatever the text.

/// Up to 16 words, each of at least two bytes.
pub(crate) struct WordSet<const N: usize> {
    words: [&'static str; N],
    /// Per byte value: bit `k` (low half) when word `k` starts with it,
    /// bit `16 + k` (high half) when it is word `k`'s second byte; either
    /// letter case.
    table: [u32; 256],
}

impl<const N: usize> WordSet<N> {
    pub(crate) const fn new(words: [&'static str; N]) -> Self {
        assert!(N <= 16, "a WordSet holds up to 16 words");
        let mut table = [0u32; 256];
        let mut k = 0;
        while k < N {
            let w = words[k].as_bytes();
            assert!(w.len() >= 2, "a WordSet word has two bytes or more");
            let (first, second) = (1u32 << k, 1u32 << (16 + k));
            table[w[0].to_ascii_lowercase() as usize] |= first;
            table[w[0].to_ascii_uppercase() as usize] |= first;
            table[w[1].to_ascii_lowercase() as usize] |= second;
            table[w[1].to_ascii_uppercase() as usize] |= second;
            k += 1;
        }
        WordSet { words, table }
    }

    /// The words that may start with bytes `a` then `b`.
    fn candidates(&self, a: u8, b: u8) -> u32 {
        (self.table[a as usize] & (self.table[b as usize] >> 16)) & 0xFFFF
    }

    /// Whether any of the words appears in `text`, in any ASCII letter case.
    pub(crate) fn any_in(&self, text: &str) -> bool {
        let b = text.as_bytes();
        let mut i = 0;
        // Eight pairs at a time, with no branch inside: a block with no
        // candidate (most of them) costs one test.
        while let Some(block) = b.get(i..i + 9) {
            let mut any = 0;
            for j in 0..8 {
                any |= self.candidates(block[j], block[j + 1]);
            }
            if any != 0 && (i..i + 8).any(|j| self.word_at(b, j)) {
                return true;
            }
            i += 8;
        }
        (i..b.len().saturating_sub(1)).any(|j| self.word_at(b, j))
    }

    /// Whether one of the words starts at byte `i` of `b`.
    fn word_at(&self, b: &[u8], i: usize) -> bool {
        let mut m = self.candidates(b[i], b[i + 1]);
        while m != 0 {
            let w = self.words[m.trailing_zeros() as usize].as_bytes();
            if b.get(i..i + w.len())
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

    const SET: WordSet<4> = WordSet::new(["listen", "lisp", "temp", "te"]);

    fn naive(words: &[&str], text: &str) -> bool {
        words.iter().any(|k| {
            text.as_bytes()
                .windows(k.len())
                .any(|w| w.eq_ignore_ascii_case(k.as_bytes()))
        })
    }

    #[test]
    fn finds_what_a_naive_search_finds() {
        let words = ["listen", "lisp", "temp", "te"];
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
            "select 1",
            "ÄlistenÉ",
            "lis\u{e9}p",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 2",
        ];
        for t in texts {
            assert_eq!(SET.any_in(t), naive(&words, t), "{t:?}");
        }
        // Texts of every length up to 40 from the words' letters, in both
        // cases, so words cross the eight-byte blocks at every offset.
        let alphabet = b"lIsTeNmpPx _";
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
                assert_eq!(SET.any_in(&t), naive(&words, &t), "{t:?}");
            }
        }
        // Every byte pair, in a word's place: only real letters match.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let t = String::from_utf8_lossy(&[b'x', a, b, b'm', b'p']).into_owned();
                assert_eq!(SET.any_in(&t), naive(&words, &t), "{t:?}");
            }
        }
    }
}
