//! Blobs by handle and the memory cache: the wire types and methods
//! (docs/design.md §8, `docs/protocol.md` §7).
//!
//! A blob is written once by its author, sealed, and from then on immutable
//! because the kernel forbids every writer. It is named by a [`BlobHandle`]:
//! plain data, never a pointer. Three kinds of segments carry blob bytes;
//! each starts with the usual 128-byte segment header, and blob bytes start at
//! [`DATA_OFFSET`] or later:
//!
//! * an **author pool** ([`AUTHOR_KIND`]): one per session, read-write for its
//!   client, where small blobs are written before they are sealed;
//! * a **server pool** ([`POOL_KIND`]): shared by every session, sealed
//!   `SHRINK | GROW | FUTURE_WRITE | SEAL` before any descriptor leaves the
//!   server; a small blob is copied there once, at seal;
//! * a **large blob** ([`LARGE_KIND`]): its own memfd, written in place by the
//!   author, sealed `WRITE | SEAL` at seal time.
//!
//! Descriptors travel over the control socket as [`FdGrant`] messages, sent
//! just before the response that announces them.

use bytemuck::{Pod, Zeroable};

/// Magic of every blob segment's header.
pub const BLOB_MAGIC: u64 = u64::from_le_bytes(*b"CRDLBLOB");
/// Layout version of blob segments.
pub const BLOB_LAYOUT_VERSION: u32 = 1;
/// Segment kind: a session's author pool.
pub const AUTHOR_KIND: u32 = 2;
/// Segment kind: a server pool of sealed small blobs.
pub const POOL_KIND: u32 = 3;
/// Segment kind: one large blob.
pub const LARGE_KIND: u32 = 4;
/// Where blob bytes start in a large blob's segment, and the lowest offset of
/// any blob in a pool: one page, so that blob data is page-aligned.
pub const DATA_OFFSET: u64 = 4096;
/// Alignment of blobs inside pools.
pub const POOL_ALIGN: u64 = 64;

/// `FdGrant::magic`.
pub const FD_GRANT_MAGIC: u64 = u64::from_le_bytes(*b"CRDLFDGR");

/// Server → client on the control socket, with exactly one descriptor
/// (`SCM_RIGHTS`): the descriptor of segment `segment`. Same size as
/// the handshake module's `Goodbye`, so a reader takes 16-byte
/// messages and tells them apart by magic.
///
/// ```
/// use ipc_rpc::blob::{FD_GRANT_MAGIC, FdGrant};
/// use ipc_rpc::handshake::GOODBYE_MAGIC;
///
/// // What a client makes of a 16-byte message from the server.
/// fn classify(msg: [u8; 16]) -> &'static str {
///     match u64::from_le_bytes(msg[..8].try_into().unwrap()) {
///         FD_GRANT_MAGIC => "descriptor grant",
///         GOODBYE_MAGIC => "goodbye",
///         _ => "protocol error",
///     }
/// }
/// let grant = FdGrant { magic: FD_GRANT_MAGIC, segment: 3 };
/// assert_eq!(classify(bytemuck::cast(grant)), "descriptor grant");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct FdGrant {
    /// [`FD_GRANT_MAGIC`].
    pub magic: u64,
    /// The segment the descriptor belongs to.
    pub segment: u64,
}

/// A sealed blob's name: who made it (the server instance's `epoch`), its
/// `id` in the server's table, and where its bytes are. Plain data; the
/// server checks every field against its private table before using it.
///
/// ```
/// use ipc_rpc::blob::BlobHandle;
/// use ipc_rpc::rkyv::ser::allocator::Arena;
/// use ipc_rpc::{Wire, encode_to_vec};
///
/// let h = BlobHandle { epoch: 0xfeed, id: 42, segment: 3, offset: 4096, len: 1 << 20 };
/// assert_eq!(h.to_string(), "blob 42 (1048576 bytes, segment 3 @ 4096, epoch 000000000000feed)");
///
/// // Handles travel inside messages; a received one is read in place and copied out.
/// let bytes = encode_to_vec(&h, &mut Arena::new(), 4096)?;
/// assert_eq!(BlobHandle::from(BlobHandle::access(&bytes)?), h);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Pod,
    Zeroable,
)]
#[rkyv(crate = rkyv, derive(Debug))]
#[repr(C)]
pub struct BlobHandle {
    /// The server instance that issued it.
    pub epoch: u64,
    /// The blob's id (never reused by one server instance).
    pub id: u64,
    /// The segment holding its bytes.
    pub segment: u64,
    /// Offset of the first byte in that segment.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl From<&ArchivedBlobHandle> for BlobHandle {
    fn from(a: &ArchivedBlobHandle) -> Self {
        Self {
            epoch: a.epoch.to_native(),
            id: a.id.to_native(),
            segment: a.segment.to_native(),
            offset: a.offset.to_native(),
            len: a.len.to_native(),
        }
    }
}

