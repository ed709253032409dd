//! A tiny deterministic PRNG for fixture content.
//!
//! SplitMix64 (Steele, Lea, Flood 2014): one 64-bit state word, good enough
//! statistics for test data, and no dependency. The output for a seed must
//! never change: tests compare trees built from the same seed in different
//! places and at different times.

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    /// The whole state; advanced by the golden-ratio increment on every draw.
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// A generator for one named part of a fixture, so that adding or
    /// reordering parts does not shift the content of the others.
    pub fn derive(seed: u64, label: &[u8]) -> SplitMix64 {
        // FNV-1a over the label, then mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in label {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut g = SplitMix64::new(seed ^ h);
        g.next_u64();
        g
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n`; `n` must be non-zero. The modulo bias is
    /// irrelevant for test data.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SplitMix64::below(0)");
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let bytes = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&bytes[..rest.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn known_first_output() {
        // Reference value of SplitMix64 seeded with 0; pins the algorithm so
        // fixture content cannot drift silently.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn fill_handles_partial_words() {
        let mut buf = [0u8; 13];
        SplitMix64::new(7).fill(&mut buf);
        let mut g = SplitMix64::new(7);
        let first = g.next_u64().to_le_bytes();
        let second = g.next_u64().to_le_bytes();
        assert_eq!(&buf[..8], &first);
        assert_eq!(&buf[8..], &second[..5]);
    }

    #[test]
    fn derived_streams_differ_by_label() {
        let a = SplitMix64::derive(1, b"a").next_u64();
        let b = SplitMix64::derive(1, b"b").next_u64();
        assert_ne!(a, b);
    }
}
