//! Maps keyed by `u64` ids that their owner hands out sequentially (a
//! client's request ids; the server's blob, segment and session ids).
//!
//! The owner inserts every key itself, so the maps need no protection
//! against chosen keys (std's SipHash): a peer can only look up ids it
//! chose, which cannot lengthen any chain. A Fibonacci multiply spreads
//! sequential ids over the table for a fraction of SipHash's cost (it showed
//! in the call path's and the blob seal's profiles).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for `u64` ids.
///
/// ```
/// use ipc_rpc::idmap::IdHasher;
/// use std::hash::Hasher;
///
/// let (mut a, mut b) = (IdHasher::default(), IdHasher::default());
/// a.write_u64(1);
/// b.write_u64(2);
/// assert_ne!(a.finish() >> 56, b.finish() >> 56, "neighbours land far apart");
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

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

/// A map from id.
///
/// ```
/// let mut sessions = ipc_rpc::idmap::IdMap::default();
/// sessions.insert(7u64, "session seven");
/// assert_eq!(sessions.get(&7), Some(&"session seven"));
/// ```
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
/// A set of ids.
///
/// ```
/// let mut mapped = ipc_rpc::idmap::IdSet::default();
/// assert!(mapped.insert(3));
/// assert!(!mapped.insert(3), "already there");
/// ```
pub type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;