impl std::fmt::Display for BlobHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "blob {} ({} bytes, segment {} @ {}, epoch {:016x})",
            self.id, self.len, self.segment, self.offset, self.epoch
        )
    }
}

/// A segment a client may map: its id, exact length and kind.
///
/// ```
/// use ipc_rpc::blob::{DATA_OFFSET, LARGE_KIND, SegmentInfo};
///
/// // What a client checks before it maps a descriptor it was sent.
/// fn usable(info: &SegmentInfo, fstat_len: u64) -> bool {
///     info.fd_sent && info.len == fstat_len && info.len >= DATA_OFFSET
/// }
/// let info = SegmentInfo { segment: 12, len: DATA_OFFSET + (1 << 20), kind: LARGE_KIND, fd_sent: true };
/// assert!(usable(&info, DATA_OFFSET + (1 << 20)));
/// assert!(!usable(&info, 4096), "a segment shorter than announced is refused");
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct SegmentInfo {
    /// The segment id.
    pub segment: u64,
    /// Its length (checked against `fstat` when it is opened).
    pub len: u64,
    /// [`AUTHOR_KIND`], [`POOL_KIND`] or [`LARGE_KIND`].
    pub kind: u32,
    /// Whether an [`FdGrant`] for it was sent just before this answer.
    pub fd_sent: bool,
}

crate::method! {
    /// Create the session's author pool (once), and send its descriptor.
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::{AUTHOR_KIND, AuthorPool, SegmentInfo};
    ///
    /// // No arguments; the answer describes the pool, whose descriptor came just before.
    /// let _request: <AuthorPool as Method>::Request = ();
    /// let pool: <AuthorPool as Method>::Response =
    ///     SegmentInfo { segment: 1, len: 64 << 20, kind: AUTHOR_KIND, fd_sent: true };
    /// assert_eq!(pool.kind, AUTHOR_KIND);
    /// assert_eq!(AuthorPool::NAME, "cradle.blob.author_pool");
    /// ```
    pub AuthorPool = "cradle.blob.author_pool" version 1: () => SegmentInfo;

    /// Seal a small blob: copy `len` bytes at `offset` of the author pool into a
    /// server pool. The answer's handle carries a lease for the caller.
    ///
    /// Request: `(offset, len)` in the author pool.
    ///
    /// ```
    /// # fn round_trip<T: ipc_rpc::Wire>(v: &T) -> T {
    /// #     let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
    /// #     T::decode(&ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16).unwrap()).unwrap()
    /// # }
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::{DATA_OFFSET, SealSmall};
    ///
    /// // Seal the 100 bytes written at the start of the pool's data area.
    /// let request: <SealSmall as Method>::Request = (DATA_OFFSET, 100);
    /// assert_eq!(round_trip(&request), (4096, 100));
    /// ```
    pub SealSmall = "cradle.blob.seal_small" version 1: (u64, u64) => BlobHandle;
}

/// The answer to [`CreateLarge`].
///
/// ```
/// use ipc_rpc::blob::{DATA_OFFSET, LARGE_KIND, LargeInfo, SegmentInfo};
///
/// let len = 256u64 << 20;
/// let info = LargeInfo {
///     id: 17,
///     segment: SegmentInfo { segment: 5, len: DATA_OFFSET + len, kind: LARGE_KIND, fd_sent: true },
/// };
/// // The author writes the blob's bytes after the segment's header page.
/// assert_eq!(info.segment.len - DATA_OFFSET, len);
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct LargeInfo {
    /// Id of the blob being written (used by [`SealLarge`]).
    pub id: u64,
    /// Its segment; its descriptor (read-write) was sent.
    pub segment: SegmentInfo,
}

