//! Statement texts that are not UTF-8: what a client whose
//! `client_encoding` is LATIN1, WIN1252, SJIS... sends, or a UTF-8 client's
//! stray byte. The server reads them in the client's encoding; lagrouter
//! forwards their bytes as they are and reads a copy in which every
//! non-ASCII character is U+FFFD. Routing needs only the ASCII in a text
//! (keywords, quotes, semicolons, comments): the copy keeps all of it, and
//! keeps it where the server sees it.

/// How a client encoding lays out its non-ASCII characters, as far as
/// finding the ASCII in a text needs: whether a byte below 0x80 can be the
/// second byte of a character, and so not the ASCII character it looks
/// like (in Shift-JIS, 0x5C after 0x95 is half of one kanji, not a
/// backslash that would escape the quote after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextEncoding {
    /// Every byte of a non-ASCII character is 0x80 or above: UTF-8, the
    /// EUC encodings, the single-byte ones (LATIN1, WIN1252, KOI8R...),
    /// SQL_ASCII, MULE_INTERNAL, and JOHAB (whose PostgreSQL verifier takes
    /// second bytes only from 0xA1-0xFE).
    #[default]
    AsciiSafe,
    /// SJIS and SHIFT_JIS_2004: a byte 0x80 or above, except the one-byte
    /// kana 0xA1-0xDF, starts a character of two bytes.
    ShiftJis,
    /// BIG5, GBK, UHC: a byte 0x80 or above starts a character of two.
    DoubleByte,
    /// GB18030: a byte 0x80 or above starts a character of four bytes when
    /// the next is a digit (0x30-0x39), of two otherwise.
    Gb18030,
}

impl TextEncoding {
    /// The layout of the encoding PostgreSQL calls `name`, by any of the
    /// names it accepts (case and punctuation ignored, as PostgreSQL does:
    /// `Shift_JIS`, `sjis`, `WIN932`).
    pub fn named(name: &str) -> TextEncoding {
        let clean: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        match clean.as_str() {
            "sjis" | "shiftjis" | "mskanji" | "win932" | "windows932" | "shiftjis2004" => {
                TextEncoding::ShiftJis
            }
            "big5" | "win950" | "windows950" | "gbk" | "win936" | "windows936" | "cp936"
            | "uhc" | "win949" | "windows949" => TextEncoding::DoubleByte,
            "gb18030" => TextEncoding::Gb18030,
            _ => TextEncoding::AsciiSafe,
        }
    }

    /// Bytes of the character that starts at `text[0]`, a byte 0x80 or
    /// above (PostgreSQL's `pg_encoding_mblen`); at least 1.
    fn char_len(self, text: &[u8]) -> usize {
        match self {
            TextEncoding::AsciiSafe => 1,
            TextEncoding::ShiftJis if (0xA1..=0xDF).contains(&text[0]) => 1,
            TextEncoding::ShiftJis | TextEncoding::DoubleByte => 2,
            TextEncoding::Gb18030 => match text.get(1) {
                Some(b'0'..=b'9') => 4,
                _ => 2,
            },
        }
    }
}

