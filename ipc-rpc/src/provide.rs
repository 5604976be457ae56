//! Methods offered by client processes (providers), and bytes methods
//! (`docs/protocol.md` §10, `docs/architecture.md` "Provided methods").
//!
//! A session becomes a provider by registering methods with [`Register`].
//! From then on the server may write [`INVOKE`](crate::wire::INVOKE) frames
//! into that session's response ring; the provider answers each with a
//! [`REPLY`](crate::wire::REPLY) or [`REPLY_ERROR`](crate::wire::REPLY_ERROR)
//! frame in its request ring, echoing the invocation id. A caller calls a
//! provided method exactly as a compiled-in one (same `REQUEST` frame, the
//! method id in `tag`); the server routes it.
//!
//! A **bytes method** is one whose request and response bodies are opaque
//! bytes (not rkyv), plus the blobs the envelope lists: the encoding is the
//! two sides' business, so a provider in another language needs no rkyv. It
//! is registered with [`BYTES_SCHEMA`] as its schema hash.
//!
//! ```
//! use ipc_rpc::method_id;
//! use ipc_rpc::provide::{BYTES_SCHEMA, Offer};
//!
//! // A checksum service offered by some process, callable by name.
//! let offer = Offer {
//!     name: "demo.checksum".into(),
//!     version: 1,
//!     schema_hash: BYTES_SCHEMA,
//!     concurrency: 4,
//!     idempotent: true,
//!     memoized: false,
//! };
//! assert_eq!(offer.id(), method_id("demo.checksum", 1));
//! ```

use crate::method_id;

/// Names starting with this are the server's own; no provider may offer one.
pub const RESERVED_PREFIX: &str = "cradle.";

/// The schema hash of every bytes method ([`crate::schema_hash`] of
/// `"bytes"` and `"bytes"`).
pub const BYTES_SCHEMA: u64 = crate::schema_hash("bytes", "bytes");

/// Longest method name a provider may offer, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// One method a provider offers.
///
/// ```
/// use ipc_rpc::provide::Offer;
///
/// let o = Offer { name: "img.thumb".into(), version: 2, schema_hash: 0x1234, concurrency: 1, idempotent: false, memoized: false };
/// assert_eq!(o.id(), ipc_rpc::method_id("img.thumb", 2));
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct Offer {
    /// The method's name; not under [`RESERVED_PREFIX`], at most
    /// [`MAX_NAME_LEN`] bytes, no control characters.
    pub name: String,
    /// Its schema version.
    pub version: u32,
    /// Its schema hash ([`Method::SCHEMA_HASH`](crate::Method::SCHEMA_HASH),
    /// or [`BYTES_SCHEMA`]); every provider of one method must give the same.
    pub schema_hash: u64,
    /// How many calls this provider serves at once (at least 1).
    pub concurrency: u32,
    /// A call may be sent again to another provider when this one goes
    /// away before answering (the method has no effect a second run would
    /// repeat).
    pub idempotent: bool,
    /// The method is **memoized**: its answer depends only on its request
    /// body and the *contents* of the blobs the request's envelope lists,
    /// so the server answers a call from the shared cache when an identical
    /// one was answered before, and identical calls in flight share one
    /// run (`docs/architecture.md` §14). Every provider of one method must
    /// give the same.
    pub memoized: bool,
}

impl Offer {
    /// The method id callers use.
    ///
    /// ```
    /// # use ipc_rpc::provide::Offer;
    /// let o = Offer { name: "a".into(), version: 1, schema_hash: 1, concurrency: 1, idempotent: false, memoized: false };
    /// assert_eq!(o.id(), ipc_rpc::method_id("a", 1));
    /// ```
    pub fn id(&self) -> u64 {
        method_id(&self.name, self.version)
    }
}

/// Where a method listed by [`ListMethods`] comes from.
///
/// ```
/// use ipc_rpc::provide::Origin;
/// assert_eq!(Origin::from_u8(Origin::Provided as u8), Some(Origin::Provided));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Origin {
    /// Every CRADLE server has it (`cradle.*`).
    Builtin = 0,
    /// Compiled into this server binary.
    Compiled = 1,
    /// Offered by one or more client processes.
    Provided = 2,
}