crate::method! {
    /// Create a large blob of `len` bytes in its own memfd and send the author
    /// a read-write descriptor.
    ///
    /// ```
    /// # fn round_trip<T: ipc_rpc::Wire>(v: &T) -> T {
    /// #     let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
    /// #     T::decode(&ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16).unwrap()).unwrap()
    /// # }
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::CreateLarge;
    ///
    /// // The request is the blob's length in bytes.
    /// let request: <CreateLarge as Method>::Request = 256 << 20;
    /// assert_eq!(round_trip(&request), 268_435_456);
    /// ```
    pub CreateLarge = "cradle.blob.create_large" version 1: u64 => LargeInfo;

    /// Seal a large blob (the author has unmapped it): `F_SEAL_WRITE`. The
    /// answer's handle carries a lease for the caller.
    ///
    /// ```
    /// # fn round_trip<T: ipc_rpc::Wire>(v: &T) -> T {
    /// #     let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
    /// #     T::decode(&ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16).unwrap()).unwrap()
    /// # }
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::{LARGE_KIND, LargeInfo, SealLarge, SegmentInfo};
    ///
    /// let created = LargeInfo {
    ///     id: 17,
    ///     segment: SegmentInfo { segment: 5, len: 8192, kind: LARGE_KIND, fd_sent: true },
    /// };
    /// // Written and unmapped: seal it by the id `CreateLarge` answered with.
    /// let request: <SealLarge as Method>::Request = created.id;
    /// assert_eq!(round_trip(&request), 17);
    /// ```
    pub SealLarge = "cradle.blob.seal_large" version 1: u64 => BlobHandle;

    /// Take a lease on a sealed blob; with `want_fd`, also send its segment's
    /// descriptor (the caller has not mapped it).
    ///
    /// Request: `(handle, want_fd)`.
    ///
    /// ```
    /// # fn round_trip<T: ipc_rpc::Wire>(v: &T) -> T {
    /// #     let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
    /// #     T::decode(&ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16).unwrap()).unwrap()
    /// # }
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::{Acquire, BlobHandle};
    ///
    /// let handle = BlobHandle { epoch: 1, id: 9, segment: 2, offset: 4096, len: 10 };
    /// // A lease for a blob whose segment this client has not mapped yet.
    /// let request: <Acquire as Method>::Request = (handle, true);
    /// assert_eq!(round_trip(&request), (handle, true));
    /// ```
    pub Acquire = "cradle.blob.acquire" version 1: (BlobHandle, bool) => SegmentInfo;

    /// Send the descriptor of a pool segment or sealed large blob.
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::{BlobHandle, MapSegment};
    ///
    /// // A handle from another client names a segment this one may not have.
    /// let handle = BlobHandle { epoch: 1, id: 9, segment: 2, offset: 4096, len: 10 };
    /// let request: <MapSegment as Method>::Request = handle.segment;
    /// assert_eq!(request, 2);
    /// ```
    pub MapSegment = "cradle.blob.map" version 1: u64 => SegmentInfo;
}

/// Give back leases and abandon unsealed large blobs, in one batch.
///
/// ```
/// use ipc_rpc::blob::ReleaseBatch;
///
/// // Dropped handles are collected and given back together.
/// let mut batch = ReleaseBatch::default();
/// batch.leases.extend([4, 4, 7]); // two leases on blob 4, one on blob 7
/// batch.aborted.push(12); // a large blob dropped before it was sealed
/// assert_eq!(batch.leases.len() + batch.aborted.len(), 4);
/// ```
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Default, PartialEq, Eq,
)]
#[rkyv(crate = rkyv)]
pub struct ReleaseBatch {
    /// Blob ids, one entry per lease given back.
    pub leases: Vec<u64>,
    /// Ids of unsealed large blobs the author dropped.
    pub aborted: Vec<u64>,
}

