//! The CA's only source of randomness: SHA-256 in counter mode, keyed by the seed and a stream
//! label.
//!
//! Why not `rand_chacha`: the output must be a function of the seed forever (the simulation's
//! regression seeds replay against it), and a dozen lines over ring's SHA-256, which the CA needs
//! anyway, cannot change under a dependency upgrade. Nothing here is secret-grade: the CA is a
//! test and demo CA, and its tokens only need to be unpredictable to nobody.

use base64::Engine;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};

/// A deterministic generator: the same seed and stream give the same bytes.
#[derive(Clone)]
pub(crate) struct SeededRng {
    key: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRng {
    /// A generator for `stream` (separate streams keep, say, fault draws from shifting ids).
    pub(crate) fn new(seed: u64, stream: &str) -> Self {
        let mut input = Vec::with_capacity(32 + stream.len());
        input.extend_from_slice(b"certfleet-ca rng\0");
        input.extend_from_slice(stream.as_bytes());
        input.push(0);
        input.extend_from_slice(&seed.to_be_bytes());
        Self {
            key: sha256(&input),
            counter: 0,
            block: [0; 32],
            // Empty: the first draw computes block 0.
            used: 32,
        }
    }

    /// Fills `out` with the next bytes of the stream.
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for byte in out {
            if self.used == self.block.len() {
                let mut input = [0u8; 40];
                input[..32].copy_from_slice(&self.key);
                input[32..].copy_from_slice(&self.counter.to_be_bytes());
                self.block = sha256(&input);
                self.counter += 1;
                self.used = 0;
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill(&mut bytes);
        u64::from_be_bytes(bytes)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift: the bias is below `n / 2^64`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `min..=max` (`max < min` reads as `min`).
    pub(crate) fn between(&mut self, min: u64, max: u64) -> u64 {
        if max <= min {
            return min;
        }
        match (max - min).checked_add(1) {
            Some(span) => min + self.below(span),
            None => self.next_u64(), // the full u64 range
        }
    }

    /// True with probability `percent`/100. Draws even for 0 and 100, so that changing a
    /// fault's probability does not shift the rest of the stream.
    pub(crate) fn chance(&mut self, percent: u8) -> bool {
        self.below(100) < u64::from(percent)
    }

    /// `bytes` random bytes as base64url: ids, nonces and tokens.
    pub(crate) fn token(&mut self, bytes: usize) -> String {
        let mut raw = vec![0u8; bytes];
        self.fill(&mut raw);
        BASE64_URL_SAFE_NO_PAD.encode(raw)
    }
}

pub(crate) fn sha256(input: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, input).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_and_stream_give_the_same_bytes_and_others_differ() {
        let mut a = SeededRng::new(7, "ids");
        let mut b = SeededRng::new(7, "ids");
        let mut c = SeededRng::new(7, "faults");
        let mut d = SeededRng::new(8, "ids");
        let (x, y, z, w) = (a.token(40), b.token(40), c.token(40), d.token(40));
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(x, w);
    }

    #[test]
    fn draws_stay_in_range() {
        let mut rng = SeededRng::new(1, "t");
        for _ in 0..1000 {
            assert!(rng.below(3) < 3);
            let v = rng.between(10, 12);
            assert!((10..=12).contains(&v));
        }
        assert_eq!(rng.between(5, 5), 5);
        assert!(!rng.chance(0));
        assert!(rng.chance(100));
    }
}