/// `text`, sent in `enc`, as a string routing can read: its ASCII as it
/// is, each other character as U+FFFD (an identifier character to the
/// router, as a non-ASCII character is to PostgreSQL's lexer). A character
/// cut short at the end is one U+FFFD. For a text that is UTF-8 but for a
/// stray byte (a UTF-8 client's mistake, which the server refuses with
/// 22021), the valid characters are kept.
pub fn readable(text: &[u8], enc: TextEncoding) -> String {
    if enc == TextEncoding::AsciiSafe {
        // An invalid sequence is replaced up to the next byte that cannot
        // continue it; no ASCII byte can, so none is lost.
        return String::from_utf8_lossy(text).into_owned();
    }
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    let mut rest = text;
    while let Some(&b) = rest.first() {
        if b.is_ascii() {
            // The run of ASCII up to the next character that is not.
            let run = rest
                .iter()
                .position(|b| !b.is_ascii())
                .unwrap_or(rest.len());
            out.extend(rest[..run].iter().map(|&b| char::from(b)));
            rest = &rest[run..];
        } else {
            out.push(char::REPLACEMENT_CHARACTER);
            rest = &rest[enc.char_len(rest).min(rest.len())..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_postgresql_spells_them() {
        for n in ["SJIS", "Shift_JIS", "sjis", "WIN932", "SHIFT_JIS_2004"] {
            assert_eq!(TextEncoding::named(n), TextEncoding::ShiftJis, "{n}");
        }
        for n in ["BIG5", "GBK", "UHC", "win949", "Windows-936"] {
            assert_eq!(TextEncoding::named(n), TextEncoding::DoubleByte, "{n}");
        }
        assert_eq!(TextEncoding::named("GB18030"), TextEncoding::Gb18030);
        for n in [
            "UTF8",
            "LATIN1",
            "WIN1252",
            "EUC_JP",
            "SQL_ASCII",
            "JOHAB",
            "",
        ] {
            assert_eq!(TextEncoding::named(n), TextEncoding::AsciiSafe, "{n}");
        }
    }

    #[test]
    fn single_byte_text_keeps_its_ascii() {
        // LATIN1 "café", and UTF-8 valid characters around a stray byte.
        assert_eq!(
            readable(b"SELECT 'caf\xe9' FROM t", TextEncoding::AsciiSafe),
            "SELECT 'caf\u{fffd}' FROM t"
        );
        let mut t = "é\u{1F600}".as_bytes().to_vec();
        t.extend_from_slice(b"\xff'x");
        assert_eq!(
            readable(&t, TextEncoding::AsciiSafe),
            "é\u{1F600}\u{fffd}'x"
        );
        // Every byte that starts no character, before a quote.
        for b in 0x80..=0xFFu8 {
            let t = [b'\'', b, b'\'', b';'];
            let r = readable(&t, TextEncoding::AsciiSafe);
            assert!(r.starts_with('\'') && r.ends_with("';"), "{b:#x}: {r}");
        }
    }

    /// Shift-JIS "表" is 0x95 0x5C: its second byte is a backslash. Read
    /// byte by byte, `E'表'` would be a string whose quote is escaped, and
    /// everything after it (here a DELETE) would be inside it.
    #[test]
    fn double_byte_characters_swallow_their_ascii_second_byte() {
        let sql = b"SELECT E'\x95\x5c'; DELETE FROM t";
        assert_eq!(
            readable(sql, TextEncoding::ShiftJis),
            "SELECT E'\u{fffd}'; DELETE FROM t"
        );
        assert_eq!(
            readable(sql, TextEncoding::DoubleByte),
            "SELECT E'\u{fffd}'; DELETE FROM t"
        );
        // Half-width kana stand alone in Shift-JIS; a double-byte encoding
        // pairs every high byte.
        assert_eq!(readable(b"\xb1'x'", TextEncoding::ShiftJis), "\u{fffd}'x'");
        assert_eq!(readable(b"\xb1'x'", TextEncoding::DoubleByte), "\u{fffd}x'");
        // GB18030: four bytes when the second is a digit.
        assert_eq!(
            readable(b"'\x81\x30\x81\x30' \x81\x40'", TextEncoding::Gb18030),
            "'\u{fffd}' \u{fffd}'"
        );
    }

    /// What the router makes of them: the Shift-JIS text read byte by byte
    /// hides its DELETE in a string that ends in the comment, and would go
    /// to a replica; read as Shift-JIS, it writes. LATIN1 texts classify
    /// as their ASCII says.
    #[test]
    fn the_router_finds_the_write_after_a_double_byte_string() {
        use lagrouter_routing::{Class, FunctionCatalog, ReadOnlyFunctions, classify};
        let class = |sql: &str| {
            classify(
                sql,
                &FunctionCatalog::builtin(),
                &ReadOnlyFunctions::default(),
            )
        };
        let sql = b"SELECT E'\x95\x5c'; DELETE FROM t; -- '";
        assert_eq!(class(&readable(sql, TextEncoding::AsciiSafe)), Class::Read);
        assert_eq!(class(&readable(sql, TextEncoding::ShiftJis)), Class::Write);
        let latin1 = |sql: &[u8]| class(&readable(sql, TextEncoding::AsciiSafe));
        assert_eq!(
            latin1(b"SELECT * FROM caf\xe9 WHERE x = '\xe9'"),
            Class::Read
        );
        assert_eq!(latin1(b"INSERT INTO t VALUES ('\xe9')"), Class::Write);
        assert_eq!(latin1(b"SELECT '\xe9'; UPDATE t SET x = 1"), Class::Write);
    }

    #[test]
    fn characters_cut_short_end_the_text() {
        for enc in [
            TextEncoding::ShiftJis,
            TextEncoding::DoubleByte,
            TextEncoding::Gb18030,
            TextEncoding::AsciiSafe,
        ] {
            assert_eq!(readable(b"x\x95", enc), "x\u{fffd}", "{enc:?}");
            assert_eq!(readable(b"x\x81\x30", enc).chars().next(), Some('x'));
            assert_eq!(readable(b"", enc), "");
        }
    }
}