crate::method! {
    /// See [`ReleaseBatch`]. Answers how many leases were released.
    ///
    /// ```
    /// # fn round_trip<T: ipc_rpc::Wire>(v: &T) -> T {
    /// #     let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
    /// #     T::decode(&ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16).unwrap()).unwrap()
    /// # }
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::{Release, ReleaseBatch};
    ///
    /// let request: <Release as Method>::Request = ReleaseBatch { leases: vec![4, 7], aborted: vec![] };
    /// assert_eq!(round_trip(&request).leases, [4, 7]);
    /// let released: <Release as Method>::Response = 2;
    /// # let _ = released;
    /// ```
    pub Release = "cradle.blob.release" version 1: ReleaseBatch => u64;
}

/// A memory-cache put.
///
/// ```
/// use ipc_rpc::blob::{BlobHandle, MAX_KEY_LEN, PutRequest};
///
/// let handle = BlobHandle { epoch: 1, id: 9, segment: 2, offset: 4096, len: 10 };
/// let put = PutRequest { key: "thumbs/cat.png".into(), handle, if_absent: true };
/// assert!(put.key.len() <= MAX_KEY_LEN);
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct PutRequest {
    /// The key (UTF-8, at most [`MAX_KEY_LEN`] bytes).
    pub key: String,
    /// The blob to store under it.
    pub handle: BlobHandle,
    /// Only store if the key is absent.
    pub if_absent: bool,
}

/// Longest cache key, in bytes.
///
/// ```
/// use ipc_rpc::blob::MAX_KEY_LEN;
///
/// let key = "k".repeat(MAX_KEY_LEN + 1);
/// assert!(key.len() > MAX_KEY_LEN, "a server refuses this key");
/// ```
pub const MAX_KEY_LEN: usize = 1024;

crate::method! {
    /// Store a blob under a key; answers whether it was stored (`false`: the key
    /// existed and `if_absent` was set).
    ///
    /// ```
    /// # fn round_trip<T: ipc_rpc::Wire>(v: &T) -> T {
    /// #     let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
    /// #     T::decode(&ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16).unwrap()).unwrap()
    /// # }
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::{BlobHandle, CachePut, PutRequest};
    ///
    /// let handle = BlobHandle { epoch: 1, id: 9, segment: 2, offset: 4096, len: 10 };
    /// let request: <CachePut as Method>::Request =
    ///     PutRequest { key: "model/weights".into(), handle, if_absent: false };
    /// assert_eq!(round_trip(&request), request);
    /// ```
    pub CachePut = "cradle.cache.put" version 1: PutRequest => bool;

    /// Like [`CachePut`], and also write the blob to the disk tier: answered
    /// only once its data is `fdatasync`ed and the directory `fsync`ed. (A plain
    /// [`CachePut`] is persisted too, off the call path.)
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::{CachePut, CachePutDurable};
    ///
    /// // The same request and answer as a plain put; another method id.
    /// fn same_shape(r: <CachePut as Method>::Request) -> <CachePutDurable as Method>::Request { r }
    /// # let _ = same_shape;
    /// assert_ne!(CachePut::ID, CachePutDurable::ID);
    /// ```
    pub CachePutDurable = "cradle.cache.put_durable" version 1: PutRequest => bool;
}

/// A cache hit: the handle (with a lease for the caller) and its segment.
///
/// ```
/// use ipc_rpc::blob::{BlobHandle, Hit, POOL_KIND, SegmentInfo};
///
/// let handle = BlobHandle { epoch: 1, id: 9, segment: 2, offset: 4160, len: 10 };
/// let hit = Hit {
///     handle,
///     segment: SegmentInfo { segment: 2, len: 1 << 20, kind: POOL_KIND, fd_sent: false },
/// };
/// // The blob's bytes lie inside its segment.
/// assert!(hit.handle.offset + hit.handle.len <= hit.segment.len);
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct Hit {
    /// The blob, leased to the caller.
    pub handle: BlobHandle,
    /// Its segment.
    pub segment: SegmentInfo,
}

/// The answer to [`CacheGet`].
///
/// ```
/// use ipc_rpc::blob::Lookup;
///
/// // What a client does with each answer.
/// fn next_step(answer: &Lookup) -> &'static str {
///     match answer {
///         Lookup::Hit(_) => "map the blob",
///         Lookup::OnDisk => "call CacheLoad",
///         Lookup::Miss => "compute it, then put it",
///     }
/// }
/// assert_eq!(next_step(&Lookup::OnDisk), "call CacheLoad");
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub enum Lookup {
    /// In memory: leased to the caller.
    Hit(Hit),
    /// Not in memory but in the disk tier: load it with [`CacheLoad`].
    OnDisk,
    /// In neither tier.
    Miss,
}

