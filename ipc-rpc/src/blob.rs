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
/// [`Goodbye`](crate::handshake::Goodbye), so a reader takes 16-byte
/// messages and tells them apart by magic.
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
    pub AuthorPool = "cradle.blob.author_pool" version 1: () => SegmentInfo;

    /// Seal a small blob: copy `len` bytes at `offset` of the author pool into a
    /// server pool. The answer's handle carries a lease for the caller.
    ///
    /// Request: `(offset, len)` in the author pool.
    pub SealSmall = "cradle.blob.seal_small" version 1: (u64, u64) => BlobHandle;
}

/// The answer to [`CreateLarge`].
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
    pub CreateLarge = "cradle.blob.create_large" version 1: u64 => LargeInfo;

    /// Seal a large blob (the author has unmapped it): `F_SEAL_WRITE`. The
    /// answer's handle carries a lease for the caller.
    pub SealLarge = "cradle.blob.seal_large" version 1: u64 => BlobHandle;

    /// Take a lease on a sealed blob; with `want_fd`, also send its segment's
    /// descriptor (the caller has not mapped it).
    ///
    /// Request: `(handle, want_fd)`.
    pub Acquire = "cradle.blob.acquire" version 1: (BlobHandle, bool) => SegmentInfo;

    /// Send the descriptor of a pool segment or sealed large blob.
    pub MapSegment = "cradle.blob.map" version 1: u64 => SegmentInfo;
}

/// Give back leases and abandon unsealed large blobs, in one batch.
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
    pub Release = "cradle.blob.release" version 1: ReleaseBatch => u64;
}

/// A memory-cache put.
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
pub const MAX_KEY_LEN: usize = 1024;

crate::method! {
    /// Store a blob under a key; answers whether it was stored (`false`: the key
    /// existed and `if_absent` was set).
    pub CachePut = "cradle.cache.put" version 1: PutRequest => bool;

    /// Like [`CachePut`], and also write the blob to the disk tier: answered
    /// only once its data is `fdatasync`ed and the directory `fsync`ed. (A plain
    /// [`CachePut`] is persisted too, off the call path.)
    pub CachePutDurable = "cradle.cache.put_durable" version 1: PutRequest => bool;
}

/// A cache hit: the handle (with a lease for the caller) and its segment.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct Hit {
    /// The blob, leased to the caller.
    pub handle: BlobHandle,
    /// Its segment.
    pub segment: SegmentInfo,
}

/// The answer to [`CacheGet`].
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
    pub CacheGet = "cradle.cache.get" version 2: String => Lookup;

    /// Load a key from the disk tier into a new blob (checksum verified; a
    /// damaged entry is dropped and answered as a miss), put it back in the
    /// memory cache if it fits, and lease it to the caller.
    pub CacheLoad = "cradle.cache.load" version 1: String => Option<Hit>;

    /// Remove a key from both tiers; answers whether it was in either.
    pub CacheRemove = "cradle.cache.remove" version 1: String => bool;
}

/// Blob store and cache figures, part of
/// [`ServerStats`](crate::builtin::ServerStats).
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
