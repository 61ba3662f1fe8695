//! A fast, non-cryptographic hasher for the statement cache and the
//! function catalog.
//!
//! `std`'s SipHash costs more than the whole cached lookup budget (200 ns)
//! on a long statement. This is the Fx multiply-rotate hash (as in rustc),
//! eight bytes per step, with a per-instance random seed so that crafted
//! collisions do not carry from one process to the next.

use std::hash::{BuildHasher, Hasher};

const K: u64 = 0x517c_c1b7_2722_0a95;

/// The hasher state.
#[derive(Debug, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
        // The length, so that "a\0" and "a" differ.
        self.add(bytes.len() as u64);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // One more mix so the low bits (used for buckets and shards) depend
        // on every input byte.
        let h = self.hash;
        (h ^ (h >> 29)).wrapping_mul(K) ^ (h >> 32)
    }
}

/// Builds [`FxHasher`]s from a seed.
#[derive(Debug, Clone, Copy)]
pub struct FxBuild {
    seed: u64,
}

impl FxBuild {
    /// A builder with a random seed (from `std`'s per-process randomness).
    pub fn random() -> Self {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u64);
        Self { seed }
    }
}

#[cfg(test)]
impl FxBuild {
    /// A builder with a fixed seed, for tests.
    pub(crate) fn with_seed(seed: u64) -> Self {
        Self { seed }
    }
}

impl Default for FxBuild {
    fn default() -> Self {
        Self::random()
    }
}

impl BuildHasher for FxBuild {
    type Hasher = FxHasher;
    #[inline]
    fn build_hasher(&self) -> FxHasher {
        FxHasher { hash: self.seed }
    }
}

/// A hasher for keys that are already well-mixed `u64` hashes.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with this; fold anything else anyway.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(K);
        }
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`IdentityHasher`]s.
pub type IdentityBuild = std::hash::BuildHasherDefault<IdentityHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_text_equal_hash_and_lengths_matter() {
        let b = FxBuild::random();
        assert_eq!(b.hash_one("select 1"), b.hash_one("select 1"));
        assert_ne!(b.hash_one("a"), b.hash_one("a\0"));
        assert_ne!(b.hash_one("select 1"), b.hash_one("select 2"));
    }

    #[test]
    fn seeds_differ_between_builders() {
        // Two random seeds colliding is a 2^-64 event.
        assert_ne!(
            FxBuild::random().hash_one("x"),
            FxBuild::random().hash_one("x")
        );
    }
}