crate::method! {
    /// Look a key up in the memory cache; a hit takes a lease for the caller.
    /// Answered inline: a key only on disk is reported as such, and loaded
    /// with [`CacheLoad`] (on the offload pool, so that disk reads never hold up
    /// the worker).
    ///
    /// ```
    /// # fn round_trip<T: ipc_rpc::Wire>(v: &T) -> T {
    /// #     let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
    /// #     T::decode(&ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16).unwrap()).unwrap()
    /// # }
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::{CacheGet, Lookup};
    ///
    /// let request: <CacheGet as Method>::Request = "thumbs/cat.png".into();
    /// assert_eq!(round_trip(&request), "thumbs/cat.png");
    /// let answer: <CacheGet as Method>::Response = Lookup::Miss;
    /// assert_eq!(round_trip(&answer), Lookup::Miss);
    /// ```
    pub CacheGet = "cradle.cache.get" version 2: String => Lookup;

    /// Load a key from the disk tier into a new blob (checksum verified; a
    /// damaged entry is dropped and answered as a miss), put it back in the
    /// memory cache if it fits, and lease it to the caller.
    ///
    /// ```
    /// # fn round_trip<T: ipc_rpc::Wire>(v: &T) -> T {
    /// #     let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
    /// #     T::decode(&ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16).unwrap()).unwrap()
    /// # }
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::CacheLoad;
    ///
    /// let request: <CacheLoad as Method>::Request = "thumbs/cat.png".into();
    /// assert_eq!(round_trip(&request), "thumbs/cat.png");
    /// // `None`: gone from the disk tier meanwhile, or damaged and dropped.
    /// let answer: <CacheLoad as Method>::Response = None;
    /// assert_eq!(round_trip(&answer), None);
    /// ```
    pub CacheLoad = "cradle.cache.load" version 1: String => Option<Hit>;

    /// Remove a key from both tiers; answers whether it was in either.
    ///
    /// ```
    /// # fn round_trip<T: ipc_rpc::Wire>(v: &T) -> T {
    /// #     let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
    /// #     T::decode(&ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16).unwrap()).unwrap()
    /// # }
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::CacheRemove;
    ///
    /// let request: <CacheRemove as Method>::Request = "thumbs/cat.png".into();
    /// assert_eq!(round_trip(&request), "thumbs/cat.png");
    /// let was_there: <CacheRemove as Method>::Response = true;
    /// assert!(round_trip(&was_there));
    /// ```
    pub CacheRemove = "cradle.cache.remove" version 1: String => bool;
}

/// Why a cache key is refused; [`check_key`] says.
///
/// ```
/// use ipc_rpc::blob::{KeyError, check_key};
/// assert_eq!(check_key(""), Err(KeyError::Empty));
/// assert_eq!(check_key("a\tb"), Err(KeyError::Control('\t')));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The key has no bytes.
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] bytes (this many).
    TooLong(usize),
    /// The key contains this control character (it would garble listings
    /// and logs).
    Control(char),
}

impl core::fmt::Display for KeyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Empty => write!(
                f,
                "the cache key is empty; give a name of 1 to {MAX_KEY_LEN} bytes"
            ),
            Self::TooLong(n) => write!(
                f,
                "the cache key is {n} bytes long; at most {MAX_KEY_LEN} are allowed"
            ),
            Self::Control(c) => write!(
                f,
                "the cache key contains the control character {c:?}; use printable characters"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// Checks a cache key: 1 to [`MAX_KEY_LEN`] bytes of UTF-8 without control
/// characters. Clients check before sending; the server refuses the same
/// keys.
///
/// ```
/// use ipc_rpc::blob::check_key;
/// assert!(check_key("thumbs/cat.png").is_ok());
/// assert!(check_key(&"k".repeat(2000)).is_err());
/// ```
pub fn check_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(key.len()));
    }
    match key.chars().find(|c| c.is_control()) {
        Some(c) => Err(KeyError::Control(c)),
        None => Ok(()),
    }
}

