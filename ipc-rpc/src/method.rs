//! Methods as types.

use crate::Wire;

/// A remote method: its name and schema version identify it on the wire.
///
/// A method is a type, usually a unit struct declared with [`method!`](crate::method!),
/// which writes this impl:
///
/// ```
/// use ipc_rpc::{Method, rkyv};
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
/// #[rkyv(crate = rkyv)]
/// pub struct Add { pub a: u64, pub b: u64 }
///
/// ipc_rpc::method! {
///     /// Adds two numbers.
///     pub AddMethod = "example.add" version 1: Add => u64;
/// }
/// assert_eq!(AddMethod::NAME, "example.add");
/// assert_eq!(AddMethod::ID, ipc_rpc::method_id("example.add", 1));
/// ```
///
/// The macro only saves typing: any type may implement the trait, as long
/// as its name and version are unique among a server's methods.
pub trait Method: 'static {
    /// A unique, stable name (`"area.verb"`).
    const NAME: &'static str;
    /// The schema version: bump it whenever `Request` or `Response` changes
    /// shape, so that old and new peers never misread each other.
    const VERSION: u32;
    /// The wire id: [`method_id`]`(NAME, VERSION)`.
    const ID: u64 = method_id(Self::NAME, Self::VERSION);
    /// A hash of the request and response types, checked when a call is
    /// routed to a provider process (`docs/protocol.md`, provided methods):
    /// a caller and a provider that disagree on the types are refused with
    /// `SchemaMismatch` instead of misreading each other. [`method!`](crate::method!)
    /// sets it to [`schema_hash`] of the two types as written; `0` (the
    /// default of a hand-written impl) means "not declared" and is never
    /// checked.
    const SCHEMA_HASH: u64 = 0;
    /// The request message.
    type Request: Wire;
    /// The response message.
    type Response: Wire;
}

/// FNV-1a (64-bit) over the name's bytes, a `0` separator and the version's
/// little-endian bytes. Stable across builds and platforms.
///
/// Peers find a method by this id alone, so two methods of one server must
/// not share a name and version.
///
/// ```
/// use ipc_rpc::{Method, builtin::Ping, method_id};
///
/// const ID: u64 = method_id("cradle.ping", 1); // usable in constants
/// assert_eq!(ID, Ping::ID);
/// assert_ne!(method_id("cradle.ping", 2), ID, "a new version is a new method");
/// ```
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

/// The schema hash [`method!`](crate::method!) gives a method: FNV-1a
/// (64-bit) over the request type as written, `" => "`, and the response
/// type as written (their `stringify!`), never 0.
///
/// Both sides of a provided method must spell the types alike (declare the
/// method once, in a crate both use); `Vec<u8>` and `std::vec::Vec<u8>`
/// hash differently.
///
/// ```
/// use ipc_rpc::{Method, schema_hash};
///
/// ipc_rpc::method! {
///     /// Doubles a number.
///     pub Double = "example.double" version 1: u64 => u64;
/// }
/// assert_eq!(Double::SCHEMA_HASH, schema_hash("u64", "u64"));
/// assert_ne!(schema_hash("u64", "u64"), schema_hash("u32", "u64"));
/// ```
pub const fn schema_hash(request: &str, response: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    const fn eat(mut h: u64, bytes: &[u8]) -> u64 {
        let mut i = 0;
        while i < bytes.len() {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(PRIME);
            i += 1;
        }
        h
    }
    let h = eat(OFFSET, request.as_bytes());
    let h = eat(h, b" => ");
    let h = eat(h, response.as_bytes());
    if h == 0 { 1 } else { h }
}

