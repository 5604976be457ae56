//! The two methods the `provider` example offers and the `caller` example
//! calls: both sides compile the same spelling, so they agree on the
//! method ids and the schema hash.

/// The bytes method: FNV-1a (64-bit) over the request body, then over
/// every blob passed with the call, answered as 8 little-endian bytes.
/// Callable by name from any language, or `cradle call demo.checksum`.
pub(crate) const CHECKSUM: &str = "demo.checksum";

ipc_rpc::method! {
    /// Makes a thumbnail of the image blob passed with the call: every
    /// `step`-th byte (the request). Answers the thumbnail's FNV-1a; the
    /// thumbnail itself comes back as a result blob (no copy on the way).
    pub(crate) Thumbnail = "demo.thumbnail" version 1: u32 => u64;
}

/// FNV-1a (64-bit), continued from `h` (start with [`FNV_START`]).
pub(crate) fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a's offset basis.
pub(crate) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;
