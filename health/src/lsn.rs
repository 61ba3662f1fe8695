//! PostgreSQL log sequence numbers.

use std::fmt;
use std::str::FromStr;

/// A WAL position, as PostgreSQL's `pg_lsn` (`X/Y`, two hex halves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes of WAL from `other` up to `self`, zero if `other` is ahead.
    pub fn bytes_after(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }

    /// The LSN as PostgreSQL writes it (`16/B374D848`), without allocating:
    /// every writing transaction reports one to its client.
    pub fn text(self) -> LsnText {
        let mut t = LsnText {
            buf: [0; 17],
            len: 0,
        };
        t.push_hex((self.0 >> 32) as u32);
        t.buf[t.len] = b'/';
        t.len += 1;
        t.push_hex(self.0 as u32);
        t
    }
}

/// [`Lsn::text`]: two halves of at most 8 hex digits and a slash.
#[derive(Clone, Copy)]
pub struct LsnText {
    buf: [u8; 17],
    len: usize,
}

impl LsnText {
    /// Upper-case hex, no leading zeros (`0` for zero), as `%X`.
    fn push_hex(&mut self, v: u32) {
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let digits = (32 - v.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            let nibble = (v >> (4 * (digits - 1 - i))) & 0xF;
            self.buf[self.len + i] = DIGITS[nibble as usize];
        }
        self.len += digits;
    }
}

impl std::ops::Deref for LsnText {
    type Target = str;
    fn deref(&self) -> &str {
        // Only ASCII hex digits and '/' are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN `{0}`: expected two hex numbers like 0/1A2B3C40")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // One pass over the bytes: this runs for every node at every
        // health check and for every `wait_replicas` answer, where split,
        // validate and `from_str_radix` cost a few hundred instructions.
        fn hex(h: &[u8]) -> Option<u64> {
            if h.is_empty() || h.len() > 8 {
                return None;
            }
            h.iter().try_fold(0u64, |v, &b| {
                let d = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    b'A'..=b'F' => b - b'A' + 10,
                    _ => return None,
                };
                Some(v << 4 | u64::from(d))
            })
        }
        let t = s.trim().as_bytes();
        let parsed = t.iter().position(|&b| b == b'/').and_then(|slash| {
            let (hi, lo) = (hex(&t[..slash])?, hex(&t[slash + 1..])?);
            Some(Lsn((hi << 32) | lo))
        });
        parsed.ok_or_else(|| ParseLsnError(s.chars().take(64).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_postgres_format() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
    }

    #[test]
    fn text_is_what_postgres_writes() {
        for v in [
            0u64,
            1,
            0xF,
            0x10,
            0x16_B374_D848,
            0xFFFF_FFFF,
            0x1_0000_0000,
            0xABCD_EF01_0000_0001,
            u64::MAX,
        ] {
            let want = format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF);
            assert_eq!(&*Lsn(v).text(), want);
            assert_eq!(want.parse::<Lsn>().unwrap(), Lsn(v));
        }
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "0",
            "/1",
            "1/",
            "g/1",
            "1/2/3",
            "123456789/0",
            "-1/0",
            "+1/0",
            "1/+0",
            "1/ 2",
            "1//2",
            "é/1",
        ] {
            assert!(s.parse::<Lsn>().is_err(), "{s}");
        }
        // Surrounding blanks are trimmed; hex digits are either case.
        assert_eq!(" 1/aB \n".parse::<Lsn>().unwrap(), Lsn(0x1_0000_00AB));
    }

    #[test]
    fn byte_distance_saturates() {
        assert_eq!(Lsn(10).bytes_after(Lsn(4)), 6);
        assert_eq!(Lsn(4).bytes_after(Lsn(10)), 0);
    }
}
