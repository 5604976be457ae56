//! Methods as types.

use crate::Wire;

/// A remote method: its name and schema version identify it on the wire.
///
/// ```
/// use ipc_rpc::{Method, rkyv};
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
/// #[rkyv(crate = rkyv)]
/// pub struct Add { pub a: u64, pub b: u64 }
///
/// pub struct AddMethod;
/// impl Method for AddMethod {
///     const NAME: &'static str = "example.add";
///     const VERSION: u32 = 1;
///     type Request = Add;
///     type Response = u64;
/// }
/// assert_eq!(AddMethod::ID, ipc_rpc::method_id("example.add", 1));
/// ```
pub trait Method: 'static {
    /// A unique, stable name (`"area.verb"`).
    const NAME: &'static str;
    /// The schema version: bump it whenever `Request` or `Response` changes
    /// shape, so that old and new peers never misread each other.
    const VERSION: u32;
    /// The wire id: [`method_id`]`(NAME, VERSION)`.
    const ID: u64 = method_id(Self::NAME, Self::VERSION);
    /// The request message.
    type Request: Wire;
    /// The response message.
    type Response: Wire;
}

/// FNV-1a (64-bit) over the name's bytes, a `0` separator and the version's
/// little-endian bytes. Stable across builds and platforms.
pub const fn method_id(name: &str, version: u32) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(PRIME);
        i += 1;
    }
    h ^= 0;
    h = h.wrapping_mul(PRIME);
    let v = version.to_le_bytes();
    let mut j = 0;
    while j < 4 {
        h ^= v[j] as u64;
        h = h.wrapping_mul(PRIME);
        j += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::method_id;

    #[test]
    fn ids_differ_by_name_and_version_and_are_stable() {
        assert_ne!(method_id("a", 1), method_id("a", 2));
        assert_ne!(method_id("a", 1), method_id("b", 1));
        assert_ne!(method_id("ab", 1), method_id("a", 1));
        // Pinned: a change here breaks every deployed peer.
        assert_eq!(method_id("cradle.ping", 1), 0xe3336a6f228687ed);
    }
}