impl Origin {
    /// From the wire value.
    ///
    /// ```
    /// assert_eq!(ipc_rpc::provide::Origin::from_u8(9), None);
    /// ```
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Builtin),
            1 => Some(Self::Compiled),
            2 => Some(Self::Provided),
            _ => None,
        }
    }
}

/// One provider of a method, as [`ListMethods`] reports it.
///
/// ```
/// use ipc_rpc::provide::ProviderInfo;
/// let p = ProviderInfo { session: 3, pid: 4242, concurrency: 4, in_flight: 1, served: 10, errors: 0, p50_ns: 12_000 };
/// assert!(p.in_flight <= p.concurrency);
/// ```
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq, Default,
)]
#[rkyv(crate = rkyv)]
pub struct ProviderInfo {
    /// The provider's session id.
    pub session: u64,
    /// The provider's process id (from `SO_PEERCRED`).
    pub pid: u32,
    /// Calls it serves at once.
    pub concurrency: u32,
    /// Calls it holds now.
    pub in_flight: u32,
    /// Calls it answered.
    pub served: u64,
    /// Calls it answered with an error (or did not answer: deadline, gone).
    pub errors: u64,
    /// Median time from delivery to its answer, over its recent calls (0:
    /// none yet).
    pub p50_ns: u64,
}

/// One method the server answers, as [`ListMethods`] reports it.
///
/// ```
/// use ipc_rpc::provide::{MethodInfo, Origin};
/// let m = MethodInfo { name: "cradle.ping".into(), version: 1, id: ipc_rpc::method_id("cradle.ping", 1),
///     origin: Origin::Builtin as u8, ..Default::default() };
/// assert_eq!(Origin::from_u8(m.origin), Some(Origin::Builtin));
/// ```
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq, Default,
)]
#[rkyv(crate = rkyv)]
pub struct MethodInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// Its wire id.
    pub id: u64,
    /// An [`Origin`] as `u8`.
    pub origin: u8,
    /// Its schema hash (0: not declared).
    pub schema_hash: u64,
    /// Calls waiting in the server for a provider.
    pub queued: u32,
    /// Calls answered (all origins; provided: by any provider).
    pub served: u64,
    /// Calls answered with an error.
    pub errors: u64,
    /// Median service time over recent calls (0: not measured).
    pub p50_ns: u64,
    /// Its providers (provided methods only).
    pub providers: Vec<ProviderInfo>,
}

crate::method! {
    /// Registers the calling session as a provider of one method. Errors:
    /// `Refused` (a reserved or invalid name, concurrency 0, a server
    /// limit), `SchemaMismatch` (the method is offered with another schema
    /// hash or another idempotent or memoized flag, or compiled in).
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::provide::{BYTES_SCHEMA, Offer, Register};
    ///
    /// let _request: <Register as Method>::Request = Offer {
    ///     name: "demo.echo".into(), version: 1, schema_hash: BYTES_SCHEMA, concurrency: 8, idempotent: true,
    ///     memoized: false,
    /// };
    /// assert_eq!(Register::NAME, "cradle.provider.register");
    /// ```
    pub Register = "cradle.provider.register" version 1: Offer => ();

    /// Withdraws the calling session's offer of a method (by id); answers
    /// whether it offered it. Calls it holds are answered `ProviderGone`
    /// (or sent to another provider, for an idempotent method) — the same
    /// as when a provider dies.
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::provide::Unregister;
    ///
    /// let _request: <Unregister as Method>::Request = ipc_rpc::method_id("demo.echo", 1);
    /// assert_eq!(Unregister::NAME, "cradle.provider.unregister");
    /// ```
    pub Unregister = "cradle.provider.unregister" version 1: u64 => bool;

    /// Every method the server answers: builtin, compiled in, provided.
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::provide::ListMethods;
    ///
    /// let _request: <ListMethods as Method>::Request = ();
    /// assert_eq!(ListMethods::NAME, "cradle.methods");
    /// ```
    pub ListMethods = "cradle.methods" version 1: () => Vec<MethodInfo>;
}