/// A request for one page of the cache's keys, in key order.
///
/// ```
/// use ipc_rpc::blob::ListRequest;
/// // The first page of keys under "thumbs/".
/// let first = ListRequest { prefix: "thumbs/".into(), after: String::new(), limit: 1000 };
/// # let _ = first;
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct ListRequest {
    /// Only keys that start with this (empty: every key).
    pub prefix: String,
    /// Only keys after this one (empty: from the first); the last key of
    /// the previous page.
    pub after: String,
    /// At most this many keys (the server may answer fewer, to fit a frame).
    pub limit: u32,
}

/// One key in a [`ListPage`].
///
/// ```
/// use ipc_rpc::blob::ListedKey;
/// let k = ListedKey { key: "model".into(), len: 100 << 20, in_memory: false, on_disk: true };
/// assert!(k.on_disk && !k.in_memory);
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct ListedKey {
    /// The key.
    pub key: String,
    /// The blob's length in bytes.
    pub len: u64,
    /// The memory cache holds it.
    pub in_memory: bool,
    /// The disk tier holds it (written, not only queued).
    pub on_disk: bool,
}

/// One page of keys; ask again with `after` = the last key while `more`.
///
/// ```
/// use ipc_rpc::blob::ListPage;
/// let page = ListPage { keys: Vec::new(), more: false };
/// assert!(page.keys.is_empty() && !page.more);
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct ListPage {
    /// Keys in order, each once (a key in both tiers says so).
    pub keys: Vec<ListedKey>,
    /// More keys follow.
    pub more: bool,
}

crate::method! {
    /// List the keys of both tiers, a page at a time.
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::CacheList;
    /// assert_eq!(CacheList::NAME, "cradle.cache.list");
    /// ```
    pub CacheList = "cradle.cache.list" version 1: ListRequest => ListPage;
}

/// Blob store and cache figures, part of the builtin module's
/// `ServerStats` (`cradle.stats`).
///
/// ```
/// use ipc_rpc::blob::BlobStats;
///
/// fn hit_ratio(s: &BlobStats) -> Option<f64> {
///     let lookups = s.hits + s.misses;
///     (lookups > 0).then(|| s.hits as f64 / lookups as f64)
/// }
/// let stats = BlobStats { hits: 3, misses: 1, ..Default::default() };
/// assert_eq!(hit_ratio(&stats), Some(0.75));
/// assert_eq!(hit_ratio(&BlobStats::default()), None);
/// ```
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq, Default,
)]
#[rkyv(crate = rkyv)]
pub struct BlobStats {
    /// Sealed blobs alive (leased or cached).
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Large blobs among them.
    pub large_blobs: u64,
    /// Large blobs being written (not sealed).
    pub writing: u64,
    /// Server pool segments.
    pub pool_segments: u64,
    /// Bytes of all server pool segments.
    pub pool_capacity: u64,
    /// Bytes allocated in them (live small blobs).
    pub pool_used: u64,
    /// Author pools (one per session that wrote a small blob).
    pub author_pools: u64,
    /// Leases held, all sessions.
    pub leases: u64,
    /// Memory-cache entries.
    pub cache_entries: u64,
    /// Bytes of the blobs they hold.
    pub cache_bytes: u64,
    /// The memory cache's budget.
    pub cache_budget: u64,
    /// Cache gets that found their key.
    pub hits: u64,
    /// Cache gets that did not.
    pub misses: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Puts refused with `CacheFull`.
    pub cache_full: u64,
    /// Whether the server has a disk tier.
    pub disk_enabled: bool,
    /// Disk-tier entries.
    pub disk_entries: u64,
    /// Bytes of their files.
    pub disk_bytes: u64,
    /// The disk tier's budget.
    pub disk_budget: u64,
    /// Loads served from the disk tier.
    pub disk_hits: u64,
    /// Loads that found nothing usable on disk.
    pub disk_misses: u64,
    /// Damaged entries found (checksum, truncation) and dropped.
    pub disk_corruptions: u64,
    /// Entries the disk tier evicted to stay within its budget.
    pub disk_evictions: u64,
    /// Puts waiting to be written to the disk tier.
    pub disk_queued: u64,
}
