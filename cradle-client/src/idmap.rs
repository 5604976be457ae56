//! Maps keyed by request id.
//!
//! Request ids are this client's own sequential `u64`s, so the maps need no
//! protection against chosen keys (std's SipHash); a Fibonacci multiply
//! spreads sequential ids over the table for a fraction of the cost (it
//! showed in the call path's profile).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for `u64` request ids.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed in these maps; fold anything else.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map from request id.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
/// A set of request ids.
pub(crate) type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;
