//! The hasher of sets and maps whose keys are hashes already (xxh3 of a key, a keyed hash of a
//! nonce): the key is used as it is, not hashed again.

use std::hash::Hasher;

/// Passes a `u64` or `u128` key through (its low 64 bits); other input is folded byte by byte.
#[derive(Debug, Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}