/// Declares methods: for each, a unit struct and its [`Method`] impl.
///
/// One declaration per method, ending in `;`:
///
/// ```text
/// #[attributes] and /// doc comments
/// VISIBILITY TYPE = "wire.name" version N: REQUEST => RESPONSE;
/// ```
///
/// `"wire.name"` and `N` are [`Method::NAME`] and [`Method::VERSION`]:
/// together they make the wire id ([`Method::ID`]), so bump `N` whenever
/// `REQUEST` or `RESPONSE` changes shape. The struct derives `Debug`,
/// `Clone`, `Copy`, `Default`, `PartialEq`, `Eq` and `Hash` (do not derive
/// them again); doc comments and other attributes go on the struct.
///
/// ```
/// use ipc_rpc::{Method, rkyv};
///
/// /// A point, as it travels.
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
/// #[rkyv(crate = rkyv)]
/// pub struct Point {
///     pub x: f64,
///     pub y: f64,
/// }
///
/// ipc_rpc::method! {
///     /// Distance from the origin.
///     pub Norm = "geometry.norm" version 1: Point => f64;
///
///     /// Both coordinates scaled by a factor.
///     #[doc(alias = "multiply")]
///     pub(crate) Scale = "geometry.scale" version 2: (Point, f64) => Point;
/// }
///
/// assert_eq!(Norm::NAME, "geometry.norm");
/// assert_eq!(Scale::VERSION, 2);
/// assert_eq!(Scale::ID, ipc_rpc::method_id("geometry.scale", 2));
/// // The types a client sends and a handler answers:
/// let request: <Scale as Method>::Request = (Point { x: 1.0, y: 2.0 }, 3.0);
/// let response: <Norm as Method>::Response = 2.5;
/// # let _ = (request, response);
/// ```
#[macro_export]
macro_rules! method {
    ($(
        $(#[$attr:meta])*
        $vis:vis $name:ident = $wire:literal version $version:literal: $request:ty => $response:ty;
    )+) => {$(
        $(#[$attr])*
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::default::Default,
            ::core::cmp::PartialEq,
            ::core::cmp::Eq,
            ::core::hash::Hash,
        )]
        $vis struct $name;

        impl $crate::Method for $name {
            const NAME: &'static ::core::primitive::str = $wire;
            const VERSION: ::core::primitive::u32 = $version;
            const SCHEMA_HASH: ::core::primitive::u64 =
                $crate::schema_hash(::core::stringify!($request), ::core::stringify!($response));
            type Request = $request;
            type Response = $response;
        }
    )+};
}

#[cfg(test)]
mod tests {
    use super::{Method, method_id};

    mod declared {
        // No `use` of the crate here: the expansion must name everything
        // it needs by path.
        crate::method! {
            /// Private, with nested generics and an extra attribute.
            #[allow(dead_code)]
            Nested = "test.nested" version 3: Vec<Vec<u8>> => Option<Vec<String>>;
            /// Public within the crate.
            pub(crate) Unit = "test.unit" version 1: () => ();
        }

        pub(super) fn nested_id() -> u64 {
            <Nested as crate::Method>::ID
        }
    }

    #[test]
    fn the_macro_writes_the_same_impl_as_by_hand() {
        assert_eq!(declared::nested_id(), method_id("test.nested", 3));
        assert_eq!(declared::Unit::NAME, "test.unit");
        assert_eq!(declared::Unit::VERSION, 1);
        assert_eq!(declared::Unit::ID, method_id("test.unit", 1));
        // The derives: a marker that can be copied, compared and printed.
        fn made<T: Default + Copy>() -> T {
            T::default()
        }
        let u = made::<declared::Unit>();
        assert_eq!(u, declared::Unit);
        assert_eq!(format!("{u:?}"), "Unit");
    }

    #[test]
    fn ids_differ_by_name_and_version_and_are_stable() {
        assert_ne!(method_id("a", 1), method_id("a", 2));
        assert_ne!(method_id("a", 1), method_id("b", 1));
        assert_ne!(method_id("ab", 1), method_id("a", 1));
        // Pinned: a change here breaks every deployed peer.
        assert_eq!(method_id("cradle.ping", 1), 0xe3336a6f228687ed);
    }
}
